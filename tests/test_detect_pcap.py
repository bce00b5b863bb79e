"""Detection on packet captures and live interfaces: one record per feature window, with its flow and times."""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hclr_ids.bundle import ModelBundle, load_bundle
from hclr_ids.detect import DetectConfig, Detector, run_detection
from hclr_ids.pcap import ExtractorConfig, extract_features, iter_windows

CLI = [sys.executable, "-m", "hclr_ids"]
#: 3,004 frames of MQTT-Malformed_Data, 301 windows of 10 frames, every window with a TCP flow.
CAPTURE = "mqtt_malformed_data.pcap"
CAPTURE_WINDOWS = 301


@pytest.fixture(scope="module")
def bundle(trained_bundle: Path) -> ModelBundle:
    return load_bundle(trained_bundle)


def _detect(bundle: ModelBundle, path: Path, **extractor) -> list[dict]:
    output = io.StringIO()
    config = DetectConfig(batch_size=64, extractor=ExtractorConfig(**extractor))
    run_detection(bundle, path, output, config)
    return [json.loads(line) for line in output.getvalue().splitlines()]


def _rows(records: list[dict]) -> list[dict]:
    return [r for r in records if r["event_type"] != "stats"]


def test_capture_windows_in_records_out(bundle, pcap_reference_dir):
    path = pcap_reference_dir / CAPTURE
    windows = list(iter_windows(path, ExtractorConfig(window=10)))
    rows = _rows(_detect(bundle, path, window=10))
    assert len(windows) == CAPTURE_WINDOWS
    assert len(rows) == len(windows)
    assert [r["source"]["row"] for r in rows] == list(range(1, len(windows) + 1))
    assert {r["source"]["file"] for r in rows} == {str(path)}


def test_capture_records_carry_window(bundle, pcap_reference_dir):
    path = pcap_reference_dir / CAPTURE
    windows = list(iter_windows(path, ExtractorConfig(window=10)))
    rows = _rows(_detect(bundle, path, window=10))
    assert [r["window"]["first_time"] for r in rows] == [w.first_time for w in windows]
    assert [r["window"]["last_time"] for r in rows] == [w.last_time for w in windows]
    assert [r["window"]["packets"] for r in rows] == [w.packets for w in windows]
    tuples = [(r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"], r["proto"]) for r in rows]
    expected = [(w.flow.src_ip, w.flow.src_port, w.flow.dst_ip, w.flow.dst_port, "TCP") for w in windows]
    assert tuples == expected


def test_capture_verdicts_match_model(bundle, pcap_reference_dir):
    path = pcap_reference_dir / CAPTURE
    rows = _rows(_detect(bundle, path, window=10))
    X = extract_features(path, window=10).select(bundle.input_features).to_numpy()
    proba = bundle.predict_proba(X)
    expected = np.asarray(bundle.classes)[proba.argmax(axis=1)]
    confidence = np.array([r["verdict"]["confidence"] for r in rows])
    assert [r["verdict"]["class"] for r in rows] == expected.tolist()
    assert np.abs(confidence - proba.max(axis=1)).max() <= 1e-6


def test_capture_found_by_magic_bytes(bundle, pcap_reference_dir, tmp_path):
    renamed = tmp_path / "flows.csv"
    shutil.copyfile(pcap_reference_dir / "recon_port_scan.pcap", renamed)
    records = _detect(bundle, renamed, window=10)
    assert len(_rows(records)) == 401
    assert records[-1]["stats"]["errors"] == 0


def test_corrected_mode_reads_linux_sll(bundle, cases_dir):
    path = cases_dir / "C11_linux_sll.pcap"
    cic = _rows(_detect(bundle, path, window=10, mode="cic"))
    corrected = _rows(_detect(bundle, path, window=10, mode="corrected"))
    expected = list(iter_windows(path, ExtractorConfig(window=10, mode="corrected")))
    assert cic == []
    assert len(corrected) == len(expected) > 0
    assert [r["src_ip"] for r in corrected] == [w.flow.src_ip if w.flow else None for w in expected]


def test_window_source_error_raised(bundle, pcap_reference_dir):
    windows = list(iter_windows(pcap_reference_dir / CAPTURE, ExtractorConfig(window=10)))[:3]

    def failing():
        yield from windows
        raise ValueError("unsupported link type 105 (IEEE 802.11)")

    detector = Detector(bundle, io.StringIO())
    with pytest.raises(ValueError, match="unsupported link type 105"):
        detector.run_windows(failing(), "capture.pcap")
    assert detector.stop_event.is_set()


def test_cli_window_100(trained_bundle, pcap_reference_dir):
    path = pcap_reference_dir / "mqtt_ddos_connect_flood.pcap"
    result = subprocess.run(
        CLI + ["-q", "detect", "--model", str(trained_bundle), "--input", str(path), "--window", "100",
               "--mode", "cic", "--alerts-only"],
        capture_output=True, text=True, timeout=120,
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0
    assert records[-1]["stats"]["rows_read"] == 161
    assert {r["window"]["packets"] for r in _rows(records)} <= {100, 28}


def test_cli_unknown_interface(trained_bundle):
    result = subprocess.run(
        CLI + ["-q", "detect", "--model", str(trained_bundle), "--interface", "hclr-absent0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "cannot capture on interface 'hclr-absent0'" in result.stderr
    assert result.stdout == ""


def test_cli_interface_without_rights(tmp_path):
    # Capture rights are checked before the model loads, so a missing model path is never reached.
    command = CLI + ["-q", "detect", "--model", str(tmp_path / "absent"), "--interface", "lo"]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] + command
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 1
    assert "needs root or the CAP_NET_RAW capability" in result.stderr
    assert "tcpdump -i lo -w FILE" in result.stderr


# ------------------------------------------------------------------------------------------------ live capture

#: Sends 100 UDP datagrams over loopback to a bound receiver and prints the sender's and receiver's ports.
UDP_BURST = """
import socket, time
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 0))
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.bind(("127.0.0.1", 0))
for i in range(100):
    sender.sendto(b"hclr-ids burst %03d" % i, receiver.getsockname())
    receiver.recv(64)
    time.sleep(0.002)
print(sender.getsockname()[1], receiver.getsockname()[1])
"""


@pytest.fixture
def netns():
    """A network namespace with its loopback up, deleted afterwards even when the test fails."""
    if os.geteuid() != 0:
        reason = "live capture in a network namespace needs root (ip netns add)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"hclr-ids-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _collect(stream, into: queue.Queue) -> threading.Thread:
    thread = threading.Thread(target=lambda: [into.put(line) for line in stream], daemon=True)
    thread.start()
    return thread


def _wait_for(lines: queue.Queue, seen: list[str], predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.1))
        except queue.Empty:
            continue
        if predicate(seen):
            return True
    return False


@pytest.mark.root
def test_live_capture_netns(netns, trained_bundle):
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns] + CLI + [
            "detect", "--model", str(trained_bundle), "--interface", "lo", "--window", "10",
            "--max-latency-ms", "20",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
    )
    out_lines: queue.Queue[str] = queue.Queue()
    err_lines: queue.Queue[str] = queue.Queue()
    out_thread = _collect(process.stdout, out_lines)
    _collect(process.stderr, err_lines)
    stdout: list[str] = []
    stderr: list[str] = []
    try:
        started = _wait_for(err_lines, stderr, lambda seen: any("capturing on lo" in s for s in seen), 120)
        assert started, "detect did not start capturing within 120 s:\n" + "".join(stderr)
        sent_after = time.time()
        burst = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", UDP_BURST],
                               capture_output=True, text=True, timeout=60, check=True)
        sender_port, receiver_port = map(int, burst.stdout.split())
        scored = _wait_for(out_lines, stdout, lambda seen: len(seen) >= 10, 30)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out_thread.join(timeout=10)
    while not out_lines.empty():
        stdout.append(out_lines.get())
    records = [json.loads(line) for line in stdout]
    rows = _rows(records)

    assert scored, f"fewer than 10 records within 30 s of the burst: {stdout}"
    assert process.returncode == 128 + signal.SIGTERM
    assert len(rows) == 10
    assert {(r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"], r["proto"]) for r in rows} == {
        ("127.0.0.1", sender_port, "127.0.0.1", receiver_port, "UDP")
    }
    assert [r["window"]["packets"] for r in rows] == [10] * 10
    assert all(sent_after <= r["window"]["first_time"] <= r["window"]["last_time"] for r in rows)
    assert {r["source"]["interface"] for r in rows} == {"lo"}
    assert records[-1]["event_type"] == "stats"
    assert records[-1]["stats"]["interrupted_by"] == "SIGTERM"
