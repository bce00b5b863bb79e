"""Train, evaluate and compare: the end-to-end HCLR-IDS pipeline behind ``hclr-ids train/evaluate/run``."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np

from hclr_ids import __version__
from hclr_ids.config import RunConfig
from hclr_ids.schema import task_labels

logger = logging.getLogger(__name__)

HCLR_NAME = "HCLR-IDS"
_ENCODER_NAMES = {"cnn": "CNN", "lstm": "LSTM", "cnn-lstm": "CNN-LSTM"}


def encoder_name(architecture: str) -> str:
    """Return the name of an encoder architecture in reports: ``CNN``, ``LSTM`` or ``CNN-LSTM``."""
    return _ENCODER_NAMES.get(architecture, architecture)


@dataclass
class PreparedData:
    """One split, preprocessed and feature-selected, with everything the report needs to say about it."""

    classes: list[str]
    """Labels the model learns: those present in the training split, in canonical order."""
    eval_labels: list[str]
    """``classes`` followed by labels that occur only outside the training split."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    """Selected features (float32, shape (n, n_selected)) and indices into ``eval_labels``."""
    F_train: np.ndarray
    F_test: np.ndarray
    """Every feature of the policy after preprocessing, for the baselines."""
    preprocessor: Any
    selector: Any
    selected_indices: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _encode(labels: np.ndarray, label_list: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(label_list)}
    return np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))


def _ordered_labels(task: str, present: set[str]) -> list[str]:
    canonical = [label for label in task_labels(task) if label in present]  # type: ignore[arg-type]
    return canonical + sorted(present - set(canonical))


def load_and_split(config: RunConfig) -> tuple[Any, list[Any], dict[str, Any]]:
    """Load the data, optionally deduplicate it, and build the split (or the K folds)."""
    from hclr_ids import data, splits

    cfg = config.data
    dataset = data.load_dataset(cfg.path, label_column=cfg.label_column, cache_dir=cfg.cache_dir)
    info: dict[str, Any] = {
        "files": [
            {"path": str(f.path), "class": f.class_name, "side": f.side, "rows": f.n_rows} for f in dataset.files
        ],
        "rows_loaded": len(dataset),
        "label_source": dataset.label_source,
    }
    if cfg.dedup:
        keep = splits.dedup_indices(dataset)
        info["duplicates_removed"] = int(len(dataset) - len(keep))
        logger.info("--dedup: removed %d exact duplicate rows of %d", len(dataset) - len(keep), len(dataset))
        dataset = dataset.subset(keep)
    if cfg.folds and cfg.folds >= 2:
        folds = splits.kfold_splits(dataset, cfg.folds, task=cfg.task, val_fraction=cfg.val_fraction,
                                    seed=config.seed)
    else:
        folds = [splits.make_split(dataset, cfg.split, task=cfg.task, val_fraction=cfg.val_fraction,
                                   test_fraction=cfg.test_fraction, seed=config.seed)]
    return dataset, folds, info


def prepare(config: RunConfig, dataset: Any, split: Any) -> PreparedData:
    """Fit preprocessing and feature selection on the training rows of ``split`` and apply them."""
    from hclr_ids import splits
    from hclr_ids.preprocessing import Preprocessor
    from hclr_ids.selection import make_selector

    task = config.data.task
    targets = dataset.targets(task)
    info: dict[str, Any] = {"split": split.method, "fold": split.fold}
    info["duplicates"] = splits.duplicate_report(dataset, split)

    train_idx = split.train
    if config.data.max_train_rows and len(train_idx) > config.data.max_train_rows:
        train_idx = splits.subsample_stratified(train_idx, targets[train_idx], config.data.max_train_rows,
                                                config.seed)
        logger.info("training rows subsampled to %d (--max-train-rows)", len(train_idx))

    preprocessor = Preprocessor(config.preprocess)
    X_train_raw = dataset.X[train_idx]
    excess = preprocessor.excess_missing_rows(X_train_raw)
    if excess.any():
        logger.warning(
            "dropped %d training rows with more than %.0f%% missing values (first: %s)",
            int(excess.sum()), 100 * config.preprocess.max_missing_fraction,
            _describe_rows(dataset, train_idx[excess][:5]),
        )
    info["train_rows_dropped_missing"] = int(excess.sum())
    train_idx = train_idx[~excess]
    X_train_raw = X_train_raw[~excess]

    classes = _ordered_labels(task, set(targets[train_idx]))
    if len(classes) < 2:
        raise ValueError(f"the training split contains only the class {classes}; at least two classes are needed")
    outside_training = set(targets[split.test]) | set(targets[split.val])
    unseen = [label for label in _ordered_labels(task, outside_training) if label not in classes]
    if unseen:
        logger.warning(
            "labels %s occur in validation/test but not in training; the model cannot predict them, "
            "so their recall is 0 and they count in the macro averages", unseen,
        )
    eval_labels = classes + unseen
    info["unseen_labels"] = unseen

    F_train = preprocessor.fit(X_train_raw, dataset.feature_names).transform(X_train_raw)
    info["preprocess_train"] = _report_dict(preprocessor)
    F_val = preprocessor.transform(dataset.X[split.val])
    F_test = preprocessor.transform(dataset.X[split.test])
    info["preprocess_test"] = _report_dict(preprocessor)
    y_train = _encode(targets[train_idx], eval_labels)

    selector = make_selector(config.selection, seed=config.seed)
    selector.fit(F_train, y_train, list(preprocessor.output_features_))
    selected = np.asarray(selector.selected_, dtype=np.int64)
    info["selection"] = selector.metadata()
    info["rows"] = {"train": int(len(train_idx)), "val": int(len(split.val)), "test": int(len(split.test))}
    info["class_counts"] = {
        part: {label: int(n) for label, n in zip(*np.unique(targets[idx], return_counts=True))}
        for part, idx in (("train", train_idx), ("val", split.val), ("test", split.test))
    }
    return PreparedData(
        classes=classes, eval_labels=eval_labels,
        X_train=F_train[:, selected], y_train=y_train,
        X_val=F_val[:, selected], y_val=_encode(targets[split.val], eval_labels),
        X_test=F_test[:, selected], y_test=_encode(targets[split.test], eval_labels),
        F_train=F_train, F_test=F_test,
        preprocessor=preprocessor, selector=selector, selected_indices=selected, info=info,
    )


def _report_dict(preprocessor: Any) -> Any:
    report = getattr(preprocessor, "last_report_", None)
    if report is None:
        return None
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if hasattr(report, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(report)
    return report


def _describe_rows(dataset: Any, indices: np.ndarray) -> str:
    parts = []
    for i in indices:
        source = dataset.files[int(dataset.file_index[i])]
        parts.append(f"{source.path.name} row {int(dataset.row_number[i])}")
    return ", ".join(parts)


@dataclass
class TrainedModel:
    """The encoder, its decision head and the training history of one fit."""

    encoder: Any
    head: Any | None
    head_kind: str
    history: dict[str, dict[str, list[float]]]
    extra_heads: dict[str, Any] = field(default_factory=dict)
    """Heads trained on the way to the configured one (the DQN of the hybrid head), for the report."""
    seconds: dict[str, float] = field(default_factory=dict)


def fit_models(config: RunConfig, prepared: PreparedData, progress: Any = None) -> TrainedModel:
    """Train the encoder with a softmax head, then the configured decision head on its frozen embedding.

    ``progress`` is an optional :class:`hclr_ids.progress.StageProgress` for progress bars.
    """
    from hclr_ids import training
    from hclr_ids.progress import StageProgress

    progress = progress or StageProgress(None)

    n_classes = len(prepared.classes)
    known_val = prepared.y_val < n_classes
    start = time.perf_counter()
    encoder, enc_history = training.train_encoder(
        prepared.X_train, prepared.y_train, prepared.X_val[known_val], prepared.y_val[known_val],
        n_classes, config.encoder, seed=config.seed,
        progress=progress.stage("encoder epochs", config.encoder.max_epochs),
    )
    seconds = {"encoder": time.perf_counter() - start}
    history = {"encoder": enc_history}
    head_kind = config.rl.head
    if head_kind == "softmax":
        return TrainedModel(encoder, None, "softmax", history, seconds=seconds)

    from hclr_ids.rl import hybrid

    start = time.perf_counter()
    train_states = training.embed(encoder, prepared.X_train)
    val_states = training.embed(encoder, prepared.X_val[known_val])
    # The heads' networks are small: with more than one torch thread, thread start-up dominates each
    # gradient step (measured 148 ms with 2 threads against 3.3 ms with 1 on a busy 2-core machine).
    with torch_threads(config.rl.threads):
        head, rl_history = hybrid.train_head(
            train_states, prepared.y_train, n_classes, config.rl, seed=config.seed,
            val_states=val_states, val_labels=prepared.y_val[known_val],
            progress=progress.stage(f"{head_kind} head flows", _rl_flow_total(config)),
        )
    seconds["rl_head"] = time.perf_counter() - start
    history["rl"] = rl_history
    extra = {}
    if head_kind == "hybrid":
        extra[f"{encoder_name(config.encoder.architecture)} + DQN"] = head.dqn
    return TrainedModel(encoder, head, head_kind, history, extra_heads=extra, seconds=seconds)


def _rl_flow_total(config: RunConfig) -> int:
    """Return the flows the configured head trains on (the hybrid's DQN and PPO stages each restart the count)."""
    dqn = config.rl.dqn.total_steps * config.rl.dqn.num_envs
    ppo = config.rl.ppo.total_iterations * config.rl.ppo.rollout_steps * config.rl.ppo.num_envs
    return {"dqn": dqn, "ppo": ppo}.get(config.rl.head, max(dqn, ppo))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (0 leaves the setting alone), then restore it."""
    import torch

    previous = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def predict_proba_models(model: TrainedModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """Return class probabilities of the configured model and of its intermediate heads."""
    from hclr_ids import training

    softmax_name = f"{encoder_name(model.encoder.encoder.architecture)} (softmax)"
    out = {softmax_name: training.predict_proba(model.encoder, X)}
    if model.head is not None:
        states = training.embed(model.encoder, X)
        for name, head in model.extra_heads.items():
            out[name] = np.asarray(head.predict_proba(states))
        out[HCLR_NAME] = np.asarray(model.head.predict_proba(states))
    else:
        out[HCLR_NAME] = out.pop(softmax_name)
    return out


def _pad_proba(proba: np.ndarray, n_labels: int) -> np.ndarray:
    """Add zero columns for evaluation labels the model never learned."""
    if proba.shape[1] == n_labels:
        return proba
    padded = np.zeros((len(proba), n_labels), dtype=np.float64)
    padded[:, : proba.shape[1]] = proba
    return padded


def evaluate_probabilities(y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> dict[str, Any]:
    from hclr_ids.evaluation import compute_metrics

    proba = _pad_proba(np.asarray(proba, dtype=np.float64), len(labels))
    return compute_metrics(y_true, proba.argmax(axis=1), proba, labels)


def save_model(out_dir: Path, config: RunConfig, prepared: PreparedData, model: TrainedModel) -> dict[str, Any]:
    from hclr_ids.bundle import encoder_metadata, save_bundle

    return save_bundle(
        out_dir, config=config.to_dict(), task=config.data.task, classes=prepared.classes,
        preprocessor=prepared.preprocessor, selector=prepared.selector,
        selected_indices=prepared.selected_indices, encoder=model.encoder,
        encoder_metadata=encoder_metadata(model.encoder, config.encoder), head=model.head, head_kind=model.head_kind,
    )


def run_record(config: RunConfig) -> dict[str, Any]:
    """Describe how to reproduce a run: versions, git commit, machine and the full config."""
    import torch

    commit = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "package_version": __version__,
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs",
        "seed": config.seed,
        "config": config.to_dict(),
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def write_json(path: Path, value: Any) -> None:
    from hclr_ids.bundle import _json_default

    path.write_text(json.dumps(value, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _context(config: RunConfig, prepared: PreparedData, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": config.data.task,
        "split": prepared.info["split"],
        "fold": prepared.info["fold"],
        "feature_policy": config.preprocess.features,
        "config": config.to_dict(),
        "data": info,
        "classes": prepared.classes,
        "unseen_labels": prepared.info["unseen_labels"],
        "rows": prepared.info["rows"],
        "class_counts": prepared.info["class_counts"],
        "duplicates": prepared.info["duplicates"],
        "train_rows_dropped_missing": prepared.info["train_rows_dropped_missing"],
        "preprocess": {"train": prepared.info["preprocess_train"], "test": prepared.info["preprocess_test"]},
        "selection": prepared.info["selection"],
        "run": run_record(config),
    }


def train_and_evaluate_split(
    config: RunConfig, dataset: Any, split: Any, info: dict[str, Any], out_dir: Path, *, with_baselines: bool,
    progress: Any = None,
) -> dict[str, Any]:
    """Fit on one split, save the bundle in ``out_dir`` and write the test evaluation beside it."""
    from hclr_ids import training
    from hclr_ids.baselines import fit_baseline
    from hclr_ids.report import write_evaluation

    start = time.perf_counter()
    training.set_seed(config.seed)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    prepared = prepare(config, dataset, split)
    timing = {"prepare": time.perf_counter() - start}
    model = fit_models(config, prepared, progress)
    timing.update(model.seconds)
    save_model(out_dir, config, prepared, model)

    labels = prepared.eval_labels
    start = time.perf_counter()
    probabilities = {name: _pad_proba(p, len(labels)) for name, p in predict_proba_models(model, prepared.X_test).items()}
    timing["predict_test"] = time.perf_counter() - start
    if with_baselines:
        for name in config.baselines:
            result = fit_baseline(name, prepared.F_train, prepared.y_train, prepared.F_test,
                                  n_classes=len(labels), seed=config.seed, threads=max(1, _cpu_count()))
            probabilities[_BASELINE_TITLES.get(name, name)] = result.proba
            timing[f"baseline_{name}"] = result.fit_seconds + result.predict_seconds
    models = {name: evaluate_probabilities(prepared.y_test, p, labels) for name, p in probabilities.items()}
    context = _context(config, prepared, info)
    context["timing_s"] = timing
    write_json(out_dir / "history.json", model.history)
    return write_evaluation(
        out_dir, main_model=HCLR_NAME, models=models, probabilities=probabilities, y_true=prepared.y_test,
        labels=labels, context=context, history=model.history,
        title=f"HCLR-IDS on {config.data.task}, {prepared.info['split']} split (test part)",
    )


_BASELINE_TITLES = {"random-forest": "RandomForest", "lightgbm": "LightGBM"}


def run(
    config: RunConfig, out_dir: str | Path, *, with_baselines: bool = True, progress: Any = None
) -> dict[str, Any]:
    """Train and evaluate (``hclr-ids run``); with ``data.folds`` >= 2, once per fold plus mean and std."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    logger.info("run configuration:\n%s", config.to_json())
    dataset, folds, info = load_and_split(config)
    if len(folds) == 1:
        metrics = train_and_evaluate_split(config, dataset, folds[0], info, out_dir, with_baselines=with_baselines,
                                           progress=progress)
        logger.info("run finished in %.1f s", time.perf_counter() - started)
        return metrics
    per_fold = []
    for k, split in enumerate(folds):
        logger.info("fold %d of %d", k + 1, len(folds))
        per_fold.append(train_and_evaluate_split(config, dataset, split, info, out_dir / f"fold-{k}",
                                                 with_baselines=with_baselines, progress=progress))
    summary = summarise_folds(per_fold)
    summary["config"] = config.to_dict()
    summary["run"] = run_record(config)
    write_json(out_dir / "metrics.json", summary)
    (out_dir / "report.md").write_text(render_cv_report(summary), encoding="utf-8")
    logger.info("cross-validation finished in %.1f s", time.perf_counter() - started)
    return summary


SUMMARY_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
                "weighted_recall", "weighted_f1", "roc_auc_macro")


def summarise_folds(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (ddof 1) of every summary metric of every model over the folds."""
    models: dict[str, dict[str, Any]] = {}
    for name in per_fold[0]["models"]:
        models[name] = {}
        for key in SUMMARY_KEYS:
            values = [fold["models"][name][key] for fold in per_fold if fold["models"][name].get(key) is not None]
            if values:
                models[name][key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)),
                                     "folds": values}
    return {
        "folds": len(per_fold),
        "task": per_fold[0]["task"],
        "split": f"stratified {len(per_fold)}-fold",
        "feature_policy": per_fold[0]["feature_policy"],
        "models": models,
        **{key: models[HCLR_NAME][key]["mean"] for key in SUMMARY_KEYS if key in models[HCLR_NAME]},
    }


def render_cv_report(summary: dict[str, Any]) -> str:
    lines = [f"# HCLR-IDS cross-validation: {summary['task']}, {summary['split']}", "",
             f"- feature policy: `{summary['feature_policy']}`", "",
             "| model | " + " | ".join(SUMMARY_KEYS) + " |", "|---|" + "---:|" * len(SUMMARY_KEYS)]
    for name, values in summary["models"].items():
        cells = [f"{values[k]['mean']:.4f} ± {values[k]['std']:.4f}" if k in values else "n/a" for k in SUMMARY_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean ± standard deviation over folds; each fold's bundle and report are in `fold-K/`.")
    return "\n".join(lines) + "\n"


def train(config: RunConfig, out_dir: str | Path, *, progress: Any = None) -> dict[str, Any]:
    """Fit on the training part of the configured split and save the bundle (``hclr-ids train``).

    Returns the validation metrics, which are also written to ``validation_metrics.json``.
    """
    from hclr_ids import training

    out_dir = Path(out_dir)
    logger.info("train configuration:\n%s", config.to_json())
    dataset, folds, info = load_and_split(config)
    if len(folds) > 1:
        raise ValueError("--folds applies to 'hclr-ids run'; 'train' fits one model on one split")
    training.set_seed(config.seed)
    prepared = prepare(config, dataset, folds[0])
    model = fit_models(config, prepared, progress)
    save_model(out_dir, config, prepared, model)
    proba = predict_proba_models(model, prepared.X_val)[HCLR_NAME]
    metrics = evaluate_probabilities(prepared.y_val, proba, prepared.eval_labels)
    context = _context(config, prepared, info)
    context["split_fingerprint"] = split_fingerprint(folds[0])
    write_json(out_dir / "train_info.json", context)
    write_json(out_dir / "validation_metrics.json", metrics)
    write_json(out_dir / "history.json", model.history)
    return metrics


def split_fingerprint(split: Any) -> str:
    """Hash of the split's row indices, so ``evaluate`` can confirm it rebuilt the same test part."""
    import hashlib

    digest = hashlib.sha256()
    for part in (split.train, split.val, split.test):
        digest.update(np.asarray(part, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]
