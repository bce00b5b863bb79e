"""Shared machinery of the experiments: splits per seed, aggregation over runs, tables, plots and records."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hclr_ids.config import RunConfig, merge_overrides

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
                   "weighted_recall", "weighted_f1", "roc_auc_macro")


@dataclass
class ExperimentConfig:
    """Repetitions and outputs of one experiment; the model settings stay in :class:`RunConfig`."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of weight initialisation, sampling and (with folds) the fold assignment."""
    folds: int = 0
    """Stratified K-fold cross-validation when >= 2; 0 uses the configured single split."""
    mlflow_uri: str | None = None
    """MLflow tracking URI; None skips MLflow."""
    plots: bool = True
    head_time_budget_s: float = 0.0
    """Wall-clock limit of each decision head's training in seconds; 0 for none."""


@dataclass
class RunSlot:
    """One repetition of an experiment: a seed, a fold and the data prepared for it."""

    seed: int
    fold: int | None
    config: RunConfig
    prepared: Any
    split: Any
    dataset: Any
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"seed-{self.seed}" if self.fold is None else f"seed-{self.seed}-fold-{self.fold}"


def seeded(config: RunConfig, seed: int) -> RunConfig:
    return merge_overrides(config, {"seed": seed})


def iterate_runs(config: RunConfig, experiment: ExperimentConfig,
                 selection_overrides: dict[str, Any] | None = None) -> Iterator[RunSlot]:
    """Yield one prepared split per seed (and per fold when ``experiment.folds`` >= 2).

    The dataset is loaded once per seed from the Parquet cache. Preprocessing and feature selection are fitted
    on each training part only, by :func:`hclr_ids.pipeline.prepare`.
    """
    from hclr_ids import pipeline, training

    for seed in experiment.seeds:
        run_config = merge_overrides(config, {"seed": seed, "data.folds": experiment.folds,
                                              **(selection_overrides or {})})
        dataset, folds, info = pipeline.load_and_split(run_config)
        for k, split in enumerate(folds):
            training.set_seed(seed)
            prepared = pipeline.prepare(run_config, dataset, split)
            yield RunSlot(seed, k if len(folds) > 1 else None, run_config, prepared, split, dataset, info)


def known_validation(prepared: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return the validation rows whose label the model can learn (features, labels)."""
    known = prepared.y_val < len(prepared.classes)
    return prepared.X_val[known], prepared.y_val[known]


def evaluate(prepared: Any, proba: np.ndarray) -> dict[str, Any]:
    """Metrics of test-part probabilities of shape (n_test, n_classes or more) against ``prepared.y_test``."""
    from hclr_ids.pipeline import evaluate_probabilities

    return evaluate_probabilities(prepared.y_test, proba, prepared.eval_labels)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (ddof 1; 0 for a single run) of every model's metrics over the runs.

    Each run is ``{"models": {name: metrics from compute_metrics}}``. The result holds, per model, the summary
    metrics and per-class precision, recall and F1 as ``{"mean", "std", "values"}``, and the confusion
    matrices summed over runs.
    """
    names = list(runs[0]["models"])
    out: dict[str, Any] = {}
    for name in names:
        per_run = [run["models"][name] for run in runs if name in run["models"]]
        summary = {key: _stats([m[key] for m in per_run if m.get(key) is not None]) for key in SUMMARY_METRICS}
        labels = per_run[0]["labels"]
        per_class = {
            label: {
                key: _stats([m["per_class"][label][key] for m in per_run])
                for key in ("precision", "recall", "f1")
            } | {"support": int(np.mean([m["per_class"][label]["support"] for m in per_run]))}
            for label in labels
        }
        matrix = np.sum([np.asarray(m["confusion_matrix"]) for m in per_run], axis=0)
        out[name] = {"summary": summary, "per_class": per_class, "labels": labels,
                     "confusion_matrix": matrix.tolist(), "runs": len(per_run)}
    return out


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "values": []}
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "values": [float(v) for v in array]}


def _cell(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def summary_table(aggregated: dict[str, Any], extra: dict[str, dict[str, str]] | None = None) -> str:
    """Markdown table, one row per model: accuracy, macro and weighted P/R/F1 and ROC AUC, mean ± std."""
    columns = [("accuracy", "accuracy"), ("macro_precision", "macro P"), ("macro_recall", "macro R"),
               ("macro_f1", "macro F1"), ("weighted_precision", "weighted P"), ("weighted_recall", "weighted R"),
               ("weighted_f1", "weighted F1"), ("roc_auc_macro", "ROC AUC")]
    extra_columns = list(next(iter(extra.values())).keys()) if extra else []
    lines = ["| model | " + " | ".join([t for _, t in columns] + extra_columns) + " |",
             "|---|" + "---:|" * (len(columns) + len(extra_columns))]
    for name, values in aggregated.items():
        cells = [_cell(values["summary"][key]) for key, _ in columns]
        cells += [extra[name].get(c, "") for c in extra_columns] if extra else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(aggregated: dict[str, Any], model: str) -> str:
    """Format one model's per-class table in the layout of the HCLR-IDS paper's multiclass results (Shaikh et al., 2025).

    Rows are classes with precision, recall, F1 (mean ± std over runs) and test support, then the macro and
    weighted averages. Classes absent from the test part and never predicted are left out.
    """
    values = aggregated[model]
    matrix = np.asarray(values["confusion_matrix"])
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for k, label in enumerate(values["labels"]):
        row = values["per_class"][label]
        if row["support"] == 0 and matrix[:, k].sum() == 0:
            continue
        lines.append(f"| {label} | {_cell(row['precision'])} | {_cell(row['recall'])} | {_cell(row['f1'])} | "
                     f"{row['support']} |")
    s = values["summary"]
    total = sum(row["support"] for row in values["per_class"].values())
    lines.append(f"| macro average | {_cell(s['macro_precision'])} | {_cell(s['macro_recall'])} | "
                 f"{_cell(s['macro_f1'])} | {total} |")
    lines.append(f"| weighted average | {_cell(s['weighted_precision'])} | {_cell(s['weighted_recall'])} | "
                 f"{_cell(s['weighted_f1'])} | {total} |")
    return "\n".join(lines)


def per_class_f1_table(aggregated: dict[str, Any]) -> str:
    """Markdown table of per-class F1 (mean ± std) with one column per model."""
    names = list(aggregated)
    labels = aggregated[names[0]]["labels"]
    lines = ["| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label in labels:
        if aggregated[names[0]]["per_class"][label]["support"] == 0:
            continue
        cells = [_cell(aggregated[n]["per_class"][label]["f1"]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_setup(config: RunConfig, experiment: ExperimentConfig, first: RunSlot,
                   selection: str | None = None) -> list[str]:
    """Markdown bullet lines naming the data, split, features, rows, seeds and budgets of an experiment.

    ``selection`` replaces the configured selection method in the text when the experiment overrides it.
    """
    rows = first.prepared.info["rows"]
    selection = selection or f"`{config.selection.method}`"
    return [
        f"- data: `{config.data.path}`, task `{config.data.task}`, split `{first.prepared.info['split']}`"
        + (f" ({experiment.folds} folds)" if experiment.folds >= 2 else "")
        + f", feature policy `{config.preprocess.features}`, selection {selection}",
        f"- rows: train {rows['train']:,} (max-train-rows {config.data.max_train_rows or 'all'}), "
        f"val {rows['val']:,}, test {rows['test']:,}",
        f"- seeds: {', '.join(str(s) for s in experiment.seeds)}; encoder max epochs {config.encoder.max_epochs}, "
        f"time budget {config.encoder.time_budget_s:.0f} s",
        "- cells: mean ± standard deviation over seeds" + (" and folds" if experiment.folds >= 2 else "")
        + "; metrics on the test part",
    ]


def experiment_record(config: RunConfig, experiment: ExperimentConfig, first: RunSlot) -> dict[str, Any]:
    """Everything needed to re-run any row: versions, commit, full config, seeds and the dataset's files."""
    from hclr_ids.pipeline import run_record

    record = run_record(config)
    record.pop("seed", None)
    record["experiment"] = asdict(experiment)
    record["data_files"] = first.info.get("files", [])
    record["rows_loaded"] = first.info.get("rows_loaded")
    record["rows"] = first.prepared.info["rows"]
    record["class_counts"] = first.prepared.info["class_counts"]
    return record


def write_results(out_dir: Path, results: dict[str, Any], markdown: str) -> None:
    from hclr_ids.pipeline import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    (out_dir / "results.md").write_text(markdown, encoding="utf-8")
    logger.info("wrote %s and %s", out_dir / "results.json", out_dir / "results.md")


def write_plots(out_dir: Path, aggregated: dict[str, Any], roc_inputs: dict[str, tuple[np.ndarray, np.ndarray]],
                labels: list[str], title: str) -> list[str]:
    """Write the grouped bar chart, the overlaid ROC curves and one confusion matrix per model; return names."""
    from hclr_ids.evaluation import plot_confusion_matrix, plot_roc_curves
    from hclr_ids.report import _slug

    out_dir.mkdir(parents=True, exist_ok=True)
    written = ["variants.png", "roc_curves.png"]
    plot_grouped_bars(aggregated, out_dir / "variants.png", title)
    plot_roc_curves(roc_inputs, labels, out_dir / "roc_curves.png", f"{title}: ROC curves (first seed)")
    for name, values in aggregated.items():
        path = out_dir / f"confusion_matrix_{_slug(name)}.png"
        plot_confusion_matrix(values, path, f"{name}, summed over {values['runs']} runs")
        written.append(path.name)
    return written


def plot_grouped_bars(aggregated: dict[str, Any], path: Path, title: str,
                      metrics: tuple[str, ...] = ("accuracy", "macro_f1", "weighted_f1", "roc_auc_macro")) -> None:
    """Write a bar chart with one group per metric and one bar per model, with standard-deviation error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(aggregated)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics) + 0.35 * len(names)), 4.5))
    positions = np.arange(len(metrics))
    for i, name in enumerate(names):
        stats = [aggregated[name]["summary"][m] for m in metrics]
        means = [s["mean"] if s["mean"] is not None else 0.0 for s in stats]
        stds = [s["std"] if s["std"] is not None else 0.0 for s in stats]
        ax.bar(positions + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(positions, [m.replace("_", " ") for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score on the test part")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_to_mlflow(uri: str, experiment_name: str, config: RunConfig, aggregated: dict[str, Any],
                  out_dir: Path) -> None:
    """Log one MLflow run per model with its mean metrics, the full config and the result files."""
    try:
        import mlflow
    except ImportError as error:
        raise ValueError(
            f"--mlflow-uri {uri} was given but MLflow is not installed; run `pip install mlflow` or drop the option"
        ) from error
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_name)
    for name, values in aggregated.items():
        with mlflow.start_run(run_name=name):
            mlflow.log_dict(config.to_dict(), "config.json")
            mlflow.log_metrics({key: stat["mean"] for key, stat in values["summary"].items()
                                if stat["mean"] is not None})
            mlflow.log_artifact(str(out_dir / "results.md"))


class Stopwatch:
    """Seconds spent per named step, summed over repetitions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def time(self, name: str) -> _Timer:
        return _Timer(self, name)


class _Timer:
    def __init__(self, watch: Stopwatch, name: str) -> None:
        self.watch, self.name = watch, name

    def __enter__(self) -> _Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
        self.watch.add(self.name, self.elapsed)
