"""Streaming detection: score flow-window rows in micro-batches and write one JSON record per row.

Rows come from CSV or Parquet files, a folder of them, or an unbounded CSV stream (header first). Packet
captures (pcap or pcapng, recognised by their magic bytes) and live capture on a network interface are turned
into window rows by :mod:`hclr_ids.pcap` and scored as each window completes. A micro-batch is scored when it
contains ``batch_size`` rows or when its oldest row has waited ``max_latency_ms``, so a slow stream is
answered promptly and a fast one in large batches.

Records follow Suricata's EVE JSON conventions: an ISO-8601 ``timestamp`` with offset and an
``event_type`` of ``alert`` (attack verdicts, with ``alert.signature``, ``alert.category``,
``alert.severity`` and ``alert.signature_id``), ``flow`` (benign verdicts), ``error`` (rows that could not be
scored) or ``stats`` (the summary written last). Every input row or window gets exactly one record, in input
order, unless ``alerts_only`` drops the ``flow`` records. Records of capture windows also carry the dominant
flow's 5-tuple (``src_ip``, ``src_port``, ``dest_ip``, ``dest_port``, ``proto``) and a ``window`` object with
the epoch times of its first and last packet.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np

from hclr_ids.data import MISSING_SPELLINGS, NEGATIVE_INF_SPELLINGS, POSITIVE_INF_SPELLINGS
from hclr_ids.pcap import ExtractorConfig, FeatureWindow
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
FILE_SUFFIXES = (".csv", ".parquet", ".pq", ".pcap", ".pcapng", ".cap")
STDIN_SOURCE = "stdin"
#: First four bytes of classic pcap (both byte orders, micro- and nanosecond) and of a pcapng section header.
CAPTURE_MAGICS: frozenset[bytes] = frozenset({
    b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a",
})
PARQUET_MAGIC = b"PAR1"
#: EVE ``proto`` names of IP protocol numbers; other protocols are written as their number.
PROTOCOL_NAMES: dict[int, str] = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP"}
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
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    """Window size and mode of the features computed from packet captures and live interfaces."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_latency_ms < 0:
            raise ValueError(f"max_latency_ms must be >= 0, got {self.max_latency_ms}")
        if not 0.0 <= self.max_missing_fraction <= 1.0:
            raise ValueError(f"max_missing_fraction must lie in [0, 1], got {self.max_missing_fraction}")
        self.extractor.validate()


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
    missing_fraction: np.ndarray | None = None
    """Fraction of missing or non-finite cells of each row (float64); None when not computed."""
    windows: WindowColumns | None = None
    """Packet times and dominant flow of each row when the rows are capture windows."""
    source_key: str = "file"
    """Key of ``source`` in the records: ``file``, or ``interface`` for live capture."""

    def __len__(self) -> int:
        return len(self.row_numbers)


@dataclass
class WindowColumns:
    """Per-row metadata of capture windows, one array entry per row."""

    first_time: np.ndarray
    """Epoch seconds of each window's first packet (float64)."""
    last_time: np.ndarray
    packets: np.ndarray
    """Frames averaged into each window (int64)."""
    src_ip: np.ndarray
    """Dominant flow's source address, or None when no frame had an IP flow (object array, as the next three)."""
    src_port: np.ndarray
    dest_ip: np.ndarray
    dest_port: np.ndarray
    proto: np.ndarray
    """EVE protocol name (``TCP``, ``UDP`` ...) or number as text, or None (object array)."""

    @classmethod
    def from_windows(cls, windows: list[FeatureWindow]) -> WindowColumns:
        flows = [w.flow for w in windows]
        return cls(
            first_time=np.fromiter((w.first_time for w in windows), np.float64, len(windows)),
            last_time=np.fromiter((w.last_time for w in windows), np.float64, len(windows)),
            packets=np.fromiter((w.packets for w in windows), np.int64, len(windows)),
            src_ip=np.array([f.src_ip if f else None for f in flows], dtype=object),
            src_port=np.array([f.src_port if f else None for f in flows], dtype=object),
            dest_ip=np.array([f.dst_ip if f else None for f in flows], dtype=object),
            dest_port=np.array([f.dst_port if f else None for f in flows], dtype=object),
            proto=np.array([PROTOCOL_NAMES.get(f.protocol, str(f.protocol)) if f else None for f in flows],
                           dtype=object),
        )


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
    return ParsedRows(source, row_numbers, X, imputed, errors, error_fields, fraction)


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
    missing_fraction = np.full(n, np.nan)
    X[good], imputed[good], errors[good] = parsed.X, parsed.imputed, parsed.errors
    if parsed.error_fields is not None:
        error_fields[good] = parsed.error_fields
    if parsed.missing_fraction is not None:
        missing_fraction[good] = parsed.missing_fraction
    for i in np.flatnonzero(~good):
        blank = n_fields[i] == 1 and not lines[i].strip()
        found = "is blank" if blank else f"has {n_fields[i]} fields"
        errors[i] = f"{source}: row {row_numbers[i]} {found}, expected {plan.n_columns} like the header"
    return ParsedRows(source, row_numbers, X, imputed, errors, error_fields, missing_fraction)


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
            }
            if rows.windows is not None:
                columns.update(_flow_tuple_columns(rows.windows, index))
            columns["source"] = pl.DataFrame({
                rows.source_key: pl.Series([rows.source]).new_from_index(0, len(index)),
                "row": rows.row_numbers[index],
            }).to_struct()
            if rows.windows is not None:
                columns["window"] = _window_struct(rows.windows, index)
            columns.update({
                "verdict": pl.DataFrame({
                    "class": self.classes[k].astype(str),
                    "category": self.categories[k].astype(str),
                    "attack": attack[pick],
                    "confidence": np.round(confidence[pick].astype(np.float64), 6),
                }).to_struct(),
            })
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
            lines[i] = json.dumps(self._error_record(rows, int(i), str(errors[i]), stamp), separators=(",", ":"))
        kept = lines[lines != None]  # noqa: E711 (element-wise on objects)
        return "".join(line + "\n" for line in kept)

    def _error_record(self, rows: ParsedRows, i: int, message: str, stamp: str) -> dict[str, Any]:
        error: dict[str, Any] = {"message": message}
        if rows.error_fields is not None and rows.error_fields[i] is not None:
            error["field"] = rows.error_fields[i]
        if rows.missing_fraction is not None and np.isfinite(rows.missing_fraction[i]):
            error["missing_fraction"] = round(float(rows.missing_fraction[i]), 6)
        record: dict[str, Any] = {"timestamp": stamp, "event_type": "error"}
        windows = rows.windows
        if windows is not None:
            for name in ("src_ip", "src_port", "dest_ip", "dest_port", "proto"):
                record[name] = getattr(windows, name)[i]
        record["source"] = {rows.source_key: rows.source, "row": int(rows.row_numbers[i])}
        if windows is not None:
            record["window"] = {"first_time": float(windows.first_time[i]), "last_time": float(windows.last_time[i]),
                                "packets": int(windows.packets[i])}
        record["error"] = error
        record["model_version"] = self.model_version
        return record

    def stats_record(self, stats: DetectionStats) -> str:
        return json.dumps({"timestamp": timestamp_now(), "event_type": "stats", "stats": stats.to_dict(),
                           "model_version": self.model_version}, separators=(",", ":")) + "\n"


def _flow_tuple_columns(windows: WindowColumns, index: np.ndarray) -> dict[str, pl.Series]:
    """Return the EVE 5-tuple columns of the rows at ``index``; null where a window has no IP flow."""
    import polars as pl

    return {
        "src_ip": pl.Series(windows.src_ip[index].tolist(), dtype=pl.String),
        "src_port": pl.Series(windows.src_port[index].tolist(), dtype=pl.Int64),
        "dest_ip": pl.Series(windows.dest_ip[index].tolist(), dtype=pl.String),
        "dest_port": pl.Series(windows.dest_port[index].tolist(), dtype=pl.Int64),
        "proto": pl.Series(windows.proto[index].tolist(), dtype=pl.String),
    }


def _window_struct(windows: WindowColumns, index: np.ndarray) -> pl.Series:
    import polars as pl

    return pl.DataFrame({
        "first_time": windows.first_time[index],
        "last_time": windows.last_time[index],
        "packets": windows.packets[index],
    }).to_struct()


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
        """Score a CSV, Parquet or capture file, a folder of them, or ``-`` for a CSV stream on ``stdin``."""
        if str(input_path) == "-":
            if stdin is None:
                raise ValueError("input '-' needs a binary stdin stream")
            self.run_csv_stream(stdin, STDIN_SOURCE)
            return self.stats
        for path in input_files(input_path):
            if self.stop_event.is_set():
                break
            kind = input_kind(path)
            if kind == "capture":
                self.run_capture(path)
            elif kind == "parquet":
                self.run_parquet(path)
            else:
                with open(path, "rb") as handle:
                    self.run_csv_stream(handle, str(path))
        return self.stats

    def run_capture(self, path: Path) -> None:
        """Score the feature windows of a pcap or pcapng file as the extractor completes them."""
        from hclr_ids.pcap import iter_windows

        self.run_windows(iter_windows(path, self.config.extractor), str(path), "file")

    def run_interface(self, interface: str | InterfaceCapture) -> None:
        """Capture on ``interface`` and score each window as it completes, until :meth:`stop` is called.

        Opening an interface by name needs root or the CAP_NET_RAW capability. When stopped, the frames of
        the unfinished window are scored as one short window, as at the end of a capture file.
        """
        from hclr_ids.pcap import windows_from_records

        capture = open_interface(interface) if isinstance(interface, str) else interface
        interface = capture.interface
        logger.info("capturing on %s (link type %d, window %d, mode %s)", interface, capture.linktype,
                    self.config.extractor.window, self.config.extractor.mode)
        records = capture.records(self.stop_event)
        self.run_windows(windows_from_records(records, self.config.extractor), interface, "interface",
                         drain_on_stop=True)
        logger.info("capture on %s stopped: %d frames received, %d outgoing loopback copies skipped",
                    interface, capture.received, capture.skipped)

    def run_windows(self, windows: Iterable[FeatureWindow], source: str, source_key: str = "file",
                    *, drain_on_stop: bool = False) -> None:
        """Score windows in micro-batches while a thread computes them.

        A batch is scored once it contains ``batch_size`` windows or its oldest window has waited
        ``max_latency_ms``. After :meth:`stop`, production stops at the next window unless ``drain_on_stop``
        is set. Set it only for a window source that ends by itself once stopped, such as live capture.
        """
        positions = _feature_positions(self.features, source)
        produced: queue.Queue[FeatureWindow | BaseException | None] = queue.Queue(maxsize=4 * self.config.batch_size)
        abandoned = threading.Event()

        def put(item: FeatureWindow | BaseException | None) -> bool:
            # A full queue is waited on only while the scoring loop still runs.
            while not abandoned.is_set():
                try:
                    produced.put(item, timeout=_POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for window in windows:
                    if not put(window) or (self.stop_event.is_set() and not drain_on_stop):
                        return
            except BaseException as error:  # handed to the scoring thread, which raises it
                put(error)
            finally:
                put(None)

        thread = threading.Thread(target=produce, name="hclr-ids-windows", daemon=True)
        thread.start()
        try:
            self._score_windows(produced, positions, source, source_key)
        except BaseException:
            # Ends a live capture's record loop and unblocks the producer, so the thread and socket finish.
            self.stop_event.set()
            abandoned.set()
            raise
        finally:
            thread.join(timeout=5 * _POLL_S + 1.0)

    def _score_windows(self, produced: queue.Queue[FeatureWindow | BaseException | None], positions: np.ndarray,
                       source: str, source_key: str) -> None:
        latency_s = self.config.max_latency_ms / 1000.0
        pending: list[FeatureWindow] = []
        oldest = 0.0
        next_row = 1
        ended = False
        while not ended:
            wait = _POLL_S if not pending else min(_POLL_S, max(0.0, oldest + latency_s - time.monotonic()))
            try:
                item = produced.get(timeout=wait)
            except queue.Empty:
                item = False
            while item is not False:
                if item is None:
                    ended = True
                    break
                if isinstance(item, BaseException):
                    raise item
                if not pending:
                    oldest = time.monotonic()
                pending.append(item)
                if len(pending) >= self.config.batch_size:
                    break
                try:
                    item = produced.get_nowait()
                except queue.Empty:
                    item = False
            if pending and (ended or len(pending) >= self.config.batch_size
                            or time.monotonic() >= oldest + latency_s):
                self.score(_window_rows(pending, positions, source, source_key, next_row))
                next_row += len(pending)
                pending = []

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
    """Return a file, or the CSV, Parquet and capture files in a folder and its subfolders in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no {', '.join(FILE_SUFFIXES)} files in this folder")
        return files
    raise FileNotFoundError(
        f"input {path} not found; pass a CSV, Parquet or pcap file, a folder of them, or - for CSV on stdin"
    )


def input_kind(path: Path) -> str:
    """Return ``capture``, ``parquet`` or ``csv`` from a file's first bytes, whatever its name."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head in CAPTURE_MAGICS:
        return "capture"
    if head == PARQUET_MAGIC:
        return "parquet"
    return "csv"


def _feature_positions(input_features: list[str], source: str) -> np.ndarray:
    """Return the index in ``FEATURE_COLUMNS`` of each model input, as computed from packets."""
    missing = [name for name in input_features if name not in FEATURE_COLUMNS]
    if missing:
        raise ValueError(
            f"{source}: the model needs columns {missing} that packet captures do not provide; the extractor "
            f"computes only the 45 release columns"
        )
    return np.asarray([FEATURE_COLUMNS.index(name) for name in input_features], dtype=np.int64)


def _window_rows(windows: list[FeatureWindow], positions: np.ndarray, source: str, source_key: str,
                 first_row: int) -> ParsedRows:
    n = len(windows)
    X = np.vstack([w.features for w in windows])[:, positions].astype(np.float32)
    imputed = ~np.isfinite(X)
    X[imputed] = np.nan
    return ParsedRows(
        source=source,
        row_numbers=np.arange(first_row, first_row + n, dtype=np.int64),
        X=X,
        imputed=imputed,
        errors=np.full(n, None, dtype=object),
        windows=WindowColumns.from_windows(windows),
        source_key=source_key,
    )


# ---------------------------------------------------------------------------------------------------------
# Live capture

#: ``ETH_P_ALL`` from <linux/if_ether.h>: receive every protocol.
ETH_P_ALL = 0x0003
#: ``PACKET_OUTGOING`` from <linux/if_packet.h>: a frame this host sent.
PACKET_OUTGOING = 4
#: Link type of each ARPHRD_* hardware type that the feature extractor decodes. Linux gives loopback
#: frames a 14-byte Ethernet header with zero addresses, so loopback is read as Ethernet.
ARPHRD_LINKTYPES: dict[int, int] = {1: 1, 772: 1, 65534: 101}
_ARPHRD_LOOPBACK = 772
_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
_MAX_FRAME_BYTES = 262_144


class InterfaceCapture:
    """Raw AF_PACKET socket bound to one interface, the source of ``(timestamp, frame, link type)`` records.

    On loopback every frame passes the socket twice (sent and received), so the sent copy is skipped, as
    libpcap does. Timestamps are taken with ``time.time()`` when ``recvfrom_into`` returns.
    """

    def __init__(self, sock: socket.socket, interface: str, linktype: int, loopback: bool) -> None:
        self.socket = sock
        self.interface = interface
        self.linktype = linktype
        self.loopback = loopback
        self.received = 0
        self.skipped = 0

    def records(self, stop_event: threading.Event, poll_s: float = _POLL_S) -> Iterator[tuple[float, bytes, int]]:
        """Yield records until ``stop_event`` is set (checked every ``poll_s`` seconds), then close the socket."""
        buffer = bytearray(_MAX_FRAME_BYTES)
        view = memoryview(buffer)
        self.socket.settimeout(poll_s)
        try:
            while not stop_event.is_set():
                try:
                    size, address = self.socket.recvfrom_into(buffer)
                except TimeoutError:
                    continue
                except InterruptedError:
                    continue
                stamp = time.time()
                if self.loopback and address[2] == PACKET_OUTGOING:
                    self.skipped += 1
                    continue
                self.received += 1
                yield stamp, bytes(view[:size]), self.linktype
        finally:
            self.socket.close()


def open_interface(interface: str) -> InterfaceCapture:
    """Open a raw AF_PACKET socket on ``interface``.

    Raises:
        PermissionError: without root or CAP_NET_RAW.
        ValueError: when the interface does not exist or has a link layer the extractor cannot decode.
    """
    if not hasattr(socket, "AF_PACKET"):
        raise OSError("live capture needs Linux AF_PACKET sockets; record with tcpdump -w FILE and pass --input FILE")
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError as error:
        raise PermissionError(
            f"capturing on {interface} needs root or the CAP_NET_RAW capability ({error}); run as root, grant "
            f"it with 'setcap cap_net_raw+ep' on the Python interpreter, or record with "
            f"'tcpdump -i {interface} -w FILE' and pass --input FILE"
        ) from error
    try:
        # Python converts the protocol to network byte order for AF_PACKET addresses.
        sock.bind((interface, ETH_P_ALL))
        hardware_type = sock.getsockname()[3]
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot capture on interface {interface!r}: {error}; list interfaces with 'ip link'") from error
    if hardware_type not in ARPHRD_LINKTYPES:
        sock.close()
        raise ValueError(
            f"interface {interface!r} has hardware type {hardware_type}; live capture decodes Ethernet (1), "
            "loopback (772) and raw IP (65534) interfaces only"
        )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER_BYTES)
    return InterfaceCapture(sock, interface, ARPHRD_LINKTYPES[hardware_type], hardware_type == _ARPHRD_LOOPBACK)


def run_detection(
    scorer: Scorer, input_path: str | Path | None, output: IO[str], config: DetectConfig | None = None,
    *, stdin: IO[bytes] | None = None, on_start: Callable[[Detector], None] | None = None,
    interface: str | InterfaceCapture | None = None,
) -> DetectionStats:
    """Score ``input_path`` (a file, a folder or ``-``) or a live ``interface`` (a name or an opened capture)
    into ``output``, then write the stats record. Exactly one of ``input_path`` and ``interface`` is given."""
    if (input_path is None) == (interface is None):
        raise ValueError("pass exactly one of an input path and an interface")
    # Open the interface first, so that missing capture rights fail before any record is written.
    capture = open_interface(interface) if isinstance(interface, str) else interface
    detector = Detector(scorer, output, config)
    if on_start is not None:
        on_start(detector)
    try:
        if capture is not None:
            detector.run_interface(capture)
        else:
            detector.run(input_path, stdin=stdin)
    finally:
        detector.finish()
    logger.info("detection finished: %s", detector.stats.summary())
    return detector.stats
