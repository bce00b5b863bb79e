"""Batch throughput and single-flow latency of the model next to RandomForest and LightGBM.

Usage: python benchmarks/bench_scoring.py --model RUN_DIR [--data DIR] [--seconds S] [--profile-onnx]
                                         [--onnx-threads N] [--onnx-batch N]

RUN_DIR is a bundle directory (torch and onnxruntime are measured; model.onnx is exported next to it if
missing) or an .onnx file (onnxruntime only). The baselines use scikit-learn's and LightGBM's default
settings and are trained here on a stratified sample (``--train-rows``) of 80% of the 10-class CICIoMT2024
subset without IAT, which keeps the script near 2 minutes on 2 cores. Every model scores the same real rows;
RandomForest predicts batches with all cores (``n_jobs=-1``) and single flows with one, where joblib's
start-up would otherwise dominate. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ciciomt2024"


def throughput(predict, X: np.ndarray, seconds: float) -> float:
    """Return flows/s of ``predict`` on ``X``: the best of repeated full passes within about ``seconds``."""
    predict(X[:1000])
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        predict(X)
        best = max(best, len(X) / (time.perf_counter() - start))
        if time.perf_counter() > deadline:
            return best


def single_flow_latency(predict, X: np.ndarray, n_calls: int) -> tuple[float, float]:
    """Return p50 and p99 in milliseconds of one-row calls on the first ``n_calls`` rows."""
    predict(X[:1])
    times = np.empty(n_calls)
    for i in range(n_calls):
        row = X[i:i + 1]
        start = time.perf_counter()
        predict(row)
        times[i] = time.perf_counter() - start
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def profile_onnx(path: Path, X: np.ndarray) -> list[tuple[str, float]]:
    """Run the graph with onnxruntime's profiler and return the share of node time per operator type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = "/tmp/hclr-ids-onnx-profile"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for start in range(0, len(X), 4096):
        session.run(None, {name: X[start:start + 4096]})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + event["dur"]
    total = sum(per_op.values()) or 1.0
    return sorted(((op, t / total) for op, t in per_op.items()), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="bundle directory or .onnx file")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CICIoMT2024 release root")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per throughput measurement (default 5)")
    parser.add_argument("--latency-calls", type=int, default=2000, help="one-row calls per latency measurement")
    parser.add_argument("--score-rows", type=int, default=100_000, help="rows per throughput pass (default 100000)")
    parser.add_argument("--train-rows", type=int, default=30_000, help="baseline training rows (default 30000)")
    parser.add_argument("--profile-onnx", action="store_true", help="print the onnxruntime time share per operator")
    parser.add_argument("--onnx-threads", type=int, default=0,
                        help="onnxruntime threads of one scoring call; 0 (default) for every CPU available")
    parser.add_argument("--onnx-batch", type=int, default=2048, help="rows per onnxruntime run (default 2048)")
    args = parser.parse_args()

    import lightgbm
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    from hclr_ids import data
    from hclr_ids.export import OnnxScorer, ensure_onnx
    from hclr_ids.schema import LEAK_COLUMNS

    dataset = data.load_release(args.data)
    names, codes = dataset.encode_labels()
    train, test = train_test_split(np.arange(len(dataset)), test_size=0.2, stratify=codes, random_state=0)
    if args.train_rows < len(train):
        train, _ = train_test_split(train, train_size=args.train_rows, stratify=codes[train], random_state=0)
    keep = [j for j, name in enumerate(dataset.feature_names) if name not in LEAK_COLUMNS]
    X_test_raw = dataset.X[test]
    reps = int(np.ceil(args.score_rows / len(test)))
    X_score = np.ascontiguousarray(np.tile(X_test_raw, (reps, 1))[: args.score_rows], dtype=np.float32)

    models: dict[str, object] = {}
    model_path = Path(args.model)
    if model_path.is_dir():
        from hclr_ids.bundle import load_bundle

        bundle = load_bundle(model_path)
        models["HCLR-IDS (torch)"] = bundle.predict_proba
        onnx_path = ensure_onnx(model_path)
    else:
        onnx_path = model_path
    onnx_scorer = OnnxScorer(onnx_path, threads=args.onnx_threads)
    models["HCLR-IDS (onnxruntime)"] = lambda X: onnx_scorer.predict_proba(X, batch_size=args.onnx_batch)

    started = time.perf_counter()
    forest = RandomForestClassifier(n_jobs=-1, random_state=0).fit(dataset.X[train][:, keep], codes[train])
    forest_fit_s = time.perf_counter() - started
    started = time.perf_counter()
    booster = lightgbm.LGBMClassifier(verbose=-1, random_state=0).fit(dataset.X[train][:, keep], codes[train])
    lightgbm_fit_s = time.perf_counter() - started
    models["RandomForest (sklearn)"] = lambda X: forest.predict_proba(X[:, keep])
    models["LightGBM"] = lambda X: booster.predict_proba(X[:, keep])
    single = dict(models)
    forest_single = RandomForestClassifier(n_jobs=1, random_state=0)
    forest_single.__dict__.update({k: v for k, v in forest.__dict__.items() if k != "n_jobs"})
    single["RandomForest (sklearn)"] = lambda X: forest_single.predict_proba(X[:, keep])

    print(f"{len(train)} training rows, {len(X_score)} scored rows, {os.cpu_count()} CPUs; "
          f"RandomForest fit {forest_fit_s:.1f} s, LightGBM fit {lightgbm_fit_s:.1f} s\n")
    print("| model | batch throughput (flows/s) | single-flow p50 (ms) | single-flow p99 (ms) |")
    print("|---|---:|---:|---:|")
    for name, predict in models.items():
        flows_per_s = throughput(predict, X_score, args.seconds)
        p50, p99 = single_flow_latency(single[name], X_score, args.latency_calls)
        print(f"| {name} | {flows_per_s:,.0f} | {p50:.3f} | {p99:.3f} |", flush=True)

    if args.profile_onnx:
        print("\n| ONNX operator | share of node time |\n|---|---:|")
        for op, share in profile_onnx(onnx_path, X_score[:50_000])[:10]:
            print(f"| {op} | {share:.1%} |")


if __name__ == "__main__":
    main()
