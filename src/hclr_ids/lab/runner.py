"""Run the lab: build the network, capture each scenario, extract features, write the release layout.

For every scenario the runner flushes the neighbour caches, starts tcpdump on the bridge port of
the scenario's capture host, runs the scenario's steps and stops the capture. Once the network is
torn down, it computes the 45 CICIoMT2024 window features of each capture (100-packet windows for
the DoS/DDoS classes, 10 for the rest). The first ``train_fraction`` of each capture's windows go
to ``WiFI_and_MQTT/attacks/csv/train/<Class>_train.pcap.csv`` and the rest to
``.../test/<Class>_test.pcap.csv``. A ``lab-manifest.json`` beside them records the scale, the
packets and rows per scenario and the tool versions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hclr_ids.lab.scenarios import SCALES, LabScale, Scenario, Step, required_tools, resolve_scenarios
from hclr_ids.lab.topology import LabError, LabTopology

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

#: Folder of the release layout below the output folder.
RELEASE_SUBPATH = Path("WiFI_and_MQTT") / "attacks" / "csv"

#: Debian package of each tool, for the missing-tool message.
TOOL_PACKAGES: dict[str, str] = {
    "ip": "iproute2", "ethtool": "ethtool", "sysctl": "procps", "timeout": "coreutils", "tcpdump": "tcpdump",
    "mosquitto": "mosquitto", "mosquitto_pub": "mosquitto-clients", "mosquitto_sub": "mosquitto-clients",
    "curl": "curl", "dnsmasq": "dnsmasq-base", "ping": "iputils-ping", "hping3": "hping3", "nmap": "nmap",
    "arpspoof": "dsniff",
}

INSTALL_HINT = "install them with 'sudo scripts/install-lab-deps.sh' from the hclr-ids source tree"

#: Most frames one capture keeps (tcpdump -c), a bound on the pcap size.
MAX_CAPTURE_PACKETS = 200_000

_LEAD_IN_S = 1.0
_TAIL_S = 1.0
_BROKER = "broker"


@dataclass
class CaptureResult:
    """One scenario's capture and the rows made from it."""

    scenario: str
    class_name: str
    window: int
    seconds: float
    """Wall-clock length of the capture."""
    packets: int = 0
    """Frames tcpdump wrote."""
    pcap: str | None = None
    """Path of the kept pcap relative to the output folder, or None when it was deleted after extraction."""
    train_rows: int = 0
    test_rows: int = 0


@dataclass
class LabResult:
    """Outcome of :func:`run_lab`."""

    out_dir: str
    scale: LabScale
    captures: list[CaptureResult] = field(default_factory=list)
    capture_seconds: float = 0.0
    """Wall-clock time from building the network to the end of the teardown."""
    total_seconds: float = 0.0
    tool_versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_requirements(scenarios: Sequence[Scenario]) -> None:
    """Raise ``PermissionError`` unless running as root, ``FileNotFoundError`` naming any missing tool."""
    if os.geteuid() != 0:
        raise PermissionError("hclr-ids lab needs root: it creates network namespaces, veth pairs and a bridge, "
                              "and runs tcpdump; run it with sudo")
    missing = [tool for tool in required_tools(list(scenarios)) if shutil.which(tool) is None]
    if missing:
        packages = sorted({TOOL_PACKAGES.get(tool, tool) for tool in missing})
        raise FileNotFoundError(f"missing lab tools: {', '.join(missing)} (Debian packages {', '.join(packages)}); "
                                f"{INSTALL_HINT}")


def release_csv_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / RELEASE_SUBPATH


def run_lab(
    out_dir: str | Path,
    *,
    scenarios: Sequence[str] | None = None,
    scale: str | LabScale = "small",
    keep_pcaps: bool = False,
    train_fraction: float = 0.8,
    prefix: str | None = None,
) -> LabResult:
    """Capture ``scenarios`` (all when None) at ``scale`` and write their rows under ``out_dir``.

    ``out_dir`` gets the release layout (see the module docstring); with ``keep_pcaps`` the
    captures stay in ``out_dir/pcaps`` and the output of every lab process in ``out_dir/pcaps/logs``. The network is torn down before features are computed,
    also when a step fails or the process receives SIGINT, SIGTERM or SIGHUP.
    """
    started = time.monotonic()
    chosen = resolve_scenarios(list(scenarios) if scenarios else None)
    lab_scale = _resolve_scale(scale)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}")
    check_requirements(chosen)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = LabResult(out_dir=str(out), scale=lab_scale, tool_versions=tool_versions())
    logger.info("lab run at scale %s: %d scenarios -> %s", lab_scale.name, len(chosen), out)

    with tempfile.TemporaryDirectory(prefix="hclr-lab-") as work:
        work_dir = Path(work)
        pcap_dir = out / "pcaps" if keep_pcaps else work_dir / "pcaps"
        pcap_dir.mkdir(parents=True, exist_ok=True)
        log_dir = pcap_dir / "logs"
        capture_started = time.monotonic()
        with _signals_raise_keyboard_interrupt(), LabTopology(prefix=prefix, log_dir=log_dir) as topology:
            _start_services(topology, work_dir)
            for scenario in chosen:
                pcap = pcap_dir / f"{scenario.name}.pcap"
                result.captures.append(_capture_scenario(topology, scenario, lab_scale, pcap))
        result.capture_seconds = time.monotonic() - capture_started

        for capture in result.captures:
            pcap = pcap_dir / f"{capture.scenario}.pcap"
            capture.train_rows, capture.test_rows = _write_rows(pcap, capture, out, train_fraction)
            capture.pcap = str(pcap.relative_to(out)) if keep_pcaps else None

    result.total_seconds = time.monotonic() - started
    manifest = {key: value for key, value in result.to_dict().items() if key != "out_dir"}
    (out / "lab-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("lab run done in %.0f s (captures %.0f s): %d rows", result.total_seconds, result.capture_seconds,
                sum(c.train_rows + c.test_rows for c in result.captures))
    return result


def _resolve_scale(scale: str | LabScale) -> LabScale:
    if isinstance(scale, LabScale):
        return scale
    if scale not in SCALES:
        raise ValueError(f"unknown lab scale {scale!r}; expected one of {', '.join(SCALES)}")
    return SCALES[scale]


@contextlib.contextmanager
def _signals_raise_keyboard_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt while the network is up, so teardown runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- services -----------------------------------------------------------------------------------

def _start_services(topology: LabTopology, work_dir: Path) -> None:
    """Start mosquitto, an HTTP server and dnsmasq on the broker host and wait until each responds."""
    broker = topology.address(_BROKER)
    config = work_dir / "mosquitto.conf"
    config.write_text("listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\n"
                      "connection_messages false\nlog_dest stderr\nlog_type error\nlog_type warning\n",
                      encoding="utf-8")
    web_root = _write_web_root(work_dir / "www")
    topology.start(_BROKER, ["mosquitto", "-c", str(config)], name="mosquitto")
    topology.start(_BROKER, [sys.executable, "-m", "http.server", "80", "--bind", broker,
                             "--directory", str(web_root)], name="http-server")
    topology.start(_BROKER, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                             "--no-hosts", "--bind-interfaces", f"--listen-address={broker}",
                             f"--address=/#/{broker}", "--user=root", "--log-facility=-",
                             f"--pid-file={work_dir / 'dnsmasq.pid'}"], name="dnsmasq")
    checks = {
        "mosquitto": ["mosquitto_pub", "-h", broker, "-i", "lab-check", "-t", "lab/ready", "-m", "1"],
        "HTTP server": ["curl", "-s", "-o", "/dev/null", "--max-time", "2", f"http://{broker}/status.json"],
        "dnsmasq": [sys.executable, "-m", "hclr_ids.lab.traffic", "dns", broker, "--count", "1",
                    "--interval", "0"],
    }
    for service, argv in checks.items():
        _wait_until_ok(topology, "dev1", argv, service)
    logger.info("services up on %s: mosquitto :1883, HTTP :80, DNS :53", broker)


def _write_web_root(web_root: Path) -> Path:
    web_root.mkdir(parents=True, exist_ok=True)
    (web_root / "status.json").write_text('{"ward":3,"devices":3,"status":"ok"}\n', encoding="utf-8")
    rows = "".join(f"<tr><td>pump{i:02d}</td><td>ok</td></tr>" for i in range(40))
    (web_root / "index.html").write_text(f"<html><body><h1>Ward 3 gateway</h1><table>{rows}</table></body></html>\n",
                                         encoding="utf-8")
    (web_root / "firmware.bin").write_bytes(random.Random(0).randbytes(60_000))
    return web_root


def _wait_until_ok(topology: LabTopology, host: str, argv: list[str], service: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            topology.check(host, argv, timeout=5.0)
            return
        except LabError as error:
            if time.monotonic() > deadline:
                raise LabError(f"{service} on the lab broker did not respond within {timeout_s:.0f} s: {error}") from error
            time.sleep(0.3)


# --- captures -----------------------------------------------------------------------------------

def _capture_scenario(topology: LabTopology, scenario: Scenario, scale: LabScale, pcap: Path) -> CaptureResult:
    """Run one scenario under tcpdump on its capture host's bridge port."""
    broker = topology.address(_BROKER)
    steps = sorted(scenario.steps(scale, broker), key=lambda step: step.delay_s)
    for host in topology.hosts:
        topology.check(host, ["ip", "neigh", "flush", "all"])

    port = topology.hosts[scenario.capture_host].switch_port
    log_dir = topology.log_dir or pcap.parent
    capture_log = log_dir / f"tcpdump-{scenario.name}.log"
    capture_log.unlink(missing_ok=True)
    # -Z root: tcpdump would otherwise drop to the tcpdump user before opening the output file.
    tcpdump = topology.start("switch", ["tcpdump", "-i", port, "-s", "0", "-U", "-B", "32768", "-Z", "root",
                                        "-c", str(MAX_CAPTURE_PACKETS), "-w", str(pcap)],
                             name=f"tcpdump-{scenario.name}")
    _wait_for_text(capture_log, "listening on", tcpdump, what=f"tcpdump on {port}")
    started = time.monotonic()
    time.sleep(_LEAD_IN_S)

    logger.info("capturing %s (%s) on %s: %d steps", scenario.name, scenario.class_name, port, len(steps))
    _run_steps(topology, steps)

    time.sleep(_TAIL_S)
    topology.stop(tcpdump, sig=signal.SIGINT, timeout=10.0)
    seconds = time.monotonic() - started
    packets = _captured_packets(capture_log)
    if packets == 0 or not pcap.is_file():
        raise LabError(f"capture of scenario {scenario.name} on {port} is empty; see {capture_log}")
    logger.info("%s: %d packets in %.1f s", scenario.name, packets, seconds)
    return CaptureResult(scenario=scenario.name, class_name=scenario.class_name, window=scenario.window,
                         seconds=round(seconds, 2), packets=packets)


def _run_steps(topology: LabTopology, steps: list[Step]) -> None:
    """Start each step at its delay, wait for the foreground steps, then stop the background ones."""
    t0 = time.monotonic()
    running: list[tuple[Step, subprocess.Popen[bytes], float]] = []
    for index, step in enumerate(steps):
        pause = t0 + step.delay_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        process = topology.start(step.host, list(step.argv), name=f"{step.label}-{index}")
        running.append((step, process, time.monotonic() + step.limit_s + 5.0))

    for step, process, deadline in running:
        if step.background:
            continue
        remaining = deadline - time.monotonic()
        try:
            code = process.wait(timeout=max(0.0, remaining))
        except subprocess.TimeoutExpired:
            logger.warning("%s outlived its time limit; stopping it", step.label)
            code = topology.stop(process, sig=signal.SIGKILL)
        if code not in step.ok_exit_codes:
            logger.warning("%s exited with status %s: %s", step.label, code, " ".join(step.argv))

    for step, process, _ in running:
        if step.background:
            topology.stop(process)


def _wait_for_text(log: Path, text: str, process: subprocess.Popen[bytes], *, what: str,
                   timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.05)
    output = log.read_text(errors="replace").strip() if log.is_file() else "(no output)"
    raise LabError(f"{what} did not start within {timeout_s:.0f} s: {output}")


def _captured_packets(log: Path) -> int:
    text = log.read_text(errors="replace") if log.is_file() else ""
    captured = re.search(r"(\d+) packets? captured", text)
    dropped = re.search(r"(\d+) packets? dropped by kernel", text)
    if dropped and int(dropped.group(1)):
        logger.warning("%s: tcpdump reports %s packets dropped by the kernel", log.name, dropped.group(1))
    return int(captured.group(1)) if captured else 0


# --- features and the release layout ------------------------------------------------------------

def _write_rows(pcap: Path, capture: CaptureResult, out_dir: Path, train_fraction: float) -> tuple[int, int]:
    from hclr_ids.pcap import extract_features

    frame = extract_features(pcap, window=capture.window, mode="cic")
    if frame.height == 0:
        raise LabError(f"{pcap}: the capture of scenario {capture.scenario} produced no feature rows")
    return write_release_split(frame, capture.class_name, out_dir, train_fraction)


def write_release_split(frame: pl.DataFrame, class_name: str, out_dir: str | Path,
                        train_fraction: float = 0.8) -> tuple[int, int]:
    """Write the first ``train_fraction`` of ``frame``'s rows as ``<Class>_train.pcap.csv``, the rest as test.

    A frame of two or more rows puts at least one row on each side. Returns (train rows, test rows).
    """
    n_rows = frame.height
    n_train = round(n_rows * train_fraction)
    if n_rows >= 2:
        n_train = min(max(n_train, 1), n_rows - 1)
    csv_dir = release_csv_dir(out_dir)
    for side, part in (("train", frame.head(n_train)), ("test", frame.slice(n_train))):
        folder = csv_dir / side
        folder.mkdir(parents=True, exist_ok=True)
        part.write_csv(folder / f"{class_name}_{side}.pcap.csv")
    return n_train, n_rows - n_train


def tool_versions() -> dict[str, str]:
    """Return the installed Debian package version of each lab tool (empty where dpkg-query is absent)."""
    if shutil.which("dpkg-query") is None:
        return {}
    versions: dict[str, str] = {}
    for package in sorted(set(TOOL_PACKAGES.values())):
        result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                                capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout:
            versions[package] = result.stdout
    return versions
