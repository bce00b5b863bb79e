"""Window features in cic mode against the original CIC extractor's output on real captures."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hclr_ids.pcap import CIC_PIECE_BYTES, extract_features
from hclr_ids.schema import FEATURE_COLUMNS


def _scenarios(pcap_reference_dir: Path) -> list[dict[str, str]]:
    with open(pcap_reference_dir / "index.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _assert_matches(got: pl.DataFrame, reference: Path) -> None:
    expected = pl.read_csv(reference).select(FEATURE_COLUMNS)
    assert got.columns == list(FEATURE_COLUMNS)
    assert got.height == expected.height, f"{reference.name}: {got.height} windows, expected {expected.height}"
    got_values = got.to_numpy()
    expected_values = expected.to_numpy().astype(np.float64)
    close = np.isclose(got_values, expected_values, rtol=1e-6, atol=1e-9)
    bad_columns = [FEATURE_COLUMNS[i] for i in np.flatnonzero(~close.all(axis=0))]
    assert not bad_columns, f"{reference.name}: columns differ: {bad_columns}"


def test_every_capture_at_index_window(pcap_reference_dir: Path) -> None:
    scenarios = _scenarios(pcap_reference_dir)
    assert len(scenarios) >= 14
    for row in scenarios:
        name = row["scenario"]
        got = extract_features(pcap_reference_dir / f"{name}.pcap", window=int(row["window"]))
        assert got.height == int(row["csv_rows"])
        _assert_matches(got, pcap_reference_dir / f"{name}.cic.csv")


def test_dos_captures_at_window_10(pcap_reference_dir: Path) -> None:
    dos = [row for row in _scenarios(pcap_reference_dir) if row["window"] == "100"]
    assert len(dos) >= 7
    for row in dos:
        name = row["scenario"]
        got = extract_features(pcap_reference_dir / f"{name}.pcap", window=10)
        assert got.height == int(row["csv_rows_w10"])
        _assert_matches(got, pcap_reference_dir / f"{name}.cic.w10.csv")


def _records(path: Path) -> tuple[bytes, list[bytes]]:
    raw = path.read_bytes()
    header, records, offset = raw[:24], [], 24
    while offset < len(raw):
        caplen = struct.unpack_from("<I", raw, offset + 8)[0]
        records.append(raw[offset:offset + 16 + caplen])
        offset += 16 + caplen
    return header, records


def test_piece_split_over_10_mb(pcap_reference_dir: Path, tmp_path: Path) -> None:
    header, records = _records(pcap_reference_dir / "tcpip_dos_icmp.pcap")
    records = records * 3  # 10,267,590 bytes: just over one 10 MB piece
    big = tmp_path / "big.pcap"
    big.write_bytes(header + b"".join(records))
    # tcpdump -C 10 opens a new piece before a record once the piece exceeds 10,000,000 bytes.
    written_before = 24 + np.concatenate(([0], np.cumsum([len(r) for r in records])[:-1]))
    first_of_second = int(np.argmax(written_before > CIC_PIECE_BYTES))
    (tmp_path / "first.pcap").write_bytes(header + b"".join(records[:first_of_second]))
    (tmp_path / "second.pcap").write_bytes(header + b"".join(records[first_of_second:]))

    got = extract_features(big, window=100, metadata=True)
    first = extract_features(tmp_path / "first.pcap", window=100)
    second = extract_features(tmp_path / "second.pcap", window=100)

    # tcpdump 4.99.3 (``tcpdump -r big.pcap -w piece -C 10``) wrote a first piece of this size.
    assert (tmp_path / "first.pcap").stat().st_size == 10_000_023
    assert got.filter(pl.col("piece") == 0).height == first.height
    assert got.filter(pl.col("piece") == 1).height == second.height
    expected = pl.concat([first, second]).to_numpy()
    np.testing.assert_allclose(got.select(FEATURE_COLUMNS).to_numpy(), expected, rtol=1e-12)


def test_piece_split_off_keeps_state(pcap_reference_dir: Path, tmp_path: Path) -> None:
    header, records = _records(pcap_reference_dir / "recon_ping_sweep.pcap")
    path = tmp_path / "twice.pcap"
    path.write_bytes(header + b"".join(records * 2))
    split = extract_features(path, piece_bytes=30_000, metadata=True)
    whole = extract_features(path, piece_bytes=0, metadata=True)
    assert split["piece"].max() == 2
    assert whole["piece"].max() == 0
    # Without splitting the window count is the plain ceiling of the counted frames.
    assert whole.height == int(np.ceil(2 * 523 / 10))


@pytest.mark.parametrize("window", [1, 7])
def test_other_windows_average_frames(pcap_reference_dir: Path, window: int) -> None:
    packets = pl.read_csv(pcap_reference_dir / "benign_mixed.cic.packets.csv.gz", infer_schema_length=0)
    per_frame = packets.select(FEATURE_COLUMNS).cast(pl.Float64).to_numpy()
    got = extract_features(pcap_reference_dir / "benign_mixed.pcap", window=window).to_numpy()
    starts = np.arange(0, len(per_frame), window)
    expected = np.add.reduceat(per_frame, starts, axis=0) / np.diff(np.append(starts, len(per_frame)))[:, None]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
