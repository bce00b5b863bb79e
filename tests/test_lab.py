"""The capture lab: namespaces and teardown, captures, window features, the release layout, the built-in dataset.

Tests marked ``root`` build real network namespaces and run the lab tools. Outside CI they are
skipped when not running as root or when a tool is missing; under CI (``CI`` set) that is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hclr_ids.lab import (
    SCENARIOS,
    LabError,
    LabScale,
    LabTopology,
    check_requirements,
    lab_namespaces,
    run_lab,
    window_for_class,
    write_release_split,
)
from hclr_ids.lab import runner as lab_runner
from hclr_ids.lab.scenarios import required_tools
from hclr_ids.lab.traffic import _remaining_length, mqtt_connect
from hclr_ids.schema import CLASSES, FEATURE_COLUMNS

#: A few scenarios covering both window sizes, TCP, ICMP-free MQTT sessions and a scan.
TEST_SCENARIOS = ("benign", "recon_port_scan", "tcpip_dos_syn", "mqtt_dos_connect_flood")

#: Tiny counts so the whole lab run takes about 20 s.
TINY = LabScale(
    name="test", flood_packets=400, ddos_packets=100, flood_interval_us=200, flood_seconds=6,
    publish_messages=400, connect_sessions=40, malformed_messages=20, benign_seconds=3, arp_spoof_seconds=3,
    port_scan_ports=100, scan_seconds=10, vuln_scan_seconds=8, ping_sweeps=1, os_scan_hosts=1,
)

#: Processes the lab starts; any of them alive after a run but not before it is a leak.
LAB_PROCESS_NAMES = {"tcpdump", "mosquitto", "mosquitto_pub", "mosquitto_sub", "dnsmasq", "hping3", "nmap",
                     "arpspoof", "timeout", "curl", "ping"}


def _lab_available() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "the lab needs root (network namespaces)"
    else:
        missing = [tool for tool in required_tools(list(SCENARIOS.values())) if shutil.which(tool) is None]
        if missing:
            problem = f"lab tools missing: {', '.join(missing)}; run scripts/install-lab-deps.sh"
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


def _lab_process_ids() -> set[int]:
    """Return the ids of lab tool processes that run outside this process's network namespace.

    Every lab tool runs inside a lab namespace, so the namespace test keeps unrelated processes of the same
    name on the host (a shell's ``timeout`` or ``ping``) out of the count.
    """
    host_namespace = os.readlink("/proc/self/ns/net")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            namespace = os.readlink(entry / "ns" / "net")
        except OSError:
            continue
        if name in LAB_PROCESS_NAMES and namespace != host_namespace:
            pids.add(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    _lab_available()
    out = tmp_path_factory.mktemp("lab")
    prefix = f"hclr-lab-test{os.getpid()}"
    before = _lab_process_ids()
    result = run_lab(out, scenarios=list(TEST_SCENARIOS), scale=TINY, keep_pcaps=True, prefix=prefix)
    return {"out": out, "result": result, "prefix": prefix, "new_processes": _lab_process_ids() - before}


def _capture_rows(out: Path, class_name: str) -> pl.DataFrame:
    csv_dir = out / "WiFI_and_MQTT" / "attacks" / "csv"
    train = pl.read_csv(csv_dir / "train" / f"{class_name}_train.pcap.csv")
    test = pl.read_csv(csv_dir / "test" / f"{class_name}_test.pcap.csv")
    return pl.concat([train, test])


# --- namespaces and teardown --------------------------------------------------------------------

@pytest.mark.root
def test_topology_creates_namespaces() -> None:
    _lab_available()
    prefix = f"hclr-lab-topo{os.getpid()}"
    with LabTopology(prefix=prefix) as topology:
        assert sorted(lab_namespaces(prefix)) == sorted(topology.namespaces)
        assert len(topology.namespaces) == 9
        topology.check("dev1", ["ping", "-c", "1", "-W", "2", topology.address("broker")])
    assert lab_namespaces(prefix) == []


@pytest.mark.root
def test_namespaces_have_no_default_route() -> None:
    _lab_available()
    with LabTopology(prefix=f"hclr-lab-route{os.getpid()}") as topology:
        routes = topology.check("atk1", ["ip", "route", "show"])
    assert "default" not in routes
    assert routes.split()[0] == "10.201.0.0/24"


@pytest.mark.root
def test_topology_teardown_after_failure() -> None:
    _lab_available()
    prefix = f"hclr-lab-fail{os.getpid()}"
    with pytest.raises(RuntimeError, match="injected"), LabTopology(prefix=prefix) as topology:
        sleeper = topology.start("dev1", ["sleep", "60"])
        raise RuntimeError("injected failure")
    assert lab_namespaces(prefix) == []
    assert sleeper.poll() is not None


@pytest.mark.root
def test_run_lab_teardown_after_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _lab_available()
    prefix = f"hclr-lab-runfail{os.getpid()}"
    seen: list[list[str]] = []

    def failing_capture(topology: LabTopology, *args: object) -> None:
        seen.append(lab_namespaces(prefix))
        raise LabError("injected capture failure")

    monkeypatch.setattr(lab_runner, "_capture_scenario", failing_capture)
    with pytest.raises(LabError, match="injected"):
        run_lab(tmp_path, scenarios=["benign"], scale=TINY, prefix=prefix)
    assert len(seen[0]) == 9
    assert lab_namespaces(prefix) == []


# --- a small lab run ------------------------------------------------------------------------------

@pytest.mark.root
def test_lab_leaves_nothing_behind(lab_run: dict[str, object]) -> None:
    assert lab_namespaces(str(lab_run["prefix"])) == []
    assert lab_run["new_processes"] == set()


@pytest.mark.root
def test_lab_pcaps_not_empty(lab_run: dict[str, object]) -> None:
    out = Path(str(lab_run["out"]))
    for name in TEST_SCENARIOS:
        pcap = out / "pcaps" / f"{name}.pcap"
        assert pcap.stat().st_size > 24 + 16 * 10, name  # pcap header plus at least ten records


@pytest.mark.root
def test_lab_packet_counts(lab_run: dict[str, object]) -> None:
    captures = {c.scenario: c for c in lab_run["result"].captures}  # type: ignore[attr-defined]
    assert set(captures) == set(TEST_SCENARIOS)
    # A SYN flood of 400 probes to an open port gives SYN, SYN-ACK and RST for each.
    assert captures["tcpip_dos_syn"].packets >= 3 * TINY.flood_packets
    for capture in captures.values():
        assert capture.train_rows > 0, capture.scenario
        assert capture.test_rows > 0, capture.scenario


@pytest.mark.root
def test_lab_rows_have_release_columns(lab_run: dict[str, object]) -> None:
    out = Path(str(lab_run["out"]))
    for name in TEST_SCENARIOS:
        rows = _capture_rows(out, SCENARIOS[name].class_name)
        assert tuple(rows.columns) == FEATURE_COLUMNS, name


@pytest.mark.root
def test_lab_ten_packet_windows(lab_run: dict[str, object]) -> None:
    # Number is the frame's position in its 20-frame block (0 for the 20th): windows 1-10 and 11-19,0.
    rows = _capture_rows(Path(str(lab_run["out"])), "Benign")
    number = rows["Number"].to_numpy()[:-1]  # the last window may be partial
    expected = np.where(np.arange(number.size) % 2 == 0, 5.5, 13.5)
    np.testing.assert_allclose(number, expected)


@pytest.mark.root
def test_lab_hundred_packet_windows(lab_run: dict[str, object]) -> None:
    for class_name in ("TCP_IP-DoS-SYN", "MQTT-DoS-Connect_Flood"):
        rows = _capture_rows(Path(str(lab_run["out"])), class_name)
        np.testing.assert_allclose(rows["Number"].to_numpy()[:-1], 9.5, err_msg=class_name)


@pytest.mark.root
def test_lab_split_is_eighty_twenty(lab_run: dict[str, object]) -> None:
    for capture in lab_run["result"].captures:  # type: ignore[attr-defined]
        total = capture.train_rows + capture.test_rows
        assert capture.train_rows == min(max(round(0.8 * total), 1), total - 1), capture.scenario


@pytest.mark.root
def test_lab_output_loads(lab_run: dict[str, object], tmp_path: Path) -> None:
    from hclr_ids.data import load_dataset

    dataset = load_dataset(Path(str(lab_run["out"])), cache_dir=tmp_path)
    assert set(dataset.labels) == {SCENARIOS[name].class_name for name in TEST_SCENARIOS}
    assert dataset.X.shape[1] == 45


# --- checks that need no root -------------------------------------------------------------------

def test_requirements_reject_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionError, match="needs root"):
        check_requirements(list(SCENARIOS.values()))


def test_requirements_name_missing_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "hping3" else f"/usr/bin/{tool}")
    with pytest.raises(FileNotFoundError, match=r"hping3 .*Debian packages hping3.*install-lab-deps\.sh"):
        check_requirements(list(SCENARIOS.values()))


def test_scenarios_cover_every_class() -> None:
    assert sorted(s.class_name for s in SCENARIOS.values()) == sorted(CLASSES)


def test_window_for_class() -> None:
    assert window_for_class("TCP_IP-DDoS-UDP") == 100
    assert window_for_class("MQTT-DoS-Connect_Flood") == 100
    assert window_for_class("MQTT-Malformed_Data") == 10
    assert window_for_class("Recon-VulScan") == 10
    assert window_for_class("Benign") == 10


def test_release_split_writes_both_sides(tmp_path: Path) -> None:
    frame = pl.DataFrame({name: np.arange(10, dtype=np.float64) for name in FEATURE_COLUMNS})
    assert write_release_split(frame, "Benign", tmp_path) == (8, 2)
    test_rows = pl.read_csv(tmp_path / "WiFI_and_MQTT/attacks/csv/test/Benign_test.pcap.csv")
    assert test_rows["Rate"].to_list() == [8.0, 9.0]


def test_mqtt_connect_bytes() -> None:
    # Fixed header 0x10, remaining length 14: "MQTT" name, level 4, clean session, keepalive 60, id "ab".
    assert mqtt_connect("ab") == bytes.fromhex("100e00044d5154540402003c00026162")


def test_mqtt_remaining_length() -> None:
    assert _remaining_length(0) == b"\x00"
    assert _remaining_length(127) == b"\x7f"
    assert _remaining_length(321) == b"\xc1\x02"
    assert _remaining_length(268_435_455) == b"\xff\xff\xff\x7f"


def test_builtin_dataset_loads(tmp_path: Path) -> None:
    from hclr_ids.data import load_dataset
    from hclr_ids.datasets import builtin_dataset_path

    dataset = load_dataset(builtin_dataset_path(), cache_dir=tmp_path)
    assert set(dataset.labels) == set(CLASSES)
    assert dataset.X.shape[1] == 45


@pytest.mark.root
def test_cli_sigterm_tears_down(tmp_path: Path) -> None:
    _lab_available()
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "hclr_ids.cli", "-q", "lab", "--out", str(tmp_path), "--scenarios", "benign"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prefix = f"hclr-lab-{process.pid}-"
    deadline = time.monotonic() + 30
    while len(lab_namespaces(prefix)) < 9 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert len(lab_namespaces(prefix)) == 9
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr.decode()
    assert lab_namespaces(prefix) == []
