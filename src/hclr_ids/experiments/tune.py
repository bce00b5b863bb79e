"""Hyperparameter search with Ray Tune, chosen on validation macro-F1 only.

The driver loads and prepares the split once and hands the trials only the training and validation arrays
(through Ray's object store), so no trial can read the test part. Encoder stages (``cnn``, ``lstm``) train the
configured encoder per trial. Head stages (``dqn``, ``ppo``) train the encoder once in the driver and tune
the head on its frozen embeddings.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hclr_ids.config import RunConfig, merge_overrides

logger = logging.getLogger(__name__)

METRIC = "val_macro_f1_best"
"""Best validation macro-F1 a trial has reached so far; trials are ranked by it."""

STAGE_GRIDS: dict[str, dict[str, list[Any]]] = {
    "cnn": {"encoder.learning_rate": [1e-3, 1e-4], "encoder.conv_filters": [32, 64, 128],
            "encoder.kernel_size": [3, 5], "encoder.dropout": [0.2, 0.3]},
    "lstm": {"encoder.learning_rate": [1e-3, 1e-4], "encoder.lstm_units": [64, 128, 256],
             "encoder.dropout": [0.2, 0.3]},
    "dqn": {"rl.dqn.learning_rate": [1e-3, 1e-4], "rl.dqn.gamma": [0.99, 0.95],
            "rl.dqn.epsilon_decay": [0.995, 0.999]},
    "ppo": {"rl.ppo.learning_rate": [3e-4, 1e-4], "rl.ppo.clip_coef": [0.1, 0.2], "rl.ppo.update_epochs": [3, 5]},
}
"""The HCLR-IDS grid per stage (Shaikh et al., Front. Med. 12:1524286, 2025), as dotted RunConfig keys and values."""

STAGE_HEADS = {"dqn": "dqn", "ppo": "ppo"}


def grid_size(grid: dict[str, list[Any]]) -> int:
    return int(np.prod([len(v) for v in grid.values()]))


def load_grid_file(path: str | Path) -> dict[str, list[Any]]:
    """Read a JSON object of dotted RunConfig keys to lists of values, checking every key against RunConfig."""
    with open(path, encoding="utf-8") as handle:
        grid = json.load(handle)
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"{path}: expected a non-empty JSON object of setting -> list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: {key!r} must map to a non-empty list of values, got {values!r}")
        merge_overrides(RunConfig(), {key: values[0]})  # raises on an unknown key
    return grid


def _encoder_trial(params: dict[str, Any], *, base: dict[str, Any], X_train: np.ndarray, y_train: np.ndarray,
                   X_val: np.ndarray, y_val: np.ndarray, n_classes: int) -> None:
    import torch
    from ray import tune

    from hclr_ids import training

    torch.set_num_threads(1)
    config = merge_overrides(RunConfig.from_dict(base), params)
    best = [-1.0]

    def report(epoch: int, metrics: dict[str, float]) -> None:
        best[0] = max(best[0], metrics["val/macro_f1"])
        tune.report({"epoch": epoch, "val_macro_f1": metrics["val/macro_f1"], METRIC: best[0],
                     "val_loss": metrics["val/loss"]})

    training.train_encoder(X_train, y_train, X_val, y_val, n_classes, config.encoder, seed=config.seed,
                           progress=report)


def _head_trial(params: dict[str, Any], *, base: dict[str, Any], train_states: np.ndarray, y_train: np.ndarray,
                val_states: np.ndarray, y_val: np.ndarray, n_classes: int) -> None:
    import torch
    from ray import tune
    from sklearn.metrics import f1_score

    from hclr_ids.rl import hybrid

    torch.set_num_threads(1)
    config = merge_overrides(RunConfig.from_dict(base), params)
    head, _ = hybrid.train_head(train_states, y_train, n_classes, config.rl, seed=config.seed)
    f1 = float(f1_score(y_val, head.predict(val_states), average="macro", zero_division=0))
    tune.report({"epoch": 1, "val_macro_f1": f1, METRIC: f1})


def _search_space(grid: dict[str, list[Any]], search: str) -> dict[str, Any]:
    from ray import tune

    if search == "grid":
        return {key: tune.grid_search(values) for key, values in grid.items()}
    if search == "random":
        return {key: tune.choice(values) for key, values in grid.items()}
    raise ValueError(f"unknown search {search!r}; expected 'grid' or 'random'")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster at ``address``, or start a local one bound to loopback without a dashboard."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    from hclr_ids.pipeline import _cpu_count

    ray.init(num_cpus=num_cpus or _cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING, log_to_driver=False)


def run_tune(config: RunConfig, out_dir: str | Path, *, stage: str, grid: dict[str, list[Any]] | None = None,
             search: str = "grid", num_samples: int = 1, scheduler: str = "fifo", address: str | None = None,
             cpus_per_trial: float = 1.0) -> dict[str, Any]:
    """Search ``grid`` (the stage's paper grid by default) and save the best trial as a full RunConfig.

    Writes ``best_config.json`` (loadable by ``hclr-ids train --config``), ``trials.json`` and ``results.md``
    to ``out_dir``. Returns ``{"best": {...}, "trials": [...], ...}``, where every trial entry contains its parameters,
    validation metrics and seconds. Trials never receive test rows.
    """
    from ray import tune

    from hclr_ids import pipeline, training

    if stage not in STAGE_GRIDS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_GRIDS)}")
    if scheduler not in ("fifo", "asha"):
        raise ValueError(f"unknown scheduler {scheduler!r}; expected 'fifo' or 'asha'")
    grid = grid or STAGE_GRIDS[stage]
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if stage in STAGE_HEADS:
        config = merge_overrides(config, {"rl.head": STAGE_HEADS[stage]})

    dataset, folds, info = pipeline.load_and_split(config)
    training.set_seed(config.seed)
    prepared = pipeline.prepare(config, dataset, folds[0])
    known = prepared.y_val < len(prepared.classes)
    X_val, y_val = prepared.X_val[known], prepared.y_val[known]
    n_classes = len(prepared.classes)
    base = config.to_dict()
    if stage in STAGE_HEADS:
        encoder, _ = training.train_encoder(prepared.X_train, prepared.y_train, X_val, y_val, n_classes,
                                            config.encoder, seed=config.seed)
        trainable = tune.with_parameters(
            _head_trial, base=base, train_states=training.embed(encoder, prepared.X_train), y_train=prepared.y_train,
            val_states=training.embed(encoder, X_val), y_val=y_val, n_classes=n_classes)
    else:
        trainable = tune.with_parameters(_encoder_trial, base=base, X_train=prepared.X_train,
                                         y_train=prepared.y_train, X_val=X_val, y_val=y_val, n_classes=n_classes)
    del prepared  # the test part stays in the driver and is never read here

    init_ray(address)
    tune_scheduler = None
    if scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        tune_scheduler = ASHAScheduler(time_attr="epoch", max_t=max(1, config.encoder.max_epochs), grace_period=1)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial}),
        param_space=_search_space(grid, search),
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=num_samples if search == "random" else 1,
                                    scheduler=tune_scheduler),
        run_config=tune.RunConfig(name=f"tune-{stage}", storage_path=str(out / "ray_results"), verbose=0),
    )
    result_grid = tuner.fit()
    trials = []
    for result in result_grid:
        if result.error is not None:
            logger.error("trial %s failed: %s", result.path, result.error)
            continue
        trials.append({
            "params": {key: result.config[key] for key in grid},
            METRIC: float(result.metrics[METRIC]),
            "val_macro_f1_last": float(result.metrics["val_macro_f1"]),
            "epochs": int(result.metrics.get("epoch", 1)),
            "seconds": float(result.metrics.get("time_total_s", float("nan"))),
        })
    if not trials:
        raise RuntimeError(f"every trial failed; see the Ray logs under {out / 'ray_results'}")
    best_result = result_grid.get_best_result(metric=METRIC, mode="max", scope="last")
    best_params = {key: best_result.config[key] for key in grid}
    best_config = merge_overrides(config, best_params)
    (out / "best_config.json").write_text(best_config.to_json() + "\n", encoding="utf-8")
    summary = {
        "stage": stage, "search": search, "scheduler": scheduler, "grid": grid, "metric": METRIC,
        "best": {"params": best_params, METRIC: float(best_result.metrics[METRIC])},
        "trials": trials, "seconds_total": time.perf_counter() - started,
        "record": pipeline.run_record(config) | {"data_files": info["files"]},
    }
    pipeline.write_json(out / "trials.json", summary)
    (out / "results.md").write_text(render_tune(summary), encoding="utf-8")
    logger.info("best %s trial: %s (%s %.4f)", stage, best_params, METRIC, summary["best"][METRIC])
    return summary


def render_tune(summary: dict[str, Any]) -> str:
    keys = list(summary["grid"])
    lines = [f"# Tuning stage `{summary['stage']}` ({summary['search']} search, {summary['scheduler']} scheduler)",
             "", "Trials ranked by best validation macro-F1; best config in `best_config.json`.", "",
             "| " + " | ".join(keys) + " | val macro-F1 | epochs | seconds |",
             "|" + "---|" * len(keys) + "---:|---:|---:|"]
    for trial in sorted(summary["trials"], key=lambda t: -t[METRIC]):
        cells = [str(trial["params"][k]) for k in keys]
        lines.append("| " + " | ".join(cells) + f" | {trial[METRIC]:.4f} | {trial['epochs']} | {trial['seconds']:.1f} |")
    return "\n".join(lines) + "\n"
