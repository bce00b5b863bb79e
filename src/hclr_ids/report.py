"""Write an evaluation's ``metrics.json``, ``report.md`` and plots."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hclr_ids.evaluation import (
    format_metrics_table,
    format_per_class_table,
    plot_confusion_matrix,
    plot_roc_curves,
    plot_training_curves,
)

logger = logging.getLogger(__name__)


def _slug(name: str) -> str:
    return "".join(c.lower() if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def write_evaluation(
    out_dir: Path,
    *,
    main_model: str,
    models: dict[str, dict[str, Any]],
    probabilities: dict[str, np.ndarray],
    y_true: np.ndarray,
    labels: list[str],
    context: dict[str, Any],
    history: dict[str, dict[str, list[float]]] | None = None,
    title: str = "HCLR-IDS evaluation",
) -> dict[str, Any]:
    """Write metrics.json, report.md and PNG plots for one evaluated split; return the metrics written.

    Args:
        main_model: the model whose metrics sit at the top level of metrics.json.
        models: model name -> metrics from :func:`hclr_ids.evaluation.compute_metrics`.
        probabilities: model name -> probabilities (n_samples, len(labels)) on the same rows.
        context: config, split, feature policy, row and duplicate counts and anything else to record.
    """
    from hclr_ids.pipeline import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = dict(models[main_model])
    metrics["model"] = main_model
    metrics["models"] = models
    metrics.update(context)
    write_json(out_dir / "metrics.json", metrics)

    plot_confusion_matrix(models[main_model], out_dir / "confusion_matrix.png",
                          f"{main_model}, row-normalised ({context.get('task', '')})")
    for name in models:
        if name != main_model:
            plot_confusion_matrix(models[name], out_dir / f"confusion_matrix_{_slug(name)}.png", name)
    plot_roc_curves({name: (y_true, proba) for name, proba in probabilities.items()}, labels,
                    out_dir / "roc_curves.png", f"ROC curves ({context.get('task', '')})")
    if history:
        plot_training_curves(history, out_dir / "training_curves.png")
    (out_dir / "report.md").write_text(render_report(metrics, title=title), encoding="utf-8")
    logger.info("wrote %s (macro-F1 %.4f, accuracy %.4f)", out_dir / "metrics.json",
                metrics["macro_f1"], metrics["accuracy"])
    return metrics


def render_report(metrics: dict[str, Any], *, title: str) -> str:
    """Render the Markdown report of one evaluation."""
    config = metrics.get("config", {})
    data_cfg = config.get("data", {})
    lines = [f"# {title}", ""]
    lines.append(f"- task: `{metrics.get('task', data_cfg.get('task'))}`, "
                 f"split: `{metrics.get('split', data_cfg.get('split'))}`, "
                 f"feature policy: `{metrics.get('feature_policy')}`")
    rows = metrics.get("rows")
    if rows:
        lines.append("- rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    dropped = metrics.get("train_rows_dropped_missing")
    if dropped is not None:
        lines.append(f"- training rows dropped for too many missing values: {dropped}")
    dup = metrics.get("duplicates")
    if dup:
        lines.append("- exact duplicate rows: " + _format_duplicates(dup))
    unseen = metrics.get("unseen_labels")
    if unseen:
        lines.append(f"- labels absent from training (recall 0, counted in macro averages): {', '.join(unseen)}")
    record = metrics.get("run", {})
    if record:
        lines.append(f"- hclr-ids {record.get('package_version')}, commit `{record.get('git_commit')}`, "
                     f"seed {record.get('seed')}, {record.get('machine')}")
    timing = metrics.get("timing_s")
    if timing:
        lines.append("- time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    lines += ["", "## Summary", "", format_metrics_table(metrics["models"]), ""]
    if len(metrics["models"]) > 1:
        lines += [
            "All models are scored on the same test rows. HCLR-IDS is the encoder with the configured decision "
            "head (for the hybrid: PPO over the embedding and the DQN's Q-values); the (softmax) and + DQN rows "
            "are its intermediate heads on the same frozen embedding. RandomForest and LightGBM are fitted on the "
            "same training rows with every feature of the policy after preprocessing (not only the selected "
            "ones). Nothing was chosen on the test rows: early stopping and the heads' temperatures use the "
            "validation part.", "",
        ]
    lines += [f"## Per class: {metrics['model']}", "", format_per_class_table(metrics), ""]
    selection = metrics.get("selection")
    if selection:
        lines += ["## Selected features", "", _format_selection(selection), ""]
    lines += ["## Plots", "", "![confusion matrix](confusion_matrix.png)", "", "![ROC curves](roc_curves.png)", ""]
    return "\n".join(lines)


def _format_duplicates(dup: dict[str, Any]) -> str:
    parts = []
    for key, value in dup.items():
        if isinstance(value, dict) and "duplicates" in value:
            parts.append(f"{key} {value['duplicates']:,} of {value['rows']:,}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key.replace('_', ' ')} {value:,}")
    return ", ".join(parts)


def _format_selection(selection: dict[str, Any]) -> str:
    method = selection.get("method", "?")
    names = list(selection.get("selected_names") or [])
    scores = selection.get("scores")
    if isinstance(scores, list):
        scores = dict(zip(selection.get("feature_names_in") or [], scores))
    scores = scores or {}
    params = selection.get("params") or {}
    settings = ", ".join(f"{k} {v}" for k, v in params.items())
    lines = [f"method `{method}` ({settings}), {len(names)} features kept", "",
             "| feature | MI with the label (nats) |", "|---|---:|"]
    for name in names:
        score = scores.get(name)
        lines.append(f"| {name} | {score:.4f} |" if isinstance(score, (int, float)) else f"| {name} | n/a |")
    return "\n".join(lines)
