"""Field capture cases (other link layers, IPv6, VLAN, fragments, ARP, tiny captures) in both modes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hclr_ids.pcap import ExtractorConfig, FeatureExtractor, FlowTuple, extract_features, iter_windows
from hclr_ids.pcap.extractor import windows_from_records
from hclr_ids.pcap.reader import iter_packets
from hclr_ids.schema import FEATURE_COLUMNS

BASELINE = "C00_reference_ethernet.pcap"
T0 = 1700000000.0
FLAG_COLUMNS = ["fin_flag_number", "syn_flag_number", "rst_flag_number", "psh_flag_number",
                "ack_flag_number", "ece_flag_number", "cwr_flag_number"]
COUNT_COLUMNS = ["ack_count", "syn_count", "fin_count", "rst_count"]


def _features(path: Path, **options: object) -> pl.DataFrame:
    return extract_features(path, **options)  # type: ignore[arg-type]


def _value(frame: pl.DataFrame, column: str, row: int = 0) -> float:
    return float(frame[column][row])


# --- C00 baseline: values computed by hand from the 10 frames -------------------------------------


def test_baseline_sizes_and_blocks(cases_dir: Path) -> None:
    got = _features(cases_dir / BASELINE)
    assert got.height == 1
    assert _value(got, "Tot size") == 61.0  # (58+58+54+74+58+72+54+74+54+54) / 10
    assert _value(got, "Header_Length") == 336.0  # mean of the running flow totals 58 ... 610
    assert _value(got, "Number") == 5.5
    assert _value(got, "Weight") == 38.5
    assert _value(got, "IAT") == pytest.approx((T0 + 0.030) / 10, rel=1e-12)


def test_baseline_cic_flag_counters_shifted(cases_dir: Path) -> None:
    got = _features(cases_dir / BASELINE)
    # Flags per frame: SYN, SYN-ACK, ACK, PSH-ACK x3 (frames 4-6 with ACK, PSH on 4,5,6,8), ..., FIN-ACK.
    assert _value(got, "syn_flag_number") == pytest.approx(0.2)
    assert _value(got, "ack_flag_number") == pytest.approx(0.9)
    assert _value(got, "ack_count") == pytest.approx(0.1)  # cumulative FIN count
    assert _value(got, "rst_count") == pytest.approx(4.5)  # cumulative ACK count 0..9
    assert _value(got, "syn_count") == pytest.approx(1.9)
    assert _value(got, "fin_count") == 0.0  # cumulative RST count


def test_baseline_corrected_flag_counters(cases_dir: Path) -> None:
    got = _features(cases_dir / BASELINE, mode="corrected")
    assert _value(got, "ack_count") == pytest.approx(4.5)
    assert _value(got, "fin_count") == pytest.approx(0.1)
    assert _value(got, "rst_count") == 0.0
    assert _value(got, "IAT") == pytest.approx(0.003)  # (0 + 0.030) / 10, no absolute timestamp


def test_baseline_cic_rates(cases_dir: Path) -> None:
    got = _features(cases_dir / BASELINE)
    assert _value(got, "Srate") == _value(got, "Rate")
    assert _value(got, "Drate") == 0.0
    assert _value(got, "LLC") == _value(got, "IPv") == 1.0


def test_baseline_window_metadata(cases_dir: Path) -> None:
    windows = list(iter_windows(cases_dir / BASELINE))
    assert len(windows) == 1
    window = windows[0]
    assert window.flow == FlowTuple("10.200.0.21", 51000, "10.200.0.10", 1883, 6)
    assert window.first_time == T0
    assert window.last_time == pytest.approx(T0 + 0.030)
    assert window.packets == 10


# --- C11, C12: other link layers -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["C11_linux_sll.pcap", "C11_linux_sll2.pcap", "C12_raw_ip.pcap"])
def test_other_linktypes_corrected_match_baseline(cases_dir: Path, name: str) -> None:
    got = _features(cases_dir / name, mode="corrected")
    expected = _features(cases_dir / BASELINE, mode="corrected")
    assert got.equals(expected)


@pytest.mark.parametrize("name", ["C11_linux_sll.pcap", "C11_linux_sll2.pcap", "C12_raw_ip.pcap"])
def test_other_linktypes_cic_misparsed(cases_dir: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        got = _features(cases_dir / name)
    assert got.height == 0
    assert got.columns == list(FEATURE_COLUMNS)
    assert "decoded as Ethernet in cic mode" in caplog.text


def test_raw_ipv4_linktype_228(cases_dir: Path) -> None:
    records = [(r.timestamp, r.data, 228) for r in iter_packets(cases_dir / "C12_raw_ip.pcap")]
    config = ExtractorConfig(mode="corrected")
    got = np.vstack([w.features for w in windows_from_records(records, config)])
    expected = _features(cases_dir / BASELINE, mode="corrected").to_numpy()
    np.testing.assert_array_equal(got, expected)


# --- C15: IPv6 -------------------------------------------------------------------------------------


def test_ipv6_counted_in_corrected(cases_dir: Path) -> None:
    got = _features(cases_dir / "C15_ipv6_mixed.pcap", mode="corrected", window=1)
    assert got.height == 13
    assert got["Protocol Type"].to_list() == [58.0] + [6.0] * 10 + [17.0, 6.0]
    assert _value(got, "ICMP", 0) == 1.0
    assert _value(got, "Duration", 0) == 255.0  # hop limit of the ICMPv6 packet
    assert got["IPv"].to_list() == [1.0] * 13


def test_ipv6_tcp_flags_as_ipv4(cases_dir: Path) -> None:
    ipv6 = _features(cases_dir / "C15_ipv6_mixed.pcap", mode="corrected", window=1)[1:11]
    ipv4 = _features(cases_dir / BASELINE, mode="corrected", window=1)
    columns = FLAG_COLUMNS + COUNT_COLUMNS + ["TCP", "Duration"]
    assert ipv6.select(columns).equals(ipv4.select(columns))


def test_ipv6_hop_by_hop_walked(cases_dir: Path) -> None:
    got = _features(cases_dir / "C15_ipv6_mixed.pcap", mode="corrected", window=1)
    assert _value(got, "UDP", 11) == 1.0
    assert _value(got, "Header_Length", 11) > 0  # ports were read behind the extension header


def test_ipv6_ignored_in_cic(cases_dir: Path) -> None:
    got = _features(cases_dir / "C15_ipv6_mixed.pcap", window=1)
    assert got.height == 1  # only the IPv4 SYN
    assert _value(got, "syn_flag_number") == 1.0


# --- C16: VLAN ------------------------------------------------------------------------------------


def test_vlan_tags_skipped_in_corrected(cases_dir: Path) -> None:
    got = _features(cases_dir / "C16_vlan_qinq.pcap", mode="corrected")
    expected = _features(cases_dir / BASELINE, mode="corrected")
    assert got.height == 2
    assert got[0].equals(expected)
    assert _value(got, "UDP", 1) == 1.0  # the two double-tagged UDP frames


def test_vlan_frames_dropped_in_cic(cases_dir: Path) -> None:
    assert _features(cases_dir / "C16_vlan_qinq.pcap").height == 0


# --- C17: fragments -------------------------------------------------------------------------------


def test_fragments_cic(cases_dir: Path) -> None:
    got = _features(cases_dir / "C17_ip_fragments.pcap", window=1)
    assert got["Tot size"].to_list() == [46.0, 1514.0, 1514.0, 82.0]
    assert got["UDP"].to_list() == [1.0, 1.0, 0.0, 0.0]  # later fragments are not parsed
    assert got["Protocol Type"].to_list() == [17.0] * 4
    assert got["Header_Length"].to_list() == [46.0, 1560.0, 0.0, 0.0]


def test_fragments_corrected(cases_dir: Path) -> None:
    got = _features(cases_dir / "C17_ip_fragments.pcap", mode="corrected", window=1)
    assert got["Tot size"].to_list() == [46.0, 1514.0, 1514.0, 82.0]
    assert got["UDP"].to_list() == [1.0] * 4
    assert got["Header_Length"].to_list() == [46.0, 1560.0, 0.0, 0.0]


# --- C18: zero duration and a single packet -------------------------------------------------------


@pytest.mark.parametrize("mode", ["cic", "corrected"])
def test_single_packet_finite(cases_dir: Path, mode: str) -> None:
    got = _features(cases_dir / "C18_single_packet.pcap", mode=mode)
    assert got.height == 1
    assert np.isfinite(got.to_numpy()).all()
    assert _value(got, "Rate") == 0.0
    assert _value(got, "Std") == 0.0
    assert _value(got, "IAT") == (T0 if mode == "cic" else 0.0)


@pytest.mark.parametrize("mode", ["cic", "corrected"])
def test_zero_duration_finite(cases_dir: Path, mode: str) -> None:
    got = _features(cases_dir / "C18_zero_duration.pcap", mode=mode)
    assert got.height == 1
    assert np.isfinite(got.to_numpy()).all()
    assert _value(got, "Rate") == 0.0
    assert _value(got, "Header_Length") == 138.0  # mean of 46, 92, ..., 230


def test_short_last_window_kept(cases_dir: Path) -> None:
    got = _features(cases_dir / "C18_zero_duration.pcap", window=3, metadata=True)
    assert got["packets"].to_list() == [3, 2]
    assert got["Number"].to_list() == [2.0, 4.5]


# --- C19: ARP -------------------------------------------------------------------------------------


def test_arp_sizes_by_mode(cases_dir: Path) -> None:
    cic = _features(cases_dir / "C19_arp_mixed.pcap", window=1)
    corrected = _features(cases_dir / "C19_arp_mixed.pcap", mode="corrected", window=1)
    assert cic["Tot size"].to_list()[:4] == [60.0] * 4  # the original counts the padding
    assert corrected["Tot size"].to_list()[:4] == [42.0] * 4
    assert cic["ARP"].to_list() == [1.0] * 4 + [0.0] * 6


@pytest.mark.parametrize("mode", ["cic", "corrected"])
def test_arp_leaves_tcp_rows_alone(cases_dir: Path, mode: str) -> None:
    mixed = _features(cases_dir / "C19_arp_mixed.pcap", mode=mode, window=1)[4:]
    baseline = _features(cases_dir / BASELINE, mode=mode, window=1)[:6]
    columns = (["Header_Length", "Protocol Type", "Duration", "Rate", "Srate", "Drate", "TCP", "ARP",
                "Tot size"] + FLAG_COLUMNS + COUNT_COLUMNS)
    assert mixed.select(columns).equals(baseline.select(columns))


# --- robustness -----------------------------------------------------------------------------------


def test_malformed_ipv4_skipped(cases_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = [(r.timestamp, r.data, r.linktype) for r in iter_packets(cases_dir / BASELINE)]
    broken = bytearray(records[3][1])
    broken[14] = 0x43  # header length 12 bytes: dpkt rejects it and the original crashes
    records[3] = (records[3][0], bytes(broken), 1)
    extractor = FeatureExtractor()
    with caplog.at_level(logging.WARNING):
        windows = list(windows_from_records(records, extractor=extractor))
    assert extractor.stats.malformed_ipv4 == 1
    assert windows[0].packets == 9
    assert "record 4: IPv4 header cannot be parsed" in caplog.text


def test_flow_table_bounded(pcap_reference_dir: Path) -> None:
    extractor = FeatureExtractor(ExtractorConfig(max_flows=2))
    windows = list(iter_windows(pcap_reference_dir / "benign_mixed.pcap", extractor=extractor))
    assert len(windows) == 101
    assert extractor.stats.flows_evicted > 0
    assert len(extractor._flows) <= 2


def test_idle_flows_expire(pcap_reference_dir: Path) -> None:
    extractor = FeatureExtractor(ExtractorConfig(idle_timeout=0.5))
    list(iter_windows(pcap_reference_dir / "recon_vuln_scan.pcap", extractor=extractor))
    assert extractor.stats.flows_expired > 0
