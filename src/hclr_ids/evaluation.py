"""Classification metrics, the Markdown report and the plots of an evaluation."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def compute_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    labels: Sequence[str],
) -> dict[str, Any]:
    """Compute accuracy, per-class and averaged precision/recall/F1, ROC AUC and the confusion matrix.

    Args:
        y_true: true class indices into ``labels``, shape (n_samples,).
        y_pred: predicted class indices, shape (n_samples,).
        proba: class probabilities, shape (n_samples, len(labels)), or None to skip ROC AUC.
        labels: every class the model predicts, then any class that occurs only in ``y_true``.

    Macro averages run over every label that occurs in ``y_true`` or ``y_pred``, so a test class
    the model never predicts counts with recall 0. ROC AUC is one-vs-rest, macro-averaged over the
    classes that occur in ``y_true`` with both positives and negatives (the positive class
    ``Attack`` alone for a two-class task).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate an empty set of rows")
    n_labels = len(labels)
    present = np.union1d(np.unique(y_true), np.unique(y_pred))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(n_labels), zero_division=0
    )
    weights = support / support.sum()
    per_class = {
        labels[i]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(n_labels)
    }
    metrics: dict[str, Any] = {
        "n_samples": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_precision": float(np.mean(precision[present])),
        "macro_recall": float(np.mean(recall[present])),
        "macro_f1": float(np.mean(f1[present])),
        "weighted_precision": float(np.sum(precision * weights)),
        "weighted_recall": float(np.sum(recall * weights)),
        "weighted_f1": float(np.sum(f1 * weights)),
        "roc_auc_macro": roc_auc_macro(y_true, proba, labels) if proba is not None else None,
        "labels": list(labels),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=np.arange(n_labels)).tolist(),
    }
    return metrics


def roc_auc_macro(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> float | None:
    """Return one-vs-rest ROC AUC averaged over classes with positives and negatives, or None."""
    from sklearn.metrics import roc_auc_score

    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(y_true), len(labels)):
        raise ValueError(f"proba has shape {proba.shape}, expected ({len(y_true)}, {len(labels)})")
    if len(labels) == 2:
        if len(np.unique(y_true)) < 2:
            return None
        return float(roc_auc_score(y_true == 1, proba[:, 1]))
    scores = []
    for k in range(len(labels)):
        positives = y_true == k
        if positives.any() and not positives.all():
            scores.append(roc_auc_score(positives, proba[:, k]))
    return float(np.mean(scores)) if scores else None


def format_metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """Format one summary row per model (accuracy, macro and weighted scores, ROC AUC) as Markdown."""
    columns = [
        ("accuracy", "accuracy"),
        ("macro_precision", "macro P"),
        ("macro_recall", "macro R"),
        ("macro_f1", "macro F1"),
        ("weighted_f1", "weighted F1"),
        ("roc_auc_macro", "ROC AUC"),
    ]
    lines = ["| model | " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for name, metrics in rows.items():
        cells = [_fmt(metrics.get(key)) for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_per_class_table(metrics: dict[str, Any]) -> str:
    """Format precision, recall, F1 and support per class, then macro and weighted rows, as Markdown."""
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for label, values in metrics["per_class"].items():
        if values["support"] == 0 and _column_sum(metrics, label) == 0:
            continue
        lines.append(
            f"| {label} | {_fmt(values['precision'])} | {_fmt(values['recall'])} | "
            f"{_fmt(values['f1'])} | {values['support']} |"
        )
    total = metrics["n_samples"]
    lines.append(
        f"| macro average | {_fmt(metrics['macro_precision'])} | {_fmt(metrics['macro_recall'])} | "
        f"{_fmt(metrics['macro_f1'])} | {total} |"
    )
    lines.append(
        f"| weighted average | {_fmt(metrics['weighted_precision'])} | {_fmt(metrics['weighted_recall'])} | "
        f"{_fmt(metrics['weighted_f1'])} | {total} |"
    )
    return "\n".join(lines)


def _column_sum(metrics: dict[str, Any], label: str) -> int:
    index = metrics["labels"].index(label)
    return int(sum(row[index] for row in metrics["confusion_matrix"]))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def plot_confusion_matrix(metrics: dict[str, Any], path: Path, title: str) -> None:
    """Write the row-normalised confusion matrix (rows: true class) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    labels = metrics["labels"]
    keep = (matrix.sum(axis=1) > 0) | (matrix.sum(axis=0) > 0)
    matrix = matrix[np.ix_(keep, keep)]
    shown = [label for label, k in zip(labels, keep) if k]
    row_sums = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, row_sums, out=np.zeros_like(matrix), where=row_sums > 0)
    size = max(4.0, 0.55 * len(shown) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(shown)), shown, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(shown)), shown, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    for i in range(len(shown)):
        for j in range(len(shown)):
            if normalised[i, j] >= 0.005:
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[str], path: Path, title: str
) -> None:
    """Write one-vs-rest ROC curves as a PNG.

    Args:
        curves: model name -> (true class indices (n,), probabilities (n, n_classes)).
        labels: class names; a two-class task draws the ``Attack`` curve only, otherwise each model draws its
            micro-averaged curve and, for a single model, one curve per class.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for name, (y_true, proba) in curves.items():
        if len(labels) == 2:
            fpr, tpr, _ = roc_curve(y_true == 1, proba[:, 1])
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.4f})")
            continue
        onehot = np.eye(len(labels), dtype=bool)[y_true]
        fpr, tpr, _ = roc_curve(onehot.ravel(), proba.ravel())
        ax.plot(fpr, tpr, lw=2, label=f"{name}, micro-average (AUC {auc(fpr, tpr):.4f})")
        if len(curves) == 1:
            for k, label in enumerate(labels):
                positives = y_true == k
                if positives.any() and not positives.all():
                    fpr, tpr, _ = roc_curve(positives, proba[:, k])
                    ax.plot(fpr, tpr, lw=0.8, alpha=0.7, label=f"{label} ({auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _is_counter(key: str) -> bool:
    """Return True for bookkeeping series (steps, elapsed time, throughput) that are not training curves."""
    return key in ("epoch", "time_s") or key.endswith("step") or "flows_per_s" in key


def plot_training_curves(history: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Write the encoder's loss and validation macro-F1 and the RL heads' rewards and losses as a PNG.

    Args:
        history: stage name -> {metric name -> values}; each stage gets one panel per metric group.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (stage, key, values)
        for stage, series in history.items()
        for key, values in series.items()
        if len(values) > 1 and not _is_counter(key)
    ]
    if not panels:
        return
    n_cols = 3
    n_rows = math.ceil(len(panels) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.0 * n_rows), squeeze=False)
    for ax, (stage, key, values) in zip(axes.ravel(), panels):
        ax.plot(np.arange(1, len(values) + 1), values, lw=1.2)
        ax.set_title(f"{stage}: {key}", fontsize=9)
        ax.set_xlabel("epoch" if stage == "encoder" else "update")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
