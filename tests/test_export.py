"""ONNX export: probabilities match torch, metadata travels with the graph, the scorer checks its input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _model_standin import standin_with_onnx

from hclr_ids.data import read_features
from hclr_ids.export import ONNX_FILE_NAME, OnnxScorer, load_scorer


@pytest.fixture(scope="module")
def standin(release_root: Path):
    return standin_with_onnx(release_root)


@pytest.fixture(scope="module")
def real_rows(standin, cases_dir: Path) -> np.ndarray:
    """64 real rows spread over all 10 classes, the first 6 with infinities (case C01)."""
    _, dataset, _ = standin
    X_inf, _, _ = read_features(cases_dir / "C01_infinity_strings.csv")
    picked = np.linspace(0, len(dataset) - 1, 58).astype(int)
    return np.concatenate([X_inf, dataset.X[picked]]).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_matches_torch(standin, real_rows, batch):
    bundle, _, folder = standin
    scorer = OnnxScorer(folder / ONNX_FILE_NAME)
    expected = bundle.predict_proba(real_rows[:batch])
    actual = scorer.predict_proba(real_rows[:batch])
    assert actual.shape == (batch, len(bundle.classes))
    assert np.abs(actual - expected).max() <= 1e-5


def test_onnx_nonfinite_rows_finite(standin, real_rows):
    _, _, folder = standin
    proba = OnnxScorer(folder / ONNX_FILE_NAME).predict_proba(real_rows[:6])
    assert np.isfinite(proba).all()
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_onnx_metadata(standin):
    import onnx

    bundle, _, folder = standin
    model = onnx.load(str(folder / ONNX_FILE_NAME))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["classes"] == bundle.classes
    assert props["input_features"] == bundle.input_features
    assert props["model_version"] == bundle.version
    assert props["task"] == "multiclass"


def test_onnx_opset_and_dynamic_batch(standin):
    import onnx

    _, _, folder = standin
    model = onnx.load(str(folder / ONNX_FILE_NAME))
    opset = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    assert opset >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 45


def test_scorer_interface(standin):
    bundle, _, folder = standin
    scorer = load_scorer(folder, "onnx")
    assert scorer.classes == bundle.classes
    assert scorer.input_features == bundle.input_features
    assert scorer.version == bundle.version


def test_scorer_rejects_wrong_width(standin):
    _, _, folder = standin
    scorer = OnnxScorer(folder / ONNX_FILE_NAME)
    with pytest.raises(ValueError, match="expected rows of 45 features"):
        scorer.predict_proba(np.zeros((3, 44), dtype=np.float32))


def test_scorer_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="hclr-ids export"):
        OnnxScorer(tmp_path / "absent.onnx")


def test_unknown_runtime(tmp_path):
    with pytest.raises(ValueError, match="expected 'torch' or 'onnx'"):
        load_scorer(tmp_path, "tensorrt")
