"""``hclr-ids predict``: label every row of a feature file."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict a class for every row of a file",
        description="Score a CSV/Parquet file or folder of flow-window features; write one output row per "
                    "input row, in input order (CSV, Parquet or JSON Lines by the output extension).",
    )
    parser.add_argument("--model", required=True, help="model bundle directory")
    parser.add_argument("--input", required=True, help="CSV or Parquet file, or a folder of them")
    parser.add_argument("--output", required=True, help="output file: .csv, .parquet or .jsonl")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.inference import predict_file

    counts = predict_file(args.model, args.input, args.output)
    print(f"{counts['rows_in']} rows in, {counts['rows_out']} rows out -> {args.output}")
    return 0
