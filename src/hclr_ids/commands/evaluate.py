"""``hclr-ids evaluate``: score labelled data with a saved bundle."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a saved model on labelled data",
        description="Evaluate a bundle on the test part of its split rebuilt on --data (release layout) or on "
                    "every row of a labelled table; write metrics.json, report.md and plots to --out.",
    )
    parser.add_argument("--model", required=True, help="model bundle directory (output of train or run)")
    parser.add_argument("--data", required=True, help="release root, or a labelled CSV/Parquet file or folder")
    parser.add_argument("--out", required=True, help="output directory for the evaluation")
    parser.add_argument("--part", choices=("auto", "test", "all"), default="auto",
                        help="test: the test part of the model's split; all: every row; auto: test for the "
                             "release layout, all for labelled tables (default)")
    parser.add_argument("--label-column", help="label column of a labelled table")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.inference import evaluate_bundle

    metrics = evaluate_bundle(args.model, args.data, args.out, part=args.part, label_column=args.label_column)
    print(f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; report: {args.out}/report.md")
    return 0
