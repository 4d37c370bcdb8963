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
    return parser


def run_train(args: argparse.Namespace) -> int:
    from vhjax.config import apply_overrides, load_config_file
    from vhjax.train import fit

    config = apply_overrides(load_config_file(args.config), args.overrides)
    result = fit(config, args.workdir, verbose=not args.quiet)
    for split, values in result.metrics.items():
        print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return 0


COMMANDS = {"train": run_train}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"vhjax {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
