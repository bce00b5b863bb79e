"""Feature selection by mutual information with the label, in nats.

Every feature is discretised into equal-frequency bins of its mid-rank (its empirical quantile) on a
stratified, seeded sample of the training rows, and the mutual information is the plug-in estimate from
the contingency table of bin and label counts. Tied values share a bin, so a constant feature has one bin
and a mutual information of exactly 0. The plug-in estimate is biased upwards by about (bins - 1)(classes - 1) / (2 n)
nats (Miller-Madow), about 1.4e-3 nats for 32 bins, 19 classes and 200,000 rows.

Two selectors use the estimate: :class:`MutualInfoSelector` keeps every feature above a threshold, and
:class:`MIFSSelector` runs Battiti's greedy MIFS (R. Battiti, "Using mutual information for selecting
features in supervised neural net learning", IEEE Trans. Neural Networks 5(4), 1994), which scores a
candidate f by I(f; C) - beta * sum over selected s of I(f; s).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from hclr_ids.config import SelectionConfig

logger = logging.getLogger(__name__)

METADATA_FORMAT = "hclr-ids/selector"

# Rows per np.bincount call; bounds the int64 temporaries to about 100 MB for 45 features.
_CHUNK_ROWS = 1 << 18


# ------------------------------------------------------------------ estimates


def stratified_sample(labels: np.ndarray, sample_size: int | None, seed: int) -> np.ndarray:
    """Return sorted row indices of a stratified random sample of at most ``sample_size`` rows.

    Each class gets a share proportional to its count (largest remainders round up), and every class
    present keeps at least one row, taken from the largest class. ``sample_size`` None or 0, or one at
    least the number of rows, returns every row.
    """
    n = len(labels)
    if not sample_size or sample_size >= n:
        return np.arange(n)
    if sample_size < 1:
        raise ValueError(f"sample_size must be a positive number of rows or 0 for all rows, got {sample_size}")
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (sample_size / n)
    allocation = np.floor(exact).astype(np.int64)
    shortfall = sample_size - int(allocation.sum())
    allocation[np.argsort(allocation - exact, kind="stable")[:shortfall]] += 1
    for c in np.flatnonzero(allocation == 0):
        allocation[np.argmax(allocation)] -= 1
        allocation[c] = 1

    rng = np.random.default_rng(seed)
    permuted = rng.permutation(n)
    by_class = permuted[np.argsort(codes[permuted], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    chosen = [by_class[start : start + k] for start, k in zip(starts, allocation)]
    return np.sort(np.concatenate(chosen))


def discretize(X: np.ndarray, n_bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Discretise every column of ``X`` into equal-frequency bins of its mid-rank.

    A value's mid-rank is the fraction of the column below it plus half the fraction equal to it, so
    tied values share one bin. Bin ``b`` contains the values whose mid-rank lies in [b / n_bins, (b + 1) / n_bins).
    Unlike cutting at repeated quantile edges, this keeps a point mass apart from its neighbours: a column
    that is 0 in 99 % of the rows gets two bins, not one. A constant column gets a single bin.

    Args:
        X: finite features, shape (n_samples, n_features).
        n_bins: number of bins per column (at least 2).

    Returns:
        codes of shape (n_samples, n_features), int64 in [0, n_bins), and the number of distinct codes
        in each column, shape (n_features,).
    """
    X = _check_finite(X, "discretize")
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    n, n_features = X.shape
    codes = np.zeros((n_features, n), dtype=np.int64)
    levels = np.ones(n_features, dtype=np.int64)
    if n == 0:
        return codes.T, levels
    columns = np.ascontiguousarray(X.T)
    for j in range(n_features):
        codes[j] = _mid_rank_bins(columns[j], n_bins)
        levels[j] = np.count_nonzero(np.bincount(codes[j], minlength=n_bins))
    return codes.T, levels


def _mid_rank_bins(column: np.ndarray, n_bins: int) -> np.ndarray:
    n = column.shape[0]
    order = np.argsort(column)
    ordered = column[order]
    starts_group = np.empty(n, dtype=bool)
    starts_group[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_group[1:])
    group = np.cumsum(starts_group) - 1
    first = np.flatnonzero(starts_group)
    end = np.append(first[1:], n)
    # floor(n_bins * mid_rank) with mid_rank = (rows below + rows up to and including) / (2 n), in integers.
    group_code = np.minimum((n_bins * (first + end)) // (2 * n), n_bins - 1)
    codes = np.empty(n, dtype=np.int64)
    codes[order] = group_code[group]
    return codes


def mutual_information_from_counts(counts: np.ndarray) -> np.ndarray:
    """Return the plug-in mutual information, in nats, of contingency tables of shape (..., a, b)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=(-2, -1), keepdims=True)
    rows = counts.sum(axis=-1, keepdims=True)
    columns = counts.sum(axis=-2, keepdims=True)
    occupied = counts > 0
    # n_xy * n / (n_x * n_y) is an exact ratio of integers below 2**53, so independent cells give log(1) = 0.
    ratio = np.divide(counts * total, rows * columns, out=np.ones_like(counts), where=occupied)
    terms = counts * np.log(ratio)
    safe_total = np.where(total[..., 0, 0] > 0, total[..., 0, 0], 1.0)
    return np.maximum(terms.sum(axis=(-2, -1)) / safe_total, 0.0)


def _joint_counts(codes: np.ndarray, n_codes: int, targets: np.ndarray, n_targets: int) -> np.ndarray:
    """Count (code of column k, target) pairs for every column k; returns shape (n_columns, n_codes, n_targets)."""
    n, n_columns = codes.shape
    offsets = (np.arange(n_columns, dtype=np.int64) * n_codes)[None, :]
    size = n_columns * n_codes * n_targets
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, n, _CHUNK_ROWS):
        block = codes[start : start + _CHUNK_ROWS]
        target = targets[start : start + _CHUNK_ROWS]
        combined = (block + offsets) * n_targets + target.reshape(len(target), -1)
        counts += np.bincount(combined.ravel(), minlength=size)
    return counts.reshape(n_columns, n_codes, n_targets)


def mutual_information(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_bins: int = 32,
    sample_size: int | None = 200_000,
    seed: int = 0,
) -> np.ndarray:
    """Estimate the mutual information of each feature with the label, in nats.

    Args:
        X: finite features, shape (n_samples, n_features).
        y: labels of any hashable type, shape (n_samples,).
        n_bins: maximum number of quantile bins per feature.
        sample_size: rows of the stratified sample the estimate uses; None or 0 uses every row.
        seed: seed of the sample.

    Returns:
        float64 array of shape (n_features,), each value in [0, ln(n_classes)].
    """
    codes, targets, n_classes = _prepare(X, y, n_bins, sample_size, seed)
    return mutual_information_from_counts(_joint_counts(codes, n_bins, targets, n_classes))


def pairwise_mutual_information(codes: np.ndarray, j: int, others: Sequence[int] | np.ndarray) -> np.ndarray:
    """Return I(x_j; x_k) in nats for every k in ``others``, from discretised codes (see :func:`discretize`).

    Args:
        codes: non-negative integer codes, shape (n_samples, n_features).
        j: column whose mutual information with the others is wanted.
        others: columns to pair with ``j``.

    Returns:
        float64 array of shape (len(others),).
    """
    others = np.asarray(others, dtype=np.int64)
    if others.size == 0:
        return np.zeros(0)
    n_codes = int(codes.max()) + 1 if codes.size else 1
    return mutual_information_from_counts(_joint_counts(codes[:, others], n_codes, codes[:, j], n_codes))


def _prepare(
    X: np.ndarray, y: np.ndarray, n_bins: int, sample_size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    X = _check_finite(X, "mutual_information")
    y = np.asarray(y)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y has shape {y.shape}; expected ({X.shape[0]},), one label per row of X")
    rows = stratified_sample(y, sample_size, seed)
    if rows.size < X.shape[0]:
        X, y = X[rows], y[rows]
    _, targets = np.unique(y, return_inverse=True)
    n_classes = int(targets.max()) + 1 if targets.size else 1
    codes, _ = discretize(X, n_bins)
    return codes, targets.astype(np.int64), n_classes


def _check_finite(X: np.ndarray, caller: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{caller}: expected a 2-D array of shape (n_samples, n_features), got shape {X.shape}")
    finite = np.isfinite(X)
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        raise ValueError(
            f"{caller}: X contains {int((~finite).sum())} NaN or infinite cells (first at row {row}, column {column}, "
            f"value {X[row, column]}); impute them first, for example with Preprocessor"
        )
    return X


# ------------------------------------------------------------------ selectors


class Selector(Protocol):
    """Interface of every selector: fitted column indices, ``transform`` and JSON metadata."""

    selected_: np.ndarray
    selected_names_: list[str]

    def fit(self, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str] | None = None) -> Selector: ...

    def transform(self, X: np.ndarray) -> np.ndarray: ...

    def metadata(self) -> dict[str, Any]: ...


class _BaseSelector:
    method = ""

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Return the selected columns of ``X``, shape (n_samples, len(selected_)), in input order."""
        if not hasattr(self, "selected_"):
            raise RuntimeError(f"{type(self).__name__}.transform called before fit; call fit(X_train, y_train) first")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{type(self).__name__}.transform: X has shape {X.shape}, expected {self.n_features_in_} columns "
                f"({', '.join(self.feature_names_in_)})"
            )
        return X[:, self.selected_]

    def _start_fit(self, X: np.ndarray, feature_names: Sequence[str] | None) -> None:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"{type(self).__name__}.fit: expected a 2-D array, got shape {X.shape}")
        names = [f"x{i}" for i in range(X.shape[1])] if feature_names is None else [str(n) for n in feature_names]
        if len(names) != X.shape[1]:
            raise ValueError(f"got {len(names)} feature names for {X.shape[1]} columns")
        if X.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}.fit: X has no columns to select from")
        self.feature_names_in_ = names
        self.n_features_in_ = len(names)

    def _finish_fit(self, selected: np.ndarray) -> None:
        self.selected_ = np.sort(np.asarray(selected, dtype=np.int64))
        self.selected_names_ = [self.feature_names_in_[i] for i in self.selected_]
        logger.info("%s kept %d of %d features: %s", self.method, len(self.selected_), self.n_features_in_,
                    self.selected_names_)

    def _base_metadata(self, params: dict[str, Any]) -> dict[str, Any]:
        if not hasattr(self, "selected_"):
            raise RuntimeError(f"{type(self).__name__}.metadata called before fit")
        return {
            "format": METADATA_FORMAT,
            "method": self.method,
            "params": params,
            "feature_names_in": list(self.feature_names_in_),
            "selected": [int(i) for i in self.selected_],
            "selected_names": list(self.selected_names_),
        }

    def _restore(self, metadata: dict[str, Any]) -> None:
        self.feature_names_in_ = list(metadata["feature_names_in"])
        self.n_features_in_ = len(self.feature_names_in_)
        self.selected_ = np.asarray(metadata["selected"], dtype=np.int64)
        bad = [int(i) for i in self.selected_ if not 0 <= i < self.n_features_in_]
        if bad:
            raise ValueError(f"selector metadata selects columns {bad} outside 0..{self.n_features_in_ - 1}")
        self.selected_names_ = [self.feature_names_in_[i] for i in self.selected_]


class KeepAllSelector(_BaseSelector):
    """Keep every column (selection method ``"none"``)."""

    method = "none"

    def fit(self, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str] | None = None) -> KeepAllSelector:
        self._start_fit(X, feature_names)
        self._finish_fit(np.arange(self.n_features_in_))
        return self

    def metadata(self) -> dict[str, Any]:
        return self._base_metadata({})

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> KeepAllSelector:
        self = cls()
        self._restore(metadata)
        return self


class MutualInfoSelector(_BaseSelector):
    """Keep the features whose mutual information with the label exceeds ``threshold`` nats.

    If no feature passes, the single best one is kept and a warning is logged.

    Attributes set by :meth:`fit`:
        scores_: mutual information of every input feature, nats, shape (n_features,).
        selected_: indices of the kept features, in input order.
        selected_names_: their names.
    """

    method = "mi"

    def __init__(self, threshold: float = 0.1, n_bins: int = 32, sample_size: int | None = 200_000,
                 seed: int = 0) -> None:
        self.threshold = threshold
        self.n_bins = n_bins
        self.sample_size = sample_size
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str] | None = None) -> MutualInfoSelector:
        """Score every column of ``X`` (shape (n_samples, n_features)) against ``y`` and keep those above the threshold."""
        self._start_fit(X, feature_names)
        self.scores_ = mutual_information(X, y, n_bins=self.n_bins, sample_size=self.sample_size, seed=self.seed)
        selected = np.flatnonzero(self.scores_ > self.threshold)
        if selected.size == 0:
            best = int(np.argmax(self.scores_))
            logger.warning(
                "no feature has mutual information above %.3g nats (best: %s with %.3g); keeping only that one",
                self.threshold, self.feature_names_in_[best], self.scores_[best],
            )
            selected = np.array([best])
        self._finish_fit(selected)
        return self

    def metadata(self) -> dict[str, Any]:
        meta = self._base_metadata(
            {"threshold": self.threshold, "n_bins": self.n_bins, "sample_size": self.sample_size, "seed": self.seed}
        )
        meta["scores"] = [float(s) for s in self.scores_]
        return meta

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> MutualInfoSelector:
        self = cls(**metadata["params"])
        self._restore(metadata)
        self.scores_ = np.asarray(metadata["scores"], dtype=np.float64)
        return self


class MIFSSelector(_BaseSelector):
    """Battiti's MIFS: greedy selection by relevance minus ``beta`` times the summed redundancy.

    The first feature is the most relevant one. Each later step adds the remaining feature f that
    maximises I(f; C) - beta * sum over selected s of I(f; s). Selection stops at ``k`` features, or
    when the best score falls below ``min_score``. The first feature is always kept, and ties go to
    the lower index.

    Attributes set by :meth:`fit`:
        scores_: relevance I(f; C) of every input feature, nats, shape (n_features,).
        selection_order_: indices in the order MIFS picked them.
        greedy_scores_: MIFS score of each pick, in that order, nats.
        selected_: the picked indices in input order; selected_names_ their names.
    """

    method = "mifs"

    def __init__(self, k: int = 20, beta: float = 0.5, min_score: float | None = None, n_bins: int = 32,
                 sample_size: int | None = 200_000, seed: int = 0) -> None:
        self.k = k
        self.beta = beta
        self.min_score = min_score
        self.n_bins = n_bins
        self.sample_size = sample_size
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str] | None = None) -> MIFSSelector:
        """Run the greedy MIFS selection on ``X`` (shape (n_samples, n_features)) and labels ``y``."""
        if self.k < 1:
            raise ValueError(f"MIFS needs k >= 1 features to select, got k={self.k}")
        self._start_fit(X, feature_names)
        codes, targets, n_classes = _prepare(X, y, self.n_bins, self.sample_size, self.seed)
        relevance = mutual_information_from_counts(_joint_counts(codes, self.n_bins, targets, n_classes))
        self.scores_ = relevance

        redundancy = np.zeros(self.n_features_in_)
        remaining = np.ones(self.n_features_in_, dtype=bool)
        order: list[int] = []
        greedy: list[float] = []
        for step in range(min(self.k, self.n_features_in_)):
            score = np.where(remaining, relevance - self.beta * redundancy, -np.inf)
            best = int(np.argmax(score))
            if step > 0 and self.min_score is not None and score[best] < self.min_score:
                break
            order.append(best)
            greedy.append(float(score[best]))
            remaining[best] = False
            candidates = np.flatnonzero(remaining)
            redundancy[candidates] += pairwise_mutual_information(codes, best, candidates)
        if self.min_score is not None and greedy[0] < self.min_score:
            logger.warning("the highest-scoring feature %s scores %.3g nats, below min_score %.3g; keeping it alone",
                           self.feature_names_in_[order[0]], greedy[0], self.min_score)

        self.selection_order_ = np.asarray(order, dtype=np.int64)
        self.greedy_scores_ = np.asarray(greedy, dtype=np.float64)
        self._finish_fit(self.selection_order_)
        return self

    def metadata(self) -> dict[str, Any]:
        meta = self._base_metadata({
            "k": self.k, "beta": self.beta, "min_score": self.min_score, "n_bins": self.n_bins,
            "sample_size": self.sample_size, "seed": self.seed,
        })
        meta["scores"] = [float(s) for s in self.scores_]
        meta["selection_order"] = [int(i) for i in self.selection_order_]
        meta["greedy_scores"] = [float(s) for s in self.greedy_scores_]
        return meta

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> MIFSSelector:
        self = cls(**metadata["params"])
        self._restore(metadata)
        self.scores_ = np.asarray(metadata["scores"], dtype=np.float64)
        self.selection_order_ = np.asarray(metadata["selection_order"], dtype=np.int64)
        self.greedy_scores_ = np.asarray(metadata["greedy_scores"], dtype=np.float64)
        return self


_SELECTORS: dict[str, Any] = {"none": KeepAllSelector, "mi": MutualInfoSelector, "mifs": MIFSSelector}


def make_selector(config: SelectionConfig, seed: int = 0) -> KeepAllSelector | MutualInfoSelector | MIFSSelector:
    """Build the selector that ``config.method`` names; ``seed`` seeds the MI sample."""
    if config.method == "none":
        return KeepAllSelector()
    if config.method == "mi":
        return MutualInfoSelector(config.mi_threshold, config.n_bins, config.sample_size, seed)
    if config.method == "mifs":
        return MIFSSelector(config.mifs_k, config.mifs_beta, config.mifs_min_score, config.n_bins,
                            config.sample_size, seed)
    raise ValueError(f"unknown selection method {config.method!r}; expected one of {', '.join(_SELECTORS)}")


def from_metadata(metadata: dict[str, Any]) -> KeepAllSelector | MutualInfoSelector | MIFSSelector:
    """Rebuild a fitted selector from its :meth:`metadata` dict (as read back from JSON)."""
    if metadata.get("format") != METADATA_FORMAT:
        raise ValueError(f"selector metadata has format {metadata.get('format')!r}; expected {METADATA_FORMAT!r}")
    method = metadata.get("method")
    if method not in _SELECTORS:
        raise ValueError(f"selector metadata names method {method!r}; expected one of {', '.join(_SELECTORS)}")
    return _SELECTORS[method].from_metadata(metadata)
