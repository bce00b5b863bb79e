"""Load CICIoMT2024 flow-window features into one float32 matrix with labels and provenance.

Two inputs are supported. The release layout (``WiFI_and_MQTT/attacks/csv/{train,test}/*.pcap.csv``)
has 45 feature columns and no label column, so each row's class comes from its file name. A labelled
table (CSV or Parquet files) carries the class in a named column.

Every file is checked the same way: required columns, no unexpected columns, one header for all files,
and every cell numeric, missing or infinite. A bad input raises ``ValueError`` naming the file, row,
column and value. Missing cells become NaN and infinities stay ±inf in ``Dataset.X``, so preprocessing
can count both per column. Nothing is dropped.

Release files are parsed once and cached as Parquet (one file per source CSV), so a second load of the
8.8 million release rows reads binary columns instead of text.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from hclr_ids.schema import (
    CATEGORIES,
    CLASS_CATEGORIES,
    FEATURE_COLUMNS,
    LAYOUT39_MISSING,
    LAYOUT39_RENAMES,
    RELEASE_FILE_PATTERN,
    RELEASE_FILE_PATTERN_TEXT,
    Task,
    task_label,
)

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

#: Cell spellings read as a missing value (compared after stripping spaces, in any case).
MISSING_SPELLINGS: frozenset[str] = frozenset({"", "nan", "+nan", "-nan", "n/a", "na", "null"})
#: Cell spellings read as +inf and -inf (compared after stripping spaces, in any case).
POSITIVE_INF_SPELLINGS: frozenset[str] = frozenset({"inf", "+inf", "infinity", "+infinity"})
NEGATIVE_INF_SPELLINGS: frozenset[str] = frozenset({"-inf", "-infinity"})

#: Environment variable that moves the Parquet cache of release files.
CACHE_ENV_VAR = "HCLR_IDS_CACHE"
#: Bumped whenever parsing changes, so that older cache entries are no longer matched.
CACHE_FORMAT = 1
_CACHE_METADATA_KEY = b"hclr_ids"
_HASH_COLUMNS = ("_row_hash_0", "_row_hash_1")

#: Column names that ``read_features`` ignores as a label column when none is named (any case).
DEFAULT_LABEL_COLUMNS: tuple[str, ...] = ("label",)

_RELEASE_SUBPATH = ("WiFI_and_MQTT", "attacks", "csv")
_RELEASE_SIDES = ("train", "test")
_TABLE_SUFFIXES = (".csv", ".parquet", ".pq")

#: The 39-column CIC layout's own column names, in release order.
_LAYOUT39_COLUMNS: tuple[str, ...] = tuple(
    {release: source for source, release in LAYOUT39_RENAMES.items()}.get(name, name)
    for name in FEATURE_COLUMNS
    if name not in LAYOUT39_MISSING
)


@dataclass
class SourceFile:
    """One input file and where its rows sit in a ``Dataset``."""

    path: Path
    class_name: str | None
    """Class from the release file name; None for a labelled table."""
    side: str | None
    """``"train"`` or ``"test"`` for release files; None otherwise."""
    n_rows: int
    row_offset: int
    """Index of the file's first row in the Dataset."""


@dataclass(eq=False)
class Dataset:
    """Feature rows of one or more files, their labels and where each row came from.

    ``X`` has shape (n_rows, n_features), float32, with NaN for missing cells and ±inf kept.
    """

    X: np.ndarray
    feature_names: list[str]
    labels: np.ndarray
    """Class name of each row (object array of str)."""
    file_index: np.ndarray
    """Index into ``files`` of each row's file (int32)."""
    row_number: np.ndarray
    """1-based data row of each row within its file: data row 1 is line 2 (int64)."""
    files: list[SourceFile]
    label_source: str
    """``"file name"`` for the release layout, else the label column's name."""
    label_names: np.ndarray | None = field(default=None, repr=False)
    """Distinct labels, sorted; with ``label_codes`` a compact form of ``labels``. Built on demand."""
    label_codes: np.ndarray | None = field(default=None, repr=False)
    """Index into ``label_names`` of each row (int32)."""
    row_hash: np.ndarray | None = field(default=None, repr=False)
    """Two 64-bit hashes of each row's features as parsed in float64, shape (n_rows, 2), uint64.

    Duplicate checks use these rather than ``X`` because float32 merges rows that differ in the
    source: ``IAT`` values near 1.7e8 are stored in steps of 16. None for a Dataset built by hand.
    """

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def encode_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the sorted distinct labels and each row's index into them (int32)."""
        if self.label_names is None or self.label_codes is None:
            names, codes = np.unique(self.labels.astype(str), return_inverse=True)
            self.label_names = names.astype(object)
            self.label_codes = codes.astype(np.int32).reshape(-1)
        return self.label_names, self.label_codes

    def target_codes(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        """Return the sorted distinct labels of ``task`` and each row's index into them (int32).

        Release class names map through ``schema.task_label``. Other labels of a labelled table stay
        as they are for ``"multiclass"``. For ``"binary"``, ``Benign`` and ``benign`` map to ``Benign``
        and the rest to ``Attack``. ``"category"`` accepts only release class or category names.
        """
        names, codes = self.encode_labels()
        mapped = np.array([_task_label_of(str(name), task, self.label_source) for name in names], dtype=object)
        task_names, name_to_task = np.unique(mapped.astype(str), return_inverse=True)
        return task_names.astype(object), name_to_task.astype(np.int32)[codes]

    def targets(self, task: Task) -> np.ndarray:
        """Return each row's label under ``task`` (object array of str)."""
        names, codes = self.target_codes(task)
        return names[codes]

    def subset(self, indices: np.ndarray) -> Dataset:
        """Return the rows at ``indices`` as a new Dataset.

        ``files`` keeps every file so that ``file_index`` stays valid. Each file's ``n_rows`` counts
        its rows in the subset and ``row_offset`` is the number of subset rows of earlier files, which
        is the position of its first row when ``indices`` keep the file order (sorted indices do).
        """
        indices = np.asarray(indices, dtype=np.int64)
        file_index = self.file_index[indices]
        counts = np.bincount(file_index, minlength=len(self.files))
        offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
        files = [
            SourceFile(f.path, f.class_name, f.side, int(count), int(offset))
            for f, count, offset in zip(self.files, counts, offsets)
        ]
        names, codes = self.encode_labels()
        return Dataset(
            X=self.X[indices],
            feature_names=list(self.feature_names),
            labels=self.labels[indices],
            file_index=file_index,
            row_number=self.row_number[indices],
            files=files,
            label_source=self.label_source,
            label_names=names,
            label_codes=codes[indices],
            row_hash=None if self.row_hash is None else self.row_hash[indices],
        )


def _task_label_of(label: str, task: Task, label_source: str) -> str:
    if label in CLASS_CATEGORIES:
        return task_label(label, task)
    if task == "multiclass":
        return label
    if task == "binary":
        return "Benign" if label in ("Benign", "benign") else "Attack"
    if task == "category" and label in CATEGORIES:
        return label
    raise ValueError(
        f"label {label!r} (from {label_source}) is neither a release class nor a category, so it has no "
        f"{task!r} label; use task 'multiclass' or 'binary', or relabel the rows with the release class names"
    )


# ---------------------------------------------------------------------------------------------------------
# Finding files


def parse_release_name(path: Path) -> tuple[str, str]:
    """Return the class and side (``"train"``/``"test"``) of a release file name.

    ``TCP_IP-DDoS-UDP3_train.pcap.csv`` is class ``TCP_IP-DDoS-UDP``, side ``train``.
    """
    match = RELEASE_FILE_PATTERN.match(path.name)
    if match is None or match["stem"] not in CLASS_CATEGORIES:
        raise ValueError(
            f"{path}: file name {path.name!r} names no known class; expected {RELEASE_FILE_PATTERN_TEXT}. "
            "Rename the file or move it out of the release folder"
        )
    return match["stem"], match["side"]


def find_release_files(path: str | Path) -> list[Path]:
    """Find the ``*.pcap.csv`` files of the release layout at or below ``path``.

    ``path`` may be the release root or any folder below it down to ``csv/train`` or ``csv/test``.
    Files are ordered train before test, then by class and part number. Raises ``FileNotFoundError``
    when no file is found and ``ValueError`` for a file name that names no class.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder; pass the release root or a folder below it")
    csv_dir = _release_csv_dir(root)
    if csv_dir is None:
        folders = [root]
    elif csv_dir == root and root.name in _RELEASE_SIDES:
        folders = [root]
    else:
        folders = [csv_dir / side for side in _RELEASE_SIDES]
    files = [file for folder in folders if folder.is_dir() for file in folder.glob("*.pcap.csv") if file.is_file()]
    if not files:
        raise FileNotFoundError(
            f"{root}: no release files found; expected {'/'.join(_RELEASE_SUBPATH)}/{{train,test}}/"
            f"{RELEASE_FILE_PATTERN_TEXT}"
        )
    for file in files:
        parse_release_name(file)
    return sorted(files, key=_release_sort_key)


def _release_csv_dir(root: Path) -> Path | None:
    """Return the folder that contains ``train/`` and ``test/`` (or the side folder itself), if any."""
    if root.name in _RELEASE_SIDES:
        return root
    for depth in range(len(_RELEASE_SUBPATH), -1, -1):
        candidate = root.joinpath(*_RELEASE_SUBPATH[len(_RELEASE_SUBPATH) - depth:])
        if any((candidate / side).is_dir() for side in _RELEASE_SIDES):
            return candidate
    return None


def _release_sort_key(path: Path) -> tuple[int, str, int]:
    match = RELEASE_FILE_PATTERN.match(path.name)
    assert match is not None  # checked by parse_release_name
    return _RELEASE_SIDES.index(match["side"]), match["stem"], int(match["part"] or 0)


def _table_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _TABLE_SUFFIXES)
    if files:
        return files
    if _release_csv_dir(path) is not None:
        return find_release_files(path)
    raise FileNotFoundError(f"{path}: no CSV or Parquet files found (looked for {', '.join(_TABLE_SUFFIXES)})")


# ---------------------------------------------------------------------------------------------------------
# Header checks


@dataclass
class _ColumnPlan:
    """Mapping of one file's columns onto the 45 release features."""

    header: list[str]
    """Column names as stripped of surrounding spaces, in file order."""
    sources: dict[str, str]
    """Release feature name to the file's column that contains it."""
    label_column: str | None
    ignored: list[str]
    layout: str
    """``"release"`` (45 columns) or ``"layout39"`` (the newer 39-column CIC layout)."""
    warnings: list[str]


def _read_csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        first_line = handle.readline()
    if not first_line.strip():
        raise ValueError(f"{path}: file is empty (no header line); remove it or write the CSV header and rows")
    return next(csv.reader([first_line]))


def _plan_columns(
    path: Path, raw_names: list[str], label_column: str | None, ignore_columns: tuple[str, ...] = ()
) -> _ColumnPlan:
    """Check a header and decide which column contains each release feature."""
    warnings: list[str] = []
    names = [name.strip() for name in raw_names]
    stripped = [raw for raw, name in zip(raw_names, names) if raw != name]
    if stripped:
        warnings.append(f"{path}: stripped spaces around {len(stripped)} column names: {stripped}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: column names {duplicates} appear more than once in the header; keep one of each")

    if label_column is not None and label_column not in names:
        raise ValueError(
            f"{path}: label column {label_column!r} not found; the columns are {names}. "
            "Pass the name of the column that contains the class"
        )
    ignored = [name for name in names if name != label_column and name.lower() in ignore_columns]

    layout39 = "Time_To_Live" in names and "Duration" not in names
    required = _LAYOUT39_COLUMNS if layout39 else FEATURE_COLUMNS
    missing = [name for name in required if name not in names]
    if missing:
        raise ValueError(
            f"{path}: missing required columns {missing}. Expected the 45 release columns {list(FEATURE_COLUMNS)} "
            f"or the 39-column CIC layout {list(_LAYOUT39_COLUMNS)}; found {names}. Add or rename the columns"
        )
    optional = LAYOUT39_MISSING if layout39 else ()
    known = set(required) | set(optional) | {label_column} | set(ignored)
    extra = [name for name in names if name not in known]
    if extra:
        hint = f"other than the label column {label_column!r}" if label_column else "and no label column was named"
        raise ValueError(
            f"{path}: unexpected columns {extra} ({hint}). Remove them, or name the one that contains the class "
            "as the label column"
        )

    sources = {name: name for name in FEATURE_COLUMNS if name in names}
    if layout39:
        for source, release in LAYOUT39_RENAMES.items():
            sources[release] = source
        filled = [name for name in LAYOUT39_MISSING if name not in names]
        warnings.append(
            f"{path}: 39-column CIC layout; renamed {LAYOUT39_RENAMES}, "
            f"derived missing columns {filled}: Srate = Rate and Drate = 0 as the CIC extractor computes them, "
            "the others are NaN"
        )
    return _ColumnPlan(names, sources, label_column, ignored, "layout39" if layout39 else "release", warnings)


def _check_same_header(path: Path, header: list[str], first_path: Path, first: list[str]) -> None:
    if header == first:
        return
    for position, (name, first_name) in enumerate(zip(header, first), start=1):
        if name != first_name:
            raise ValueError(
                f"{path}: header differs from {first_path}: column {position} is {name!r} here and "
                f"{first_name!r} there. Load files with one column layout together"
            )
    raise ValueError(
        f"{path}: header differs from {first_path}: {len(header)} columns here, {len(first)} there. "
        "Load files with one column layout together"
    )


# ---------------------------------------------------------------------------------------------------------
# Cell parsing


def _parse_string_column(path: Path, name: str, values: pl.Series, row_offset: int = 0) -> pl.Series:
    """Parse a column of text cells into float64, with the missing and infinity spellings.

    Raises ``ValueError`` at the first cell that is not a number, a missing value or an infinity.
    """
    import polars as pl

    text = values.str.strip_chars()
    numbers = text.cast(pl.Float64, strict=False)
    unparsed = numbers.is_null() & text.is_not_null()
    if not unparsed.any():
        return numbers.fill_null(float("nan"))
    lower = text.str.to_lowercase()
    missing = lower.is_in(list(MISSING_SPELLINGS)).fill_null(True)
    positive = lower.is_in(list(POSITIVE_INF_SPELLINGS)).fill_null(False)
    negative = lower.is_in(list(NEGATIVE_INF_SPELLINGS)).fill_null(False)
    invalid = unparsed & ~(missing | positive | negative)
    if invalid.any():
        positions = invalid.arg_true()
        first = int(positions[0])
        row = row_offset + first + 1
        raise ValueError(
            f"{path}: row {row} (line {row + 1}), column {name!r}: cannot parse {values[first]!r} as a number "
            f"({len(positions)} such cells in this column). Fix the cell: write a number, leave it empty or "
            "write NaN for a missing value, or inf / -inf for infinity"
        )
    result = numbers.fill_null(float("nan")).to_numpy().copy()
    result[positive.to_numpy()] = np.inf
    result[negative.to_numpy()] = -np.inf
    return pl.Series(name, result, dtype=pl.Float64)


def _check_field_counts(path: Path, n_columns: int) -> None:
    """Raise on a data line whose field count is not ``n_columns`` (short, long or blank lines).

    Counts separators per line on the raw bytes; quoted fields that contain commas are not supported,
    which the release and the CIC extractor never write.
    """
    data = np.fromfile(path, dtype=np.uint8)
    newlines = np.flatnonzero(data == ord("\n"))
    ends = newlines if newlines.size and newlines[-1] == data.size - 1 else np.append(newlines, data.size)
    commas = np.flatnonzero(data == ord(","))
    per_line = np.diff(np.searchsorted(commas, ends), prepend=0)
    bad = np.flatnonzero(per_line[1:] != n_columns - 1)
    if bad.size:
        row = int(bad[0]) + 1
        raise ValueError(
            f"{path}: row {row} (line {row + 1}) has {int(per_line[row]) + 1} fields, expected {n_columns} "
            f"like the header ({bad.size} such lines; blank lines count). Fix or remove the line"
        )


# ---------------------------------------------------------------------------------------------------------
# Reading one file


@dataclass
class _FileFrame:
    """One file's features as 45 float32 columns in release order, plus row hashes and raw labels."""

    features: pl.DataFrame
    row_hash: np.ndarray
    """Shape (n_rows, 2), uint64: see ``Dataset.row_hash``."""
    labels: pl.Series | None
    plan: _ColumnPlan


def _read_file(path: Path, label_column: str | None, ignore_columns: tuple[str, ...] = ()) -> _FileFrame:
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet_file(path, label_column, ignore_columns)
    return _read_csv_file(path, label_column, ignore_columns)


def _read_csv_file(path: Path, label_column: str | None, ignore_columns: tuple[str, ...]) -> _FileFrame:
    import polars as pl

    raw_names = _read_csv_header(path)
    plan = _plan_columns(path, raw_names, label_column, ignore_columns)
    feature_set = set(plan.sources.values())
    # The header is skipped and replaced by the stripped names, so spaces in names do not matter here.
    typed_schema = {name: (pl.Float64 if name in feature_set else pl.String) for name in plan.header}
    frame: pl.DataFrame | None
    try:
        frame = pl.read_csv(path, has_header=False, skip_rows=1, schema=typed_schema)
    except pl.exceptions.PolarsError as error:
        logger.debug("%s: typed CSV parse failed, reparsing as text: %s", path, error)
        frame = None
    # A short or blank line reads as nulls, so any null sends the file through the checked text parse.
    if frame is not None and sum(frame.select(list(feature_set)).null_count().row(0)) > 0:
        frame = None
    if frame is None:
        frame = _read_csv_as_text(path, plan)
    if frame.height == 0:
        raise ValueError(f"{path}: file has a header but no data rows; remove the file or add rows")
    return _assemble(path, frame, plan)


def _read_csv_as_text(path: Path, plan: _ColumnPlan) -> pl.DataFrame:
    import polars as pl

    _check_field_counts(path, len(plan.header))
    text_schema = dict.fromkeys(plan.header, pl.String)
    frame = pl.read_csv(path, has_header=False, skip_rows=1, schema=text_schema)
    parsed = [
        _parse_string_column(path, name, frame[name]) for name in plan.header if name in plan.sources.values()
    ]
    return frame.with_columns(parsed)


def _read_parquet_file(path: Path, label_column: str | None, ignore_columns: tuple[str, ...]) -> _FileFrame:
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except pl.exceptions.PolarsError as error:
        raise ValueError(f"{path}: cannot read as Parquet ({error}); check that the file is a complete Parquet file") from error
    plan = _plan_columns(path, frame.columns, label_column, ignore_columns)
    frame = frame.rename(dict(zip(frame.columns, plan.header)))
    if frame.height == 0:
        raise ValueError(f"{path}: file has columns but no data rows; remove the file or add rows")
    parsed = []
    for name in plan.sources.values():
        column = frame[name]
        if column.dtype == pl.String:
            parsed.append(_parse_string_column(path, name, column))
        elif column.dtype.is_numeric():
            parsed.append(column.cast(pl.Float64).fill_null(float("nan")))
        else:
            raise ValueError(
                f"{path}: column {name!r} has type {column.dtype}, expected numbers; convert it to float"
            )
    return _assemble(path, frame.with_columns(parsed), plan)


def _hash_rows(features: pl.DataFrame) -> np.ndarray:
    """Return two seeded 64-bit hashes of each row, shape (n_rows, 2), uint64."""
    return np.column_stack([features.hash_rows(seed=0).to_numpy(), features.hash_rows(seed=1).to_numpy()])


def _assemble(path: Path, frame: pl.DataFrame, plan: _ColumnPlan) -> _FileFrame:
    """Order the features as the release does, derive missing 39-layout columns, and take the labels."""
    import polars as pl

    columns = []
    for name in FEATURE_COLUMNS:
        source = plan.sources.get(name)
        if source is not None:
            column = pl.col(source).fill_null(float("nan"))
        elif name == "Srate":
            column = pl.col(plan.sources["Rate"]).fill_null(float("nan"))
        elif name == "Drate":
            column = pl.lit(0.0)
        else:
            column = pl.lit(float("nan"))
        columns.append(column.cast(pl.Float64).alias(name))
    full_precision = frame.select(columns)
    row_hash = _hash_rows(full_precision)
    features = full_precision.cast(pl.Float32)
    del full_precision

    labels = None
    if plan.label_column is not None:
        labels = frame[plan.label_column].cast(pl.String)
        empty = labels.is_null() | (labels.str.strip_chars() == "")
        if empty.any():
            row = int(empty.arg_true()[0]) + 1
            raise ValueError(
                f"{path}: row {row}, column {plan.label_column!r}: label is empty ({int(empty.sum())} such rows). "
                "Fill in the class of every row"
            )
    for message in plan.warnings:
        logger.warning("%s", message)
    return _FileFrame(features, row_hash, labels, plan)


# ---------------------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    """Return ``$HCLR_IDS_CACHE`` if set, else ``~/.cache/hclr-ids``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured) if configured else Path.home() / ".cache" / "hclr-ids"


def _cache_path(cache_dir: Path, source: Path) -> Path:
    import polars as pl

    absolute = source.resolve()
    stat = absolute.stat()
    # Polars promises stable row hashes only within one version, so its version is part of the key.
    key = f"{CACHE_FORMAT}\0{pl.__version__}\0{absolute}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return cache_dir / f"{absolute.name.removesuffix('.csv')}-{digest}.parquet"


def _write_cache(path: Path, frame: _FileFrame, source: Path) -> None:
    import polars as pl
    import pyarrow.parquet as pq

    table = frame.features.with_columns(
        pl.Series(_HASH_COLUMNS[0], frame.row_hash[:, 0]), pl.Series(_HASH_COLUMNS[1], frame.row_hash[:, 1])
    ).to_arrow()
    metadata = {
        "source": str(source.resolve()),
        "format": CACHE_FORMAT,
        "header": frame.plan.header,
        "warnings": frame.plan.warnings,
    }
    table = table.replace_schema_metadata({_CACHE_METADATA_KEY: json.dumps(metadata).encode("utf-8")})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@dataclass
class _CacheEntry:
    n_rows: int
    header: list[str]
    """The source file's column names, stripped."""
    warnings: list[str]


def _read_cache_entry(path: Path) -> _CacheEntry | None:
    """Return the row count, header and load warnings of a cache entry; None if absent or unreadable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        metadata = pq.read_metadata(path)
        info = json.loads(metadata.metadata[_CACHE_METADATA_KEY])
    except (OSError, KeyError, TypeError, ValueError, pa.ArrowException) as error:
        logger.warning("%s: ignoring unreadable cache entry (%s)", path, error)
        return None
    return _CacheEntry(metadata.num_rows, list(info["header"]), list(info["warnings"]))


# ---------------------------------------------------------------------------------------------------------
# Public loaders


def load_release(path: str | Path, *, cache_dir: str | Path | None = None, cache: bool = True) -> Dataset:
    """Load every release file at or below ``path``, labelled by file name.

    Each file is parsed once and kept as Parquet in ``cache_dir`` (default ``default_cache_dir()``),
    keyed by its absolute path, size and modification time. Rows are written straight into one
    preallocated matrix, so peak memory is about the matrix plus one file. ``cache=False`` parses
    every file and keeps all of them in memory until the matrix is built.
    """
    files = find_release_files(path)
    started = time.perf_counter()
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sources: list[tuple[Path, str, str, int]] = []
    frames: dict[Path, _FileFrame] = {}
    first_header: tuple[Path, list[str]] | None = None
    hits = 0
    for file in files:
        class_name, side = parse_release_name(file)
        cache_path = _cache_path(directory, file)
        entry = _read_cache_entry(cache_path) if cache else None
        if entry is not None:
            for message in entry.warnings:
                logger.warning("%s", message)
            n_rows, header = entry.n_rows, entry.header
            hits += 1
        else:
            frame = _read_file(file, None)
            n_rows, header = frame.features.height, frame.plan.header
            # Keep the parsed frame only when it cannot be read back from the cache.
            if not (cache and _try_write_cache(cache_path, frame, file)):
                frames[file] = frame
        if first_header is None:
            first_header = (file, header)
        else:
            _check_same_header(file, header, *first_header)
        sources.append((file, class_name, side, n_rows))

    dataset = _fill_release_dataset(sources, frames, directory)
    logger.info(
        "loaded %d rows from %d release files (%d from the cache in %s) in %.1f s",
        len(dataset), len(files), hits, directory, time.perf_counter() - started,
    )
    return dataset


def _try_write_cache(path: Path, frame: _FileFrame, source: Path) -> bool:
    try:
        _write_cache(path, frame, source)
    except OSError as error:
        logger.warning("%s: cannot write the cache entry (%s); the file will be parsed again next time", path, error)
        return False
    return True


def _fill_release_dataset(
    sources: list[tuple[Path, str, str, int]], frames: dict[Path, _FileFrame], cache_dir: Path
) -> Dataset:
    import pyarrow.parquet as pq

    total = sum(n for *_, n in sources)
    X = np.empty((total, len(FEATURE_COLUMNS)), dtype=np.float32)
    class_names = sorted({class_name for _, class_name, _, _ in sources})
    label_names = np.array(class_names, dtype=object)
    label_codes = np.empty(total, dtype=np.int32)
    file_index = np.empty(total, dtype=np.int32)
    row_number = np.empty(total, dtype=np.int64)
    row_hash = np.empty((total, 2), dtype=np.uint64)
    files: list[SourceFile] = []
    offset = 0
    for index, (file, class_name, side, n_rows) in enumerate(sources):
        block = slice(offset, offset + n_rows)
        if file in frames:
            frame = frames.pop(file)
            arrays = [column.to_numpy() for column in frame.features.get_columns()]
            row_hash[block] = frame.row_hash
        else:
            table = pq.read_table(_cache_path(cache_dir, file))
            arrays = [table.column(name).to_numpy() for name in FEATURE_COLUMNS]
            for j, name in enumerate(_HASH_COLUMNS):
                row_hash[block, j] = table.column(name).to_numpy()
        _write_rows(X[block], arrays)
        del arrays
        label_codes[block] = class_names.index(class_name)
        file_index[block] = index
        row_number[block] = np.arange(1, n_rows + 1)
        files.append(SourceFile(file, class_name, side, n_rows, offset))
        offset += n_rows
    return Dataset(
        X=X,
        feature_names=list(FEATURE_COLUMNS),
        labels=label_names[label_codes],
        file_index=file_index,
        row_number=row_number,
        files=files,
        label_source="file name",
        label_names=label_names,
        label_codes=label_codes,
        row_hash=row_hash,
    )


def _write_rows(target: np.ndarray, columns: list[np.ndarray], chunk_rows: int = 16_384) -> None:
    """Copy column arrays into the rows of ``target`` (n_rows, n_columns), a cache-sized block at a time.

    Writing one column at a time into a row-major matrix touches every row once per column, which
    measured about 3 times slower than stacking blocks of rows.
    """
    for start in range(0, target.shape[0], chunk_rows):
        stop = min(start + chunk_rows, target.shape[0])
        np.stack([values[start:stop] for values in columns], axis=1, out=target[start:stop])


def load_table(path: str | Path, *, label_column: str | None, class_name: str | None = None) -> Dataset:
    """Load a labelled CSV or Parquet file, or a folder of them, taking labels from ``label_column``.

    A table without a label column can be loaded with ``label_column=None`` and ``class_name``,
    which labels every row with that class.
    """
    import polars as pl

    if (label_column is None) == (class_name is None):
        raise ValueError("pass exactly one of label_column (the column that contains the class) and class_name")
    files = _table_files(Path(path))
    frames: list[_FileFrame] = []
    for file in files:
        frame = _read_file(file, label_column)
        if frames:
            _check_same_header(file, frame.plan.header, files[0], frames[0].plan.header)
        frames.append(frame)

    counts = [frame.features.height for frame in frames]
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(int)
    features = pl.concat([frame.features for frame in frames], how="vertical")
    X = np.ascontiguousarray(features.to_numpy(), dtype=np.float32)
    del features
    if label_column is not None:
        label_series = pl.concat([frame.labels for frame in frames if frame.labels is not None])
        label_names, label_codes = _encode_series(label_series)
    else:
        label_names = np.array([class_name], dtype=object)
        label_codes = np.zeros(len(X), dtype=np.int32)
    source_files = [
        SourceFile(file, None, None, count, int(offset)) for file, count, offset in zip(files, counts, offsets)
    ]
    logger.info("loaded %d labelled rows from %d files", len(X), len(files))
    return Dataset(
        X=X,
        feature_names=list(FEATURE_COLUMNS),
        labels=label_names[label_codes],
        file_index=np.repeat(np.arange(len(files), dtype=np.int32), counts),
        row_number=np.concatenate([np.arange(1, n + 1, dtype=np.int64) for n in counts]),
        files=source_files,
        label_source=label_column if label_column is not None else "class_name argument",
        label_names=label_names,
        label_codes=label_codes,
        row_hash=np.concatenate([frame.row_hash for frame in frames]),
    )


def _encode_series(labels: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    import polars as pl

    names = labels.unique().sort()
    codes = labels.replace_strict(names, pl.int_range(names.len(), eager=True), return_dtype=pl.Int32)
    return np.array(names.to_list(), dtype=object), codes.to_numpy()


def load_dataset(
    path: str | Path, *, label_column: str | None = None, cache_dir: str | Path | None = None
) -> Dataset:
    """Load a labelled table when ``label_column`` is given, else the release layout."""
    if label_column is not None:
        return load_table(path, label_column=label_column)
    return load_release(path, cache_dir=cache_dir)


@overload
def read_features(
    path: str | Path, *, label_column: str | None = None, with_sources: Literal[False] = False
) -> tuple[np.ndarray, list[str], np.ndarray]: ...


@overload
def read_features(
    path: str | Path, *, label_column: str | None = None, with_sources: Literal[True]
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]: ...


def read_features(
    path: str | Path, *, label_column: str | None = None, with_sources: bool = False
) -> tuple[np.ndarray, list[str], np.ndarray] | tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Read unlabelled feature rows from a CSV or Parquet file or a folder of them.

    Returns ``X`` of shape (n_rows, 45), float32, the release feature names and each row's 1-based
    data row within its file (files of a folder follow in name order). With ``with_sources`` a fourth
    value gives each row's file path (object array of str). Checks are those of the loaders.
    ``label_column``, or a column named ``label`` in any case, is ignored when present.
    """
    import polars as pl

    ignore = tuple(name.lower() for name in DEFAULT_LABEL_COLUMNS)
    if label_column is not None:
        ignore += (label_column.lower(),)
    files = _table_files(Path(path))
    frames: list[_FileFrame] = []
    for file in files:
        frame = _read_file(file, None, ignore)
        if frames:
            _check_same_header(file, frame.plan.header, files[0], frames[0].plan.header)
        frames.append(frame)

    counts = [frame.features.height for frame in frames]
    features = pl.concat([frame.features for frame in frames], how="vertical")
    X = np.ascontiguousarray(features.to_numpy(), dtype=np.float32)
    row_numbers = np.concatenate([np.arange(1, n + 1, dtype=np.int64) for n in counts])
    if not with_sources:
        return X, list(FEATURE_COLUMNS), row_numbers
    sources = np.array([str(file) for file in files], dtype=object)
    return X, list(FEATURE_COLUMNS), row_numbers, np.repeat(sources, counts)


def describe(dataset: Dataset) -> dict[str, Any]:
    """Return row counts per file and per label, for logs and run records."""
    names, codes = dataset.encode_labels()
    per_label = np.bincount(codes, minlength=len(names))
    return {
        "rows": len(dataset),
        "label_source": dataset.label_source,
        "files": [
            {"path": str(f.path), "class": f.class_name, "side": f.side, "rows": f.n_rows} for f in dataset.files
        ],
        "rows_per_label": {str(name): int(count) for name, count in zip(names, per_label)},
    }
