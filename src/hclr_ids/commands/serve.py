"""``hclr-ids serve``: the HTTP scoring service."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve verdicts over HTTP (POST /v1/predict, GET /healthz, GET /metrics)",
        description="Serve a model bundle with FastAPI and uvicorn. POST /v1/predict takes a JSON array of flow "
                    "records or CSV text and returns one verdict per record; invalid records get a 422 naming "
                    "the record and field. Stops on SIGINT or SIGTERM after finishing requests in flight.",
    )
    parser.add_argument("--model", required=True, help="model bundle directory (or, with --runtime onnx, an .onnx file)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="torch: the bundle; onnx: onnxruntime on model.onnx, exported on first use (default torch)")
    parser.add_argument("--max-records", type=int, default=10_000, help="records per request at most (default 10000)")
    parser.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024,
                        help="request body size at most, in bytes (default 16 MiB)")
    parser.add_argument("--max-concurrency", type=int, default=16,
                        help="connections served at once; more get 503 (default 16)")
    parser.add_argument("--adaptive", action="store_true",
                        help="learn from analyst feedback: adds POST /v1/feedback; the RL head updates online "
                             "with rollback (torch runtime only)")
    parser.add_argument("--snapshot-dir", help="with --adaptive: write every accepted update as a bundle here")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.export import load_scorer
    from hclr_ids.service import ServiceConfig, serve

    config = ServiceConfig(host=args.host, port=args.port, max_records=args.max_records,
                           max_body_bytes=args.max_body_bytes, max_concurrency=args.max_concurrency,
                           runtime=args.runtime)
    if args.adaptive:
        from pathlib import Path

        from hclr_ids.adaptation import OnlineLearner

        if args.runtime != "torch":
            raise ValueError("--adaptive updates the torch model; use --runtime torch")
        snapshot_dir = Path(args.snapshot_dir) if args.snapshot_dir else None
        learner = OnlineLearner.from_bundle(args.model, snapshot_dir=snapshot_dir)
        serve(learner, config, learner=learner)
        return 0
    serve(load_scorer(args.model, args.runtime), config)
    return 0
