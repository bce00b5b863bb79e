"""``hclr-ids detect``: score files, captures, a live interface or a CSV stream as JSON Lines alerts."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect", help="score flows in micro-batches and write EVE-style JSON Lines",
        description="Score CSV/Parquet files, pcap/pcapng captures (recognised by their magic bytes), a folder of "
                    "them, an unbounded CSV stream on stdin (header first), or live traffic on a network "
                    "interface. Captures are cut into windows of --window frames whose 45 features are scored "
                    "as each window completes. Writes one JSON record per input row or window, in order: "
                    "event_type alert, flow or error, then a stats record. Exits with status 1 if any row could "
                    "not be scored.",
    )
    parser.add_argument("--model", required=True, help="model bundle directory (or, with --runtime onnx, an .onnx file)")

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="CSV, Parquet, pcap or pcapng file, a folder of them, or - for CSV on stdin")
    source.add_argument("--interface", metavar="IFACE",
                        help="capture live on this network interface until SIGINT or SIGTERM (needs root or "
                             "CAP_NET_RAW)")
    parser.add_argument("--window", type=int, default=10,
                        help="frames per window of capture features; CICIoMT2024 used 10, and 100 for DoS/DDoS "
                             "captures (default 10)")
    parser.add_argument("--mode", choices=("cic", "corrected"), default="cic",
                        help="capture features as the original CIC extractor computes them, or corrected "
                             "(default cic)")

    parser.add_argument("--output", default="-", help="JSON Lines output file (default - for stdout)")
    parser.add_argument("--alerts-only", action="store_true", help="write no flow records for benign rows")
    parser.add_argument("--max-latency-ms", type=float, default=50.0,
                        help="score a partial batch once its oldest row has waited this many milliseconds (default 50)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows scored together at most (default 4096)")
    parser.add_argument("--max-missing-fraction", type=float, default=0.2,
                        help="rows with a larger fraction of missing or non-finite cells get an error record (default 0.2)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="torch: the bundle; onnx: onnxruntime on model.onnx, exported on first use (default torch)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import signal
    import sys

    from hclr_ids.detect import DetectConfig, Detector, open_interface, run_detection
    from hclr_ids.export import load_scorer
    from hclr_ids.pcap import ExtractorConfig

    config = DetectConfig(batch_size=args.batch_size, max_latency_ms=args.max_latency_ms,
                          alerts_only=args.alerts_only, max_missing_fraction=args.max_missing_fraction,
                          extractor=ExtractorConfig(window=args.window, mode=args.mode))
    # The interface opens before the model loads, so missing capture rights are reported at once.
    capture = open_interface(args.interface) if args.interface is not None else None
    scorer = load_scorer(args.model, args.runtime)
    received: list[int] = []

    def install_handlers(detector: Detector) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            received.append(signum)
            detector.stop(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    output = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        stats = run_detection(scorer, args.input, output, config, stdin=sys.stdin.buffer, on_start=install_handlers,
                              interface=capture)
    finally:
        if output is not sys.stdout:
            output.close()
    print(f"hclr-ids detect: {stats.summary()}", file=sys.stderr)
    if received:
        return 128 + received[0]
    return 1 if stats.errors else 0
