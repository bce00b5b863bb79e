"""HTTP service and detector under load on loopback: flows/s, latency, errors and resident memory.

Usage: python benchmarks/bench_service.py --model RUN_DIR [--runtime onnx] [--seconds 20] [--clients 4]

Starts ``hclr-ids serve`` on a free 127.0.0.1 port, then a load generator in a separate process: ``--clients``
threads, each posting batches of ``--batch`` real flows in a loop until ``--seconds`` pass or ``--max-requests``
are sent. Resident memory (VmRSS) of the service is read at rest and sampled under load. Then
``hclr-ids detect`` reads real rows on stdin, with its memory sampled the same way. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ciciomt2024"
SAMPLE_FILE = Path("WiFI_and_MQTT/attacks/csv/test/MQTT-DDoS-Connect_Flood_test.pcap.csv")


def rss_mib(pid: int) -> float:
    """Return the resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakSampler:
    """Sample a process's resident memory every 50 ms in a thread and keep the maximum."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def load_generator(url: str, bodies: list[bytes], clients: int, seconds: float, max_requests: int, out) -> None:
    """Post ``bodies`` round-robin from ``clients`` threads; put (latencies, statuses) on ``out``."""
    import httpx

    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as session:
            i = k
            while time.monotonic() < deadline:
                with lock:
                    if len(statuses) >= max_requests:
                        return
                start = time.perf_counter()
                try:
                    status = session.post(url, content=bodies[i % len(bodies)],
                                          headers={"content-type": "application/json"}).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses.append(status)
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((latencies, statuses, time.perf_counter() - started))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hclr-ids serve exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not respond within {timeout} s")


def bench_service(args, rows: list[dict]) -> None:
    bodies = [json.dumps(rows[i:i + args.batch]).encode() for i in range(0, len(rows) - args.batch, args.batch)]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hclr_ids", "-q", "serve", "--model", args.model, "--runtime", args.runtime,
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
        at_rest = rss_mib(process.pid)
        sampler = PeakSampler(process.pid)
        results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
        generator = multiprocessing.get_context("spawn").Process(
            target=load_generator,
            args=(f"http://127.0.0.1:{port}/v1/predict", bodies, args.clients, args.seconds, args.max_requests, results),
        )
        generator.start()
        latencies, statuses, elapsed = results.get(timeout=args.seconds + 120)
        generator.join()
        peak = sampler.stop()
    finally:
        process.terminate()
        process.wait(timeout=60)
    latencies_ms = np.asarray(latencies) * 1e3
    ok = sum(1 for s in statuses if s == 200)
    print(f"| service ({args.runtime}), {args.clients} clients, {args.batch} flows/request | {len(statuses)} | "
          f"{ok * args.batch / elapsed:,.0f} | {np.percentile(latencies_ms, 50):.1f} | "
          f"{np.percentile(latencies_ms, 99):.1f} | {len(statuses) - ok} | {at_rest:.0f} | {peak:.0f} |", flush=True)


def bench_detect(args, csv_lines: list[str]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "hclr_ids", "-q", "detect", "--model", args.model, "--runtime", args.runtime,
         "--input", "-", "--output", "/dev/null"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    process.stdin.write(csv_lines[0] + "\n")
    process.stdin.flush()
    time.sleep(args.settle)
    at_rest = rss_mib(process.pid)
    sampler = PeakSampler(process.pid)
    body = "\n".join(csv_lines[1:]) + "\n"
    started = time.perf_counter()
    for _ in range(args.detect_passes):
        process.stdin.write(body)
    process.stdin.close()
    err = process.stderr.read()
    process.wait(timeout=600)
    elapsed = time.perf_counter() - started
    peak = sampler.stop()
    n = (len(csv_lines) - 1) * args.detect_passes
    errors = re.search(r"(\d+) errors", err)
    print(f"| detect ({args.runtime}), stdin | {n} rows | {n / elapsed:,.0f} | – | – | "
          f"{errors.group(1) if errors else 'unknown'} | {at_rest:.0f} | {peak:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="bundle directory (or a folder or file with model.onnx for onnx)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="onnx")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CICIoMT2024 release root")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration (default 20)")
    parser.add_argument("--max-requests", type=int, default=20_000, help="requests at most (default 20000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    parser.add_argument("--batch", type=int, default=100, help="flows per request (default 100)")
    parser.add_argument("--detect-passes", type=int, default=4, help="times the sample file is streamed to detect")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to let detect load its model")
    args = parser.parse_args()

    from hclr_ids.data import read_features

    path = Path(args.data) / SAMPLE_FILE
    X, names, _ = read_features(path)
    rows = [dict(zip(names, map(float, row))) for row in X[:20_000]]
    csv_lines = path.read_text(encoding="utf-8").splitlines()

    print("| run | requests or rows | flows/s | p50 (ms) | p99 (ms) | errors | RSS at rest (MiB) | RSS peak (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    bench_service(args, rows)
    bench_detect(args, csv_lines)


if __name__ == "__main__":
    main()
