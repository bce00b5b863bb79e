"""``hclr-ids adapt``: teach a trained bundle the true labels of a feedback table, offline."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "adapt", help="update a model's decision head from labelled feedback",
        description="Feed a CSV/Parquet table of flows (release feature columns and a 'label' column of class "
                    "names) to the online learner, as the service does with POST /v1/feedback, and write the "
                    "adapted bundle to --out. The --model folder is only read.",
    )
    parser.add_argument("--model", required=True, help="model bundle folder (output of 'hclr-ids train')")
    parser.add_argument("--feedback", required=True, help="CSV or Parquet file or folder with a 'label' column")
    parser.add_argument("--out", required=True, help="output folder of the adapted bundle (must differ from --model)")
    parser.add_argument("--reference",
                        help="labelled table of training-distribution rows: validation sample of the rollback check "
                             "and training rows of the unknown-traffic detector")
    parser.add_argument("--window-size", type=int, default=None, help="feedback rows per update window (default 64)")
    parser.add_argument("--gradient-steps", type=int, default=None,
                        help="gradient steps per network and window (default 32)")
    parser.add_argument("--rollback-margin", type=float, default=None,
                        help="validation macro-F1 drop that rolls a window back (default 0.02)")
    parser.add_argument("--seed", type=int, default=None, help="seed of replay sampling (default 0)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.adaptation import AdaptConfig, adapt_bundle

    overrides = {
        "window_size": args.window_size, "gradient_steps": args.gradient_steps,
        "rollback_margin": args.rollback_margin, "seed": args.seed,
    }
    config = AdaptConfig(**{k: v for k, v in overrides.items() if v is not None})
    summary = adapt_bundle(args.model, args.feedback, args.out, config, reference_path=args.reference)
    print(f"adapted {summary['source_version']} with {summary['feedback_rows']} feedback rows: "
          f"{summary['updates']} updates, {summary['rollbacks']} rollbacks; model {summary['model_version']} "
          f"({len(summary['classes'])} classes) in {args.out}")
    return 0
