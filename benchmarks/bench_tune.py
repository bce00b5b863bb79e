"""Measure Ray Tune trial times on the real subset and estimate the full paper grid's run time on this machine.

Usage: python benchmarks/bench_tune.py --data ../shared/data/ciciomt2024 [--max-train-rows 4000 --epochs 3]

Runs two trials of each stage (the first two points of its grid) and multiplies the mean trial time by the
stage's grid size divided by the trials Ray runs at once (CPUs / CPUs per trial). The driver's own time
(loading, preparing, the head stages' one-off encoder, Ray start-up) is added once per stage. The result is an
estimate for the budgets given here, on the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time


def main() -> None:
    from hclr_ids.config import RunConfig, merge_overrides
    from hclr_ids.experiments.tune import STAGE_GRIDS, grid_size, run_tune
    from hclr_ids.pipeline import _cpu_count

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-train-rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--stages", nargs="+", default=list(STAGE_GRIDS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    config = merge_overrides(RunConfig(), {
        "data.path": args.data, "data.max_train_rows": args.max_train_rows, "encoder.max_epochs": args.epochs,
        "rl.dqn.total_steps": 60, "rl.ppo.total_iterations": 10, "threads": 1})
    concurrent = _cpu_count()
    total = 0.0
    print(f"| stage | trials measured | mean trial s | grid size | estimated grid s ({concurrent} concurrent) |")
    print("|---|---:|---:|---:|---:|")
    for stage in args.stages:
        full = STAGE_GRIDS[stage]
        first_two = {key: values[:1] for key, values in full.items()}
        first_key = next(iter(full))
        first_two[first_key] = full[first_key][:2]
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            summary = run_tune(config, out, stage=stage, grid=first_two)
            wall = time.perf_counter() - started
        seconds = [trial["seconds"] for trial in summary["trials"]]
        mean = sum(seconds) / len(seconds)
        estimate = mean * grid_size(full) / concurrent + max(0.0, wall - max(seconds))
        total += estimate
        print(f"| {stage} | {len(seconds)} | {mean:.1f} | {grid_size(full)} | {estimate:.0f} |")
    ray.shutdown()
    print(f"\nEstimated total for the stages {', '.join(args.stages)}: {total / 60:.1f} min "
          f"(max-train-rows {args.max_train_rows}, {args.epochs} epochs, DQN 60 steps, PPO 10 rollouts).")
    print(json.dumps({"estimated_total_s": total}))


if __name__ == "__main__":
    main()
