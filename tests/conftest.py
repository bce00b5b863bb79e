"""Shared fixtures: paths to the real CICIoMT2024 subset, the field cases and the reference captures.

The data lives outside the repository, in ``../shared`` beside the checkout, or wherever
``HCLR_IDS_SHARED`` points. Under CI (``CI`` set) a missing folder is an error, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    configured = os.environ.get("HCLR_IDS_SHARED")
    return Path(configured) if configured else REPO_ROOT.parent / "shared"


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}; set HCLR_IDS_SHARED to the folder holding data/ and cases/"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_root() -> Path:
    return _require(_shared_root(), "shared folder")


@pytest.fixture(scope="session")
def release_root() -> Path:
    """Root of the real CICIoMT2024 subset in the release layout (10 of the 19 classes)."""
    return _require(_shared_root() / "data" / "ciciomt2024", "CICIoMT2024 subset")


@pytest.fixture(scope="session")
def release_csv_dir(release_root: Path) -> Path:
    return release_root / "WiFI_and_MQTT" / "attacks" / "csv"


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """Small field cases: odd CSV cells, other link layers, non-finite service input."""
    return _require(_shared_root() / "cases", "field cases")


@pytest.fixture(scope="session")
def pcap_reference_dir() -> Path:
    """Real captures with the original CIC extractor's output beside each."""
    return _require(_shared_root() / "data" / "pcap-reference", "reference captures")


def small_run_config(data_path: Path, out_cache: Path, **overrides):
    """A RunConfig that trains on a small real subset within seconds (for tests, not for figures)."""
    from hclr_ids.config import RunConfig, merge_overrides

    values = {
        "data.path": str(data_path),
        "data.max_train_rows": 3000,
        "data.cache_dir": str(out_cache),
        "encoder.max_epochs": 3,
        "encoder.batch_size": 256,
        "encoder.time_budget_s": 60.0,
        "rl.dqn.total_steps": 30,
        "rl.ppo.total_iterations": 5,
        "rl.ppo.num_envs": 256,
        "selection.sample_size": 20_000,
        "threads": 1,
    }
    values.update(overrides)
    return merge_overrides(RunConfig(), values)


@pytest.fixture(scope="session")
def trained_bundle(release_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a real multiclass bundle trained on a small part of the real subset (hybrid head)."""
    from hclr_ids.pipeline import train

    out = tmp_path_factory.mktemp("bundle") / "multiclass"
    train(small_run_config(release_root, tmp_path_factory.mktemp("cache")), out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module's torch code on one thread.

    Two threads on a shared two-core machine slow the RL heads' small matrix products by more than 10x.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def rl_real_states(release_csv_dir: Path):
    """States from the four training-side release files: log1p, min-max scaling, a fixed random projection, tanh.

    Returns float32 states of shape (n, 16) and int64 labels (one class per file), cheap stand-ins for encoder
    embeddings in the RL tests.
    """
    import numpy as np
    import polars as pl

    from hclr_ids.schema import FEATURE_COLUMNS, LEAK_COLUMNS

    columns = [c for c in FEATURE_COLUMNS if c not in LEAK_COLUMNS]
    features, labels = [], []
    for class_index, path in enumerate(sorted((release_csv_dir / "train").glob("*.csv"))):
        table = pl.read_csv(path, columns=columns).to_numpy().astype(np.float64)
        features.append(table)
        labels.append(np.full(len(table), class_index, dtype=np.int64))
    x = np.concatenate(features)
    x = np.sign(x) * np.log1p(np.abs(x))
    span = x.max(0) - x.min(0)
    x = (x - x.min(0)) / np.where(span > 0, span, 1.0)
    projection = np.random.default_rng(0).normal(size=(x.shape[1], 16)) * 3.0 / np.sqrt(x.shape[1])
    return np.tanh((x - 0.5) @ projection).astype(np.float32), np.concatenate(labels)


@pytest.fixture(scope="module")
def bundle_dir(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module's own copy of the trained bundle with model.onnx exported beside it; the session bundle stays
    unchanged."""
    import shutil

    from hclr_ids.export import ensure_onnx

    folder = tmp_path_factory.mktemp("bundle-copy") / "bundle"
    shutil.copytree(trained_bundle, folder)
    ensure_onnx(folder)
    return folder


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path):
    """The module's bundle copy, loaded."""
    from hclr_ids.bundle import load_bundle

    return load_bundle(bundle_dir)
