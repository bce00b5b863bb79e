"""End-to-end runs of the command line on real rows, and the field cases that cross several stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import small_run_config
from hclr_ids.cli import main
from hclr_ids.schema import FEATURE_COLUMNS

SMALL_OPTIONS = ["--max-train-rows", "3000", "--epochs", "2", "--threads", "1"]


def _small_config_file(tmp_path: Path, release_root: Path) -> Path:
    config = small_run_config(release_root, tmp_path / "cache")
    path = tmp_path / "small.json"
    path.write_text(config.to_json(), encoding="utf-8")
    return path


def test_run_end_to_end_writes_report(release_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    config_file = _small_config_file(tmp_path, release_root)
    status = main(["-q", "run", "--config", str(config_file), "--task", "multiclass", "--split", "contiguous",
                   "--out", str(out)])
    assert status == 0
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "roc_curves.png", "training_curves.png",
                 "manifest.json", "encoder.safetensors", "head.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
                "weighted_recall", "weighted_f1", "roc_auc_macro", "labels", "per_class", "confusion_matrix",
                "config", "split", "feature_policy", "rows", "duplicates"):
        assert key in metrics, key
    assert metrics["feature_policy"] == "no-leak"
    assert metrics["split"] == "contiguous"
    assert set(metrics["models"]) >= {"HCLR-IDS", "RandomForest", "LightGBM"}
    # The 10 classes of the subset, each cut 70/10/20 per file.
    assert len(metrics["labels"]) == 10
    assert int(np.sum(metrics["confusion_matrix"])) == metrics["rows"]["test"]
    assert "IAT" not in metrics["selection"]["selected_names"]
    assert "| macro average |" in (out / "report.md").read_text()


def test_train_then_evaluate_and_predict(trained_bundle: Path, release_root: Path, cases_dir: Path,
                                         tmp_path: Path):
    eval_dir = tmp_path / "eval"
    assert main(["-q", "evaluate", "--model", str(trained_bundle), "--data", str(release_root),
                 "--out", str(eval_dir)]) == 0
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    train_info = json.loads((trained_bundle / "train_info.json").read_text())
    # The evaluation rebuilt the bundle's split and scored exactly its test part.
    assert metrics["rows"]["evaluated"] == train_info["rows"]["test"]

    output = tmp_path / "pred.csv"
    assert main(["-q", "predict", "--model", str(trained_bundle), "--input",
                 str(cases_dir / "C01_infinity_strings.csv"), "--output", str(output)]) == 0
    predictions = pl.read_csv(output)
    assert predictions.height == 6
    assert predictions["row"].to_list() == [1, 2, 3, 4, 5, 6]
    probabilities = predictions.select([c for c in predictions.columns if c.startswith("p_")]).to_numpy()
    assert np.isfinite(probabilities).all()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Rows 2-4 hold infinities in Rate/Srate: flagged as imputed, still scored.
    assert (predictions["missing_fraction"].to_numpy()[1:4] > 0).all()
    assert predictions["missing_fraction"][0] == 0


def test_predict_missing_cells_case(trained_bundle: Path, cases_dir: Path, tmp_path: Path):
    output = tmp_path / "pred.jsonl"
    assert main(["-q", "predict", "--model", str(trained_bundle), "--input",
                 str(cases_dir / "C06_missing_cells.csv"), "--output", str(output)]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    # Prediction never drops rows: 8 rows in, 8 out, even the all-empty row 5.
    assert len(rows) == 8
    assert rows[4]["missing_fraction"] == pytest.approx(1.0)


def test_unseen_test_class_listed_with_zero_recall(cases_dir: Path, tmp_path: Path):
    # Train on the C05 train folder only (Benign, Recon-Ping_Sweep), evaluate on its test folder (+ ARP_Spoofing).
    train_root = tmp_path / "c05train" / "WiFI_and_MQTT" / "attacks" / "csv" / "train"
    shutil.copytree(cases_dir / "C05_unseen_class" / "WiFI_and_MQTT" / "attacks" / "csv" / "train", train_root)
    model = tmp_path / "model"
    config = small_run_config(train_root.parents[3], tmp_path / "cache", **{"data.split": "stratified"})
    from hclr_ids.pipeline import train

    train(config, model)
    test_dir = cases_dir / "C05_unseen_class" / "WiFI_and_MQTT" / "attacks" / "csv" / "test"
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--model", str(model), "--data", str(test_dir), "--part", "all",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"][-1] == "ARP_Spoofing"
    assert metrics["unseen_labels"] == ["ARP_Spoofing"]
    assert metrics["per_class"]["ARP_Spoofing"]["recall"] == 0.0
    assert metrics["per_class"]["ARP_Spoofing"]["support"] > 0
    recalls = [metrics["per_class"][label]["recall"] for label in metrics["labels"]]
    assert metrics["macro_recall"] == pytest.approx(np.mean(recalls))
    assert len(metrics["confusion_matrix"]) == len(metrics["labels"]) == 3


def test_unseen_class_official_split_binary_runs(cases_dir: Path, tmp_path: Path):
    config = small_run_config(cases_dir / "C05_unseen_class", tmp_path / "cache",
                              **{"data.split": "official", "data.task": "binary"})
    from hclr_ids.pipeline import run

    metrics = run(config, tmp_path / "run", with_baselines=False)
    assert metrics["labels"] == ["Benign", "Attack"]
    assert metrics["unseen_labels"] == []


def test_unseen_class_official_split_multiclass_rejected(cases_dir: Path, tmp_path: Path):
    config = small_run_config(cases_dir / "C05_unseen_class", tmp_path / "cache", **{"data.split": "official"})
    from hclr_ids.pipeline import run

    with pytest.raises(ValueError, match="ARP_Spoofing"):
        run(config, tmp_path / "run", with_baselines=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem", ["missing column", "non-numeric cell", "empty file", "unknown file name"])
def test_bad_input_fails_before_any_output(problem: str, release_csv_dir: Path, tmp_path: Path, capsys):
    root = tmp_path / "data" / "WiFI_and_MQTT" / "attacks" / "csv" / "train"
    root.mkdir(parents=True)
    lines = (release_csv_dir / "train" / "Recon-Ping_Sweep_train.pcap.csv").read_text().splitlines()[:50]
    shutil.copy(release_csv_dir / "train" / "MQTT-Malformed_Data_train.pcap.csv", root)
    name = "Recon-Ping_Sweep_train.pcap.csv"
    expected = ""
    if problem == "missing column":
        lines = [",".join(line.split(",")[1:]) for line in lines]
        expected = "Header_Length"
    elif problem == "non-numeric cell":
        cells = lines[7].split(",")
        cells[3] = "fast"
        lines[7] = ",".join(cells)
        expected = "fast"
    elif problem == "empty file":
        lines = []
        expected = name
    elif problem == "unknown file name":
        name = "Recon-Wormhole_train.pcap.csv"
        expected = name
    (root / name).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    out = tmp_path / "out"
    status = main(["-q", "run", "--data", str(tmp_path / "data"), "--split", "stratified", "--out", str(out),
                   "--cache-dir", str(tmp_path / "cache"), *SMALL_OPTIONS])
    assert status == 1
    message = capsys.readouterr().err
    assert expected in message
    assert not out.exists()


def test_nonfinite_training_rows_are_imputed(release_csv_dir: Path, tmp_path: Path):
    # Rows with +-inf and NaN train and score without any non-finite value reaching the network.
    frames = []
    for name, label in (("Recon-Ping_Sweep_train.pcap.csv", "ping"), ("MQTT-Malformed_Data_train.pcap.csv", "mal")):
        frame = pl.read_csv(release_csv_dir / "train" / name, n_rows=300, infer_schema_length=0)
        frames.append(frame.with_columns(pl.lit(label).alias("label")))
    table = pl.concat(frames)
    table = table.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(pl.lit("inf")).otherwise(pl.col("Rate")).alias("Rate"),
        pl.when(pl.int_range(pl.len()) % 11 == 0).then(pl.lit("NaN")).otherwise(pl.col("Std")).alias("Std"),
    )
    path = tmp_path / "table.csv"
    table.write_csv(path)
    config = small_run_config(path, tmp_path / "cache",
                              **{"data.label_column": "label", "data.split": "stratified"})
    from hclr_ids.pipeline import run

    metrics = run(config, tmp_path / "run", with_baselines=False)
    assert metrics["preprocess"]["train"]["infinite"]["Rate"] > 0
    assert metrics["preprocess"]["train"]["missing"]["Std"] > 0
    assert np.isfinite(metrics["macro_f1"])
    assert list(FEATURE_COLUMNS) == [c for c in table.columns if c != "label"]


def test_report_rows_named_after_encoder():
    from hclr_ids.config import EncoderConfig
    from hclr_ids.networks import EncoderClassifier
    from hclr_ids.pipeline import TrainedModel, predict_proba_models

    config = EncoderConfig(architecture="cnn", conv_filters=4, embedding_dim=3, feature_embedding_dim=2, ple_bins=2)

    class AlwaysSecondClass:
        def predict_proba(self, states: np.ndarray) -> np.ndarray:
            return np.tile(np.asarray([0.0, 1.0], dtype=np.float32), (len(states), 1))

    model = TrainedModel(EncoderClassifier(config, n_features=5, n_classes=2), AlwaysSecondClass(), "hybrid", {})
    out = predict_proba_models(model, np.random.default_rng(0).random((4, 5), dtype=np.float32))
    assert set(out) == {"CNN (softmax)", "HCLR-IDS"}
    assert out["CNN (softmax)"].shape == (4, 2)
    assert out["HCLR-IDS"][:, 1].tolist() == [1.0] * 4
