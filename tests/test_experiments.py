"""Experiment helpers against hand-computed values, and each experiment command end to end on a real subset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hclr_ids.cli import main
from hclr_ids.evaluation import compute_metrics
from hclr_ids.experiments.ablation import CONTROL, HYBRID, VARIANTS, dqn_gradient_steps, ppo_gradient_steps
from hclr_ids.experiments.common import aggregate

TINY = ["--max-train-rows", "1500", "--epochs", "1", "--time-budget", "5", "--dqn-steps", "4",
        "--ppo-iterations", "2", "--threads", "1", "--no-plots"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _run(name: str, y_pred: list[int]) -> dict:
    y_true = np.array([0, 0, 1, 1])
    return {"models": {name: compute_metrics(y_true, np.array(y_pred), None, ["Benign", "Attack"])}}


def test_aggregate_mean_and_std():
    # accuracies 1.0 and 0.5: mean 0.75, sample std sqrt(0.125)
    runs = [_run("m", [0, 0, 1, 1]), _run("m", [0, 1, 0, 1])]
    summary = aggregate(runs)["m"]["summary"]["accuracy"]
    assert summary["mean"] == pytest.approx(0.75)
    assert summary["std"] == pytest.approx(math.sqrt(0.125))


def test_aggregate_sums_confusion_matrices():
    runs = [_run("m", [0, 0, 1, 1]), _run("m", [0, 1, 0, 1])]
    assert aggregate(runs)["m"]["confusion_matrix"] == [[3, 1], [1, 3]]


def test_dqn_gradient_steps_skip_warmup():
    history = {"rl/dqn_loss": [math.nan, math.nan, 0.5, 0.4, 0.3]}
    assert dqn_gradient_steps(history, 8) == 24


def test_ppo_gradient_steps_per_rollout():
    assert ppo_gradient_steps({"rl/ppo_reward": [0.1, 0.2, 0.3]}, 4, 8) == 96


def test_ablation_command_writes_tables(release_root: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / "ablation"
    status = main(["-q", "experiment", "ablation", "--data", str(release_root), "--cache-dir", str(cache_dir),
                   "--seeds", "0", "1", "--out", str(out), *TINY])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["variants"]) == list(VARIANTS)
    assert results["variants"][HYBRID]["runs"] == 2
    steps = results["runs"][0]["gradient_steps"]
    assert steps[CONTROL] == steps[HYBRID] > 0
    assert results["record"]["data_files"]
    markdown = (out / "results.md").read_text()
    assert "| weighted average |" in markdown
    assert "over the softmax control" in markdown


def test_feature_selection_command_lists_features(release_root: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / "selection"
    status = main(["-q", "experiment", "feature-selection", "--data", str(release_root), "--cache-dir",
                   str(cache_dir), "--head", "softmax", "--mifs-k", "5", "--out", str(out), *TINY])
    assert status == 0
    selected = json.loads((out / "results.json").read_text())["selected_features"]
    # Measured on this 1500-row training sample: the no-leak policy and preprocessing keep 39 of 45 columns.
    assert len(selected["all columns"][0]) == 39
    assert len(selected["MIFS k=5 (beta 0.5)"][0]) == 5


def test_baselines_command_measures_costs(release_root: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / "baselines"
    status = main(["-q", "experiment", "baselines", "--data", str(release_root), "--cache-dir", str(cache_dir),
                   "--task", "binary", "--models", "logistic-regression", "ft-transformer", "lightgbm", "xgboost",
                   "--out", str(out), *TINY[:-1]])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    costs = results["costs"]
    assert costs["LightGBM"]["size_kind"] == "model string"
    assert costs["FT-Transformer (small)"]["size_kind"] == "safetensors"
    # binary logistic regression: one coefficient per column and one intercept, float32 like the features
    assert costs["Logistic regression"]["bytes"] == (results["n_features"] + 1) * 4
    assert all(c["flows_per_s"] > 0 and c["fit_s"] > 0 for c in costs.values())
    assert (out / "variants.png").exists()
    assert (out / "roc_curves.png").exists()
