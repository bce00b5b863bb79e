"""Read packet records from classic pcap and pcapng files, choosing the format by its magic bytes.

Classic pcap is read in both byte orders, with microsecond or nanosecond timestamps. pcapng is read
section by section (Enhanced, Simple and obsolete Packet blocks), with each interface's link type
and timestamp resolution. The reader never decodes a frame: link types are reported per record
and left to the feature extractor.

A file that ends inside a record keeps every complete record before it and logs a warning with
the record number. An unknown magic number raises ``ValueError`` naming the file and the bytes found.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, NamedTuple

logger = logging.getLogger(__name__)

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

#: Link types by name, for messages.
LINKTYPE_NAMES: dict[int, str] = {
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
    105: "IEEE 802.11",
    127: "IEEE 802.11 radiotap",
    0: "BSD loopback",
    108: "OpenBSD loopback",
}

_PCAP_MAGICS: dict[bytes, tuple[str, int]] = {
    # magic as stored -> (struct byte order, sub-second units per second)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_KNOWN_OTHER_MAGICS: dict[bytes, str] = {
    b"\x1f\x8b": "gzip-compressed data (decompress the capture first)",
    b"\x34\xcd\xb2\xa1": "Kuznetzov's modified pcap (rewrite it with editcap or tcpdump)",
    b"\xa1\xb2\xcd\x34": "Kuznetzov's modified pcap (rewrite it with editcap or tcpdump)",
}

#: Largest captured length accepted for one record; larger values mean a corrupt file.
MAX_RECORD_BYTES = 256 * 1024 * 1024

_PCAPNG_IDB = 0x00000001
_PCAPNG_OPB = 0x00000002
_PCAPNG_SPB = 0x00000003
_PCAPNG_EPB = 0x00000006


class PacketRecord(NamedTuple):
    """One captured frame."""

    timestamp: float
    """Capture time in seconds since the Unix epoch."""
    data: bytes
    """The captured bytes (``caplen`` of them)."""
    linktype: int
    """Link-layer header type of the interface that captured the frame."""
    original_length: int
    """Length of the frame on the wire, in bytes."""


@dataclass
class ReadStats:
    """Counters of one pass over a capture file."""

    records: int = 0
    truncated: bool = False
    skipped_blocks: int = 0


CaptureFormat = Literal["pcap", "pcapng"]


class CaptureReader:
    """Iterate over the packet records of a pcap or pcapng file.

    ``microsecond_timestamps=True`` truncates every timestamp to whole microseconds, as
    libpcap does when tcpdump rewrites a nanosecond or pcapng capture as classic pcap.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, microsecond_timestamps: bool = False) -> None:
        self.path = Path(path)
        self.microsecond_timestamps = microsecond_timestamps
        self.stats = ReadStats()
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        try:
            head = self._file.read(24)
            self.format: CaptureFormat = _sniff_format(self.path, head)
            self.linktype: int | None = None
            self.snaplen: int | None = None
            if self.format == "pcap":
                self._init_pcap(head)
            else:
                self._file.seek(0)
        except BaseException:
            self._file.close()
            raise

    def _init_pcap(self, head: bytes) -> None:
        if len(head) < 24:
            raise ValueError(f"{self.path}: pcap file header is truncated ({len(head)} of 24 bytes)")
        self._byte_order, self._units = _PCAP_MAGICS[head[:4]]
        _, _, _, _, snaplen, network = struct.unpack(self._byte_order + "HHiIII", head[4:24])
        self.snaplen = snaplen
        # The upper 16 bits may carry FCS information; the link type is the lower 16.
        self.linktype = network & 0xFFFF

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[PacketRecord]:
        if self.format == "pcap":
            return self._iter_pcap()
        return self._iter_pcapng()

    def _warn_truncated(self, record_number: int, what: str, got: int, expected: int) -> None:
        self.stats.truncated = True
        logger.warning(
            "%s: record %d is truncated (%s: %d of %d bytes); kept the %d complete records before it",
            self.path, record_number, what, got, expected, record_number - 1,
        )

    def _iter_pcap(self) -> Iterator[PacketRecord]:
        read = self._file.read
        header = struct.Struct(self._byte_order + "IIII")
        unpack = header.unpack
        units = self._units
        linktype = self.linktype if self.linktype is not None else LINKTYPE_ETHERNET
        nanosecond = units == 1_000_000_000
        truncate = self.microsecond_timestamps and nanosecond
        stats = self.stats
        number = 0
        while True:
            raw = read(16)
            if not raw:
                return
            number += 1
            if len(raw) < 16:
                self._warn_truncated(number, "record header", len(raw), 16)
                return
            seconds, fraction, caplen, wire_length = unpack(raw)
            if caplen > MAX_RECORD_BYTES:
                logger.warning(
                    "%s: record %d claims %d captured bytes, more than %d; the file is corrupt from here, "
                    "kept the %d records before it", self.path, number, caplen, MAX_RECORD_BYTES, number - 1,
                )
                stats.truncated = True
                return
            data = read(caplen)
            if len(data) < caplen:
                self._warn_truncated(number, "packet data", len(data), caplen)
                return
            stats.records = number
            if truncate:
                timestamp = seconds + (fraction // 1000) / 1e6
            elif nanosecond:
                timestamp = seconds + fraction / 1e9
            else:
                # The same float expression dpkt uses, so timestamps match it bit for bit.
                timestamp = seconds + fraction / 1e6
            yield PacketRecord(timestamp, data, linktype, wire_length)

    def _iter_pcapng(self) -> Iterator[PacketRecord]:
        read = self._file.read
        order = "<"
        interfaces: list[tuple[int, int, int, int]] = []  # (linktype, snaplen, units per second, offset s)
        number = 0
        while True:
            head = read(8)
            if not head:
                return
            if len(head) < 8:
                self._warn_truncated(number + 1, "block header", len(head), 8)
                return
            if head[:4] == _PCAPNG_SHB:
                body_start = read(4)
                if len(body_start) < 4:
                    self._warn_truncated(number + 1, "section header", len(body_start), 4)
                    return
                order = "<" if body_start == b"\x4d\x3c\x2b\x1a" else ">"
                if body_start not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                    raise ValueError(f"{self.path}: pcapng section header has an invalid byte-order magic "
                                     f"{body_start.hex()}")
                total = struct.unpack(order + "I", head[4:8])[0]
                if total < 28 or total % 4 or total > MAX_RECORD_BYTES:
                    raise ValueError(f"{self.path}: pcapng section header has an invalid length {total}")
                rest = read(total - 12)
                if len(rest) < total - 12:
                    self._warn_truncated(number + 1, "section header", len(rest) + 12, total)
                    return
                interfaces = []
                continue
            block_type, total = struct.unpack(order + "II", head)
            if total < 12 or total % 4 or total > MAX_RECORD_BYTES:
                logger.warning("%s: pcapng block after record %d has an invalid length %d; the file is "
                               "corrupt from here, kept the records before it", self.path, number, total)
                self.stats.truncated = True
                return
            body = read(total - 8)
            if len(body) < total - 8:
                if block_type in (_PCAPNG_EPB, _PCAPNG_SPB, _PCAPNG_OPB):
                    self._warn_truncated(number + 1, "packet block", len(body) + 8, total)
                else:
                    self._warn_truncated(number + 1, f"block of type {block_type:#x}", len(body) + 8, total)
                return
            body = body[:-4]  # drop the trailing copy of the block length
            if block_type == _PCAPNG_IDB:
                interfaces.append(_parse_idb(body, order))
                continue
            record = self._pcapng_record(block_type, body, order, interfaces, number + 1)
            if record is None:
                self.stats.skipped_blocks += 1
                continue
            number += 1
            self.stats.records = number
            yield record

    def _pcapng_record(
        self, block_type: int, body: bytes, order: str, interfaces: list[tuple[int, int, int, int]], number: int
    ) -> PacketRecord | None:
        if block_type == _PCAPNG_EPB:
            interface, high, low, caplen, wire_length = struct.unpack_from(order + "IIIII", body)
            data = body[20:20 + caplen]
        elif block_type == _PCAPNG_OPB:
            interface, _, high, low, caplen, wire_length = struct.unpack_from(order + "HHIIII", body)
            data = body[20:20 + caplen]
        elif block_type == _PCAPNG_SPB:
            interface, high, low = 0, 0, 0
            (wire_length,) = struct.unpack_from(order + "I", body)
            snaplen = interfaces[0][1] if interfaces else 0
            caplen = min(wire_length, snaplen) if snaplen else wire_length
            data = body[4:4 + caplen]
        else:
            return None
        if interface >= len(interfaces):
            raise ValueError(f"{self.path}: pcapng record {number} refers to interface {interface}, but only "
                             f"{len(interfaces)} interface description blocks precede it")
        if len(data) < caplen:
            raise ValueError(f"{self.path}: pcapng record {number} declares {caplen} captured bytes but its "
                             f"block holds {len(data)}")
        linktype, _, units, offset = interfaces[interface]
        ticks = (high << 32) | low
        seconds, fraction = divmod(ticks, units)
        seconds += offset
        if self.microsecond_timestamps:
            timestamp = seconds + (fraction * 1_000_000 // units) / 1e6
        else:
            timestamp = seconds + fraction / units
        return PacketRecord(timestamp, data, linktype, wire_length)


def _sniff_format(path: Path, head: bytes) -> CaptureFormat:
    if head[:4] in _PCAP_MAGICS:
        return "pcap"
    if head[:4] == _PCAPNG_SHB:
        return "pcapng"
    if not head:
        raise ValueError(f"{path}: the file is empty; expected a pcap or pcapng capture")
    for magic, what in _KNOWN_OTHER_MAGICS.items():
        if head.startswith(magic):
            raise ValueError(f"{path}: unsupported capture format: {what}; found bytes {head[:4].hex()}")
    raise ValueError(
        f"{path}: unknown capture format: first bytes {head[:4].hex()}; expected a pcap magic "
        "(a1b2c3d4, d4c3b2a1, a1b23c4d, 4d3cb2a1) or the pcapng section header 0a0d0d0a"
    )


def _parse_idb(body: bytes, order: str) -> tuple[int, int, int, int]:
    """Return (link type, snap length, timestamp units per second, offset in seconds) of an IDB."""
    linktype, _, snaplen = struct.unpack_from(order + "HHI", body)
    units, offset = 1_000_000, 0
    position = 8
    while position + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, position)
        value = body[position + 4:position + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:  # if_tsresol
            exponent = value[0] & 0x7F
            units = 2 ** exponent if value[0] & 0x80 else 10 ** exponent
        elif code == 14 and length >= 8:  # if_tsoffset
            (offset,) = struct.unpack(order + "q", value[:8])
        position += 4 + ((length + 3) & ~3)
    return linktype, snaplen, units, offset


def open_capture(path: str | Path, *, microsecond_timestamps: bool = False) -> CaptureReader:
    """Open a pcap or pcapng file, whatever its name, choosing the format from its magic bytes."""
    return CaptureReader(path, microsecond_timestamps=microsecond_timestamps)


def iter_packets(path: str | Path, *, microsecond_timestamps: bool = False) -> Iterator[PacketRecord]:
    """Yield every complete packet record of a capture file, closing it at the end."""
    with open_capture(path, microsecond_timestamps=microsecond_timestamps) as reader:
        yield from reader


def linktype_name(linktype: int) -> str:
    """Return a readable name for a link type, such as ``113 (Linux cooked (SLL))``."""
    name = LINKTYPE_NAMES.get(linktype)
    return f"{linktype} ({name})" if name else str(linktype)
