"""Score data with a saved bundle: ``hclr-ids evaluate`` and ``hclr-ids predict``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hclr_ids.schema import category_of, is_attack

logger = logging.getLogger(__name__)

EvaluatePart = Literal["auto", "test", "all"]


def align_features(X: np.ndarray, feature_names: list[str], expected: list[str], source: str) -> np.ndarray:
    """Reorder the columns of ``X`` (named ``feature_names``) into the ``expected`` order.

    Raises:
        ValueError: naming ``source`` and the missing columns when some expected column is absent.
    """
    position = {name: i for i, name in enumerate(feature_names)}
    missing = [name for name in expected if name not in position]
    if missing:
        raise ValueError(
            f"{source}: missing columns {missing}; the model needs {len(expected)} columns: {', '.join(expected)}"
        )
    order = [position[name] for name in expected]
    if order == list(range(len(feature_names))):
        return np.asarray(X, dtype=np.float32)
    return np.ascontiguousarray(np.asarray(X, dtype=np.float32)[:, order])


def evaluate_bundle(
    model_dir: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    part: EvaluatePart = "auto",
    label_column: str | None = None,
) -> dict[str, Any]:
    """Evaluate a bundle on labelled data and write metrics.json, report.md and plots into ``out_dir``.

    With ``part="test"`` (the default for the release layout) the bundle's split is rebuilt on the data
    with its stored settings and seed, and only the test part is scored; ``"all"`` scores every row.
    """
    from hclr_ids import data, splits
    from hclr_ids.bundle import load_bundle
    from hclr_ids.config import RunConfig
    from hclr_ids.pipeline import evaluate_probabilities, run_record, split_fingerprint
    from hclr_ids.report import write_evaluation

    bundle = load_bundle(model_dir)
    config = RunConfig.from_json_file(Path(model_dir) / "config.json")
    label_column = label_column if label_column is not None else config.data.label_column
    dataset = data.load_dataset(data_path, label_column=label_column, cache_dir=config.data.cache_dir)
    if part == "auto":
        part = "test" if dataset.label_source == "file name" else "all"
    if part == "test":
        split = splits.make_split(dataset, config.data.split, task=config.data.task,
                                  val_fraction=config.data.val_fraction, test_fraction=config.data.test_fraction,
                                  seed=config.seed)
        indices = split.test
        _check_fingerprint(Path(model_dir), split_fingerprint(split))
    else:
        indices = np.arange(len(dataset))
    targets = dataset.targets(bundle.task)[indices]
    X = align_features(dataset.X[indices], dataset.feature_names, bundle.input_features, str(data_path))
    proba = bundle.predict_proba(X)

    labels = bundle.classes + sorted(set(targets) - set(bundle.classes))
    unseen = labels[len(bundle.classes):]
    if unseen:
        logger.warning("labels %s are not among the model's classes; they count with recall 0", unseen)
    index = {label: i for i, label in enumerate(labels)}
    y_true = np.fromiter((index[t] for t in targets), dtype=np.int64, count=len(targets))
    metrics = evaluate_probabilities(y_true, proba, labels)
    padded = np.zeros((len(proba), len(labels)), dtype=np.float64)
    padded[:, : proba.shape[1]] = proba
    context = {
        "task": bundle.task,
        "split": f"{config.data.split} (test part)" if part == "test" else "all rows",
        "feature_policy": config.preprocess.features,
        "model_version": bundle.version,
        "model_dir": str(model_dir),
        "data_path": str(data_path),
        "unseen_labels": unseen,
        "rows": {"evaluated": int(len(indices))},
        "config": config.to_dict(),
        "run": run_record(config),
    }
    return write_evaluation(Path(out_dir), main_model="HCLR-IDS", models={"HCLR-IDS": metrics},
                            probabilities={"HCLR-IDS": padded}, y_true=y_true, labels=labels, context=context,
                            title=f"HCLR-IDS evaluation of {Path(model_dir).name} on {Path(data_path).name}")


def _check_fingerprint(model_dir: Path, fingerprint: str) -> None:
    info_path = model_dir / "train_info.json"
    if not info_path.is_file():
        return
    stored = json.loads(info_path.read_text(encoding="utf-8")).get("split_fingerprint")
    if stored and stored != fingerprint:
        logger.warning(
            "the rebuilt split differs from the one the model was trained on (data changed?); "
            "test rows may overlap the training rows"
        )


def predict_file(
    model_dir: str | Path, input_path: str | Path, output_path: str | Path, *, batch_size: int = 65536
) -> dict[str, int]:
    """Score every row of a CSV/Parquet file or folder; write one output row per input row, in order.

    The output (CSV, Parquet or JSON Lines, chosen by the extension) contains the source file and row, the
    predicted label, its category, whether it is an attack, the confidence, the fraction of missing or
    non-finite input cells, and one probability column per class.
    """
    import polars as pl

    from hclr_ids import data
    from hclr_ids.bundle import load_bundle

    bundle = load_bundle(model_dir)
    X, feature_names, row_numbers, sources = data.read_features(input_path, with_sources=True)
    X = align_features(X, feature_names, bundle.input_features, str(input_path))
    proba = bundle.predict_proba(X, batch_size=batch_size)
    best = proba.argmax(axis=1)
    classes = np.asarray(bundle.classes, dtype=object)
    predicted = classes[best]
    missing_fraction = (~np.isfinite(X)).mean(axis=1)
    frame = pl.DataFrame({
        "source": sources,
        "row": row_numbers,
        "label": predicted.astype(str),
        "category": [category_of(label) for label in predicted],
        "is_attack": [is_attack(label) for label in predicted],
        "confidence": proba[np.arange(len(proba)), best],
        "missing_fraction": missing_fraction.astype(np.float32),
        **{f"p_{name}": proba[:, k] for k, name in enumerate(bundle.classes)},
        "model_version": [bundle.version] * len(proba),
    })
    _write_table(frame, Path(output_path))
    n_incomplete = int((missing_fraction > 0).sum())
    if n_incomplete:
        logger.warning("%d rows had missing or non-finite cells, imputed with training means "
                       "(see the missing_fraction column)", n_incomplete)
    logger.info("scored %d rows from %s into %s", len(frame), input_path, output_path)
    return {"rows_in": int(len(X)), "rows_out": int(len(frame)), "rows_imputed": n_incomplete}


def _write_table(frame: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.write_parquet(path)
    elif suffix in (".jsonl", ".ndjson"):
        frame.write_ndjson(path)
    elif suffix == ".csv":
        frame.write_csv(path)
    else:
        raise ValueError(f"unsupported output extension {suffix!r} for {path}; use .csv, .parquet or .jsonl")
