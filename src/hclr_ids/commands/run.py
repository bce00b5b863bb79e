"""``hclr-ids run``: train, then evaluate on the split's test part beside the baselines."""

from __future__ import annotations

import argparse

from hclr_ids.commands._options import add_training_options, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="train and evaluate in one step",
        description="Train HCLR-IDS on the training part of the split, evaluate it on the test part next to "
                    "RandomForest and LightGBM fitted on the same rows and features, and write the bundle, "
                    "metrics.json, report.md and plots to --out.",
    )
    add_training_options(parser)
    parser.add_argument("--out", default="runs/latest", help="output directory (default runs/latest)")
    parser.add_argument("--no-baselines", action="store_true", help="skip RandomForest and LightGBM")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.pipeline import run
    from hclr_ids.progress import stage_progress

    with stage_progress() as progress:
        metrics = run(config_from_args(args), args.out, with_baselines=not args.no_baselines, progress=progress)
    for name, values in metrics["models"].items():
        acc, f1 = values["accuracy"], values["macro_f1"]
        acc = acc["mean"] if isinstance(acc, dict) else acc
        f1 = f1["mean"] if isinstance(f1, dict) else f1
        print(f"{name:<22} accuracy {acc:.4f}  macro-F1 {f1:.4f}")
    print(f"report: {args.out}/report.md")
    return 0
