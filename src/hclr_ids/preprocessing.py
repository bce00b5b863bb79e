"""Cleaning, imputation, log transform and min-max scaling of flow-window features.

The steps run in a fixed order, with every statistic taken from the training rows passed to
:meth:`Preprocessor.fit`:

1. feature policy: ``"no-leak"`` drops :data:`hclr_ids.schema.LEAK_COLUMNS` (``IAT``), ``"all"`` keeps everything;
2. NaN and +-inf cells count as missing;
3. missing cells get the training mean (continuous columns) or the training mode (categorical columns);
4. columns constant on the training rows after imputation are dropped;
5. heavy-tailed continuous columns get ``sign(x) * log1p(|x|)``;
6. continuous columns are min-max scaled with the training min and max, and values outside [0, 1] are clipped;
7. categorical columns are one-hot encoded and appended after the continuous ones.

The fitted state is saved without pickle: :meth:`Preprocessor.state_tensors` returns arrays for safetensors and
:meth:`Preprocessor.metadata` returns a JSON-able dict; :meth:`Preprocessor.from_state` rebuilds the object.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hclr_ids.config import PreprocessConfig
from hclr_ids.schema import LEAK_COLUMNS

logger = logging.getLogger(__name__)

METADATA_FORMAT = "hclr-ids/preprocessor"
METADATA_VERSION = 1

# Relative tolerance of the missing-fraction threshold, so that 9 of 45 cells counts as exactly 20 %.
_FRACTION_TOLERANCE = 1e-9


@dataclass
class TransformReport:
    """Counts of the cells that the last ``transform`` call imputed or clipped, per column."""

    n_rows: int
    rows_over_missing_threshold: int
    """Rows whose fraction of missing cells (over all input columns) exceeds ``max_missing_fraction``."""
    missing: dict[str, int]
    """Cells imputed per used input column: NaN, empty and +-inf cells."""
    infinite: dict[str, int]
    """The +-inf cells per used input column (also counted in ``missing``)."""
    clipped_low: dict[str, int]
    """Cells below the training minimum per scaled column, clipped to 0."""
    clipped_high: dict[str, int]
    """Cells above the training maximum per scaled column, clipped to 1."""
    unknown_categories: dict[str, int]
    """Cells of a categorical column with a value not seen in training (all-zero one-hot)."""

    @property
    def total_missing(self) -> int:
        return sum(self.missing.values())

    @property
    def total_clipped(self) -> int:
        return sum(self.clipped_low.values()) + sum(self.clipped_high.values())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Preprocessor:
    """Imputation, constant-column removal, log transform and min-max scaling, fitted on training rows.

    Args:
        config: settings of every step; the defaults of :class:`PreprocessConfig` when None.

    Attributes set by :meth:`fit`:
        input_features_: names of the raw input columns, in the order ``transform`` expects.
        policy_dropped_: input columns removed by the feature policy.
        constant_columns_: input columns constant on the training rows after imputation, removed.
        continuous_columns_: input columns that are imputed with the mean and scaled, in input order.
        categorical_columns_: input columns that are imputed with the mode and one-hot encoded.
        log_columns_: continuous columns that get ``sign(x) * log1p(|x|)`` before scaling.
        fill_values_: training means of ``continuous_columns_``, shape (n_continuous,).
        data_min_, data_max_: training min and max of ``continuous_columns_`` after the log transform.
        category_fill_: training modes of ``categorical_columns_``.
        categories_: sorted training values of each categorical column.
        output_features_: names of the columns ``transform`` returns.
        last_report_: :class:`TransformReport` of the latest ``transform`` call.
    """

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config if config is not None else PreprocessConfig()
        self.last_report_: TransformReport | None = None

    # ------------------------------------------------------------------ fit

    def fit(self, X: np.ndarray, feature_names: Sequence[str]) -> Preprocessor:
        """Learn imputation values, dropped columns, log columns and scaling ranges from training rows.

        Args:
            X: raw training features, shape (n_samples, n_features); NaN and +-inf count as missing.
                Rows with too many missing cells should be removed first (see :meth:`excess_missing_rows`).
            feature_names: names of the columns of ``X``.
        """
        config = self.config
        X = _as_2d_float(X, "fit")
        names = _check_names(feature_names, X.shape[1])
        if config.features not in ("all", "no-leak"):
            raise ValueError(f"invalid feature policy {config.features!r}; expected 'all' or 'no-leak'")
        if not 0.0 <= config.max_missing_fraction <= 1.0:
            raise ValueError(f"max_missing_fraction must lie in [0, 1], got {config.max_missing_fraction}")
        unknown = [c for c in config.categorical_columns if c not in names]
        if unknown:
            raise ValueError(f"categorical columns {unknown} are not among the input columns {names}")
        if X.shape[0] == 0:
            raise ValueError("fit needs at least one training row, got an empty array")

        self.input_features_ = names
        self.n_features_in_ = len(names)
        leak = set(LEAK_COLUMNS) if config.features == "no-leak" else set()
        self.policy_dropped_ = [c for c in names if c in leak]
        used = [c for c in names if c not in leak]
        categorical = set(config.categorical_columns)

        continuous = [c for c in used if c not in categorical]
        fill, constant_cont, log_columns, data_min, data_max = self._fit_continuous(X, continuous)
        cat_used = [c for c in used if c in categorical]
        modes, categories, constant_cat = self._fit_categorical(X, cat_used)

        constant = set(constant_cont) | set(constant_cat)
        self.constant_columns_ = [c for c in used if c in constant]
        keep_cont = [i for i, c in enumerate(continuous) if c not in constant]
        self.continuous_columns_ = [continuous[i] for i in keep_cont]
        self.fill_values_ = fill[keep_cont]
        self.data_min_ = data_min[keep_cont]
        self.data_max_ = data_max[keep_cont]
        self.log_columns_ = [c for c in log_columns if c not in constant]
        keep_cat = [i for i, c in enumerate(cat_used) if c not in constant]
        self.categorical_columns_ = [cat_used[i] for i in keep_cat]
        self.category_fill_ = modes[keep_cat]
        self.categories_ = [categories[i] for i in keep_cat]
        self._set_derived()

        logger.info(
            "preprocessor fitted on %d rows: %d output columns; dropped by policy %s; constant %s; log transform %s",
            X.shape[0], len(self.output_features_), self.policy_dropped_, self.constant_columns_, self.log_columns_,
        )
        return self

    def _fit_continuous(
        self, X: np.ndarray, columns: list[str]
    ) -> tuple[np.ndarray, list[str], list[str], np.ndarray, np.ndarray]:
        idx = [self.input_features_.index(c) for c in columns]
        values = np.array(X[:, idx], dtype=np.float64)
        finite = np.isfinite(values)
        n_finite = finite.sum(axis=0)
        sums = np.where(finite, values, 0.0).sum(axis=0)
        fill = np.divide(sums, n_finite, out=np.zeros(len(columns)), where=n_finite > 0)
        for j in np.flatnonzero(n_finite == 0):
            logger.warning("column %r has no finite training value; it is imputed with 0 and dropped as constant",
                           columns[j])
        np.copyto(values, fill, where=~finite)

        lo = values.min(axis=0) if len(columns) else np.zeros(0)
        hi = values.max(axis=0) if len(columns) else np.zeros(0)
        constant = [c for c, a, b in zip(columns, lo, hi) if a == b]

        log_mask = np.zeros(len(columns), dtype=bool)
        if self.config.log_transform and len(columns):
            magnitude = np.abs(values)
            max_abs = magnitude.max(axis=0)
            median_abs = np.median(magnitude, axis=0)
            log_mask = (max_abs >= self.config.log_min_abs_max) & (max_abs >= self.config.log_tail_ratio * median_abs)
            log_mask &= lo != hi
        log_columns = [c for c, m in zip(columns, log_mask) if m]
        if log_mask.any():
            values[:, log_mask] = _signed_log1p(values[:, log_mask])
            lo = values.min(axis=0)
            hi = values.max(axis=0)
        return fill, constant, log_columns, lo, hi

    def _fit_categorical(self, X: np.ndarray, columns: list[str]) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
        modes = np.zeros(len(columns))
        categories: list[np.ndarray] = []
        constant: list[str] = []
        for j, name in enumerate(columns):
            column = X[:, self.input_features_.index(name)].astype(np.float64)
            column = column[np.isfinite(column)]
            if column.size == 0:
                logger.warning("categorical column %r has no finite training value; it is dropped as constant", name)
                categories.append(np.zeros(1))
                constant.append(name)
                continue
            values, counts = np.unique(column, return_counts=True)
            modes[j] = values[np.argmax(counts)]
            categories.append(values)
            if values.size == 1:
                constant.append(name)
        return modes, categories, constant

    def _set_derived(self) -> None:
        index = {c: i for i, c in enumerate(self.input_features_)}
        self._continuous_index = np.array([index[c] for c in self.continuous_columns_], dtype=np.int64)
        self._categorical_index = np.array([index[c] for c in self.categorical_columns_], dtype=np.int64)
        log_set = set(self.log_columns_)
        self._log_mask = np.array([c in log_set for c in self.continuous_columns_], dtype=bool)
        data_range = self.data_max_ - self.data_min_
        # A range of 0 only arises when the log transform merges distinct values; such a column scales to 0.
        self._data_range = np.where(data_range > 0, data_range, 1.0)
        names = list(self.continuous_columns_)
        for name, values in zip(self.categorical_columns_, self.categories_):
            names.extend(f"{name}={value:g}" for value in values)
        self.output_features_ = names

    # ------------------------------------------------------------ transform

    def excess_missing_rows(self, X: np.ndarray) -> np.ndarray:
        """Flag rows whose fraction of missing cells exceeds ``config.max_missing_fraction``.

        NaN and +-inf cells count as missing, over all columns of ``X``; a row at exactly the threshold is kept.
        Needs no fitting. Returns a bool array of shape (n_samples,).
        """
        X = _as_2d_float(X, "excess_missing_rows")
        if X.shape[1] == 0:
            return np.zeros(X.shape[0], dtype=bool)
        n_missing = (~np.isfinite(X)).sum(axis=1)
        limit = self.config.max_missing_fraction * X.shape[1]
        return n_missing > limit * (1.0 + _FRACTION_TOLERANCE)

    def transform(self, X: np.ndarray, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """Apply the fitted steps to raw rows; no row is dropped.

        Args:
            X: raw features, shape (n_samples, n_features_in_), columns in the order of ``input_features_``
                unless ``feature_names`` gives another order.
            feature_names: names of the columns of ``X``; when given, the columns are reordered by name.

        Returns:
            float32 array of shape (n_samples, len(output_features_)) with values in [0, 1].
            The counts of imputed and clipped cells are stored in ``last_report_``.
        """
        self._check_fitted("transform")
        X = _as_2d_float(X, "transform")
        X = self._align_columns(X, feature_names)

        values = np.array(X[:, self._continuous_index], dtype=np.float64)
        finite = np.isfinite(values)
        missing = (~finite).sum(axis=0)
        infinite = np.isinf(values).sum(axis=0)
        np.copyto(values, self.fill_values_, where=~finite)
        if self._log_mask.any():
            values[:, self._log_mask] = _signed_log1p(values[:, self._log_mask])
        values -= self.data_min_
        values /= self._data_range
        below = (values < 0.0).sum(axis=0)
        above = (values > 1.0).sum(axis=0)
        np.clip(values, 0.0, 1.0, out=values)

        blocks = [values.astype(np.float32)]
        cat_missing, unknown = [], []
        for j, column_index in enumerate(self._categorical_index):
            one_hot, n_missing, n_unknown = self._one_hot(X[:, column_index], j)
            blocks.append(one_hot)
            cat_missing.append(n_missing)
            unknown.append(n_unknown)
        out = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]

        cat_infinite = [int(np.isinf(X[:, i]).sum()) for i in self._categorical_index]
        self.last_report_ = TransformReport(
            n_rows=int(X.shape[0]),
            rows_over_missing_threshold=int(self.excess_missing_rows(X).sum()),
            missing=_count_dict(self.continuous_columns_, missing) | _count_dict(self.categorical_columns_, cat_missing),
            infinite=_count_dict(self.continuous_columns_, infinite)
            | _count_dict(self.categorical_columns_, cat_infinite),
            clipped_low=_count_dict(self.continuous_columns_, below),
            clipped_high=_count_dict(self.continuous_columns_, above),
            unknown_categories=_count_dict(self.categorical_columns_, unknown),
        )
        _log_report(self.last_report_)
        return out

    def fit_transform(self, X: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
        """Fit on ``X`` and return its transform (see :meth:`fit` and :meth:`transform`)."""
        return self.fit(X, feature_names).transform(X)

    def _one_hot(self, column: np.ndarray, j: int) -> tuple[np.ndarray, int, int]:
        column = column.astype(np.float64)
        finite = np.isfinite(column)
        column = np.where(finite, column, self.category_fill_[j])
        one_hot = (column[:, None] == self.categories_[j][None, :]).astype(np.float32)
        n_unknown = int((one_hot.sum(axis=1) == 0).sum())
        return one_hot, int((~finite).sum()), n_unknown

    def _align_columns(self, X: np.ndarray, feature_names: Sequence[str] | None) -> np.ndarray:
        expected = self.input_features_
        if feature_names is None:
            if X.shape[1] != len(expected):
                raise ValueError(
                    f"transform: X has {X.shape[1]} columns but the preprocessor was fitted on {len(expected)} "
                    f"({', '.join(expected)}); pass the same columns, or feature_names to check them by name"
                )
            return X
        names = _check_names(feature_names, X.shape[1])
        if names == expected:
            return X
        missing = [c for c in expected if c not in names]
        extra = [c for c in names if c not in expected]
        if missing or extra:
            raise ValueError(
                f"transform: columns differ from those seen in fit: missing {missing}, unexpected {extra}; "
                f"pass the {len(expected)} fitted columns ({', '.join(expected)})"
            )
        position = {c: i for i, c in enumerate(names)}
        return X[:, [position[c] for c in expected]]

    def _check_fitted(self, caller: str) -> None:
        if not hasattr(self, "input_features_"):
            raise RuntimeError(f"{caller} called before fit; call fit(X_train, feature_names) or load a fitted state")

    # ---------------------------------------------------------- persistence

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Return the fitted arrays, float64, keyed for a safetensors file."""
        self._check_fitted("state_tensors")
        tensors = {
            "fill_values": np.ascontiguousarray(self.fill_values_, dtype=np.float64),
            "data_min": np.ascontiguousarray(self.data_min_, dtype=np.float64),
            "data_max": np.ascontiguousarray(self.data_max_, dtype=np.float64),
            "category_fill": np.ascontiguousarray(self.category_fill_, dtype=np.float64),
        }
        for j, values in enumerate(self.categories_):
            tensors[f"categories.{j}"] = np.ascontiguousarray(values, dtype=np.float64)
        return tensors

    def metadata(self) -> dict[str, Any]:
        """Return the settings and the fitted column lists as a JSON-able dict."""
        self._check_fitted("metadata")
        config = dataclasses.asdict(self.config)
        config["categorical_columns"] = list(config["categorical_columns"])
        return {
            "format": METADATA_FORMAT,
            "version": METADATA_VERSION,
            "config": config,
            "input_features": list(self.input_features_),
            "policy_dropped": list(self.policy_dropped_),
            "constant_columns": list(self.constant_columns_),
            "continuous_columns": list(self.continuous_columns_),
            "categorical_columns": list(self.categorical_columns_),
            "log_columns": list(self.log_columns_),
            "output_features": list(self.output_features_),
        }

    @classmethod
    def from_state(cls, metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> Preprocessor:
        """Rebuild a fitted preprocessor from :meth:`metadata` and :meth:`state_tensors` output."""
        if metadata.get("format") != METADATA_FORMAT or metadata.get("version") != METADATA_VERSION:
            raise ValueError(
                f"preprocessor metadata has format {metadata.get('format')!r} version {metadata.get('version')!r}; "
                f"expected {METADATA_FORMAT!r} version {METADATA_VERSION}"
            )
        config_values = dict(metadata["config"])
        config_values["categorical_columns"] = tuple(config_values.get("categorical_columns", ()))
        self = cls(PreprocessConfig(**config_values))
        self.input_features_ = list(metadata["input_features"])
        self.n_features_in_ = len(self.input_features_)
        self.policy_dropped_ = list(metadata["policy_dropped"])
        self.constant_columns_ = list(metadata["constant_columns"])
        self.continuous_columns_ = list(metadata["continuous_columns"])
        self.categorical_columns_ = list(metadata["categorical_columns"])
        self.log_columns_ = list(metadata["log_columns"])

        n_cont, n_cat = len(self.continuous_columns_), len(self.categorical_columns_)
        self.fill_values_ = _tensor(tensors, "fill_values", n_cont)
        self.data_min_ = _tensor(tensors, "data_min", n_cont)
        self.data_max_ = _tensor(tensors, "data_max", n_cont)
        self.category_fill_ = _tensor(tensors, "category_fill", n_cat)
        self.categories_ = [_tensor(tensors, f"categories.{j}", None) for j in range(n_cat)]
        unknown = sorted(set(self.continuous_columns_ + self.categorical_columns_) - set(self.input_features_))
        if unknown:
            raise ValueError(f"preprocessor metadata names columns {unknown} that are not among its input_features")
        self._set_derived()
        if self.output_features_ != list(metadata["output_features"]):
            raise ValueError("preprocessor metadata output_features do not match its column lists and categories")
        return self

    # ---------------------------------------------------------------- torch

    def torch_module(self) -> Any:
        """Return a ``torch.nn.Module`` applying the fitted transform to raw float32 rows.

        The module takes a tensor of shape (n, n_features_in_) with columns in the order of ``input_features_``
        and returns float32 of shape (n, len(output_features_)). It computes in float64 like :meth:`transform`
        and uses only ONNX-exportable operations (index_select, where, isfinite, clamp, no boolean indexing).
        """
        self._check_fitted("torch_module")
        return _build_torch_module(self)


def _build_torch_module(pre: Preprocessor) -> Any:
    import torch
    from torch import nn

    class PreprocessModule(nn.Module):
        """Fitted imputation, log transform, min-max scaling and one-hot encoding of raw feature rows."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("continuous_index", torch.as_tensor(pre._continuous_index, dtype=torch.int64))
            self.register_buffer("fill_values", torch.as_tensor(pre.fill_values_, dtype=torch.float64))
            self.register_buffer("log_mask", torch.as_tensor(pre._log_mask, dtype=torch.bool))
            self.register_buffer("data_min", torch.as_tensor(pre.data_min_, dtype=torch.float64))
            self.register_buffer("data_range", torch.as_tensor(pre._data_range, dtype=torch.float64))
            self.categorical_index = [int(i) for i in pre._categorical_index]
            for j in range(len(self.categorical_index)):
                self.register_buffer(f"categories_{j}", torch.as_tensor(pre.categories_[j], dtype=torch.float64))
                self.register_buffer(f"category_fill_{j}", torch.as_tensor(pre.category_fill_[j], dtype=torch.float64))

        def forward(self, raw: torch.Tensor) -> torch.Tensor:
            values = torch.index_select(raw, 1, self.continuous_index).to(torch.float64)
            values = torch.where(torch.isfinite(values), values, self.fill_values)
            logged = torch.sign(values) * torch.log1p(torch.abs(values))
            values = torch.where(self.log_mask, logged, values)
            values = torch.clamp((values - self.data_min) / self.data_range, 0.0, 1.0)
            blocks = [values.to(torch.float32)]
            for j, column_index in enumerate(self.categorical_index):
                column = raw[:, column_index : column_index + 1].to(torch.float64)
                column = torch.where(torch.isfinite(column), column, getattr(self, f"category_fill_{j}"))
                blocks.append((column == getattr(self, f"categories_{j}")).to(torch.float32))
            if len(blocks) == 1:
                return blocks[0]
            return torch.cat(blocks, dim=1)

    return PreprocessModule()


def _signed_log1p(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def _as_2d_float(X: np.ndarray, caller: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{caller}: expected a 2-D array of shape (n_samples, n_features), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"{caller}: expected a numeric array, got dtype {X.dtype}; parse the cells to floats first")
    return X


def _check_names(feature_names: Sequence[str], n_columns: int) -> list[str]:
    names = [str(name) for name in feature_names]
    if len(names) != n_columns:
        raise ValueError(f"got {len(names)} feature names for {n_columns} columns")
    unique, counts = np.unique(names, return_counts=True)
    duplicates = unique[counts > 1].tolist()
    if duplicates:
        raise ValueError(f"duplicate feature names {duplicates}; every column needs a distinct name")
    return names


def _count_dict(names: Sequence[str], counts: Sequence[int] | np.ndarray) -> dict[str, int]:
    return {name: int(count) for name, count in zip(names, counts)}


def _tensor(tensors: dict[str, np.ndarray], key: str, length: int | None) -> np.ndarray:
    if key not in tensors:
        raise ValueError(f"preprocessor state has no tensor {key!r}; the safetensors file is incomplete")
    values = np.asarray(tensors[key], dtype=np.float64).reshape(-1)
    if length is not None and values.shape[0] != length:
        raise ValueError(f"preprocessor tensor {key!r} has {values.shape[0]} values, expected {length}")
    return values


def _top_counts(counts: dict[str, int], limit: int = 5) -> str:
    items = sorted(((n, c) for c, n in counts.items() if n), reverse=True)
    text = ", ".join(f"{c} {n}" for n, c in items[:limit])
    if len(items) > limit:
        text += f", and {len(items) - limit} more columns"
    return text


def _log_report(report: TransformReport) -> None:
    if report.total_missing:
        logger.warning(
            "imputed %d missing or infinite cells with training statistics in %d rows (%s)",
            report.total_missing, report.n_rows, _top_counts(report.missing),
        )
    if report.total_clipped:
        clipped = {c: report.clipped_low[c] + report.clipped_high[c] for c in report.clipped_low}
        logger.warning(
            "clipped %d cells outside the training range to [0, 1] (%s)", report.total_clipped, _top_counts(clipped)
        )
    n_unknown = sum(report.unknown_categories.values())
    if n_unknown:
        logger.warning(
            "%d categorical cells contain values not seen in training (%s)",
            n_unknown, _top_counts(report.unknown_categories),
        )
    if report.rows_over_missing_threshold:
        logger.warning(
            "%d rows have more missing cells than the training threshold; they were imputed, not dropped",
            report.rows_over_missing_threshold,
        )
