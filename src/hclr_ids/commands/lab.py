"""``hclr-ids lab``: capture attack and benign traffic in network namespaces and write a dataset."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lab", help="capture traffic in a namespace lab and write a dataset (root)",
        description="Build a bridged network of a broker, IoMT devices and attackers inside private network "
                    "namespaces, capture benign traffic and attack scenarios with tcpdump, and write their "
                    "45 CICIoMT2024 window features to OUT/WiFI_and_MQTT/attacks/csv/{train,test}/. "
                    "Needs root and the tools installed by scripts/install-lab-deps.sh. Nothing is routed "
                    "outside the namespaces, and they are deleted at the end, also on failure or Ctrl-C.",
    )
    parser.add_argument("--out", help="output folder (release layout, lab-manifest.json, pcaps/)")
    parser.add_argument("--scenarios", nargs="+", metavar="NAME",
                        help="scenario names or class names to capture (default: every scenario); "
                             "--list-scenarios prints them")
    parser.add_argument("--scale", choices=("small", "full"), default="small",
                        help="small: a few thousand packets per flood, scans of 20-30 s (default); "
                             "full: floods of 15000 packets, 60 s of benign traffic, a 90 s vulnerability scan")
    parser.add_argument("--keep-pcaps", action="store_true", help="keep the captures in OUT/pcaps")
    parser.add_argument("--train-fraction", type=float, default=0.8,
                        help="leading fraction of each capture's rows written to train/ (default 0.8)")
    parser.add_argument("--list-scenarios", action="store_true", help="print the scenarios and exit")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import sys

    from hclr_ids.lab import SCENARIOS, LabError, run_lab

    if args.list_scenarios:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:26} {scenario.class_name:24} window {scenario.window:3}  {scenario.description}")
        return 0
    if not args.out:
        raise ValueError("hclr-ids lab: --out is required (the folder to write the dataset to)")
    try:
        result = run_lab(args.out, scenarios=args.scenarios, scale=args.scale, keep_pcaps=args.keep_pcaps,
                         train_fraction=args.train_fraction)
    except LabError as error:
        print(f"hclr-ids lab: error: {error}", file=sys.stderr)
        return 1
    for capture in result.captures:
        print(f"{capture.class_name:24} {capture.packets:7d} packets  {capture.train_rows:5d} train rows  "
              f"{capture.test_rows:5d} test rows")
    print(f"{len(result.captures)} captures in {result.total_seconds:.0f} s; rows under {args.out}")
    return 0
