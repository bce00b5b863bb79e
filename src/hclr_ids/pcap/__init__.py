"""Packet-capture reading and the 45 CICIoMT2024 window features computed from captures."""

from hclr_ids.pcap.extractor import (
    CIC_PIECE_BYTES,
    ExtractorConfig,
    ExtractorStats,
    FeatureExtractor,
    FeatureWindow,
    FlowTuple,
    extract_features,
    iter_windows,
    windows_from_records,
    windows_to_frame,
)
from hclr_ids.pcap.reader import CaptureReader, PacketRecord, iter_packets, open_capture

__all__ = [
    "CIC_PIECE_BYTES", "CaptureReader", "ExtractorConfig", "ExtractorStats", "FeatureExtractor",
    "FeatureWindow", "FlowTuple", "PacketRecord", "extract_features", "iter_packets", "iter_windows",
    "open_capture", "windows_from_records", "windows_to_frame",
]
