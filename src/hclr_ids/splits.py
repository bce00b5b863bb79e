"""Train/validation/test splits, K-fold cross-validation, duplicate checks and stratified subsampling.

Three split methods are offered:

- ``official``: the release's own ``train/`` and ``test/`` files; validation is a stratified part of train.
- ``stratified``: all rows pooled and cut per label with seeded shuffling.
- ``contiguous``: each file (and, in a labelled table, each label within a file) cut in row order, so that
  neighbouring windows of one capture stay on one side of the cut.

Stratified cuts here are exact per label: a label with ``n`` rows gets ``round(n * test_fraction)`` test
rows, ``round(n * val_fraction)`` validation rows and the rest for training. A label too small for that
(``round`` gives 0) keeps all its rows in training, and a warning names it. No label is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hclr_ids.data import Dataset
from hclr_ids.schema import Task

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

SPLIT_METHODS: tuple[str, ...] = ("official", "stratified", "contiguous")
_PARTS = ("train", "val", "test")


@dataclass(eq=False)
class Split:
    """Row indices (int64, sorted) into a Dataset for each part of one split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    method: str
    fold: int | None = None
    """Fold number of a K-fold split; None for a single split."""

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def make_split(
    dataset: Dataset,
    method: str,
    *,
    task: Task,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Split ``dataset`` into train, validation and test rows by ``method``.

    ``official`` ignores ``test_fraction`` because the release files fix the test rows.
    """
    _check_fractions(val_fraction, test_fraction)
    names, codes = dataset.target_codes(task)
    if method == "official":
        split = _official_split(dataset, names, codes, task=task, val_fraction=val_fraction, seed=seed)
    elif method == "stratified":
        order = np.random.default_rng(seed).permutation(len(dataset))
        part = _cut_groups(codes, order, val_fraction, test_fraction)
        split = _split_from_parts(part, "stratified")
    elif method == "contiguous":
        groups = dataset.file_index.astype(np.int64) * len(names) + codes
        order = np.lexsort((dataset.row_number, groups))
        part = _cut_groups(groups, order, val_fraction, test_fraction)
        split = _split_from_parts(part, "contiguous")
    else:
        raise ValueError(f"unknown split method {method!r}; expected one of {', '.join(SPLIT_METHODS)}")
    _warn_missing_labels(split, names, codes)
    logger.info(
        "%s split: %d train, %d validation, %d test rows",
        method, len(split.train), len(split.val), len(split.test),
    )
    return split


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must each be in [0, 1)"
        )
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction {val_fraction} + test_fraction {test_fraction} leaves no training rows; "
            "make their sum less than 1"
        )


def _cut_groups(groups: np.ndarray, order: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Assign each row a part (0 train, 1 validation, 2 test) by its rank within its group.

    ``order`` lists the row indices to cut so that, within each group, rows appear in cutting order:
    the first ``n - n_val - n_test`` go to training, the next ``n_val`` to validation, the rest to
    test. Returns one entry per row of ``groups``; rows missing from ``order`` get 0.
    """
    order = order[np.argsort(groups[order], kind="stable")]
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)
    n_test = np.floor(size * test_fraction + 0.5).astype(np.int64)
    n_val = np.floor(size * val_fraction + 0.5).astype(np.int64)
    n_train = size - n_val - n_test
    part = np.where(rank < n_train, 0, np.where(rank < n_train + n_val, 1, 2)).astype(np.int8)
    result = np.zeros(len(groups), dtype=np.int8)
    result[order] = part
    return result


def _split_from_parts(part: np.ndarray, method: str, fold: int | None = None) -> Split:
    return Split(
        train=np.flatnonzero(part == 0).astype(np.int64),
        val=np.flatnonzero(part == 1).astype(np.int64),
        test=np.flatnonzero(part == 2).astype(np.int64),
        method=method,
        fold=fold,
    )


def _official_split(
    dataset: Dataset, names: np.ndarray, codes: np.ndarray, *, task: Task, val_fraction: float, seed: int
) -> Split:
    sides = np.array([f.side for f in dataset.files], dtype=object)
    if any(side is None for side in sides):
        raise ValueError(
            "the official split needs the release layout (train/ and test/ files); this data came from "
            f"{dataset.label_source!r}. Use split 'contiguous' or 'stratified'"
        )
    row_side = sides[dataset.file_index]
    train_rows = np.flatnonzero(row_side == "train")
    test_rows = np.flatnonzero(row_side == "test")
    train_labels = set(np.unique(codes[train_rows]).tolist())
    unseen = sorted(set(np.unique(codes[test_rows]).tolist()) - train_labels)
    if unseen:
        described = []
        for code in unseen:
            files = sorted({dataset.files[i].path.name for i in np.unique(dataset.file_index[codes == code])})
            described.append(f"{names[code]} ({', '.join(files)})")
        raise ValueError(
            f"official split: {len(unseen)} {task} labels have test rows but no training rows: "
            f"{'; '.join(described)}. A model cannot learn them from train/; use --split contiguous or "
            "--split stratified to pool each class's rows, or add the missing train files"
        )

    order = train_rows[np.random.default_rng(seed).permutation(len(train_rows))]
    part = np.full(len(dataset), 2, dtype=np.int8)
    part[train_rows] = _cut_groups(codes, order, val_fraction, 0.0)[train_rows]
    return _split_from_parts(part, "official")


def _warn_missing_labels(split: Split, names: np.ndarray, codes: np.ndarray) -> None:
    for part_name, rows in split.parts().items():
        absent = np.setdiff1d(np.unique(codes), np.unique(codes[rows]))
        if absent.size and (part_name != "val" or len(split.val)):
            logger.warning(
                "%s split: %d labels have no %s rows (too few rows to cut): %s",
                split.method, absent.size, part_name, ", ".join(str(names[c]) for c in absent),
            )


def kfold_splits(
    dataset: Dataset, k: int, *, task: Task, val_fraction: float = 0.1, seed: int = 0
) -> list[Split]:
    """Return ``k`` stratified folds; each fold's validation rows are a stratified part of its training rows.

    Uses scikit-learn's ``StratifiedKFold`` with shuffling, which warns when a label has fewer than
    ``k`` rows and raises when every label does.
    """
    from sklearn.model_selection import StratifiedKFold

    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2 folds, got {k}")
    _check_fractions(val_fraction, 0.0)
    _, codes = dataset.target_codes(task)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    splits = []
    for fold, (train_val, test) in enumerate(folds.split(np.zeros((len(codes), 1)), codes)):
        order = train_val[rng.permutation(len(train_val))]
        part = np.full(len(codes), 2, dtype=np.int8)
        part[train_val] = _cut_groups(codes, order, val_fraction, 0.0)[train_val]
        splits.append(_split_from_parts(part, "stratified-kfold", fold))
    return splits


# ---------------------------------------------------------------------------------------------------------
# Duplicates


_HASH_CHUNK_ROWS = 1_000_000


def _row_keys(dataset: Dataset) -> pl.DataFrame:
    """Return each row's 128-bit feature hash beside its label code, as a polars frame.

    Uses ``dataset.row_hash`` (hashes of the float64 values as parsed) when present, else hashes the
    float32 rows of ``X``. Two different rows share a key with probability about n**2 / 2**129,
    below 1e-24 for the 8.8 million release rows.
    """
    import polars as pl

    _, codes = dataset.encode_labels()
    row_hash = dataset.row_hash
    if row_hash is None:
        row_hash = np.empty((len(dataset), 2), dtype=np.uint64)
        names = [f"x{j}" for j in range(dataset.X.shape[1])]
        for start in range(0, len(dataset), _HASH_CHUNK_ROWS):
            block = slice(start, start + _HASH_CHUNK_ROWS)
            chunk = pl.DataFrame(dataset.X[block], schema=names, orient="row")
            row_hash[block, 0] = chunk.hash_rows(seed=0).to_numpy()
            row_hash[block, 1] = chunk.hash_rows(seed=1).to_numpy()
    return pl.DataFrame({"first": row_hash[:, 0], "second": row_hash[:, 1], "label": codes})


def duplicate_report(dataset: Dataset, split: Split) -> dict[str, Any]:
    """Count exact duplicate rows (all features and the label) within each part and across parts.

    Returns ``{"train": {"rows", "duplicates"}, "val": ..., "test": ..., "val_in_train": n,
    "test_in_train": n, "test_in_val": n}``. ``duplicates`` counts rows that repeat an earlier row of
    the same part (rows minus distinct rows); ``test_in_train`` counts test rows equal to some
    training row. Rows compare by hashes of their values as parsed (see ``Dataset.row_hash``): NaN
    matches NaN and -0.0 matches 0.0.
    """
    frame = _row_keys(dataset)
    parts = {name: frame[rows] for name, rows in split.parts().items()}
    report: dict[str, Any] = {}
    for name, part in parts.items():
        report[name] = {"rows": part.height, "duplicates": part.height - part.n_unique()}
    for inner, outer in (("val", "train"), ("test", "train"), ("test", "val")):
        report[f"{inner}_in_{outer}"] = parts[inner].join(
            parts[outer].unique(), on=parts[inner].columns, how="semi"
        ).height
    return report


def dedup_indices(dataset: Dataset) -> np.ndarray:
    """Return the sorted indices of the first occurrence of every distinct row (features and label)."""
    import polars as pl

    first = _row_keys(dataset).select(pl.struct(pl.all()).is_first_distinct()).to_series().to_numpy()
    kept = np.flatnonzero(first).astype(np.int64)
    logger.info("removed %d duplicate rows, %d remain", len(dataset) - len(kept), len(kept))
    return kept


# ---------------------------------------------------------------------------------------------------------
# Subsampling


def subsample_stratified(indices: np.ndarray, labels: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Pick at most ``max_rows`` of ``indices``, keeping each label's share; returns sorted indices.

    ``labels[i]`` is the label of ``indices[i]``. Each label gets its proportional share rounded by the
    largest-remainder method, so the total is exactly ``max_rows``. A label whose share rounds to 0
    still keeps one row, taken from the largest labels. ``max_rows <= 0`` or at least
    ``len(indices)`` returns ``indices`` unchanged.
    """
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(labels)
    if len(labels) != len(indices):
        raise ValueError(f"labels has {len(labels)} entries but indices has {len(indices)}; pass one label per index")
    if max_rows <= 0 or max_rows >= len(indices):
        return indices
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if max_rows < len(counts):
        raise ValueError(f"max_rows {max_rows} is below the number of labels {len(counts)}; raise it")
    quota = _largest_remainder(counts, max_rows)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(indices))
    order = order[np.argsort(codes[order], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    keep = order[rank < np.repeat(quota, counts)]
    return np.sort(indices[keep])


def _largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    exact = counts * (total / counts.sum())
    quota = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - quota), kind="stable")
    quota[remainder_order[: total - quota.sum()]] += 1
    # Every label keeps at least one row; the rows come from the labels with the largest quotas.
    for label in np.flatnonzero(quota == 0):
        quota[label] = 1
        quota[np.argmax(quota)] -= 1
    return quota
