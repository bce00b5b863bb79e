"""Time and peak memory of loading a release-sized copy of the CICIoMT2024 subset.

The real files are repeated in a temporary release layout until it contains ``--rows`` rows (the full
release has about 8.8 million). The rows are copies, so the result measures time and memory only.
Each phase runs in its own process so that its peak resident memory (``ru_maxrss``) is its own:

1. first load: parse every CSV and write the Parquet cache;
2. cached load: read the Parquet cache;
3. duplicate check: ``dedup_indices`` on the cached load.

Usage: ``python benchmarks/bench_load.py --data ../shared/data/ciciomt2024 [--rows 8800000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def build_release(source_root: Path, target: Path, rows: int) -> int:
    """Write a release layout under ``target`` whose files repeat the real ones; return its row count."""
    from hclr_ids.data import find_release_files

    sources = find_release_files(source_root)
    bodies = []
    for path in sources:
        header, _, body = path.read_bytes().partition(b"\n")
        bodies.append((path, header, body if body.endswith(b"\n") else body + b"\n"))
    real_rows = sum(body.count(b"\n") for _, _, body in bodies)
    repeats = max(1, math.ceil(rows / real_rows))
    for path, header, body in bodies:
        side_dir = target / "WiFI_and_MQTT" / "attacks" / "csv" / path.parent.name
        side_dir.mkdir(parents=True, exist_ok=True)
        with open(side_dir / path.name, "wb") as handle:
            handle.write(header + b"\n")
            for _ in range(repeats):
                handle.write(body)
    return real_rows * repeats


def run_phase(phase: str, root: Path, cache: Path) -> dict[str, float]:
    """Run one phase in this process; return wall times (s), process CPU time (s) and peak RSS (MiB).

    CPU time includes the imports; wall time does not, and grows when other processes share the cores.
    """
    from hclr_ids.data import load_release
    from hclr_ids.splits import dedup_indices

    started = time.perf_counter()
    dataset = load_release(root, cache_dir=cache)
    result: dict[str, float] = {"rows": len(dataset), "load_s": time.perf_counter() - started}
    if phase == "dedup":
        started = time.perf_counter()
        result["distinct_rows"] = len(dedup_indices(dataset))
        result["dedup_s"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="root of the real release subset")
    parser.add_argument("--rows", type=int, default=8_800_000, help="rows to build (default: 8.8 million)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the built files (default: a temp dir)")
    parser.add_argument("--phase", choices=("first", "cached", "dedup"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        print(json.dumps(run_phase(args.phase, args.root, args.cache)))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="hclr-bench-", dir=args.workdir))
    try:
        root, cache = workdir / "release", workdir / "cache"
        started = time.perf_counter()
        built = build_release(args.data, root, args.rows)
        csv_bytes = sum(p.stat().st_size for p in root.rglob("*.csv"))
        report: dict[str, object] = {
            "date": date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, {_cpu_count()} CPUs",
            "python": platform.python_version(),
            "rows": built,
            "csv_gib": round(csv_bytes / 2**30, 2),
            "build_s": round(time.perf_counter() - started, 1),
        }
        for phase in ("first", "cached", "dedup"):
            command = [sys.executable, __file__, "--data", str(args.data), "--phase", phase,
                       "--root", str(root), "--cache", str(cache)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            report[phase] = {key: round(value, 2) for key, value in json.loads(output).items()}
        report["cache_gib"] = round(sum(p.stat().st_size for p in cache.glob("*.parquet")) / 2**30, 2)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    raise SystemExit(main())
