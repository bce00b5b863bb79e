"""Baseline comparison: classical and neural models on the same rows, with fit time, throughput and size.

Every baseline is trained on every feature of the policy after preprocessing (``PreparedData.F_*``), fitted on the
training rows only. Model size is the byte length of a serialized form: safetensors for torch models, the
libraries' own text formats for LightGBM (model string) and XGBoost (JSON), and for scikit-learn models, which
have no pickle-free format, the bytes of their fitted arrays (tree node records and leaf values, coefficients).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hclr_ids.config import EncoderConfig, RunConfig
from hclr_ids.experiments.common import (
    ExperimentConfig,
    RunSlot,
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

BASELINES = ("logistic-regression", "hist-gradient-boosting", "rf-svm-voting", "cnn-1d", "lstm",
             "ft-transformer", "random-forest", "lightgbm", "xgboost")
TITLES = {
    "logistic-regression": "Logistic regression", "hist-gradient-boosting": "HistGradientBoosting",
    "rf-svm-voting": "RF + linear SVM (soft voting)", "cnn-1d": "1D CNN", "lstm": "LSTM",
    "ft-transformer": "FT-Transformer (small)", "random-forest": "RandomForest", "lightgbm": "LightGBM",
    "xgboost": "XGBoost",
}


@dataclass
class FittedBaseline:
    predict_proba: Callable[[np.ndarray], np.ndarray]
    size_bytes: int
    size_kind: str
    """Measurement behind ``size_bytes``: safetensors, model string, JSON, or array bytes (an estimate)."""


@dataclass
class BaselineData:
    """Preprocessed features of one split: ``X_*`` of shape (n, n_features), labels as class indices."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    n_classes: int


def forest_array_bytes(forest: Any) -> int:
    """Bytes of a fitted scikit-learn forest's node records and leaf values: an estimate of its size."""
    total = 0
    for tree in forest.estimators_:
        nodes = tree.tree_.__getstate__()["nodes"]
        total += nodes.nbytes + tree.tree_.value.nbytes
    return int(total)


def _linear_bytes(model: Any) -> int:
    return int(model.coef_.nbytes + np.asarray(model.intercept_).nbytes)


def _torch_bytes(module: Any) -> int:
    from safetensors.torch import save

    return len(save({k: v.contiguous() for k, v in module.state_dict().items()}))


def _fit_logistic(data: BaselineData, seed: int, threads: int) -> FittedBaseline:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=500, random_state=seed).fit(data.X_train, data.y_train)
    return FittedBaseline(model.predict_proba, _linear_bytes(model), "array bytes")


def _fit_hgb(data: BaselineData, seed: int, threads: int) -> FittedBaseline:
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=seed).fit(data.X_train, data.y_train)
    size = sum(p.nodes.nbytes for per_iteration in model._predictors for p in per_iteration)
    return FittedBaseline(model.predict_proba, int(size), "array bytes")


def _fit_voting(data: BaselineData, seed: int, threads: int) -> FittedBaseline:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier, VotingClassifier
    from sklearn.svm import LinearSVC

    # A kernel SVM is quadratic in the training rows; a linear SVM with sigmoid calibration gives the
    # probabilities soft voting needs in linear time.
    svm = CalibratedClassifierCV(LinearSVC(random_state=seed), method="sigmoid", cv=3)
    forest = RandomForestClassifier(n_estimators=100, n_jobs=threads, random_state=seed)
    model = VotingClassifier([("rf", forest), ("svm", svm)], voting="soft").fit(data.X_train, data.y_train)
    fitted_forest, fitted_svm = model.estimators_
    size = forest_array_bytes(fitted_forest)
    for calibrated in fitted_svm.calibrated_classifiers_:
        size += _linear_bytes(calibrated.estimator) + 16 * len(calibrated.calibrators)
    return FittedBaseline(model.predict_proba, int(size), "array bytes")


def _fit_forest(data: BaselineData, seed: int, threads: int) -> FittedBaseline:
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=100, n_jobs=threads, random_state=seed).fit(data.X_train, data.y_train)
    return FittedBaseline(model.predict_proba, forest_array_bytes(model), "array bytes")


def _fit_lightgbm(data: BaselineData, seed: int, threads: int) -> FittedBaseline:
    from hclr_ids.baselines import make_baseline

    model = make_baseline("lightgbm", n_classes=data.n_classes, seed=seed, threads=threads)
    model.fit(data.X_train, data.y_train)
    return FittedBaseline(model.predict_proba, len(model.booster_.model_to_string().encode()), "model string")


def _fit_xgboost(data: BaselineData, seed: int, threads: int) -> FittedBaseline:
    import xgboost

    model = xgboost.XGBClassifier(n_estimators=200, tree_method="hist", n_jobs=threads, random_state=seed)
    model.fit(data.X_train, data.y_train)
    return FittedBaseline(model.predict_proba, len(model.get_booster().save_raw(raw_format="json")), "JSON")


def _fit_encoder(architecture: str, encoder: EncoderConfig) -> Callable[[BaselineData, int, int], FittedBaseline]:
    def fit(data: BaselineData, seed: int, threads: int) -> FittedBaseline:
        import dataclasses

        from hclr_ids import training

        # The plain literature baselines: scaled values as one channel, no learned feature embedding.
        config = dataclasses.replace(encoder, architecture=architecture, input_encoding="scalar",
                                     feature_embedding_dim=0)
        model, _ = training.train_encoder(data.X_train, data.y_train, data.X_val, data.y_val, data.n_classes,
                                          config, seed=seed)
        return FittedBaseline(lambda X: training.predict_proba(model, X), _torch_bytes(model), "safetensors")

    return fit


def _fit_transformer(encoder: EncoderConfig) -> Callable[[BaselineData, int, int], FittedBaseline]:
    def fit(data: BaselineData, seed: int, threads: int) -> FittedBaseline:
        from hclr_ids.experiments.transformer import predict_proba, train_ft_transformer

        model = train_ft_transformer(data.X_train, data.y_train, data.X_val, data.y_val, data.n_classes,
                                     encoder, seed=seed)
        return FittedBaseline(lambda X: predict_proba(model, X), _torch_bytes(model), "safetensors")

    return fit


def baseline_fitters(encoder: EncoderConfig) -> dict[str, Callable[[BaselineData, int, int], FittedBaseline]]:
    return {
        "logistic-regression": _fit_logistic, "hist-gradient-boosting": _fit_hgb, "rf-svm-voting": _fit_voting,
        "cnn-1d": _fit_encoder("cnn", encoder), "lstm": _fit_encoder("lstm", encoder),
        "ft-transformer": _fit_transformer(encoder), "random-forest": _fit_forest, "lightgbm": _fit_lightgbm,
        "xgboost": _fit_xgboost,
    }


def baseline_data(slot: RunSlot) -> BaselineData:
    """All policy features of the training and (known-label) validation rows of one prepared split."""
    prepared = slot.prepared
    F_val = prepared.preprocessor.transform(slot.dataset.X[slot.split.val])
    known = prepared.y_val < len(prepared.classes)
    return BaselineData(prepared.F_train, prepared.y_train, F_val[known], prepared.y_val[known],
                        len(prepared.classes))


def run_baselines(config: RunConfig, experiment: ExperimentConfig, out_dir: str | Path,
                  models: list[str] | None = None) -> dict[str, Any]:
    """Fit each baseline per seed; write metrics with fit time, throughput (flows/s) and model size."""
    from hclr_ids.pipeline import _cpu_count, _pad_proba

    names = list(models or BASELINES)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected some of {', '.join(BASELINES)}")
    out = Path(out_dir)
    started = time.perf_counter()
    fitters = baseline_fitters(config.encoder)
    threads = max(1, config.threads or _cpu_count())
    runs: list[dict[str, Any]] = []
    costs: dict[str, dict[str, list[float]]] = {TITLES[n]: {"fit_s": [], "flows_per_s": [], "bytes": []} for n in names}
    size_kinds: dict[str, str] = {}
    roc_inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    first: RunSlot | None = None
    for slot in iterate_runs(config, experiment):
        data = baseline_data(slot)
        F_test = slot.prepared.F_test
        labels = slot.prepared.eval_labels
        run: dict[str, Any] = {"seed": slot.seed, "fold": slot.fold, "models": {}}
        for name in names:
            title = TITLES[name]
            start = time.perf_counter()
            fitted = fitters[name](data, slot.seed, threads)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            proba = _pad_proba(np.asarray(fitted.predict_proba(F_test), np.float64), len(labels))
            predict_s = time.perf_counter() - start
            costs[title]["fit_s"].append(fit_s)
            costs[title]["flows_per_s"].append(len(F_test) / max(predict_s, 1e-9))
            costs[title]["bytes"].append(fitted.size_bytes)
            size_kinds[title] = fitted.size_kind
            run["models"][title] = evaluate(slot.prepared, proba)
            logger.info("%s: fit %.1f s, %.0f flows/s, %d bytes, macro-F1 %.4f", title, fit_s,
                        len(F_test) / max(predict_s, 1e-9), fitted.size_bytes, run["models"][title]["macro_f1"])
            if first is None or slot is first:
                roc_inputs[title] = (slot.prepared.y_test, proba)
        if first is None:
            first = slot
        runs.append(run)
    assert first is not None
    aggregated = aggregate(runs)
    cost_summary = {title: {key: float(np.mean(v)) for key, v in values.items()} | {"size_kind": size_kinds[title]}
                    for title, values in costs.items()}
    results = {
        "experiment": "baselines",
        "record": experiment_record(config, experiment, first),
        "variants": aggregated,
        "costs": cost_summary,
        "n_features": int(first.prepared.F_train.shape[1]),
        "runs": runs,
        "seconds_total": time.perf_counter() - started,
    }
    extra = {title: {"fit s": f"{c['fit_s']:.1f}", "flows/s": f"{c['flows_per_s']:,.0f}",
                     "size (bytes)": f"{int(c['bytes']):,} ({c['size_kind']})"} for title, c in cost_summary.items()}
    lines = [f"# Baselines: {config.data.task}", "", *describe_setup(config, experiment, first, "none (baselines use every column)"),
             f"- features: every column of the `{config.preprocess.features}` policy after preprocessing "
             f"({first.prepared.F_train.shape[1]} columns); {threads} threads",
             "- size: safetensors bytes for torch models, the model string for LightGBM, the JSON model for "
             "XGBoost; for scikit-learn models the bytes of their fitted arrays (an estimate, as they have no "
             "pickle-free format)", "",
             "## Summary", "", summary_table(aggregated, extra), "", "## Per-class F1", "",
             per_class_f1_table(aggregated), ""]
    write_results(out, results, "\n".join(lines))
    if experiment.plots:
        write_plots(out, aggregated, roc_inputs, first.prepared.eval_labels, f"Baselines, {config.data.task}")
    if experiment.mlflow_uri:
        log_to_mlflow(experiment.mlflow_uri, "hclr-ids-baselines", config, aggregated, out)
    return results
