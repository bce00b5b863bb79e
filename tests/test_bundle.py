"""Model bundles: round trip, no pickle, and clear errors for damaged or mismatched files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hclr_ids.bundle import BundleError, load_bundle


@pytest.fixture()
def bundle_copy(trained_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(trained_bundle, target)
    return target


def test_round_trip_gives_same_probabilities(trained_bundle: Path, bundle_copy: Path):
    rng = np.random.default_rng(0)
    first = load_bundle(trained_bundle)
    X = rng.uniform(0, 100, size=(20, len(first.input_features))).astype(np.float32)
    np.testing.assert_allclose(first.predict_proba(X), load_bundle(bundle_copy).predict_proba(X), atol=1e-6)


def test_bundle_has_no_pickle(trained_bundle: Path):
    suffixes = {path.suffix for path in trained_bundle.iterdir()}
    assert not suffixes & {".pkl", ".pickle", ".pt", ".pth", ".joblib"}
    manifest = json.loads((trained_bundle / "manifest.json").read_text())
    assert manifest["format"] == "hclr-ids-bundle"
    assert manifest["head"] == "hybrid"
    assert len(manifest["input_features"]) == 45


def test_manifest_lists_checksums_and_shapes(trained_bundle: Path):
    manifest = json.loads((trained_bundle / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"encoder.safetensors", "head.safetensors", "preprocessor.safetensors"}
    assert manifest["tensor_shapes"]["encoder.safetensors"]


def test_damaged_weights_rejected(bundle_copy: Path):
    path = bundle_copy / "encoder.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="encoder.safetensors is damaged"):
        load_bundle(bundle_copy)


def test_truncated_weights_rejected_even_with_matching_checksum(bundle_copy: Path):
    path = bundle_copy / "head.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    import hashlib

    manifest["files"]["head.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="head.safetensors"):
        load_bundle(bundle_copy)


def test_shape_mismatch_names_tensor(bundle_copy: Path):
    encoder = json.loads((bundle_copy / "encoder.json").read_text())
    encoder["config"]["embedding_dim"] = encoder["config"]["embedding_dim"] + 8
    (bundle_copy / "encoder.json").write_text(json.dumps(encoder))
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    import hashlib

    manifest["files"]["encoder.json"] = hashlib.sha256((bundle_copy / "encoder.json").read_bytes()).hexdigest()
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="shape"):
        load_bundle(bundle_copy)


def test_missing_file_rejected(bundle_copy: Path):
    (bundle_copy / "preprocessor.safetensors").unlink()
    with pytest.raises(BundleError, match="preprocessor.safetensors is missing"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path: Path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nothing")


def test_wrong_format_version(bundle_copy: Path):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(bundle_copy)


def test_wrong_input_width_rejected(trained_bundle: Path):
    bundle = load_bundle(trained_bundle)
    with pytest.raises(ValueError, match="45 features"):
        bundle.predict_proba(np.zeros((2, 44), dtype=np.float32))


def test_missing_pool_size_pools_by_two():
    import dataclasses

    from hclr_ids.bundle import encoder_from_metadata
    from hclr_ids.config import EncoderConfig

    # Bundles written before pool_size existed pooled by 2; their encoder.json lacks the key.
    config = dataclasses.asdict(EncoderConfig(conv_filters=4, lstm_units=4, embedding_dim=3, feature_embedding_dim=2))
    del config["pool_size"]
    model = encoder_from_metadata({"config": config, "n_features": 9, "n_classes": 2})
    assert model.encoder.conv[-1].kernel_size == 2
    assert EncoderConfig().pool_size != 2
