"""Tests of the encoder modules: shapes, the piecewise-linear encoding and ONNX export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from hclr_ids.config import EncoderConfig
from hclr_ids.networks import EncoderClassifier, PiecewiseLinearEncoding, build_encoder
from hclr_ids.schema import FEATURE_COLUMNS, LEAK_COLUMNS

SMALL = EncoderConfig(conv_filters=8, lstm_units=8, embedding_dim=6, feature_embedding_dim=4, ple_bins=4)


@pytest.fixture(scope="module")
def scaled_rows(release_csv_dir: Path) -> np.ndarray:
    """Real ARP_Spoofing and Recon-VulScan rows without IAT, min-max scaled on themselves."""
    columns = [c for c in FEATURE_COLUMNS if c not in LEAK_COLUMNS]
    frames = [
        pl.read_csv(release_csv_dir / "test" / name, n_rows=200).select(columns)
        for name in ("ARP_Spoofing_test.pcap.csv", "Recon-VulScan_test.pcap.csv")
    ]
    x = pl.concat(frames).to_numpy().astype(np.float64)
    low, high = x.min(axis=0), x.max(axis=0)
    return ((x - low) / np.where(high > low, high - low, 1.0)).astype(np.float32)


@pytest.mark.parametrize("architecture", ["cnn", "lstm", "cnn-lstm"])
@pytest.mark.parametrize("input_encoding", ["scalar", "ple"])
def test_encoder_output_shape(architecture: str, input_encoding: str) -> None:
    config = dataclasses.replace(SMALL, architecture=architecture, input_encoding=input_encoding)
    encoder = build_encoder(config, n_features=11)
    out = encoder(torch.rand(5, 11))
    assert out.shape == (5, 6)
    assert out.abs().max() <= 1.0


def test_encoder_odd_feature_count() -> None:
    encoder = build_encoder(dataclasses.replace(SMALL, architecture="cnn", conv_layers=2), n_features=7)
    assert encoder(torch.rand(3, 7)).shape == (3, 6)


@pytest.mark.parametrize(("n_features", "pool_size", "length"), [(29, 4, 8), (28, 4, 7), (11, 2, 6), (5, 1, 5)])
def test_pooled_length(n_features: int, pool_size: int, length: int) -> None:
    # ceil(n_features / pool_size) steps reach the LSTM; the CNN-only summary flattens them all.
    config = dataclasses.replace(SMALL, architecture="cnn", pool_size=pool_size)
    encoder = build_encoder(config, n_features=n_features)
    assert encoder.project.in_features == length * config.conv_filters
    assert encoder(torch.rand(2, n_features)).shape == (2, 6)


def test_encoder_rejects_bad_pool_size() -> None:
    with pytest.raises(ValueError, match="pool_size must be >= 1, got 0"):
        build_encoder(dataclasses.replace(SMALL, pool_size=0), n_features=4)


def test_encoder_rejects_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'gru'"):
        build_encoder(dataclasses.replace(SMALL, architecture="gru"), n_features=4)  # type: ignore[arg-type]


def test_classifier_logits_shape() -> None:
    model = EncoderClassifier(SMALL, n_features=9, n_classes=3)
    x = torch.rand(4, 9)
    assert model(x).shape == (4, 3)
    assert model.embed(x).shape == (4, 6)


def test_ple_hand_computed() -> None:
    ple = PiecewiseLinearEncoding(n_features=1, n_bins=2).fit(np.array([[0.0], [1.0], [2.0], [3.0], [4.0]]))
    # Quantiles 0, 0.5, 1 of 0..4 are the edges 0, 2, 4.
    assert ple.edges.tolist() == [[0.0, 2.0, 4.0]]
    out = ple(torch.tensor([[-1.0], [1.0], [3.0], [5.0]]))
    expected = torch.tensor([[[0.0, 0.0]], [[0.5, 0.0]], [[1.0, 0.5]], [[1.0, 1.0]]])
    torch.testing.assert_close(out, expected)


def test_ple_tied_edges_act_as_step() -> None:
    # A column that is 0 in 80% of rows has tied edges at 0, so the encoding jumps from 0 to 1 there.
    values = np.array([[0.0]] * 8 + [[1.0], [2.0]])
    ple = PiecewiseLinearEncoding(n_features=1, n_bins=4).fit(values)
    out = ple(torch.tensor([[0.0], [1e-3]]))
    assert out[0].sum().item() == 0.0
    assert out[1, 0, :3].tolist() == [1.0, 1.0, 1.0]


def test_ple_edges_in_state_dict(scaled_rows: np.ndarray) -> None:
    config = dataclasses.replace(SMALL, input_encoding="ple")
    model = EncoderClassifier(config, n_features=scaled_rows.shape[1], n_classes=2)
    model.encoder.fit_inputs(scaled_rows)
    edges = model.state_dict()["encoder.inputs.ple.edges"]
    expected = np.quantile(scaled_rows.astype(np.float64), np.linspace(0, 1, 5), axis=0).T
    np.testing.assert_allclose(edges.numpy(), expected, atol=1e-6)


def test_ple_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"\(n_samples, 3\)"):
        PiecewiseLinearEncoding(n_features=3, n_bins=2).fit(np.zeros((4, 5)))


@pytest.mark.parametrize("architecture", ["cnn", "lstm", "cnn-lstm"])
def test_onnx_matches_torch(architecture: str, scaled_rows: np.ndarray, tmp_path: Path) -> None:
    import onnxruntime

    config = dataclasses.replace(
        EncoderConfig(), architecture=architecture, input_encoding="ple", bidirectional=True
    )
    torch.manual_seed(0)
    model = EncoderClassifier(config, n_features=scaled_rows.shape[1], n_classes=10)
    model.encoder.fit_inputs(scaled_rows)
    model.eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (torch.from_numpy(scaled_rows[:2]),),
        str(path),
        input_names=["features"],
        output_names=["logits"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"features": scaled_rows})
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(scaled_rows)).numpy()
    assert onnx_logits.shape == (len(scaled_rows), 10)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-5, rtol=0)
