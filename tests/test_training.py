"""Tests of encoder pre-training: learning, determinism, early stopping, budgets and inference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from hclr_ids.config import EncoderConfig
from hclr_ids.schema import FEATURE_COLUMNS, LEAK_COLUMNS
from hclr_ids.training import class_weights, embed, predict_proba, train_encoder

TINY = EncoderConfig(
    conv_filters=8, lstm_units=8, embedding_dim=8, feature_embedding_dim=4, ple_bins=4,
    batch_size=64, learning_rate=1e-2, max_epochs=30, patience=30, dropout=0.0, scheduler="none",
)


@pytest.fixture(autouse=True)
def one_thread():
    """Run each tiny model on one torch thread, which is faster than two on a loaded 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points in [0, 1]^6 labelled by whether feature 2 exceeds 0.5."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 6), dtype=np.float32)
    return x, (x[:, 2] > 0.5).astype(np.int64)


@pytest.fixture(scope="module")
def two_real_classes(release_csv_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Recon-Ping_Sweep (0) and Recon-VulScan (1) train rows, first 70% train and the rest validation."""
    columns = [c for c in FEATURE_COLUMNS if c not in LEAK_COLUMNS]
    parts = []
    for label, name in enumerate(("Recon-Ping_Sweep_train.pcap.csv", "Recon-VulScan_train.pcap.csv")):
        x = pl.read_csv(release_csv_dir / "train" / name, n_rows=600).select(columns).to_numpy()
        cut = int(0.7 * len(x))
        parts.append((x[:cut], x[cut:], np.full(cut, label), np.full(len(x) - cut, label)))
    x_train = np.concatenate([p[0] for p in parts])
    x_val = np.concatenate([p[1] for p in parts])
    x_train = np.sign(x_train) * np.log1p(np.abs(x_train))
    x_val = np.sign(x_val) * np.log1p(np.abs(x_val))
    low, high = x_train.min(axis=0), x_train.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    scale = lambda x: np.clip((x - low) / span, 0.0, 1.0).astype(np.float32)  # noqa: E731
    y_train = np.concatenate([p[2] for p in parts])
    y_val = np.concatenate([p[3] for p in parts])
    return scale(x_train), y_train, scale(x_val), y_val


def test_learns_separable_problem() -> None:
    x_train, y_train = _separable(512, seed=1)
    x_val, y_val = _separable(256, seed=2)
    model, history = train_encoder(x_train, y_train, x_val, y_val, 2, TINY, seed=0)
    assert max(history["val/accuracy"]) >= 0.97
    assert np.mean(predict_proba(model, x_val).argmax(axis=1) == y_val) >= 0.97


def test_learns_real_recon_classes(two_real_classes) -> None:
    x_train, y_train, x_val, y_val = two_real_classes
    config = dataclasses.replace(TINY, input_encoding="ple", max_epochs=15)
    _, history = train_encoder(x_train, y_train, x_val, y_val, 2, config, seed=0)
    # LightGBM (200 trees) on the same rows, unscaled, reaches a validation macro-F1 of 0.89.
    assert max(history["val/macro_f1"]) >= 0.88


def test_same_seed_same_weights() -> None:
    x, y = _separable(256, seed=1)
    config = dataclasses.replace(TINY, max_epochs=2, dropout=0.2, input_encoding="ple")
    first, _ = train_encoder(x, y, x, y, 2, config, seed=7)
    second, _ = train_encoder(x, y, x, y, 2, config, seed=7)
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(tensor, second.state_dict()[name], rtol=0, atol=0, msg=name)


def test_other_seed_other_weights() -> None:
    x, y = _separable(256, seed=1)
    config = dataclasses.replace(TINY, max_epochs=1)
    first, _ = train_encoder(x, y, x, y, 2, config, seed=1)
    second, _ = train_encoder(x, y, x, y, 2, config, seed=2)
    assert not torch.equal(first.head.weight, second.head.weight)


def test_early_stopping_stops() -> None:
    x, y = _separable(256, seed=1)
    # With a learning rate of 0 the validation macro-F1 never improves after epoch 1.
    config = dataclasses.replace(TINY, learning_rate=0.0, patience=2, max_epochs=20)
    _, history = train_encoder(x, y, x, y, 2, config, seed=0)
    assert len(history["val/macro_f1"]) == 3


def test_best_epoch_restored() -> None:
    x_train, y_train = _separable(512, seed=1)
    x_val, y_val = _separable(256, seed=2)
    config = dataclasses.replace(TINY, max_epochs=6, learning_rate=5e-2)
    model, history = train_encoder(x_train, y_train, x_val, y_val, 2, config, seed=0)
    from sklearn.metrics import f1_score

    restored = f1_score(y_val, predict_proba(model, x_val).argmax(axis=1), average="macro")
    assert restored == pytest.approx(max(history["val/macro_f1"]), abs=1e-12)


def test_time_budget_stops_first_epoch() -> None:
    x, y = _separable(512, seed=1)
    config = dataclasses.replace(TINY, time_budget_s=1e-9)
    _, history = train_encoder(x, y, x, y, 2, config, seed=0)
    assert len(history["time_s"]) == 1


def test_history_keys() -> None:
    x, y = _separable(128, seed=1)
    _, history = train_encoder(x, y, x, y, 2, dataclasses.replace(TINY, max_epochs=2), seed=0)
    assert sorted(history) == ["time_s", "train/loss", "val/accuracy", "val/loss", "val/macro_f1"]
    assert all(len(values) == 2 for values in history.values())


def test_onecycle_runs() -> None:
    x, y = _separable(256, seed=1)
    config = dataclasses.replace(TINY, scheduler="onecycle", max_epochs=3)
    _, history = train_encoder(x, y, x, y, 2, config, seed=0)
    assert len(history["train/loss"]) == 3


def test_rejects_label_out_of_range() -> None:
    x, y = _separable(32, seed=1)
    with pytest.raises(ValueError, match=r"y_train contains labels in \[0, 1\] but n_classes is 1"):
        train_encoder(x, y, x, y, 1, TINY, seed=0)


def test_rejects_nan_feature() -> None:
    x, y = _separable(32, seed=1)
    x[3, 4] = np.nan
    with pytest.raises(ValueError, match="X_train row 3, column 4 is nan"):
        train_encoder(x, y, x, y, 2, TINY, seed=0)


def test_class_weights_balanced() -> None:
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    # n / (k * count) with n = 8 and k = 2 classes present. Class 2 is absent, so its weight is 0.
    np.testing.assert_allclose(class_weights(y, 3, "balanced"), [2.0, 8 / 12, 0.0], rtol=1e-6)


def test_class_weights_sqrt() -> None:
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(class_weights(y, 2, "sqrt"), [2.0**0.5, (8 / 12) ** 0.5], rtol=1e-6)


def test_embed_shape_and_range() -> None:
    x, y = _separable(64, seed=1)
    model, _ = train_encoder(x, y, x, y, 2, dataclasses.replace(TINY, max_epochs=1), seed=0)
    z = embed(model, x, batch_size=10)
    assert z.shape == (64, 8)
    assert z.dtype == np.float32
    assert np.abs(z).max() <= 1.0


def test_predict_proba_rows_sum_to_one() -> None:
    x, y = _separable(64, seed=1)
    model, _ = train_encoder(x, y, x, y, 2, dataclasses.replace(TINY, max_epochs=1), seed=0)
    proba = predict_proba(model, x, batch_size=7)
    assert proba.shape == (64, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
