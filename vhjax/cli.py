"""The `vhjax` command: train a config, run a search, or run the demo search."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any, Sequence


def known_names() -> str:
    """The registered model, optimizer, loss and strategy names (for --help; imports jax)."""
    from vhjax.losses import LOSSES
    from vhjax.models import MODELS
    from vhjax.optim import OPTIMIZERS
    from vhjax.search.strategies import STRATEGIES

    wrap = lambda names: textwrap.fill(", ".join(names), width=96, initial_indent="    ", subsequent_indent="    ")
    return "\n".join([f"known models:\n{wrap(MODELS.names())}", f"known optimizers:\n{wrap(OPTIMIZERS.names())}",
                      f"known losses:\n{wrap(LOSSES.names())}", f"known strategies:\n{wrap(STRATEGIES.names())}"])


def build_parser(names: bool = False) -> argparse.ArgumentParser:
    """The parser; `names`: list the registered names and config defaults in --help (imports jax)."""
    from vhjax.config import config_help

    epilog = config_help() + ("\n\n" + known_names() if names else "")
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="vhjax", description="Train populations of networks in one compiled program, and search over them.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one model from a Python config file", epilog=epilog,
                                formatter_class=formatter,
                                description=textwrap.fill("Train one model. The config is a Python file defining get_config() "
                                            "(an ml_collections.ConfigDict of sections, a dict, or a TrainConfig), "
                                            "given as --config PATH or as the first argument; overrides are "
                                            "--config.section.field=value (big_vision style) or section.field=value "
                                            "/ field=value, e.g. --config.optimizer.learning_rate=3e-3 "
                                            "model.model_kwargs.widths=(64,64). Standard configs: experiments/configs/.", 96))
    train.add_argument("config_path", nargs="?", metavar="CONFIG", help="path to a config file with get_config()")
    train.add_argument("overrides", nargs="*", help="key=value overrides of config fields (section.field=value)")
    train.add_argument("--config", dest="config_flag", default=None, metavar="PATH",
                       help="path to a config file with get_config(); --config.section.field=value overrides it")
    train.add_argument("--workdir", default=None, help="folder for checkpoints, metrics.jsonl and TensorBoard event "
                                                       "files; rerun to resume (default: none)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or lines (verbose=False)")
    train.add_argument("--mesh", default="none", help="devices: 'none' (one), or 'members=1,data=D' (data parallel) "
                                                      "(default: none)")

    search = commands.add_parser("search", help="run a search from a Python spec file", epilog=epilog,
                                 formatter_class=formatter,
                                 description=textwrap.fill("Run vhjax.search. SPEC is a Python file defining get_search() that returns "
                                             "the keyword arguments of vhjax.search (objective, space, strategy, budget, "
                                             "population, ...), or of vhjax.search.search_multifidelity when it has a "
                                             "'scheduler' (budget = max_trials, strategy = generator). Flags override them; key=value "
                                             "(section.field=value) overrides change the objective's TrainConfig. "
                                             "Rerun with the same workdir to resume.", 96))
    search.add_argument("spec", help="path to a file with get_search()")
    search.add_argument("overrides", nargs="*", help="section.field=value overrides of the objective's config")
    _search_flags(search)

    export = commands.add_parser("export", help="save one member of a fit_population workdir as Flax variables",
                                 description="Save a member's variables ({'params': ...}) with orbax at PATH; load "
                                             "them with orbax.checkpoint.StandardCheckpointer().restore(PATH) and "
                                             "use model.apply(variables, x).",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    export.add_argument("workdir", help="a fit_population workdir (with result.json)")
    export.add_argument("path", help="a new folder for the orbax checkpoint")
    export.add_argument("--rank", type=int, default=None, help="rank on the metric, 0 = best (the default)")
    export.add_argument("--index", type=int, default=None, help="the member's position in the members list")
    export.add_argument("--metric", default="accuracy", help="the ranking metric")
    export.add_argument("--split", default="eval", help="the ranking split")
    export.add_argument("--mode", default="max", help="'max' or 'min'")

    report = commands.add_parser("report", help="write one self-contained HTML page about a search workdir",
                                 description="Write WORKDIR/report.html (or --out): the leaderboard, parameter "
                                             "importance (Optuna's fANOVA) and the search plots, embedded in one "
                                             "page that opens in any browser.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    report.add_argument("workdir", help="a search workdir (with trials.sqlite)")
    report.add_argument("--out", default=None, help="the page's path (default: WORKDIR/report.html)")
    report.add_argument("--study", default="default", help="the study inside the workdir's store")
    report.add_argument("--top", type=int, default=10, help="trials in the leaderboard")

    demo = commands.add_parser("demo", help="the main job: search MNIST-1D networks with vhjax.search.tune",
                               description="Search learning rate, weight decay, dropout and MLP architecture on "
                                           "MNIST-1D with the recommended search (vhjax.search.tune): POPULATION "
                                           "trials train at once in one compiled program, successive halving prunes "
                                           "at rungs inside it and refills the slots until BUDGET full trials' worth "
                                           "of training is spent; --strategy tpe or random.",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _search_flags(demo)
    demo.add_argument("--steps", type=int, default=1500, help="training steps per member (default 1500)")
    demo.set_defaults(budget=16, strategy="tpe", workdir="runs/demo", seed=0)  # population: tune's default

    from vhjax.launch import add_arguments

    launch = commands.add_parser("launch", help="start a script on a TPU pod slice or a Slurm cluster",
                                 description="vhjax launch CONFIG [--dry-run] -- SCRIPT ARGS: the commands that start "
                                             "SCRIPT on every worker (see vhjax/launch.py and tpu_configs/).")
    add_arguments(launch)
    return parser


def _search_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=int, default=None, help="total number of trials (default: the spec's)")
    parser.add_argument("--population", type=int, default=None, help="candidates per generation (default: the spec's)")
    parser.add_argument("--strategy", default=None, help="strategy name, one of the known strategies below "
                                                         "(default: the spec's)")
    parser.add_argument("--workdir", default=None, help="trials.sqlite and plots go here; rerun to resume "
                                                        "(default: the spec's)")
    parser.add_argument("--seed", type=int, default=None, help="(default: the spec's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines (verbose=False)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="after SECONDS nothing new starts and the search ends at its next evaluation "
                             "(rerun in the workdir to go on; default: none, or for a spec its own)")
    parser.add_argument("--mesh", default="auto", help="devices: 'auto' (all), 'none', or 'members=M,data=D' "
                                                       "(default: auto)")
    parser.add_argument("--cpu-devices", default="auto",
                        help="on a CPU, split it into this many JAX devices so members train in parallel on the "
                             "cores: 'auto' (one per core, or JAX_NUM_CPU_DEVICES / XLA_FLAGS' device count when "
                             "set) or a number; 1 keeps one device (default: auto)")


def run_search(args: argparse.Namespace) -> int:
    import runpy

    from vhjax.search import search

    spec = runpy.run_path(args.spec)
    if "get_search" not in spec:
        raise ValueError(f"search spec {args.spec!r} defines no get_search()")
    kwargs = dict(spec["get_search"]())
    for name in ("budget", "population", "strategy", "workdir", "seed", "timeout"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    kwargs["verbose"] = not args.quiet
    if args.overrides:
        kwargs["objective"] = override_objective(kwargs.get("objective"), args.overrides)
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


def override_objective(objective: Any, overrides: Sequence[str]) -> Any:
    """The search objective with `overrides` applied to its TrainConfig (`objective.config`)."""
    import dataclasses

    from vhjax.config import TrainConfig, apply_overrides

    config = getattr(objective, "config", None)
    if not isinstance(config, TrainConfig) or not dataclasses.is_dataclass(objective):
        raise ValueError(f"overrides {list(overrides)} need an objective with a TrainConfig (e.g. "
                         f"TrainingObjective); the spec's objective is {type(objective).__name__}")
    return dataclasses.replace(objective, config=apply_overrides(config, overrides))


def config_flag_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(other arguments, overrides) with `--config.a.b=v` and `--config.a.b v` turned into `a.b=v`."""
    rest, overrides, items = [], [], list(argv)
    while items:
        item = items.pop(0)
        if item.startswith("--config."):
            key, equals, value = item[len("--config."):].partition("=")
            if not equals:
                if not items:
                    raise ValueError(f"{item} has no value; allowed: {item}=VALUE")
                value = items.pop(0)
            overrides.append(f"{key}={value}")
        else:
            rest.append(item)
    return rest, overrides


def run_demo(args: argparse.Namespace) -> int:
    from vhjax.demo import run_demo as demo

    demo(budget=args.budget, population=args.population, steps=args.steps, strategy=args.strategy,
         workdir=args.workdir, seed=args.seed, mesh=None if args.mesh == "none" else args.mesh, verbose=not args.quiet,
         timeout=args.timeout)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from vhjax.config import apply_overrides, load_config_file
    from vhjax.train import fit

    path = args.config_flag or args.config_path
    overrides = list(args.overrides)
    if args.config_flag and args.config_path:  # `--config PATH a.b=v`: the first positional is an override
        overrides.insert(0, args.config_path)
    if path is None:
        raise ValueError("no config file; allowed: vhjax train --config PATH (or vhjax train PATH), "
                         "e.g. experiments/configs/mnist1d_mlp.py")
    config = apply_overrides(load_config_file(path), [*overrides, *args.config_overrides])
    result = fit(config, args.workdir, mesh=None if args.mesh == "none" else args.mesh, verbose=not args.quiet)
    for split, values in result.metrics.items():
        print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return 0


def run_launch(args: argparse.Namespace) -> int:
    from vhjax.launch import from_args

    return from_args(args)


def run_export(args: argparse.Namespace) -> int:
    from vhjax.population.export import export_member

    path = export_member(args.workdir, args.path, rank=args.rank, index=args.index, metric=args.metric,
                         split=args.split, mode=args.mode)
    print(f"exported to {path}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from vhjax.search.report import write_report

    path = write_report(args.workdir, args.out, study=args.study, top=args.top)
    print(f"report: {path}")
    return 0


def parse_count(text: str) -> int | str:
    """'3' -> 3; anything else is returned as given (`use_cpu_devices` names what is allowed)."""
    return int(text) if text.strip().isdigit() else text


COMMANDS = {"train": run_train, "search": run_search, "demo": run_demo, "launch": run_launch,
            "export": run_export, "report": run_report}


def main(argv: Sequence[str] | None = None) -> int:
    from vhjax.train.checkpoint import CheckpointError
    from vhjax.train.workdir import WorkdirInUse

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, config_overrides = config_flag_overrides(argv)
    except ValueError as error:
        print(f"vhjax: error: {error}", file=sys.stderr)
        return 2
    args = build_parser(names=any(a in ("-h", "--help") for a in argv)).parse_args(argv)
    args.config_overrides = config_overrides
    if config_overrides and args.command == "search":
        args.overrides = [*args.overrides, *config_overrides]
    elif config_overrides and args.command != "train":
        print(f"vhjax {args.command}: error: --config.* overrides are for train and search", file=sys.stderr)
        return 2
    if getattr(args, "cpu_devices", None) is not None:  # search, demo: before JAX starts
        from vhjax.hardware import use_cpu_devices

        try:
            use_cpu_devices(parse_count(args.cpu_devices))
        except (ValueError, RuntimeError) as error:
            print(f"vhjax {args.command}: error: --cpu-devices: {error}", file=sys.stderr)
            return 2
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, WorkdirInUse, CheckpointError) as error:
        print(f"vhjax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
