"""Feature-selection experiment: the same model with every column, the MI filter and MIFS."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from hclr_ids.config import RunConfig
from hclr_ids.experiments.common import (
    ExperimentConfig,
    aggregate,
    describe_setup,
    evaluate,
    experiment_record,
    iterate_runs,
    log_to_mlflow,
    per_class_f1_table,
    summary_table,
    write_plots,
    write_results,
)

logger = logging.getLogger(__name__)


def selection_variants(config: RunConfig) -> dict[str, dict[str, Any]]:
    """Variant name -> selection overrides: no selection, the MI > threshold filter, and MIFS with k features."""
    s = config.selection
    return {
        "all columns": {"selection.method": "none"},
        f"MI > {s.mi_threshold:g} nats": {"selection.method": "mi"},
        f"MIFS k={s.mifs_k} (beta {s.mifs_beta:g})": {"selection.method": "mifs"},
    }


def run_feature_selection(config: RunConfig, experiment: ExperimentConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train ``config``'s model once per selection variant and seed; write results, feature lists and plots."""
    from hclr_ids import pipeline

    out = Path(out_dir)
    started = time.perf_counter()
    runs_by_seed: dict[tuple[int, Any], dict[str, Any]] = {}
    selected: dict[str, list[list[str]]] = {}
    seconds: dict[str, float] = {}
    roc_inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    first = None
    for name, overrides in selection_variants(config).items():
        for slot in iterate_runs(config, experiment, overrides):
            start = time.perf_counter()
            model = pipeline.fit_models(slot.config, slot.prepared)
            proba = pipeline.predict_proba_models(model, slot.prepared.X_test)[pipeline.HCLR_NAME]
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            key = (slot.seed, slot.fold)
            runs_by_seed.setdefault(key, {"seed": slot.seed, "fold": slot.fold, "models": {}})
            runs_by_seed[key]["models"][name] = evaluate(slot.prepared, proba)
            names = slot.prepared.info["selection"].get("selected_names") or []
            selected.setdefault(name, []).append(list(names))
            if first is None:
                first = slot
            if (slot.seed, slot.fold) == (first.seed, first.fold):
                labels = slot.prepared.eval_labels
                roc_inputs[name] = (slot.prepared.y_test, pipeline._pad_proba(np.asarray(proba, np.float64), len(labels)))
    assert first is not None
    runs = list(runs_by_seed.values())
    aggregated = aggregate(runs)
    results = {
        "experiment": "feature-selection",
        "model": config.rl.head,
        "record": experiment_record(config, experiment, first),
        "selected_features": selected,
        "variants": aggregated,
        "runs": runs,
        "seconds_total": time.perf_counter() - started,
        "seconds_per_variant": seconds,
    }
    write_results(out, results, render_feature_selection(config, experiment, first, aggregated, selected, seconds))
    if experiment.plots:
        write_plots(out, aggregated, roc_inputs, first.prepared.eval_labels, f"Feature selection, {config.data.task}")
    if experiment.mlflow_uri:
        log_to_mlflow(experiment.mlflow_uri, "hclr-ids-feature-selection", config, aggregated, out)
    return results


def render_feature_selection(config: RunConfig, experiment: ExperimentConfig, first: Any, aggregated: dict[str, Any],
                             selected: dict[str, list[list[str]]], seconds: dict[str, float]) -> str:
    extra = {name: {"features": str(len(selected[name][0])), "train s (total)": f"{seconds[name]:.1f}"}
             for name in aggregated}
    lines = [f"# Feature selection: {config.data.task}, head `{config.rl.head}`", "",
             *describe_setup(config, experiment, first, "one method per row"), "",
             "## Summary", "", summary_table(aggregated, extra), "",
             "## Per-class F1", "", per_class_f1_table(aggregated), "", "## Selected features", ""]
    for name, lists in selected.items():
        same = all(lst == lists[0] for lst in lists)
        note = "" if same else " (first seed; other seeds differ, see results.json)"
        lines.append(f"- {name}, {len(lists[0])} features{note}: " + ", ".join(f"`{f}`" for f in lists[0]))
    lines.append("")
    return "\n".join(lines)
