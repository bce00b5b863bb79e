"""The lab network: one switch namespace holding a Linux bridge, one namespace per host on a veth pair.

Every host namespace has a single interface ``eth0`` (address ``10.201.0.N/24``, MAC
``02:00:0a:c9:00:NN``) whose peer ``p-<host>`` is a port of the bridge ``br0`` in the switch
namespace. No namespace has a default route and nothing is connected to the host's own network
namespace, so lab traffic never leaves the lab. Offloads are turned off on both veth ends, so
tcpdump on a bridge port records real MTU-sized frames.

:class:`LabTopology` starts every lab process through ``ip netns exec`` in a new session, tracks it,
and on :meth:`LabTopology.teardown` stops those processes, kills whatever else still runs inside
the lab namespaces, deletes the namespaces and checks that none is left.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

#: Private subnet used inside the lab namespaces only.
LAB_SUBNET = ipaddress.IPv4Network("10.201.0.0/24")

#: Bridge name inside the switch namespace.
BRIDGE = "br0"

#: Interface name inside every host namespace.
HOST_INTERFACE = "eth0"

#: Prefix of every namespace the lab creates; ``lab_namespaces`` finds leftovers by it.
NAMESPACE_PREFIX = "hclr-lab"


@dataclass(frozen=True)
class LabHost:
    """One host of the lab: a namespace with one veth interface on the bridge."""

    name: str
    host_number: int
    """Last octet of the IPv4 address inside :data:`LAB_SUBNET`."""
    role: str
    """``server``, ``device`` or ``attacker``."""

    @property
    def address(self) -> str:
        return str(LAB_SUBNET.network_address + self.host_number)

    @property
    def mac(self) -> str:
        octets = LAB_SUBNET.network_address.packed[:3] + bytes([self.host_number])
        return "02:00:" + ":".join(f"{octet:02x}" for octet in octets)

    @property
    def switch_port(self) -> str:
        """Name of the bridge port (the veth peer) in the switch namespace."""
        return f"p-{self.name}"


#: The broker runs mosquitto, an HTTP server and a DNS server; devices publish telemetry;
#: attackers run the attack tools.
DEFAULT_HOSTS: tuple[LabHost, ...] = (
    LabHost("broker", 10, "server"),
    LabHost("dev1", 21, "device"),
    LabHost("dev2", 22, "device"),
    LabHost("dev3", 23, "device"),
    LabHost("atk1", 66, "attacker"),
    LabHost("atk2", 67, "attacker"),
    LabHost("atk3", 68, "attacker"),
    LabHost("atk4", 69, "attacker"),
)


class LabError(RuntimeError):
    """A lab step failed: a command, a namespace operation or the teardown check."""


def lab_namespaces(prefix: str = NAMESPACE_PREFIX) -> list[str]:
    """Return the network namespaces whose name starts with ``prefix``."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix)]


def namespace_pids(namespace: str) -> list[int]:
    """Return the ids of the processes running inside ``namespace`` (empty if it does not exist)."""
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return [int(token) for token in result.stdout.split() if token.isdigit()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LabTopology:
    """Build the lab network, run processes inside it and tear everything down.

    Use it as a context manager: ``__enter__`` builds the network and ``__exit__`` tears it down,
    also when the body raises. Namespaces are named ``<prefix>-<host>`` and ``<prefix>-sw``;
    the default prefix includes this process id, so two labs never share a namespace.
    """

    def __init__(self, hosts: Sequence[LabHost] = DEFAULT_HOSTS, *, prefix: str | None = None,
                 log_dir: Path | None = None) -> None:
        names = [host.name for host in hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate lab host names in {names}")
        self.hosts: dict[str, LabHost] = {host.name: host for host in hosts}
        self.prefix = prefix or f"{NAMESPACE_PREFIX}-{os.getpid()}"
        self.log_dir = log_dir
        self._namespaces: list[str] = []
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    # --- names ----------------------------------------------------------------------------

    @property
    def switch_namespace(self) -> str:
        return f"{self.prefix}-sw"

    def namespace(self, host: str) -> str:
        """Return the namespace of ``host``, or the switch namespace for ``"switch"``."""
        if host == "switch":
            return self.switch_namespace
        if host not in self.hosts:
            raise ValueError(f"unknown lab host {host!r}; expected 'switch' or one of {sorted(self.hosts)}")
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return self.hosts[host].address

    @property
    def namespaces(self) -> list[str]:
        """Namespaces created so far, in creation order."""
        return list(self._namespaces)

    # --- building -------------------------------------------------------------------------

    def __enter__(self) -> LabTopology:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.teardown()

    def build(self) -> None:
        """Create the switch namespace with its bridge, then every host on its own veth pair."""
        switch = self.switch_namespace
        self._add_namespace(switch)
        self.check("switch", ["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])
        self.check("switch", ["ip", "link", "set", BRIDGE, "up"])
        for host in self.hosts.values():
            self._add_host(host)
        logger.info("lab network up: %d hosts on %s in namespaces %s-*", len(self.hosts), LAB_SUBNET, self.prefix)

    def _add_namespace(self, namespace: str) -> None:
        _run(["ip", "netns", "add", namespace])
        self._namespaces.append(namespace)
        # IPv6 is off, so captures hold no router solicitations or DAD probes.
        self.check_in(namespace, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])
        self.check_in(namespace, ["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"])
        self.check_in(namespace, ["ip", "link", "set", "lo", "up"])

    def _add_host(self, host: LabHost) -> None:
        namespace = self.namespace(host.name)
        self._add_namespace(namespace)
        # Both ends are created directly inside the lab namespaces: the host's own network
        # namespace never holds a lab interface, not even for a moment.
        _run(["ip", "link", "add", HOST_INTERFACE, "netns", namespace, "address", host.mac,
              "type", "veth", "peer", "name", host.switch_port, "netns", self.switch_namespace])
        offloads = ["tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off"]
        self.check(host.name, ["ethtool", "-K", HOST_INTERFACE, *offloads])
        self.check("switch", ["ethtool", "-K", host.switch_port, *offloads])
        self.check(host.name, ["ip", "addr", "add", f"{host.address}/{LAB_SUBNET.prefixlen}", "dev", HOST_INTERFACE])
        self.check(host.name, ["ip", "link", "set", HOST_INTERFACE, "up"])
        self.check("switch", ["ip", "link", "set", host.switch_port, "master", BRIDGE])
        self.check("switch", ["ip", "link", "set", host.switch_port, "up"])

    # --- running commands -----------------------------------------------------------------

    def check(self, host: str, argv: Sequence[str], *, timeout: float = 30.0) -> str:
        """Run ``argv`` inside the namespace of ``host`` and return its output; raise on failure."""
        return self.check_in(self.namespace(host), argv, timeout=timeout)

    def check_in(self, namespace: str, argv: Sequence[str], *, timeout: float = 30.0) -> str:
        return _run(["ip", "netns", "exec", namespace, *argv], timeout=timeout)

    def start(self, host: str, argv: Sequence[str], *, name: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace of ``host`` in a new session and track it.

        Output goes to ``<log_dir>/<name>.log`` when the topology has a log folder, else it is dropped.
        """
        label = name or f"{host}-{Path(argv[0]).name}"
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{label}.log", "ab")  # noqa: SIM115 - closed with the process
        else:
            output = open(os.devnull, "wb")  # noqa: SIM115
        try:
            process = subprocess.Popen(["ip", "netns", "exec", self.namespace(host), *argv],
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        finally:
            output.close()
        self._processes.append((label, process))
        logger.debug("started %s (pid %d): %s", label, process.pid, " ".join(argv))
        return process

    def stop(self, process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` to the process group of ``process``, wait, and kill the group if it outlives ``timeout``."""
        if process.poll() is None:
            _signal_group(process.pid, sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        # NOTE: once the leader has exited its group is not signalled, because the id may be reused.
        # Children left behind still run in a lab namespace, and teardown kills them there.
        return process.returncode

    # --- teardown -------------------------------------------------------------------------

    def teardown(self) -> None:
        """Stop every started process, kill what still runs in the lab namespaces, delete them and verify.

        Safe to call more than once. SIGINT, SIGTERM and SIGHUP are held back until it is done, so
        a second Ctrl-C cannot cut it short. Raises :class:`LabError` when a namespace or a process survives.
        """
        deferred_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, deferred_signals)
        try:
            self._teardown()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)

    def _teardown(self) -> None:
        for label, process in reversed(self._processes):
            try:
                self.stop(process, timeout=3.0)
            except (OSError, subprocess.TimeoutExpired) as error:
                logger.warning("could not stop %s (pid %d): %s", label, process.pid, error)
        for namespace in self._namespaces:
            for pid in namespace_pids(namespace):
                logger.debug("killing pid %d left in namespace %s", pid, namespace)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for namespace in reversed(self._namespaces):
            result = subprocess.run(["ip", "netns", "del", namespace], capture_output=True, text=True, check=False)
            if result.returncode != 0 and namespace in lab_namespaces(namespace):
                logger.warning("ip netns del %s failed: %s", namespace, result.stderr.strip())
        self._verify_gone()
        if self._namespaces:
            logger.info("lab network torn down: %d namespaces deleted, %d processes stopped",
                        len(self._namespaces), len(self._processes))
        self._namespaces.clear()
        self._processes.clear()

    def _verify_gone(self) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            namespaces = [name for name in lab_namespaces(self.prefix) if name in self._namespaces]
            alive = [(label, process.pid) for label, process in self._processes if _pid_alive(process.pid)
                     and process.poll() is None]
            if not namespaces and not alive:
                return
            if time.monotonic() > deadline:
                raise LabError(f"lab teardown incomplete: namespaces {namespaces} still exist, processes "
                               f"{alive} still run; remove them with 'ip netns del NAME' and 'kill PID'")
            time.sleep(0.1)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _run(argv: Sequence[str], *, timeout: float = 30.0) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise LabError(f"command timed out after {timeout:.0f} s: {' '.join(argv)}") from error
    if result.returncode != 0:
        raise LabError(f"command failed with exit status {result.returncode}: {' '.join(argv)}\n"
                       f"{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout
