"""``hclr-ids features``: compute the 45 CICIoMT2024 window features from a packet capture."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features", help="compute the 45 window features from a pcap or pcapng file",
        description="Read a pcap or pcapng capture (format chosen from its magic bytes) and write one row "
                    "per window of frames with the 45 CICIoMT2024 columns, in release order. Mode 'cic' "
                    "reproduces the original CIC extractor exactly, quirks included; mode 'corrected' also "
                    "decodes Linux cooked, raw IP, VLAN and IPv6 frames and fixes its quirks.",
    )
    parser.add_argument("--pcap", required=True, help="capture file (pcap or pcapng, any name)")
    parser.add_argument("--out", required=True, help="output file: .csv or .parquet")
    parser.add_argument("--window", type=int, default=10,
                        help="frames per output row (CICIoMT2024: 10, and 100 for DoS/DDoS captures; default 10)")
    parser.add_argument("--mode", choices=("cic", "corrected"), default="cic",
                        help="cic: exact original values (default); corrected: more link layers, quirks fixed")
    parser.add_argument("--max-flows", type=int, default=500_000,
                        help="flow-table size; the least recently seen flow is evicted beyond it (default 500000)")
    parser.add_argument("--idle-timeout", type=float, default=3600.0,
                        help="seconds without a frame after which a flow is forgotten (default 3600)")
    parser.add_argument("--metadata", action="store_true",
                        help="also write each window's first/last frame time, frame count, piece and dominant "
                             "5-tuple after the 45 feature columns")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.pcap import extract_features

    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out {out}: unsupported extension {suffix!r}; use .csv or .parquet")
    frame = extract_features(
        args.pcap, window=args.window, mode=args.mode, idle_timeout=args.idle_timeout,
        max_flows=args.max_flows, metadata=args.metadata,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.write_csv(out)
    else:
        frame.write_parquet(out)
    print(f"{frame.height} windows of {args.window} frames ({args.mode} mode) -> {out}")
    return 0
