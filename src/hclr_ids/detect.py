"""Streaming detection: score flow-window rows in micro-batches and write one JSON record per row.

Rows come from CSV or Parquet files, a folder of them, or an unbounded CSV stream (header first). A
micro-batch is scored when it contains ``batch_size`` rows or when its oldest row has waited
``max_latency_ms``, so a slow stream is answered promptly and a fast one in large batches.

Records follow Suricata's EVE JSON conventions: an ISO-8601 ``timestamp`` with offset and an
``event_type`` of ``alert`` (attack verdicts, with ``alert.signature``, ``alert.category``,
``alert.severity`` and ``alert.signature_id``), ``flow`` (benign verdicts), ``error`` (rows that could not be
scored) or ``stats`` (the summary written last). Every input row gets exactly one record, in input order,
unless ``alerts_only`` drops the ``flow`` records.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np

from hclr_ids.data import MISSING_SPELLINGS, NEGATIVE_INF_SPELLINGS, POSITIVE_INF_SPELLINGS
from hclr_ids.schema import CATEGORIES, CLASSES, FEATURE_COLUMNS, category_of, is_attack

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

#: Text cells read as a missing value, compared after stripping spaces and quotes, in any case.
#: Infinities count as missing too, because the model imputes both alike.
NON_NUMERIC_MISSING: frozenset[str] = MISSING_SPELLINGS | POSITIVE_INF_SPELLINGS | NEGATIVE_INF_SPELLINGS
#: Column names ignored without a warning when a table carries them beside the features (any case).
LABEL_COLUMNS: frozenset[str] = frozenset({"label", "class", "category"})
#: Suricata reserves signature ids 1,000,000-1,999,999 for local rules. An alert's id is 1,900,000 plus the
#: label's index in the 19 classes, 1,900,100 plus its index in the 6 categories, or 1,900,200 for ``Attack``.
SIGNATURE_ID_BASE = 1_900_000
#: EVE severity of each category: 1 is the most severe.
CATEGORY_SEVERITY: dict[str, int] = {"DDoS": 1, "DoS": 1, "MQTT": 2, "Spoofing": 2, "Recon": 3, "Attack": 2}
FILE_SUFFIXES = (".csv", ".parquet", ".pq")
STDIN_SOURCE = "stdin"
_MAX_LOGGED_ERRORS = 10
_POLL_S = 0.2


class Scorer(Protocol):
    """Scoring interface of a model, provided by ``ModelBundle`` and ``OnnxScorer``."""

    classes: list[str]
    input_features: list[str]
    version: str

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


@dataclass
class DetectConfig:
    """Micro-batching and row checks of the streaming detector."""

    batch_size: int = 4096
    """Rows scored together at most."""
    max_latency_ms: float = 50.0
    """A partial batch is scored once its oldest row has waited this long (milliseconds)."""
    alerts_only: bool = False
    """Write alert, error and stats records only, not one ``flow`` record per benign row."""
    max_missing_fraction: float = 0.2
    """Rows with a larger fraction of missing or non-finite cells get an error record instead of a verdict.
    Training drops such rows with the same default limit."""
    read_block_bytes: int = 1 << 16
    """Bytes read from a CSV stream at a time."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_latency_ms < 0:
            raise ValueError(f"max_latency_ms must be >= 0, got {self.max_latency_ms}")
        if not 0.0 <= self.max_missing_fraction <= 1.0:
            raise ValueError(f"max_missing_fraction must lie in [0, 1], got {self.max_missing_fraction}")


@dataclass
class DetectionStats:
    """Counts of one detection run."""

    classes: list[str]
    rows_read: int = 0
    scored: int = 0
    errors: int = 0
    imputed_rows: int = 0
    """Scored rows in which some cells were missing or non-finite and were imputed."""
    alerts_per_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    started: float = field(default_factory=time.monotonic)
    interrupted_by: str | None = None

    def __post_init__(self) -> None:
        if len(self.alerts_per_class) != len(self.classes):
            self.alerts_per_class = np.zeros(len(self.classes), dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        alerts = {name: int(n) for name, n in zip(self.classes, self.alerts_per_class) if n}
        return {
            "rows_read": self.rows_read,
            "scored": self.scored,
            "errors": self.errors,
            "imputed_rows": self.imputed_rows,
            "alerts": alerts,
            "alerts_total": int(self.alerts_per_class.sum()),
            "elapsed_s": round(elapsed, 3),
            "flows_per_s": round(self.scored / elapsed, 1),
            "interrupted_by": self.interrupted_by,
        }

    def summary(self) -> str:
        """Format the counts as one paragraph for a terminal."""
        values = self.to_dict()
        alerts = ", ".join(f"{name} {n}" for name, n in values["alerts"].items()) or "none"
        text = (
            f"{values['rows_read']} rows read, {values['scored']} scored ({values['imputed_rows']} with imputed "
            f"cells), {values['errors']} errors, {values['alerts_total']} alerts ({alerts}); "
            f"{values['flows_per_s']:.0f} flows/s over {values['elapsed_s']:.1f} s"
        )
        if self.interrupted_by:
            text += f"; stopped by {self.interrupted_by}"
        return text


# ---------------------------------------------------------------------------------------------------------
# Headers and cells


@dataclass
class HeaderPlan:
    """Column positions of the model inputs in a table, or the reason the table cannot be scored."""

    n_columns: int
    positions: list[int]
    """Column index of each model input feature, in the model's order."""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    """Columns that are neither release features nor a label column; they are ignored."""


def plan_header(raw_names: list[str], input_features: list[str], source: str) -> HeaderPlan:
    """Match a header to the model's input features.

    Names are stripped of surrounding spaces (with a warning). Label columns and release columns the model
    does not use are ignored; other unknown columns are ignored with a warning. For missing or repeated
    columns, ``error`` is set to a message that names them and the fix.
    """
    names = [name.strip() for name in raw_names]
    plan = HeaderPlan(len(names), [])
    stripped = [raw for raw, name in zip(raw_names, names) if raw != name]
    if stripped:
        plan.warnings.append(f"{source}: stripped spaces around {len(stripped)} column names: {stripped}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        plan.error = f"{source}: column names {duplicates} appear more than once in the header; keep one of each"
        return plan
    missing = [name for name in input_features if name not in names]
    if missing:
        plan.error = (
            f"{source}: missing columns {missing} in the header; the model needs {len(input_features)} columns: "
            f"{', '.join(input_features)}"
        )
        return plan
    known = set(input_features) | set(FEATURE_COLUMNS)
    unknown = [name for name in names if name not in known and name.lower() not in LABEL_COLUMNS]
    plan.unknown = unknown
    if unknown:
        plan.warnings.append(f"{source}: ignoring columns the model does not use: {unknown}")
    index = {name: i for i, name in enumerate(names)}
    plan.positions = [index[name] for name in input_features]
    return plan


@dataclass
class ParsedRows:
    """One micro-batch of rows from one source, parsed into model inputs.

    ``X`` has shape (n_rows, n_inputs), float32, NaN where a cell was missing or non-finite.
    """

    source: str
    row_numbers: np.ndarray
    """1-based data row of each row within its source (the header is line 1, data row 1 is line 2)."""
    X: np.ndarray
    imputed: np.ndarray
    """Mask of shape (n_rows, n_inputs): cells that were missing or non-finite."""
    errors: np.ndarray
    """Message of each row that cannot be scored, else None (object array)."""
    error_fields: np.ndarray | None = None
    """Column named by each row's error, else None (object array); None when no error names a column."""

    def __len__(self) -> int:
        return len(self.row_numbers)


def _cell_expressions(frame: pl.DataFrame, features: list[str]) -> tuple[list[pl.Expr], list[pl.Expr]]:
    import polars as pl

    values: list[pl.Expr] = []
    invalid: list[pl.Expr] = []
    for name in features:
        dtype = frame.schema[name]
        if dtype == pl.String:
            text = pl.col(name).str.strip_chars(' "\t')
            number = text.cast(pl.Float64, strict=False)
            unparsed = number.is_null() & text.is_not_null()
            known = text.str.to_lowercase().is_in(list(NON_NUMERIC_MISSING))
            values.append(number.fill_null(float("nan")).alias(name))
            invalid.append((unparsed & ~known).alias(name))
        elif dtype.is_numeric() or dtype == pl.Null:
            values.append(pl.col(name).cast(pl.Float64).fill_null(float("nan")).alias(name))
            invalid.append(pl.lit(False).alias(name))
        else:
            values.append(pl.lit(float("nan")).alias(name))
            invalid.append(pl.col(name).is_not_null().alias(name))
    return values, invalid


def parse_frame(
    frame: pl.DataFrame, features: list[str], source: str, row_numbers: np.ndarray, max_missing_fraction: float
) -> ParsedRows:
    """Parse the ``features`` columns of ``frame`` (text or numeric) into model inputs and per-row errors."""
    n = frame.height
    errors = np.full(n, None, dtype=object)
    if n == 0:
        return ParsedRows(source, row_numbers, np.zeros((0, len(features)), np.float32),
                          np.zeros((0, len(features)), bool), errors)
    value_exprs, invalid_exprs = _cell_expressions(frame, features)
    with np.errstate(over="ignore"):
        X = frame.select(value_exprs).to_numpy().astype(np.float32)
    invalid = frame.select(invalid_exprs).to_numpy().astype(bool)
    imputed = ~np.isfinite(X)
    X[imputed] = np.nan

    error_fields = np.full(n, None, dtype=object)
    for i in np.flatnonzero(invalid.any(axis=1)):
        j = int(np.argmax(invalid[i]))
        error_fields[i] = features[j]
        value = frame[features[j]][int(i)]
        errors[i] = (f"{source}: row {row_numbers[i]}, column {features[j]!r}: cannot parse {value!r} as a number; "
                     "write a number, or leave the cell empty for a missing value")
    fraction = imputed.mean(axis=1)
    too_sparse = (fraction > max_missing_fraction) & (errors == None)  # noqa: E711 (element-wise on objects)
    for i in np.flatnonzero(too_sparse):
        errors[i] = (f"{source}: row {row_numbers[i]}: {int(imputed[i].sum())} of {len(features)} cells are missing "
                     f"or non-finite ({fraction[i]:.0%}), more than the limit of {max_missing_fraction:.0%}; "
                     "not scored")
    return ParsedRows(source, row_numbers, X, imputed, errors, error_fields)


def parse_csv_lines(
    lines: list[str], plan: HeaderPlan, features: list[str], source: str, first_row: int,
    max_missing_fraction: float,
) -> ParsedRows:
    """Parse CSV data lines (without line ends) that follow a header described by ``plan``.

    Fields are split on every comma: quoted fields that contain commas are not supported, which the
    release and the CIC extractor never write. Rows with another field count than the header get an error.
    """
    import polars as pl

    n = len(lines)
    row_numbers = np.arange(first_row, first_row + n, dtype=np.int64)
    if plan.error is not None:
        errors = np.array([f"{plan.error} (row {r})" for r in row_numbers], dtype=object)
        return ParsedRows(source, row_numbers, np.full((n, len(features)), np.nan, np.float32),
                          np.zeros((n, len(features)), bool), errors)

    text = pl.Series("line", lines, dtype=pl.String).str.strip_chars_end("\r")
    n_fields = (text.str.count_matches(",", literal=True) + 1).to_numpy()
    good = n_fields == plan.n_columns
    fields = pl.DataFrame({"line": text.filter(pl.Series(good))}).select(
        pl.col("line").str.split_exact(",", plan.n_columns - 1)
    ).unnest("line")
    columns = fields.columns
    selected = fields.select([pl.col(columns[p]).alias(name) for p, name in zip(plan.positions, features)])
    parsed = parse_frame(selected, features, source, row_numbers[good], max_missing_fraction)
    if good.all():
        return parsed

    X = np.full((n, len(features)), np.nan, np.float32)
    imputed = np.zeros((n, len(features)), bool)
    errors = np.full(n, None, dtype=object)
    error_fields = np.full(n, None, dtype=object)
    X[good], imputed[good], errors[good] = parsed.X, parsed.imputed, parsed.errors
    if parsed.error_fields is not None:
        error_fields[good] = parsed.error_fields
    for i in np.flatnonzero(~good):
        blank = n_fields[i] == 1 and not lines[i].strip()
        found = "is blank" if blank else f"has {n_fields[i]} fields"
        errors[i] = f"{source}: row {row_numbers[i]} {found}, expected {plan.n_columns} like the header"
    return ParsedRows(source, row_numbers, X, imputed, errors, error_fields)


# ---------------------------------------------------------------------------------------------------------
# Records


def signature_id(label: str) -> int:
    """Return the stable alert signature id of a class, category or binary label."""
    if label in CLASSES:
        return SIGNATURE_ID_BASE + CLASSES.index(label)
    if label in CATEGORIES:
        return SIGNATURE_ID_BASE + 100 + CATEGORIES.index(label)
    return SIGNATURE_ID_BASE + 200


def timestamp_now() -> str:
    """Return the local time as ISO-8601 with microseconds and UTC offset, as EVE JSON writes it."""
    return _dt.datetime.now().astimezone().isoformat(timespec="microseconds")


class RecordWriter:
    """Format the verdicts of a micro-batch as EVE-style JSON lines, in input order."""

    def __init__(self, classes: list[str], input_features: list[str], model_version: str, alerts_only: bool) -> None:
        self.input_features = list(input_features)
        self.classes = np.asarray(classes, dtype=object)
        self.categories = np.asarray([category_of(c) for c in classes], dtype=object)
        self.attack = np.asarray([is_attack(c) for c in classes], dtype=bool)
        self.severity = np.asarray([CATEGORY_SEVERITY.get(c, 2) for c in self.categories], dtype=np.int64)
        self.signature_ids = np.asarray([signature_id(c) for c in classes], dtype=np.int64)
        self.signatures = np.asarray([f"HCLR-IDS {c}" for c in classes], dtype=object)
        self.model_version = model_version
        self.alerts_only = alerts_only

    def format(self, rows: ParsedRows, scored: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
               errors: np.ndarray) -> str:
        """Return the JSON lines of one batch, each ending in a newline.

        ``scored`` contains the indices of scored rows; ``predicted`` and ``confidence`` their class index and
        probability; ``errors`` the message of every row (None for scored rows).
        """
        import polars as pl

        stamp = timestamp_now()
        lines = np.full(len(rows), None, dtype=object)
        attack = self.attack[predicted]
        for want_alert in (True, False):
            if not want_alert and self.alerts_only:
                continue
            pick = attack == want_alert
            if not pick.any():
                continue
            index = scored[pick]
            k = predicted[pick]
            columns: dict[str, Any] = {
                "timestamp": pl.Series([stamp]).new_from_index(0, len(index)),
                "event_type": pl.Series(["alert" if want_alert else "flow"]).new_from_index(0, len(index)),
                "source": pl.DataFrame({
                    "file": pl.Series([rows.source]).new_from_index(0, len(index)),
                    "row": rows.row_numbers[index],
                }).to_struct(),
                "verdict": pl.DataFrame({
                    "class": self.classes[k].astype(str),
                    "category": self.categories[k].astype(str),
                    "attack": attack[pick],
                    "confidence": np.round(confidence[pick].astype(np.float64), 6),
                }).to_struct(),
            }
            if want_alert:
                columns["alert"] = pl.DataFrame({
                    "action": pl.Series(["allowed"]).new_from_index(0, len(index)),
                    "gid": np.ones(len(index), dtype=np.int64),
                    "signature_id": self.signature_ids[k],
                    "rev": np.ones(len(index), dtype=np.int64),
                    "signature": self.signatures[k].astype(str),
                    "category": self.categories[k].astype(str),
                    "severity": self.severity[k],
                }).to_struct()
            columns["imputed"] = _imputed_names(rows.imputed[index], self.input_features)
            columns["model_version"] = pl.Series([self.model_version]).new_from_index(0, len(index))
            text = pl.DataFrame(columns).write_ndjson()
            lines[index] = text.splitlines()
        for i in np.flatnonzero(errors != None):  # noqa: E711 (element-wise on objects)
            lines[i] = json.dumps({
                "timestamp": stamp, "event_type": "error",
                "source": {"file": rows.source, "row": int(rows.row_numbers[i])},
                "error": {"message": errors[i]}, "model_version": self.model_version,
            }, separators=(",", ":"))
        kept = lines[lines != None]  # noqa: E711 (element-wise on objects)
        return "".join(line + "\n" for line in kept)

    def stats_record(self, stats: DetectionStats) -> str:
        return json.dumps({"timestamp": timestamp_now(), "event_type": "stats", "stats": stats.to_dict(),
                           "model_version": self.model_version}, separators=(",", ":")) + "\n"


def _imputed_names(mask: np.ndarray, names: list[str]) -> pl.Series:
    """Return, per row, the list of names whose cell is flagged in ``mask`` (n_rows, n_names)."""
    import polars as pl

    flags = pl.DataFrame(mask, schema=[f"c{j}" for j in range(mask.shape[1])])
    return flags.select(
        pl.concat_list([pl.when(pl.col(f"c{j}")).then(pl.lit(name)) for j, name in enumerate(names)])
        .list.drop_nulls().alias("imputed")
    ).to_series()


# ---------------------------------------------------------------------------------------------------------
# The detector


class _ChunkReader:
    """Read a binary stream in a daemon thread and hand its chunks over a bounded queue.

    The queue contains at most ``max_chunks`` chunks, so a fast producer waits instead of filling memory.
    """

    def __init__(self, stream: IO[bytes], block_bytes: int, max_chunks: int = 64) -> None:
        self._queue: queue.Queue[tuple[float, bytes]] = queue.Queue(maxsize=max_chunks)
        self._stream = stream
        self._block_bytes = block_bytes
        self._thread = threading.Thread(target=self._run, name="hclr-ids-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # os.read on the descriptor takes no lock of the buffered stream, so a reader still blocked on
        # stdin at exit does not stop the interpreter from shutting down.
        try:
            descriptor = self._stream.fileno()
            read: Callable[[int], bytes] = lambda size: os.read(descriptor, size)  # noqa: E731
        except (OSError, AttributeError, io.UnsupportedOperation):
            read = getattr(self._stream, "read1", self._stream.read)
        try:
            while True:
                chunk = read(self._block_bytes)
                self._queue.put((time.monotonic(), chunk))
                if not chunk:
                    return
        except (OSError, ValueError) as error:  # a closed or failing input ends the stream
            logger.error("reading the input failed: %s", error)
            self._queue.put((time.monotonic(), b""))

    def get(self, timeout: float) -> tuple[float, bytes]:
        """Return (arrival time, chunk); an empty chunk marks the end. Raises ``queue.Empty`` on timeout."""
        return self._queue.get(timeout=timeout)


class Detector:
    """Score rows in micro-batches and write one record per row to ``output``.

    Args:
        scorer: a ``ModelBundle``, ``OnnxScorer`` or anything with the :class:`Scorer` interface.
        output: text stream that receives JSON lines; flushed after every batch.
        config: batching and row checks.
    """

    def __init__(self, scorer: Scorer, output: IO[str], config: DetectConfig | None = None) -> None:
        self.scorer = scorer
        self.output = output
        self.config = config if config is not None else DetectConfig()
        self.features = list(scorer.input_features)
        self.writer = RecordWriter(list(scorer.classes), self.features, scorer.version, self.config.alerts_only)
        self.stats = DetectionStats(list(scorer.classes))
        self.stop_event = threading.Event()
        self._logged_errors = 0

    def stop(self, reason: str) -> None:
        """Ask the detector to finish the rows it has read and return; safe to call from a signal handler."""
        self.stats.interrupted_by = reason
        self.stop_event.set()

    # -------------------------------------------------------------- inputs

    def run(self, input_path: str | Path, stdin: IO[bytes] | None = None) -> DetectionStats:
        """Score a CSV or Parquet file, a folder of them, or ``-`` for a CSV stream on ``stdin``."""
        if str(input_path) == "-":
            if stdin is None:
                raise ValueError("input '-' needs a binary stdin stream")
            self.run_csv_stream(stdin, STDIN_SOURCE)
            return self.stats
        for path in input_files(input_path):
            if self.stop_event.is_set():
                break
            if path.suffix.lower() in (".parquet", ".pq"):
                self.run_parquet(path)
            else:
                with open(path, "rb") as handle:
                    self.run_csv_stream(handle, str(path))
        return self.stats

    def run_csv_stream(self, stream: IO[bytes], source: str) -> None:
        """Score a CSV stream whose first line is the header, until it ends or :meth:`stop` is called."""
        reader = _ChunkReader(stream, self.config.read_block_bytes)
        latency_s = self.config.max_latency_ms / 1000.0
        pending = b""
        lines: list[bytes] = []
        oldest = 0.0
        plan: HeaderPlan | None = None
        next_row = 1
        ended = False

        while not ended and not self.stop_event.is_set():
            wait = _POLL_S if not lines else min(_POLL_S, max(0.0, oldest + latency_s - time.monotonic()))
            try:
                arrival, chunk = reader.get(timeout=wait)
            except queue.Empty:
                chunk, arrival = None, time.monotonic()
            if chunk == b"":
                ended = True
                if pending:
                    lines.append(pending)
                    pending = b""
            elif chunk:
                parts = (pending + chunk).split(b"\n")
                pending = parts.pop()
                if parts and not lines:
                    oldest = arrival
                lines.extend(parts)
            if plan is None and lines:
                plan = self._read_header(lines.pop(0), source)
            if plan is None:
                continue
            while len(lines) >= self.config.batch_size:
                next_row = self._score_lines(lines[: self.config.batch_size], plan, source, next_row)
                del lines[: self.config.batch_size]
                oldest = time.monotonic()
            if lines and (ended or self.stop_event.is_set() or time.monotonic() >= oldest + latency_s):
                next_row = self._score_lines(lines, plan, source, next_row)
                lines = []
        if lines and plan is not None:
            self._score_lines(lines, plan, source, next_row)

    def _read_header(self, line: bytes, source: str) -> HeaderPlan:
        text = line.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r")
        plan = plan_header(next(csv.reader([text])), self.features, source)
        for warning in plan.warnings:
            logger.warning("%s", warning)
        if plan.error:
            logger.error("%s; every row of it gets an error record", plan.error)
        return plan

    def _score_lines(self, lines: list[bytes], plan: HeaderPlan, source: str, first_row: int) -> int:
        text = b"\n".join(lines).decode("utf-8", errors="replace").split("\n")
        rows = parse_csv_lines(text, plan, self.features, source, first_row, self.config.max_missing_fraction)
        self.score(rows)
        return first_row + len(lines)

    def run_parquet(self, path: Path) -> None:
        """Score a Parquet file in batches."""
        import polars as pl

        try:
            frame = pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as error:
            raise ValueError(f"{path}: cannot read as Parquet ({error}); check that the file is complete") from error
        plan = plan_header(frame.columns, self.features, str(path))
        for warning in plan.warnings:
            logger.warning("%s", warning)
        if plan.error:
            logger.error("%s; every row of it gets an error record", plan.error)
        frame = frame.rename({raw: raw.strip() for raw in frame.columns if raw != raw.strip()})
        for start in range(0, frame.height, self.config.batch_size):
            if self.stop_event.is_set():
                return
            chunk = frame.slice(start, self.config.batch_size)
            row_numbers = np.arange(start + 1, start + chunk.height + 1, dtype=np.int64)
            if plan.error is not None:
                n = chunk.height
                errors = np.array([f"{plan.error} (row {r})" for r in row_numbers], dtype=object)
                rows = ParsedRows(str(path), row_numbers, np.full((n, len(self.features)), np.nan, np.float32),
                                  np.zeros((n, len(self.features)), bool), errors)
            else:
                rows = parse_frame(chunk.select(self.features), self.features, str(path), row_numbers,
                                   self.config.max_missing_fraction)
            self.score(rows)

    # -------------------------------------------------------------- scoring

    def score(self, rows: ParsedRows) -> None:
        """Score the valid rows of a parsed batch and write one record per row."""
        errors = rows.errors.copy()
        scored = np.flatnonzero(errors == None)  # noqa: E711 (element-wise on objects)
        predicted = np.zeros(0, dtype=np.int64)
        confidence = np.zeros(0, dtype=np.float32)
        if len(scored):
            proba = np.asarray(self.scorer.predict_proba(rows.X[scored]), dtype=np.float32)
            finite = np.isfinite(proba).all(axis=1)
            if not finite.all():
                for i in scored[~finite]:
                    errors[i] = f"{rows.source}: row {rows.row_numbers[i]}: the model returned non-finite probabilities"
                scored, proba = scored[finite], proba[finite]
            predicted = proba.argmax(axis=1)
            confidence = proba[np.arange(len(proba)), predicted]
        self.output.write(self.writer.format(rows, scored, predicted, confidence, errors))
        self.output.flush()

        self.stats.rows_read += len(rows)
        self.stats.scored += len(scored)
        self.stats.imputed_rows += int(rows.imputed[scored].any(axis=1).sum())
        attack = self.writer.attack[predicted]
        self.stats.alerts_per_class += np.bincount(predicted[attack], minlength=len(self.writer.classes))
        n_errors = len(rows) - len(scored)
        if n_errors:
            self._log_errors(errors)
        self.stats.errors += n_errors

    def _log_errors(self, errors: np.ndarray) -> None:
        for message in errors[errors != None]:  # noqa: E711 (element-wise on objects)
            if self._logged_errors >= _MAX_LOGGED_ERRORS:
                return
            self._logged_errors += 1
            logger.warning("%s", message)
            if self._logged_errors == _MAX_LOGGED_ERRORS:
                logger.warning("further row errors are written as error records only")

    def finish(self) -> DetectionStats:
        """Write the ``stats`` record and return the counts."""
        self.output.write(self.writer.stats_record(self.stats))
        self.output.flush()
        return self.stats


def input_files(path: str | Path) -> list[Path]:
    """Return a CSV or Parquet file, or those in a folder and its subfolders in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no .csv, .parquet or .pq files in this folder")
        return files
    raise FileNotFoundError(f"input {path} not found; pass a CSV or Parquet file, a folder of them, or - for stdin")


def run_detection(
    scorer: Scorer, input_path: str | Path, output: IO[str], config: DetectConfig | None = None,
    *, stdin: IO[bytes] | None = None, on_start: Callable[[Detector], None] | None = None,
) -> DetectionStats:
    """Score ``input_path`` (a file, a folder or ``-``) into ``output`` and write the stats record."""
    detector = Detector(scorer, output, config)
    if on_start is not None:
        on_start(detector)
    try:
        detector.run(input_path, stdin=stdin)
    finally:
        detector.finish()
    logger.info("detection finished: %s", detector.stats.summary())
    return detector.stats
