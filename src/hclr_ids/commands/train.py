"""``hclr-ids train``: fit the model on the training part of a split and save the bundle."""

from __future__ import annotations

import argparse

from hclr_ids.commands._options import add_training_options, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model and save its bundle",
        description="Fit preprocessing, feature selection, the CNN-LSTM encoder and the RL decision head on the "
                    "training part of the split; write the model bundle and validation metrics to --out.",
    )
    add_training_options(parser)
    parser.add_argument("--out", required=True, help="output directory of the model bundle")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.pipeline import train
    from hclr_ids.progress import stage_progress

    with stage_progress() as progress:
        metrics = train(config_from_args(args), args.out, progress=progress)
    print(f"validation: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; bundle in {args.out}")
    return 0
