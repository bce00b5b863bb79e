"""Preprocessor: feature policy, imputation, constant columns, log transform, scaling, persistence, torch parity."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import load_file, save_file

from hclr_ids.config import PreprocessConfig
from hclr_ids.preprocessing import Preprocessor

MISSING_SPELLINGS = ("", "nan", "n/a")


def read_cells(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read a feature CSV: empty, NaN and N/A cells become NaN; inf/Infinity spellings with a sign become +-inf."""
    frame = pl.read_csv(path, infer_schema_length=0)
    columns = []
    for name in frame.columns:
        text = pl.col(name).str.strip_chars()
        missing = text.is_null() | text.str.to_lowercase().is_in(MISSING_SPELLINGS)
        columns.append(pl.when(missing).then(None).otherwise(text).cast(pl.Float64, strict=True).alias(name))
    return frame.select(columns).to_numpy().astype(np.float64), list(frame.columns)


def read_release_files(folder: Path) -> tuple[np.ndarray, list[str]]:
    frames = [pl.read_csv(path) for path in sorted(folder.glob("*.pcap.csv"))]
    names = frames[0].columns
    return np.vstack([frame.select(names).to_numpy() for frame in frames]).astype(np.float32), names


@pytest.fixture(scope="module")
def release_train(release_csv_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The 20,816 rows of the four training files of the subset, float32 as the loader returns them."""
    return read_release_files(release_csv_dir / "train")


@pytest.fixture(scope="module")
def fitted(release_train: tuple[np.ndarray, list[str]]) -> Preprocessor:
    X, names = release_train
    return Preprocessor(PreprocessConfig()).fit(X, names)


def test_no_leak_policy_drops_iat(fitted: Preprocessor) -> None:
    assert fitted.policy_dropped_ == ["IAT"]
    assert "IAT" not in fitted.output_features_


def test_all_policy_keeps_iat(release_train: tuple[np.ndarray, list[str]]) -> None:
    X, names = release_train
    pre = Preprocessor(PreprocessConfig(features="all")).fit(X, names)
    assert pre.policy_dropped_ == []
    assert "IAT" in pre.output_features_


def test_training_rows_scale_to_unit_range(fitted: Preprocessor, release_train) -> None:
    X, names = release_train
    out = fitted.transform(X, names)
    assert out.dtype == np.float32
    assert out.shape == (X.shape[0], len(fitted.output_features_))
    np.testing.assert_array_equal(out.min(axis=0), 0.0)
    np.testing.assert_array_equal(out.max(axis=0), 1.0)
    assert fitted.last_report_.total_clipped == 0
    assert fitted.last_report_.total_missing == 0


def test_log_columns_on_release(fitted: Preprocessor) -> None:
    # Rate spans 0.06 to 1e6 packets/s; TTL (Duration) and flag fractions stay within one decade or below 1.
    assert "Rate" in fitted.log_columns_
    assert "Header_Length" in fitted.log_columns_
    assert "Duration" not in fitted.log_columns_
    assert "syn_flag_number" not in fitted.log_columns_


def test_log_transform_values(fitted: Preprocessor, release_train) -> None:
    X, names = release_train
    rate = X[:, names.index("Rate")].astype(np.float64)
    logged = np.log1p(rate)
    expected = (logged - logged.min()) / (logged.max() - logged.min())
    out = fitted.transform(X, names)[:, fitted.output_features_.index("Rate")]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_log_transform_disabled(release_train) -> None:
    X, names = release_train
    pre = Preprocessor(PreprocessConfig(log_transform=False)).fit(X, names)
    assert pre.log_columns_ == []


def test_fill_value_is_training_mean(fitted: Preprocessor, release_train) -> None:
    X, names = release_train
    j = fitted.continuous_columns_.index("Rate")
    assert fitted.fill_values_[j] == pytest.approx(X[:, names.index("Rate")].astype(np.float64).mean(), rel=1e-12)


def test_transform_before_fit_raises() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        Preprocessor().transform(np.zeros((2, 45)))


def test_transform_other_columns_raises(fitted: Preprocessor, release_train) -> None:
    X, names = release_train
    renamed = ["Time_To_Live" if n == "Duration" else n for n in names]
    with pytest.raises(ValueError, match=r"missing \['Duration'\], unexpected \['Time_To_Live'\]"):
        fitted.transform(X[:5], renamed)


def test_transform_wrong_width_raises(fitted: Preprocessor, release_train) -> None:
    X, _ = release_train
    with pytest.raises(ValueError, match="44 columns but the preprocessor was fitted on 45"):
        fitted.transform(X[:5, :44])


def test_transform_reorders_columns_by_name(fitted: Preprocessor, release_train) -> None:
    X, names = release_train
    order = np.arange(len(names))[::-1]
    np.testing.assert_array_equal(
        fitted.transform(X[:100, order], [names[i] for i in order]), fitted.transform(X[:100], names)
    )


def test_c01_infinity_counted_and_imputed(cases_dir: Path) -> None:
    X, names = read_cells(cases_dir / "C01_infinity_strings.csv")
    rate, srate = names.index("Rate"), names.index("Srate")
    assert np.isposinf(X[1, rate])
    assert np.isposinf(X[2, srate])
    assert np.isneginf(X[3, rate])

    pre = Preprocessor().fit(X, names)
    out = pre.transform(X, names)

    assert out.shape[0] == 6
    assert np.isfinite(out).all()
    report = pre.last_report_
    assert report.infinite["Rate"] == 3
    assert report.infinite["Srate"] == 2
    assert report.missing["Rate"] == 3
    assert report.missing["Srate"] == 2
    # Rows 1, 5 and 6 hold the only finite Rate values; rows 1, 4, 5 and 6 the finite Srate values.
    assert pre.fill_values_[pre.continuous_columns_.index("Rate")] == pytest.approx(X[[0, 4, 5], rate].mean())
    assert pre.fill_values_[pre.continuous_columns_.index("Srate")] == pytest.approx(X[[0, 3, 4, 5], srate].mean())


def test_c01_imputed_cells_equal_mean_rows(cases_dir: Path, fitted: Preprocessor) -> None:
    X, names = read_cells(cases_dir / "C01_infinity_strings.csv")
    filled = X.copy()
    for name in ("Rate", "Srate"):
        j = names.index(name)
        filled[~np.isfinite(X[:, j]), j] = fitted.fill_values_[fitted.continuous_columns_.index(name)]
    np.testing.assert_array_equal(fitted.transform(X, names), fitted.transform(filled, names))


def test_c06_excess_missing_rows(cases_dir: Path) -> None:
    X, _ = read_cells(cases_dir / "C06_missing_cells.csv")
    # Row 4: 10 of 45 cells missing (22 %), row 5: all, row 6: 9 of 45 (exactly 20 %, kept).
    flags = Preprocessor().excess_missing_rows(X)
    assert flags.tolist() == [False, False, False, True, True, False, False, False]


def test_c06_predict_imputes_every_row(cases_dir: Path) -> None:
    X, names = read_cells(cases_dir / "C06_missing_cells.csv")
    pre = Preprocessor()
    keep = ~pre.excess_missing_rows(X)
    pre.fit(X[keep], names)

    out = pre.transform(X, names)

    assert out.shape[0] == 8
    assert np.isfinite(out).all()
    report = pre.last_report_
    assert report.rows_over_missing_threshold == 2
    assert report.missing["Rate"] == 4  # rows 2, 4, 5, 6
    assert report.missing["Std"] == 2  # rows 3 (NaN text) and 5
    assert report.missing["Header_Length"] == 4  # rows 4, 5, 6 and 7 (N/A)
    assert report.infinite["Rate"] == 0


def test_c06_training_mean_skips_missing(cases_dir: Path) -> None:
    X, names = read_cells(cases_dir / "C06_missing_cells.csv")
    pre = Preprocessor()
    train = X[~pre.excess_missing_rows(X)]
    pre.fit(train, names)
    j = names.index("Header_Length")
    # Training rows 1, 2, 3, 6, 7, 8: Header_Length known in rows 1, 2, 3 and 8.
    expected = (87.7 + 196.2 + 227.7 + 550.4) / 4
    assert pre.fill_values_[pre.continuous_columns_.index("Header_Length")] == pytest.approx(expected)
    assert np.isnan(train[:, j]).sum() == 2


def test_c08_constant_columns_dropped(cases_dir: Path) -> None:
    X, names = read_cells(cases_dir / "C08_constant_columns.csv")
    expected = [
        "Drate", "fin_flag_number", "syn_flag_number", "rst_flag_number", "ece_flag_number", "cwr_flag_number",
        "ack_count", "syn_count", "fin_count", "HTTP", "HTTPS", "DNS", "Telnet", "SMTP", "SSH", "IRC", "DHCP",
        "IGMP",
    ]
    pre = Preprocessor()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pre.fit_transform(X, names)

    assert pre.constant_columns_ == expected
    assert not set(expected) & set(pre.output_features_)
    assert out.shape == (30, 45 - 1 - 18)
    assert np.isfinite(out).all()
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_c09_out_of_range_clipped_and_counted(cases_dir: Path) -> None:
    X_train, names = read_cells(cases_dir / "C09_out_of_range" / "train.csv")
    X_test, test_names = read_cells(cases_dir / "C09_out_of_range" / "test.csv")
    pre = Preprocessor().fit(X_train, names)

    out = pre.transform(X_test, test_names)

    report = pre.last_report_
    # Every test row has Header_Length >= 3889 (training max 2788.6) and TCP <= 0.4 (training min 0.6).
    assert report.clipped_high["Header_Length"] == 6
    assert report.clipped_low["TCP"] == 6
    for j, name in enumerate(pre.output_features_):
        raw = X_test[:, names.index(name)]
        low, high = X_train[:, names.index(name)].min(), X_train[:, names.index(name)].max()
        assert report.clipped_low[name] == int((raw < low).sum()), name
        assert report.clipped_high[name] == int((raw > high).sum()), name
        np.testing.assert_array_equal(out[raw < low, j], 0.0)
        np.testing.assert_array_equal(out[raw > high, j], 1.0)
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_c09_clipping_logs_warning(cases_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    X_train, names = read_cells(cases_dir / "C09_out_of_range" / "train.csv")
    X_test, _ = read_cells(cases_dir / "C09_out_of_range" / "test.csv")
    pre = Preprocessor().fit(X_train, names)
    with caplog.at_level(logging.WARNING, logger="hclr_ids.preprocessing"):
        pre.transform(X_test)
    assert any("clipped" in record.getMessage() for record in caplog.records)


def test_categorical_mode_and_one_hot() -> None:
    X = np.array([[1.0, 10.0], [2.0, 20.0], [2.0, 30.0], [np.nan, 40.0], [3.0, 50.0]])
    pre = Preprocessor(PreprocessConfig(categorical_columns=("proto",))).fit(X, ["proto", "size"])
    test = np.array([[np.nan, 10.0], [3.0, 20.0], [7.0, 30.0]])

    out = pre.transform(test)

    assert pre.output_features_ == ["size", "proto=1", "proto=2", "proto=3"]
    assert pre.category_fill_.tolist() == [2.0]
    np.testing.assert_array_equal(out[:, 1:], [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert pre.last_report_.missing["proto"] == 1
    assert pre.last_report_.unknown_categories["proto"] == 1


def _rows_with_nonfinite(X: np.ndarray, names: list[str]) -> np.ndarray:
    rows = X[:200].astype(np.float32).copy()
    rows[0, names.index("Rate")] = np.inf
    rows[1, names.index("Rate")] = -np.inf
    rows[2, names.index("Std")] = np.nan
    rows[3, :12] = np.nan
    rows[4, names.index("Header_Length")] = 1e12  # far above the training range
    return rows


def test_torch_module_matches_transform(fitted: Preprocessor, release_csv_dir: Path) -> None:
    import torch

    X, names = read_release_files(release_csv_dir / "test")
    rows = _rows_with_nonfinite(X[::500], names)

    expected = fitted.transform(rows, names)
    with torch.no_grad():
        got = fitted.torch_module()(torch.from_numpy(rows)).numpy()

    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_torch_module_one_hot_matches_transform() -> None:
    import torch

    X = np.array([[1.0, 10.0], [2.0, 2000.0], [2.0, 30.0], [np.nan, 40.0], [3.0, 50.0]], dtype=np.float32)
    pre = Preprocessor(PreprocessConfig(categorical_columns=("proto",))).fit(X, ["proto", "size"])
    test = np.array([[np.nan, np.inf], [3.0, 20.0], [7.0, -5.0]], dtype=np.float32)
    with torch.no_grad():
        got = pre.torch_module()(torch.from_numpy(test)).numpy()
    np.testing.assert_allclose(got, pre.transform(test), rtol=0, atol=1e-6)


def test_torch_module_exports_to_onnx(fitted: Preprocessor, release_csv_dir: Path) -> None:
    import onnxruntime
    import torch

    X, names = read_release_files(release_csv_dir / "test")
    rows = _rows_with_nonfinite(X[::500], names)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            fitted.torch_module(), (torch.from_numpy(rows[:2]),), buffer, dynamo=False,
            input_names=["raw"], output_names=["features"], dynamic_axes={"raw": {0: "rows"}},
        )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])

    (got,) = session.run(None, {"raw": rows})

    np.testing.assert_allclose(got, fitted.transform(rows, names), rtol=0, atol=1e-6)


def test_state_round_trip(fitted: Preprocessor, release_csv_dir: Path, tmp_path: Path) -> None:
    save_file(fitted.state_tensors(), str(tmp_path / "preprocessor.safetensors"))
    (tmp_path / "preprocessor.json").write_text(json.dumps(fitted.metadata()))

    loaded = Preprocessor.from_state(
        json.loads((tmp_path / "preprocessor.json").read_text()), load_file(str(tmp_path / "preprocessor.safetensors"))
    )

    X, names = read_release_files(release_csv_dir / "test")
    rows = _rows_with_nonfinite(X[::500], names)
    assert loaded.output_features_ == fitted.output_features_
    assert loaded.log_columns_ == fitted.log_columns_
    assert loaded.config == fitted.config
    np.testing.assert_array_equal(loaded.transform(rows, names), fitted.transform(rows, names))


def test_state_round_trip_categorical(tmp_path: Path) -> None:
    X = np.array([[1.0, 10.0], [2.0, 20.0], [2.0, 30.0], [3.0, 50.0]])
    pre = Preprocessor(PreprocessConfig(categorical_columns=("proto",))).fit(X, ["proto", "size"])
    save_file(pre.state_tensors(), str(tmp_path / "p.safetensors"))
    loaded = Preprocessor.from_state(json.loads(json.dumps(pre.metadata())), load_file(str(tmp_path / "p.safetensors")))
    np.testing.assert_array_equal(loaded.transform(X), pre.transform(X))


def test_from_state_rejects_short_tensor(fitted: Preprocessor) -> None:
    tensors = fitted.state_tensors()
    n = len(fitted.continuous_columns_)
    tensors["data_min"] = tensors["data_min"][:-1]
    with pytest.raises(ValueError, match=f"'data_min' has {n - 1} values, expected {n}"):
        Preprocessor.from_state(fitted.metadata(), tensors)
