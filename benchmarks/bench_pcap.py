"""Frames per second of the pcap feature extractor beside plain dpkt loops over the same capture.

Run: .venv/bin/python benchmarks/bench_pcap.py [CAPTURE ...] (default: the reference DoS-SYN and
MQTT publish-flood captures under $HCLR_IDS_SHARED or ../shared). Each figure is the best of
``--repeat`` runs on one core.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import dpkt

from hclr_ids.pcap import extract_features
from hclr_ids.pcap.extractor import _decode_cic, _decode_with_dpkt
from hclr_ids.pcap.reader import iter_packets


def _default_captures() -> list[Path]:
    shared = Path(os.environ.get("HCLR_IDS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    folder = shared / "data" / "pcap-reference"
    return [folder / "tcpip_dos_syn.pcap", folder / "mqtt_dos_publish_flood.pcap"]


def _dpkt_read(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in dpkt.pcap.Reader(handle))


def _dpkt_parse(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        for _, buf in dpkt.pcap.Reader(handle):
            dpkt.ethernet.Ethernet(buf)
            count += 1
    return count


def _best(function: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("captures", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, dpkt {dpkt.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    for path in args.captures or _default_captures():
        frames = _dpkt_read(path)
        data = [record.data for record in iter_packets(path)]
        rows = {
            "dpkt read loop (floor)": _best(lambda: _dpkt_read(path), args.repeat),
            "dpkt read + Ethernet objects": _best(lambda: _dpkt_parse(path), args.repeat),
            "decode only, hand parser": _best(lambda: [_decode_cic(b) for b in data], args.repeat),
            "decode only, dpkt objects": _best(lambda: [_decode_with_dpkt(b) for b in data], args.repeat),
            "extract_features cic, window 100": _best(lambda: extract_features(path, window=100), args.repeat),
            "extract_features corrected, window 100":
                _best(lambda: extract_features(path, window=100, mode="corrected"), args.repeat),
        }
        print(f"\n{path.name}: {frames} frames")
        for name, seconds in rows.items():
            print(f"  {name:40s} {seconds:8.3f} s  {frames / seconds:12,.0f} frames/s")


if __name__ == "__main__":
    main()
