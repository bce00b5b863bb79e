"""``hclr-ids export``: write a bundle as one ONNX graph."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model bundle to ONNX",
        description="Export preprocessing, feature selection, encoder and decision head as one ONNX graph with a "
                    "dynamic batch axis; classes, input features, task and model version go into its metadata.",
    )
    parser.add_argument("--model", required=True, help="model bundle directory")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (only onnx)")
    parser.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version, 17 or newer (default 17)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.bundle import load_bundle
    from hclr_ids.export import export_onnx

    path = export_onnx(load_bundle(args.model), args.out, opset=args.opset)
    print(f"exported {args.model} to {path}")
    return 0
