"""``dpbr train``: one simulated distributed training run, with a progress bar and a summary line.

Every field of :class:`dpbr_lib.training.TrainConfig` is an option (``--batch-size 50``,
``--attack-negative``), with the field's comment as help. ``--epsilon`` alone switches on the
Gaussian mechanism and ``--sparsify-ratio`` alone sparsification. The config is checked before
training starts; a bad combination is one line and exit status 2 (``dpbr_lib.cli.main``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from dpbr_lib.training import TrainConfig, field_help, train

_NONE = "none"


def _parser_for(kind: type, optional: bool) -> Any:
    def parse(text: str) -> Any:
        if optional and text.lower() == _NONE:
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--field-name`` per config field; absent options keep the config's default."""
    helps = field_help()
    types = TrainConfig.column_types()
    group = parser.add_argument_group("run configuration (TrainConfig fields)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        optional = "None" in str(field.type)
        text = f"{helps.get(field.name, '')} (default: {field.default})"
        if types[field.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(
                flag,
                type=_parser_for(types[field.name], optional),
                default=None,
                metavar=field.name.upper(),
                help=text,
            )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The options given on the command line, over the config defaults, checked."""
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TrainConfig)
        if getattr(args, field.name) is not None
    }
    if "privacy" not in given:
        if "epsilon" in given:
            given["privacy"] = "gaussian"
        elif "sparsify_ratio" in given:
            given["privacy"] = "sparsify"
    return TrainConfig.from_dict(given)


def summary_line(summary: dict[str, Any]) -> str:
    epsilon = summary["epsilon_spent"]
    spent = "no DP guarantee" if math.isnan(epsilon) else f"ε spent {epsilon:.4g}"
    diverged = f", diverged at step {summary['diverged_step']}" if summary["diverged"] else ""
    return (
        f"final accuracy {summary['final_accuracy']:.4f}, final test loss "
        f"{summary['final_test_loss']:.4g}, {spent}, d = {summary['d']}, "
        f"{summary['steps_done']} steps in {summary['wall_time']:.1f} s{diverged}"
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # ValueError: one line, exit 2
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"The '--threads' option must be >= 1. Got {args.threads} instead.")
        torch.set_num_threads(args.threads)  # this process only; the numbers do not change
    result = train(config, progress=not args.quiet, data_dir=args.data_dir, download=args.download,
                   device=args.device)
    print(summary_line(result.summary))
    if args.results is not None:
        path = result.save(Path(args.results) / f"{result.run_id}.parquet")
        print(f"result written to {path}")
    return 0


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "train",
        help="one simulated distributed training run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results", metavar="DIR", help="write the run's Parquet record here")
    parser.add_argument("--data-dir", metavar="DIR", help="where the downloadable data sets are")
    parser.add_argument(
        "--download", action="store_true", help="allow downloading a missing data set"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads (default: torch's choice; 1 is fastest on a shared machine)",
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="where to train: cpu (default), cuda, cuda:N or auto (a GPU when there is one)",
    )
    add_config_options(parser)
    parser.set_defaults(handler=run)
