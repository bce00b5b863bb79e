"""Socket-level traffic generators the lab runs inside its namespaces (``python -m hclr_ids.lab.traffic``).

* ``connect``: an MQTT CONNECT flood. Each session opens TCP, sends CONNECT (MQTT 3.1.1), reads
  the CONNACK, sends DISCONNECT and closes.
* ``malformed``: connections that each send one of nine malformed MQTT inputs in turn.
* ``dns``: A queries for ``sensor<N>.ward3.iomt.lan`` over UDP.

Every generator stops after its count or after ``--max-seconds``, whichever comes first.
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

MQTT_PORT = 1883
_SOCKET_TIMEOUT_S = 2.0


def _remaining_length(length: int) -> bytes:
    """Encode an MQTT remaining length (1 to 4 bytes, 7 bits each, low group first)."""
    encoded = bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(encoded)


def _utf8_field(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def mqtt_connect(client_id: str, *, protocol_name: bytes = b"MQTT", level: int = 4, flags: int = 0x02,
                 keepalive: int = 60) -> bytes:
    """Build a CONNECT packet; the defaults give a valid MQTT 3.1.1 clean-session CONNECT."""
    body = _utf8_field(protocol_name) + bytes([level, flags]) + struct.pack("!H", keepalive) + _utf8_field(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def mqtt_publish(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 1) -> bytes:
    body = _utf8_field(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(body)) + body


MQTT_DISCONNECT = b"\xe0\x00"


def malformed_inputs(rng: random.Random, client_id: str) -> list[tuple[str, bool, bytes]]:
    """Return the nine malformed inputs as (name, needs a valid CONNECT first, bytes)."""
    valid_publish = mqtt_publish("iomt/ward3/pump07/vitals", b'{"hr":72}')
    return [
        ("wrong protocol name", False, mqtt_connect(client_id, protocol_name=b"MQTX")),
        ("protocol level 9", False, mqtt_connect(client_id, level=9)),
        ("5-byte remaining length", False, b"\x10\xff\xff\xff\xff\x7f" + b"\x00" * 8),
        ("reserved CONNECT flag", False, mqtt_connect(client_id, flags=0x03)),
        ("topic length past the end", True, b"\x30\x06\xff\xf0abcd"),
        ("QoS 1 PUBLISH with random bytes", True,
         mqtt_publish("iomt/ward3/pump07/vitals", rng.randbytes(48), qos=1, packet_id=rng.randint(1, 65535))),
        ("reserved packet type 15", False, b"\xf0\x04" + rng.randbytes(4)),
        ("random garbage", False, rng.randbytes(rng.randint(8, 96))),
        ("truncated PUBLISH", True, valid_publish[: len(valid_publish) // 2]),
    ]


def _session(host: str, payloads: Sequence[bytes], *, read_connack: bool) -> bool:
    """Open one TCP connection to the broker, send ``payloads`` and close; return False on a socket error."""
    try:
        with socket.create_connection((host, MQTT_PORT), timeout=_SOCKET_TIMEOUT_S) as sock:
            for index, payload in enumerate(payloads):
                sock.sendall(payload)
                if index == 0 and read_connack:
                    sock.recv(4)
            # Give the broker the chance to respond or close before the FIN.
            sock.settimeout(0.2)
            try:
                sock.recv(64)
            except (TimeoutError, socket.timeout):
                pass
    except OSError as error:
        logger.debug("session to %s failed: %s", host, error)
        return False
    return True


def connect_flood(host: str, sessions: int, threads: int, client_prefix: str, max_seconds: float) -> int:
    """Run ``sessions`` CONNECT/CONNACK/DISCONNECT sessions over ``threads`` threads; return how many succeeded."""
    deadline = time.monotonic() + max_seconds
    lock = threading.Lock()
    succeeded = 0

    def one(index: int) -> None:
        nonlocal succeeded
        if time.monotonic() > deadline:
            return
        ok = _session(host, [mqtt_connect(f"{client_prefix}-{index}"), MQTT_DISCONNECT], read_connack=True)
        with lock:
            succeeded += ok

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(one, range(sessions)))
    return succeeded


def malformed_flood(host: str, count: int, interval: float, client_prefix: str, max_seconds: float,
                    seed: int) -> int:
    """Send ``count`` malformed inputs, one connection each, ``interval`` seconds apart; return how many were sent."""
    rng = random.Random(seed)
    deadline = time.monotonic() + max_seconds
    sent = 0
    for index in range(count):
        if time.monotonic() > deadline:
            break
        client_id = f"{client_prefix}-m{index}"
        name, needs_connect, payload = malformed_inputs(rng, client_id)[index % 9]
        payloads = [mqtt_connect(client_id), payload] if needs_connect else [payload]
        logger.debug("malformed input %d: %s", index, name)
        sent += _session(host, payloads, read_connack=needs_connect)
        time.sleep(interval)
    return sent


def dns_queries(host: str, count: int, interval: float, max_seconds: float) -> int:
    """Send ``count`` A queries ``interval`` seconds apart and return how many got a response."""
    import dpkt

    deadline = time.monotonic() + max_seconds
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_SOCKET_TIMEOUT_S)
        for index in range(count):
            if time.monotonic() > deadline:
                break
            query = dpkt.dns.DNS(id=index + 1, op=dpkt.dns.DNS_RD, qd=[
                dpkt.dns.DNS.Q(name=f"sensor{index}.ward3.iomt.lan", type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN)])
            sock.sendto(bytes(query), (host, 53))
            try:
                sock.recv(512)
                answered += 1
            except (TimeoutError, socket.timeout):
                logger.debug("no DNS answer to query %d", index)
            time.sleep(interval)
    return answered


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hclr_ids.lab.traffic", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    connect = commands.add_parser("connect", help="MQTT CONNECT flood")
    connect.add_argument("host")
    connect.add_argument("--sessions", type=int, required=True, help="number of MQTT sessions")
    connect.add_argument("--threads", type=int, default=4, help="concurrent sessions")
    connect.add_argument("--client-prefix", default="flood", help="prefix of the MQTT client ids")
    connect.add_argument("--max-seconds", type=float, default=20.0, help="stop after this many seconds")
    malformed = commands.add_parser("malformed", help="malformed MQTT inputs, one connection each")
    malformed.add_argument("host")
    malformed.add_argument("--count", type=int, required=True, help="number of connections")
    malformed.add_argument("--interval", type=float, default=0.05, help="seconds between connections")
    malformed.add_argument("--client-prefix", default="fuzz", help="prefix of the MQTT client ids")
    malformed.add_argument("--max-seconds", type=float, default=30.0, help="stop after this many seconds")
    malformed.add_argument("--seed", type=int, default=0, help="seed of the random bytes")
    dns = commands.add_parser("dns", help="DNS A queries over UDP")
    dns.add_argument("host")
    dns.add_argument("--count", type=int, required=True, help="number of queries")
    dns.add_argument("--interval", type=float, default=0.7, help="seconds between queries")
    dns.add_argument("--max-seconds", type=float, default=30.0, help="stop after this many seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    runners: dict[str, Callable[[], int]] = {
        "connect": lambda: connect_flood(args.host, args.sessions, args.threads, args.client_prefix,
                                         args.max_seconds),
        "malformed": lambda: malformed_flood(args.host, args.count, args.interval, args.client_prefix,
                                             args.max_seconds, args.seed),
        "dns": lambda: dns_queries(args.host, args.count, args.interval, args.max_seconds),
    }
    done = runners[args.command]()
    logger.info("%s: %d completed", args.command, done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
