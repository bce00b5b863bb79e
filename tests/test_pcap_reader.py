"""Capture reading: format by magic bytes, byte orders, timestamp units, truncation, bad input."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from hclr_ids.pcap import extract_features, open_capture
from hclr_ids.pcap.reader import iter_packets

BASELINE = "C00_reference_ethernet.pcap"


def _rewrite_pcap(source: Path, target: Path, *, order: str, nanosecond: bool, linktype: int = 1) -> None:
    """Write the records of a little-endian microsecond pcap in another byte order or unit."""
    raw = source.read_bytes()
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    offset = 24
    while offset < len(raw):
        seconds, micros, caplen, length = struct.unpack_from("<IIII", raw, offset)
        fraction = micros * 1000 + 789 if nanosecond else micros
        out.append(struct.pack(order + "IIII", seconds, fraction, caplen, length))
        out.append(raw[offset + 16:offset + 16 + caplen])
        offset += 16 + caplen
    target.write_bytes(b"".join(out))


def test_pcapng_chosen_by_magic(cases_dir: Path) -> None:
    with open_capture(cases_dir / "C10_pcapng_named_pcap.pcap") as reader:
        assert reader.format == "pcapng"
        records = list(reader)
    baseline = list(iter_packets(cases_dir / BASELINE))
    assert [r.data for r in records] == [r.data for r in baseline]
    assert [r.timestamp for r in records] == [r.timestamp for r in baseline]
    assert {r.linktype for r in records} == {1}


def test_pcapng_same_features_as_pcap(cases_dir: Path) -> None:
    for mode in ("cic", "corrected"):
        got = extract_features(cases_dir / "C10_pcapng_named_pcap.pcap", mode=mode)
        expected = extract_features(cases_dir / BASELINE, mode=mode)
        assert got.equals(expected)


def test_big_endian_pcap(cases_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "big_endian.cap"
    _rewrite_pcap(cases_dir / BASELINE, target, order=">", nanosecond=False)
    got = list(iter_packets(target))
    expected = list(iter_packets(cases_dir / BASELINE))
    assert got == expected


def test_nanosecond_pcap_keeps_fraction(cases_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "nano.pcap"
    _rewrite_pcap(cases_dir / BASELINE, target, order="<", nanosecond=True)
    second = list(iter_packets(target))[1]
    assert second.timestamp == pytest.approx(1700000000.001200789, abs=1e-7)


def test_nanosecond_truncated_to_microseconds(cases_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "nano.pcap"
    _rewrite_pcap(cases_dir / BASELINE, target, order="<", nanosecond=True)
    truncated = list(iter_packets(target, microsecond_timestamps=True))
    expected = list(iter_packets(cases_dir / BASELINE))
    assert [r.timestamp for r in truncated] == [r.timestamp for r in expected]


def test_truncated_record_keeps_complete(cases_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = (cases_dir / BASELINE).read_bytes()
    target = tmp_path / "cut.pcap"
    target.write_bytes(raw[:-20])  # the last record (16 + 54 bytes) loses its final 20 bytes
    with caplog.at_level(logging.WARNING):
        records = list(iter_packets(target))
    assert len(records) == 9
    assert "record 10 is truncated" in caplog.text
    assert str(target) in caplog.text


def test_truncated_record_header(cases_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = (cases_dir / BASELINE).read_bytes()
    target = tmp_path / "cut_header.pcap"
    target.write_bytes(raw + raw[24:30])
    with caplog.at_level(logging.WARNING):
        records = list(iter_packets(target))
    assert len(records) == 10
    assert "record 11 is truncated (record header: 6 of 16 bytes)" in caplog.text


def test_truncated_pcapng_block(cases_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = (cases_dir / "C10_pcapng_named_pcap.pcap").read_bytes()
    target = tmp_path / "cut.pcapng"
    target.write_bytes(raw[:-10])
    with caplog.at_level(logging.WARNING):
        records = list(iter_packets(target))
    assert len(records) == 9
    assert "record 10 is truncated" in caplog.text


def test_unknown_magic_names_bytes(tmp_path: Path) -> None:
    target = tmp_path / "notes.pcap"
    target.write_bytes(b"GET / HTTP/1.1\r\n" + bytes(16))
    with pytest.raises(ValueError, match=r"notes\.pcap: unknown capture format: first bytes 47455420"):
        open_capture(target)


def test_empty_file_rejected(tmp_path: Path) -> None:
    target = tmp_path / "empty.pcap"
    target.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        open_capture(target)


def test_gzip_named_as_such(tmp_path: Path) -> None:
    target = tmp_path / "capture.pcap"
    target.write_bytes(b"\x1f\x8b\x08\x00" + bytes(30))
    with pytest.raises(ValueError, match="gzip"):
        open_capture(target)


def test_unsupported_linktype_corrected(cases_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "wifi.pcap"
    _rewrite_pcap(cases_dir / BASELINE, target, order="<", nanosecond=False, linktype=105)
    with pytest.raises(ValueError, match=r"unsupported link type 105 \(IEEE 802\.11\)"):
        extract_features(target, mode="corrected")
