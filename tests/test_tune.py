"""Ray Tune search on a local Ray instance: selection by validation score only, and the saved configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hclr_ids.config import RunConfig
from hclr_ids.experiments.tune import METRIC, load_grid_file, run_tune
from conftest import small_run_config


@pytest.fixture(scope="module")
def tuned(release_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    import ray

    out = tmp_path_factory.mktemp("tune")
    grid_file = out / "grid.json"
    grid_file.write_text(json.dumps({"encoder.learning_rate": [3e-3, 1e-4], "encoder.dropout": [0.2, 0.3]}))
    config = small_run_config(release_root, tmp_path_factory.mktemp("cache"), **{
        "data.max_train_rows": 1500, "encoder.max_epochs": 2, "encoder.time_budget_s": 10.0})
    try:
        summary = run_tune(config, out, stage="cnn", grid=load_grid_file(grid_file))
    finally:
        ray.shutdown()
    return summary, out


def test_tune_runs_every_grid_point(tuned):
    summary, _ = tuned
    assert len(summary["trials"]) == 4


def test_tune_picks_max_validation_score(tuned):
    summary, _ = tuned
    assert summary["best"][METRIC] == max(trial[METRIC] for trial in summary["trials"])


def test_tune_reads_no_test_metric(tuned):
    summary, out = tuned
    keys = set(summary["best"]) | {key for trial in summary["trials"] for key in trial}
    assert not any("test" in key for key in keys)
    for result in (out / "ray_results").rglob("result.json"):
        for line in result.read_text().splitlines():
            assert not any("test" in key for key in json.loads(line))


def test_tune_best_config_loads(tuned):
    summary, out = tuned
    config = RunConfig.from_json_file(out / "best_config.json")
    assert config.encoder.learning_rate == summary["best"]["params"]["encoder.learning_rate"]
    assert config.encoder.dropout == summary["best"]["params"]["encoder.dropout"]


def test_grid_file_rejects_unknown_setting(tmp_path: Path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"encoder.learning_rat": [1e-3]}))
    with pytest.raises(ValueError, match="learning_rat"):
        load_grid_file(path)
