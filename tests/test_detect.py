"""Streaming detection: one record per input row, error records for bad rows, prompt partial batches."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hclr_ids.data import read_features
from hclr_ids.detect import DetectConfig, plan_header, run_detection, signature_id

CLI = [sys.executable, "-m", "hclr_ids"]


def _detect(scorer, path, **settings) -> tuple[list[dict], object]:
    output = io.StringIO()
    stats = run_detection(scorer, path, output, DetectConfig(**settings))
    records = [json.loads(line) for line in output.getvalue().splitlines()]
    return records, stats


def _rows(records: list[dict]) -> list[dict]:
    return [r for r in records if r["event_type"] != "stats"]


def _csv_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_file_one_record_per_row(bundle, release_csv_dir):
    path = release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv"
    records, stats = _detect(bundle, path, batch_size=50)
    rows = _rows(records)
    assert len(rows) == 186
    assert [r["source"]["row"] for r in rows] == list(range(1, 187))
    assert stats.scored == 186
    assert stats.errors == 0


def test_file_verdicts_match_model(bundle, release_csv_dir):
    path = release_csv_dir / "test" / "Recon-VulScan_test.pcap.csv"
    records, _ = _detect(bundle, path, batch_size=333)
    X, _, _ = read_features(path)
    proba = bundle.predict_proba(X)
    expected = np.asarray(bundle.classes)[proba.argmax(axis=1)]
    assert [r["verdict"]["class"] for r in _rows(records)] == expected.tolist()
    confidence = np.array([r["verdict"]["confidence"] for r in _rows(records)])
    assert np.abs(confidence - proba.max(axis=1)).max() <= 1e-6


def test_stats_record_counts(bundle, release_csv_dir):
    path = release_csv_dir / "test" / "ARP_Spoofing_test.pcap.csv"
    records, _ = _detect(bundle, path)
    stats = records[-1]
    assert stats["event_type"] == "stats"
    rows = _rows(records)
    alerts = [r for r in rows if r["event_type"] == "alert"]
    assert stats["stats"]["rows_read"] == 1744
    assert stats["stats"]["scored"] == 1744
    assert stats["stats"]["alerts_total"] == len(alerts)
    per_class: dict[str, int] = {}
    for record in alerts:
        per_class[record["verdict"]["class"]] = per_class.get(record["verdict"]["class"], 0) + 1
    assert stats["stats"]["alerts"] == per_class


def test_eve_alert_fields(bundle, release_csv_dir):
    records, _ = _detect(bundle, release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv")
    for record in _rows(records):
        assert dt.datetime.fromisoformat(record["timestamp"]).utcoffset() is not None
        assert record["model_version"] == bundle.version
        assert record["verdict"]["attack"] == (record["verdict"]["class"] != "Benign")
        if record["event_type"] == "alert":
            alert = record["alert"]
            assert alert["signature_id"] == signature_id(record["verdict"]["class"])
            assert alert["severity"] in (1, 2, 3)
            assert alert["category"] == record["verdict"]["category"]
        else:
            assert record["event_type"] == "flow"
            assert "alert" not in record


def test_signature_ids_stable():
    assert signature_id("Benign") == 1_900_000
    assert signature_id("TCP_IP-DDoS-UDP") == 1_900_018
    assert signature_id("Recon") == 1_900_102
    assert signature_id("Attack") == 1_900_200


def test_alerts_only_drops_flows(bundle, release_csv_dir):
    path = release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv"
    records, stats = _detect(bundle, path, alerts_only=True)
    assert {r["event_type"] for r in _rows(records)} <= {"alert"}
    assert len(_rows(records)) == stats.to_dict()["alerts_total"]


def test_folder_rows_restart_per_file(bundle, release_csv_dir, tmp_path):
    lines = _csv_lines(release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv")
    (tmp_path / "a.csv").write_text("\n".join(lines[:4]) + "\n")
    (tmp_path / "b.csv").write_text("\n".join([lines[0]] + lines[4:7]) + "\n")
    records, _ = _detect(bundle, tmp_path)
    sources = [(Path(r["source"]["file"]).name, r["source"]["row"]) for r in _rows(records)]
    assert sources == [("a.csv", 1), ("a.csv", 2), ("a.csv", 3), ("b.csv", 1), ("b.csv", 2), ("b.csv", 3)]


def test_parquet_matches_csv(bundle, release_csv_dir, tmp_path):
    import polars as pl

    path = release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv"
    pl.read_csv(path).write_parquet(tmp_path / "rows.parquet")
    from_csv, _ = _detect(bundle, path)
    from_parquet, _ = _detect(bundle, tmp_path / "rows.parquet")
    assert [r["verdict"] for r in _rows(from_parquet)] == [r["verdict"] for r in _rows(from_csv)]


def test_missing_column_every_row_error(bundle, release_csv_dir, tmp_path):
    lines = _csv_lines(release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv")
    cut = [",".join(line.split(",")[1:]) for line in lines[:4]]
    (tmp_path / "cut.csv").write_text("\n".join(cut) + "\n")
    records, stats = _detect(bundle, tmp_path / "cut.csv")
    rows = _rows(records)
    assert [r["event_type"] for r in rows] == ["error"] * 3
    assert "missing columns ['Header_Length']" in rows[0]["error"]["message"]
    assert stats.errors == 3


def test_c01_infinities_imputed(bundle, cases_dir):
    records, stats = _detect(bundle, cases_dir / "C01_infinity_strings.csv")
    rows = _rows(records)
    assert len(rows) == 6
    assert stats.scored == 6
    flagged = [name for r in rows for name in r["imputed"]]
    assert flagged.count("Rate") == 3
    assert flagged.count("Srate") == 2
    assert rows[1]["imputed"] == ["Rate", "Srate"]


def test_c02_header_spaces_stripped(bundle, cases_dir, caplog):
    with caplog.at_level("WARNING", logger="hclr_ids.detect"):
        records, stats = _detect(bundle, cases_dir / "C02_header_spaces.csv")
    assert stats.scored == 5
    assert "stripped spaces around 23 column names" in caplog.text
    assert "'Tot sum '" in caplog.text


def test_c06_missing_cells(bundle, cases_dir):
    records, stats = _detect(bundle, cases_dir / "C06_missing_cells.csv")
    rows = _rows(records)
    kinds = [r["event_type"] for r in rows]
    assert len(rows) == 8
    assert kinds[3] == "error"
    assert kinds[4] == "error"
    assert "10 of 45 cells are missing" in rows[3]["error"]["message"]
    assert "45 of 45 cells are missing" in rows[4]["error"]["message"]
    assert rows[1]["imputed"] == ["Rate"]
    assert rows[2]["imputed"] == ["Std"]
    assert len(rows[5]["imputed"]) == 9
    assert rows[6]["imputed"] == ["Header_Length"]
    assert stats.scored == 6


def test_c06_errors_name_row_and_fraction(bundle, cases_dir):
    records, _ = _detect(bundle, cases_dir / "C06_missing_cells.csv")
    errors = [r for r in _rows(records) if r["event_type"] == "error"]
    assert [r["source"]["row"] for r in errors] == [4, 5]
    assert "row 4: 10 of 45 cells are missing or non-finite (22%)" in errors[0]["error"]["message"]
    assert "row 5: 45 of 45 cells are missing or non-finite (100%)" in errors[1]["error"]["message"]
    assert errors[0]["error"]["missing_fraction"] == round(10 / 45, 6)
    assert errors[1]["error"]["missing_fraction"] == 1.0


def test_runtime_torch_bundle_dir(bundle_dir, bundle, release_csv_dir):
    path = release_csv_dir / "test" / "Recon-VulScan_test.pcap.csv"
    result = subprocess.run(
        CLI + ["-q", "detect", "--model", str(bundle_dir), "--runtime", "torch", "--input", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    rows = _rows([json.loads(line) for line in result.stdout.splitlines()])
    X, _, _ = read_features(path)
    expected = np.asarray(bundle.classes)[bundle.predict_proba(X).argmax(axis=1)]
    assert result.returncode == 0
    assert [r["verdict"]["class"] for r in rows] == expected.tolist()
    assert {r["model_version"] for r in rows} == {bundle.version}


def test_header_plan_ignores_label_column():
    plan = plan_header(["Rate", "Label", "extra"], ["Rate"], "x.csv")
    assert plan.positions == [0]
    assert plan.unknown == ["extra"]
    assert plan.error is None


def _stream_input(release_csv_dir: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """Header plus 15 real rows with four bad rows mixed in; returns the lines and (row, kind) of the bad ones."""
    lines = _csv_lines(release_csv_dir / "test" / "MQTT-Malformed_Data_test.pcap.csv")[:17]
    good = lines[1:]
    body = good[:3] + ["1,2,3"] + good[3:8] + [good[8].replace(good[8].split(",")[0], "abc", 1)] + good[9:12]
    body += [""] + good[12:] + [",".join(good[0].split(",")[:-1])]
    bad = [(4, "has 3 fields"), (10, "cannot parse 'abc'"), (14, "is blank"), (19, "has 44 fields")]
    return [lines[0]] + body, bad


def test_stdin_stream_bad_rows(bundle_dir, release_csv_dir):
    lines, bad = _stream_input(release_csv_dir)
    result = subprocess.run(
        CLI + ["-q", "detect", "--model", str(bundle_dir), "--runtime", "onnx", "--input", "-", "--batch-size", "4"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    rows = _rows(records)
    errors = [(r["source"]["row"], r["error"]["message"]) for r in rows if r["event_type"] == "error"]
    assert result.returncode == 1
    assert len(rows) == len(lines) - 1
    assert [r["source"]["row"] for r in rows] == list(range(1, len(lines)))
    assert [row for row, _ in errors] == [row for row, _ in bad]
    for (_, message), (_, expected) in zip(errors, bad):
        assert expected in message
    assert records[-1]["stats"]["errors"] == 4
    assert "4 errors" in result.stderr


class _LineReader:
    """Collect a process's stdout lines in a thread, so a test can wait for one with a timeout."""

    def __init__(self, stream) -> None:
        import queue
        import threading

        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def next(self, timeout: float) -> str:
        import queue

        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return ""


def test_slow_stream_flushed_within_latency(bundle_dir, release_csv_dir):
    lines = _csv_lines(release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv")
    process = subprocess.Popen(
        CLI + ["-q", "detect", "--model", str(bundle_dir), "--runtime", "onnx", "--input", "-",
               "--batch-size", "4096", "--max-latency-ms", "50"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
    )
    reader = _LineReader(process.stdout)
    try:
        process.stdin.write(lines[0] + "\n" + lines[1] + "\n")
        process.stdin.flush()
        first = reader.next(60.0)  # includes starting the interpreter and loading the model
        process.stdin.write(lines[2] + "\n")
        process.stdin.flush()
        sent = time.monotonic()
        second = reader.next(30.0)
        waited = time.monotonic() - sent
        assert json.loads(first)["source"]["row"] == 1
        assert json.loads(second)["source"]["row"] == 2
        assert waited < 2.0
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def test_sigterm_writes_summary(bundle_dir, release_csv_dir):
    lines = _csv_lines(release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv")
    process = subprocess.Popen(
        CLI + ["-q", "detect", "--model", str(bundle_dir), "--runtime", "onnx", "--input", "-", "--max-latency-ms", "10"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    reader = _LineReader(process.stdout)
    process.stdin.write("\n".join(lines[:4]) + "\n")
    process.stdin.flush()
    seen = [reader.next(60.0) for _ in range(3)]
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    err = process.stderr.read()
    process.stdin.close()
    process.stderr.close()
    records = [json.loads(line) for line in seen + [reader.next(5.0)] if line.strip()]
    assert process.returncode == 128 + signal.SIGTERM
    assert records[-1]["event_type"] == "stats"
    assert records[-1]["stats"]["rows_read"] == 3
    assert records[-1]["stats"]["interrupted_by"] == "SIGTERM"
    assert "stopped by SIGTERM" in err
