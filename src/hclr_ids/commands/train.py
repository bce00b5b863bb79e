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
    parser.add_argument("--ray-workers", type=int, default=None,
                        help="data-parallel encoder training on N Ray Train workers (needs the 'experiments' extra)")
    parser.add_argument("--ray-address", default=None,
                        help="with --ray-workers: address of an existing Ray cluster (default: a local instance)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.pipeline import train
    from hclr_ids.progress import stage_progress

    if args.ray_address and not args.ray_workers:
        raise ValueError("--ray-address needs --ray-workers N (the number of Ray Train workers)")
    if args.ray_workers:
        from hclr_ids.experiments.distributed import train_distributed

        metrics = train_distributed(config_from_args(args), args.out, num_workers=args.ray_workers,
                                    address=args.ray_address)
    else:
        with stage_progress() as progress:
            metrics = train(config_from_args(args), args.out, progress=progress)
    print(f"validation: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; bundle in {args.out}")
    return 0
