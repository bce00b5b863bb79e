"""ONNX export: probabilities match torch, metadata travels with the graph, the scorer checks its input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hclr_ids.bundle import ModelBundle, load_bundle
from hclr_ids.data import load_release, read_features
from hclr_ids.export import ONNX_FILE_NAME, OnnxScorer, ensure_onnx, load_scorer


@pytest.fixture(scope="module")
def real_rows(release_root: Path, cases_dir: Path) -> np.ndarray:
    """64 real rows spread over all 10 classes, the first 6 with infinities (case C01)."""
    X_inf, _, _ = read_features(cases_dir / "C01_infinity_strings.csv")
    dataset = load_release(release_root, cache=False)
    picked = np.linspace(0, len(dataset) - 1, 58).astype(int)
    return np.concatenate([X_inf, dataset.X[picked]]).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_matches_torch(bundle, bundle_dir, real_rows, batch):
    scorer = OnnxScorer(bundle_dir / ONNX_FILE_NAME)
    expected = bundle.predict_proba(real_rows[:batch])
    actual = scorer.predict_proba(real_rows[:batch])
    assert actual.shape == (batch, len(bundle.classes))
    assert np.abs(actual - expected).max() <= 1e-5


def test_parallel_runs_match_one_thread(bundle_dir, real_rows):
    # 64 rows in runs of 5 give 13 runs, so two threads score several runs each, out of order.
    serial = OnnxScorer(bundle_dir / ONNX_FILE_NAME, threads=1).predict_proba(real_rows, batch_size=5)
    parallel = OnnxScorer(bundle_dir / ONNX_FILE_NAME, threads=2).predict_proba(real_rows, batch_size=5)
    whole = OnnxScorer(bundle_dir / ONNX_FILE_NAME, threads=1).predict_proba(real_rows)
    np.testing.assert_array_equal(parallel, serial)
    assert np.abs(parallel - whole).max() <= 1e-6


def test_scorer_rejects_negative_threads(bundle_dir):
    with pytest.raises(ValueError, match="threads must be >= 0, got -1"):
        OnnxScorer(bundle_dir / ONNX_FILE_NAME, threads=-1)


def test_onnx_nonfinite_rows_finite(bundle_dir, real_rows):
    proba = OnnxScorer(bundle_dir / ONNX_FILE_NAME).predict_proba(real_rows[:6])
    assert np.isfinite(proba).all()
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_onnx_metadata(bundle, bundle_dir):
    import onnx

    model = onnx.load(str(bundle_dir / ONNX_FILE_NAME))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["classes"] == bundle.classes
    assert props["input_features"] == bundle.input_features
    assert props["model_version"] == bundle.version
    assert props["task"] == "multiclass"


def test_onnx_opset_and_dynamic_batch(bundle_dir):
    import onnx

    model = onnx.load(str(bundle_dir / ONNX_FILE_NAME))
    opset = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    assert opset >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 45


def test_scorer_interface(bundle, bundle_dir):
    scorer = load_scorer(bundle_dir, "onnx")
    assert scorer.classes == bundle.classes
    assert scorer.input_features == bundle.input_features
    assert scorer.version == bundle.version


def test_scorer_rejects_wrong_width(bundle_dir):
    scorer = OnnxScorer(bundle_dir / ONNX_FILE_NAME)
    with pytest.raises(ValueError, match="expected rows of 45 features"):
        scorer.predict_proba(np.zeros((3, 44), dtype=np.float32))


def test_scorer_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="hclr-ids export"):
        OnnxScorer(tmp_path / "absent.onnx")


def test_unknown_runtime(tmp_path):
    with pytest.raises(ValueError, match="expected 'torch' or 'onnx'"):
        load_scorer(tmp_path, "tensorrt")


def test_ensure_onnx_exports_first_use(trained_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(trained_bundle, folder, ignore=shutil.ignore_patterns(ONNX_FILE_NAME))
    assert not (folder / ONNX_FILE_NAME).exists()
    scorer = load_scorer(folder, "onnx")
    exported = (folder / ONNX_FILE_NAME).stat().st_mtime_ns
    again = load_scorer(folder, "onnx")
    assert (folder / ONNX_FILE_NAME).is_file()
    assert scorer.version == load_bundle(folder).version
    assert again.version == scorer.version
    assert (folder / ONNX_FILE_NAME).stat().st_mtime_ns == exported


def test_ensure_onnx_replaces_stale_version(bundle_dir, tmp_path, caplog):
    folder = tmp_path / "bundle"
    shutil.copytree(bundle_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model_version"] = "multiclass-retrained"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="hclr_ids.export"):
        path = ensure_onnx(folder)
    assert OnnxScorer(path).version == "multiclass-retrained"
    assert "exporting it again" in caplog.text


def test_runtime_torch_loads_bundle(bundle_dir):
    scorer = load_scorer(bundle_dir, "torch")
    assert isinstance(scorer, ModelBundle)
    assert scorer.path == bundle_dir
