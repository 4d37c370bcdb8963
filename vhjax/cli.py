"""The `vhjax` command: train a config, run a search, or run the demo search."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vhjax", description="Train populations of networks in one compiled program, and search over them.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model from a Python config file",
                                description="Train one model. CONFIG is a Python file defining get_config(); "
                                            "overrides are key=value (e.g. learning_rate=3e-3 model_kwargs.widths=(64,64)).")
    train.add_argument("config", help="path to a config file with get_config()")
    train.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
    train.add_argument("--workdir", default=None, help="folder for checkpoints and metrics; rerun to resume")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.add_argument("--mesh", default="none", help="devices: 'none' (one), or 'members=1,data=D' (data parallel)")

    search = commands.add_parser("search", help="run a search from a Python spec file",
                                 description="Run vhjax.search. SPEC is a Python file defining get_search() that returns "
                                             "the keyword arguments of vhjax.search (objective, space, strategy, budget, "
                                             "population, ...), or of vhjax.search.search_multifidelity when it has a "
                                             "'scheduler' (budget = max_trials, strategy = generator). Flags override them. Rerun with the same workdir to resume.")
    search.add_argument("spec", help="path to a file with get_search()")
    _search_flags(search)

    demo = commands.add_parser("demo", help="the main job: search MNIST-1D networks with vhjax.search.tune",
                               description="Search learning rate, weight decay, dropout and MLP architecture on "
                                           "MNIST-1D with the recommended search (vhjax.search.tune): POPULATION "
                                           "trials train at once in one compiled program, successive halving prunes "
                                           "at rungs inside it and refills the slots until BUDGET full trials' worth "
                                           "of training is spent; --strategy tpe or random.",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _search_flags(demo)
    demo.add_argument("--steps", type=int, default=1500, help="training steps per member (default 1500)")
    demo.set_defaults(budget=16, population=16, strategy="tpe", workdir="runs/demo", seed=0)

    from vhjax.launch import add_arguments

    launch = commands.add_parser("launch", help="start a script on a TPU pod slice or a Slurm cluster",
                                 description="vhjax launch CONFIG [--dry-run] -- SCRIPT ARGS: the commands that start "
                                             "SCRIPT on every worker (see vhjax/launch.py and tpu_configs/).")
    add_arguments(launch)
    return parser


def _search_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=int, default=None, help="total number of trials")
    parser.add_argument("--population", type=int, default=None, help="candidates per generation")
    parser.add_argument("--strategy", default=None, help="strategy name (see vhjax.search.STRATEGIES)")
    parser.add_argument("--workdir", default=None, help="trials.sqlite and plots go here; rerun to resume")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--mesh", default="auto", help="devices: 'auto' (all), 'none', or 'members=M,data=D'")


def run_search(args: argparse.Namespace) -> int:
    import runpy

    from vhjax.search import search

    spec = runpy.run_path(args.spec)
    if "get_search" not in spec:
        raise ValueError(f"search spec {args.spec!r} defines no get_search()")
    kwargs = dict(spec["get_search"]())
    for name in ("budget", "population", "strategy", "workdir", "seed"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    kwargs["verbose"] = not args.quiet
    if "scheduler" in kwargs:  # successive halving, Hyperband or ASHA
        from vhjax.search import search_multifidelity

        kwargs["max_trials"] = kwargs.pop("budget", kwargs.get("max_trials"))
        if "strategy" in kwargs:
            kwargs["generator"] = kwargs.pop("strategy")
        result = search_multifidelity(**kwargs)
    else:
        result = search(**kwargs)
    print(result.leaderboard())
    if kwargs.get("workdir"):
        paths = result.plot()
        print(f"plots: {', '.join(sorted(paths.values()))}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from vhjax.demo import run_demo as demo

    demo(budget=args.budget, population=args.population, steps=args.steps, strategy=args.strategy,
         workdir=args.workdir, seed=args.seed, mesh=None if args.mesh == "none" else args.mesh, verbose=not args.quiet)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from vhjax.config import apply_overrides, load_config_file
    from vhjax.train import fit

    config = apply_overrides(load_config_file(args.config), args.overrides)
    result = fit(config, args.workdir, mesh=None if args.mesh == "none" else args.mesh, verbose=not args.quiet)
    for split, values in result.metrics.items():
        print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return 0


def run_launch(args: argparse.Namespace) -> int:
    from vhjax.launch import from_args

    return from_args(args)


COMMANDS = {"train": run_train, "search": run_search, "demo": run_demo, "launch": run_launch}


def main(argv: Sequence[str] | None = None) -> int:
    from vhjax.train.checkpoint import CheckpointError
    from vhjax.train.workdir import WorkdirInUse

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, WorkdirInUse, CheckpointError) as error:
        print(f"vhjax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
