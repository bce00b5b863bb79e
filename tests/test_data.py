"""Loading the release layout and labelled tables: columns, cells, errors, cache."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hclr_ids import data
from hclr_ids.data import find_release_files, load_dataset, load_release, load_table, parse_release_name, read_features
from hclr_ids.schema import FEATURE_COLUMNS, LAYOUT39_MISSING, RELEASE_FILE_PATTERN_TEXT

#: Rows per release file of the real subset, as listed with the data.
SUBSET_ROWS = {
    ("Benign", "test"): 37_607,
    ("ARP_Spoofing", "test"): 1_744,
    ("MQTT-DDoS-Connect_Flood", "test"): 28_808,
    ("MQTT-DDoS-Publish_Flood", "test"): 8_416,
    ("MQTT-DoS-Connect_Flood", "train"): 12_773,
    ("MQTT-DoS-Connect_Flood", "test"): 3_131,
    ("MQTT-DoS-Publish_Flood", "test"): 8_505,
    ("MQTT-Malformed_Data", "train"): 5_130,
    ("MQTT-Malformed_Data", "test"): 1_747,
    ("Recon-OS_Scan", "test"): 3_834,
    ("Recon-Ping_Sweep", "train"): 740,
    ("Recon-Ping_Sweep", "test"): 186,
    ("Recon-VulScan", "train"): 2_173,
    ("Recon-VulScan", "test"): 1_034,
}


@pytest.fixture(scope="module")
def release(release_root: Path, tmp_path_factory: pytest.TempPathFactory) -> data.Dataset:
    return load_release(release_root, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def ping_sweep_rows(release_csv_dir: Path) -> list[list[str]]:
    """Header and rows of the real Recon-Ping_Sweep test file, as text."""
    with open(release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv", newline="") as handle:
        return list(csv.reader(handle))


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


def column(name: str) -> int:
    return FEATURE_COLUMNS.index(name)


# --- release file names -----------------------------------------------------------------------------------


def test_release_name_strips_part_digits():
    assert parse_release_name(Path("TCP_IP-DDoS-UDP3_train.pcap.csv")) == ("TCP_IP-DDoS-UDP", "train")


def test_release_name_without_part():
    assert parse_release_name(Path("Recon-OS_Scan_test.pcap.csv")) == ("Recon-OS_Scan", "test")


def test_release_name_unknown_class(tmp_path: Path):
    side = tmp_path / "WiFI_and_MQTT" / "attacks" / "csv" / "train"
    side.mkdir(parents=True)
    (side / "Foo-Flood_train.pcap.csv").write_text("a\n1\n")
    with pytest.raises(ValueError) as error:
        find_release_files(tmp_path)
    assert "Foo-Flood_train.pcap.csv" in str(error.value)
    assert RELEASE_FILE_PATTERN_TEXT in str(error.value)


def test_find_release_files_from_any_level(release_root: Path, release_csv_dir: Path):
    assert len(find_release_files(release_root)) == 14
    assert len(find_release_files(release_csv_dir)) == 14
    assert len(find_release_files(release_csv_dir / "train")) == 4
    assert find_release_files(release_root)[0].parent.name == "train"


def test_find_release_files_empty_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no release files"):
        find_release_files(tmp_path)


# --- the real subset --------------------------------------------------------------------------------------


def test_subset_rows_per_file(release: data.Dataset):
    counts = {(f.class_name, f.side): f.n_rows for f in release.files}
    assert counts == SUBSET_ROWS
    assert len(release) == sum(SUBSET_ROWS.values())


def test_subset_arrays_and_types(release: data.Dataset):
    assert release.X.dtype == np.float32
    assert release.X.shape == (115_828, 45)
    assert release.feature_names == list(FEATURE_COLUMNS)
    assert release.file_index.dtype == np.int32
    assert release.row_number.dtype == np.int64
    assert release.label_source == "file name"
    assert not np.isnan(release.X).any()


def test_subset_provenance_of_rows(release: data.Dataset):
    for index, source in enumerate(release.files):
        rows = slice(source.row_offset, source.row_offset + source.n_rows)
        assert (release.file_index[rows] == index).all()
        assert (release.labels[rows] == source.class_name).all()
        np.testing.assert_array_equal(release.row_number[rows], np.arange(1, source.n_rows + 1))


def test_subset_values_match_csv_text(release: data.Dataset, ping_sweep_rows: list[list[str]]):
    source = next(f for f in release.files if f.class_name == "Recon-Ping_Sweep" and f.side == "test")
    for row in (1, 100, 186):
        expected = np.array(ping_sweep_rows[row], dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(release.X[source.row_offset + row - 1], expected)


def test_targets_by_task(release: data.Dataset):
    names, counts = np.unique(release.targets("category"), return_counts=True)
    assert dict(zip(names, counts)) == {"Benign": 37_607, "MQTT": 68_510, "Recon": 7_967, "Spoofing": 1_744}
    assert (release.targets("binary") == "Attack").sum() == len(release) - 37_607
    assert set(release.targets("multiclass")) == {class_name for class_name, _ in SUBSET_ROWS}


def test_subset_method_keeps_provenance(release: data.Dataset):
    indices = np.array([0, 5, 20_816, 20_817, 115_827])
    part = release.subset(indices)
    assert len(part) == 5
    np.testing.assert_array_equal(part.X, release.X[indices])
    np.testing.assert_array_equal(part.row_number, [1, 6, 1, 2, 1034])
    assert [f.n_rows for f in part.files if f.n_rows] == [2, 2, 1]
    assert part.files[4].row_offset == 2
    assert list(part.labels) == list(release.labels[indices])


def test_load_dataset_chooses_release(release_root: Path, tmp_path: Path):
    dataset = load_dataset(release_root / "WiFI_and_MQTT" / "attacks" / "csv" / "train", cache_dir=tmp_path)
    assert len(dataset) == 12_773 + 5_130 + 740 + 2_173


def test_unseen_class_case_loads(cases_dir: Path, tmp_path: Path):
    dataset = load_release(cases_dir / "C05_unseen_class", cache_dir=tmp_path)
    sides = sorted((f.class_name, f.side, f.n_rows) for f in dataset.files)
    assert sides == [
        ("ARP_Spoofing", "test", 10),
        ("Benign", "test", 10),
        ("Benign", "train", 40),
        ("Recon-Ping_Sweep", "test", 10),
        ("Recon-Ping_Sweep", "train", 40),
    ]


# --- cache ------------------------------------------------------------------------------------------------


def test_cache_hit_equals_first_load(release_root: Path, release: data.Dataset, tmp_path: Path, monkeypatch):
    first = load_release(release_root, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.parquet"))) == 14

    def fail(*args, **kwargs):
        raise AssertionError("CSV parsed despite a cache entry")

    monkeypatch.setattr(data, "_read_csv_file", fail)
    cached = load_release(release_root, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.X, first.X)
    np.testing.assert_array_equal(cached.labels, first.labels)
    np.testing.assert_array_equal(cached.row_hash, first.row_hash)
    np.testing.assert_array_equal(cached.row_number, first.row_number)
    np.testing.assert_array_equal(cached.X, release.X)


def test_cache_misses_after_file_change(cases_dir: Path, tmp_path: Path):
    root = tmp_path / "release"
    shutil.copytree(cases_dir / "C05_unseen_class", root)
    cache = tmp_path / "cache"
    load_release(root, cache_dir=cache)
    changed = root / "WiFI_and_MQTT" / "attacks" / "csv" / "test" / "Benign_test.pcap.csv"
    lines = changed.read_text().splitlines(keepends=True)
    changed.write_text("".join(lines[:6]))
    os.utime(changed, ns=(1, 1))
    reloaded = load_release(root, cache_dir=cache)
    assert {(f.class_name, f.side): f.n_rows for f in reloaded.files}[("Benign", "test")] == 5


def test_cache_dir_from_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HCLR_IDS_CACHE", str(tmp_path))
    assert data.default_cache_dir() == tmp_path


def test_load_without_cache(cases_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HCLR_IDS_CACHE", str(tmp_path))
    dataset = load_release(cases_dir / "C05_unseen_class", cache=False)
    assert len(dataset) == 110
    assert list(tmp_path.iterdir()) == []


# --- field cases ------------------------------------------------------------------------------------------


def test_infinity_strings_parse_as_inf(cases_dir: Path):
    X, _, _ = read_features(cases_dir / "C01_infinity_strings.csv")
    rate, srate = X[:, column("Rate")], X[:, column("Srate")]
    assert np.isposinf(rate).sum() == 2
    assert np.isneginf(rate).sum() == 1
    assert np.isinf(rate).sum() == 3
    assert np.isposinf(srate).sum() == 2
    assert rate[3] == -np.inf
    assert np.isinf(X).sum() == 5
    assert not np.isnan(X).any()


def test_infinity_spellings_any_case(ping_sweep_rows: list[list[str]], tmp_path: Path):
    spellings = ["INF", "-INFINITY", "+Infinity", "+inf", "-inf", "Inf"]
    rows = [ping_sweep_rows[0]] + [list(row) for row in ping_sweep_rows[1:7]]
    for row, spelling in zip(rows[1:], spellings):
        row[column("Rate")] = spelling
    X, _, _ = read_features(write_csv(tmp_path / "spellings.csv", rows))
    np.testing.assert_array_equal(X[:, column("Rate")], [np.inf, -np.inf, np.inf, np.inf, -np.inf, np.inf])


def test_missing_spellings_are_nan(ping_sweep_rows: list[list[str]], tmp_path: Path):
    spellings = ["", "NaN", "nan", "N/A", "NA", "null", "NULL", " n/a "]
    rows = [ping_sweep_rows[0]] + [list(row) for row in ping_sweep_rows[1:9]]
    for row, spelling in zip(rows[1:], spellings):
        row[column("Std")] = spelling
    X, _, _ = read_features(write_csv(tmp_path / "missing.csv", rows))
    assert np.isnan(X[:, column("Std")]).all()
    assert np.isnan(X).sum() == 8


def test_missing_cells_case(cases_dir: Path):
    X, _, row_numbers = read_features(cases_dir / "C06_missing_cells.csv")
    np.testing.assert_array_equal(np.isnan(X).sum(axis=1), [0, 1, 1, 10, 45, 9, 1, 0])
    assert np.isnan(X[1, column("Rate")])
    assert np.isnan(X[2, column("Std")])
    assert np.isnan(X[6, column("Header_Length")])
    np.testing.assert_array_equal(row_numbers, np.arange(1, 9))


def test_header_spaces_stripped_with_warning(cases_dir: Path, tmp_path: Path, caplog):
    source = cases_dir / "C02_header_spaces.csv"
    with caplog.at_level(logging.WARNING, logger="hclr_ids.data"):
        X, names, _ = read_features(source)
    assert names == list(FEATURE_COLUMNS)
    assert "'Tot sum '" in caplog.text
    assert "' Protocol Type'" in caplog.text
    assert "'Duration'" not in caplog.text
    lines = source.read_text().splitlines(keepends=True)
    clean = tmp_path / "clean.csv"
    clean.write_text(",".join(FEATURE_COLUMNS) + "\n" + "".join(lines[1:]))
    np.testing.assert_array_equal(X, read_features(clean)[0])


# --- bad input --------------------------------------------------------------------------------------------


def test_non_numeric_cell_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    rows = [list(row) for row in ping_sweep_rows[:6]]
    rows[3][column("Rate")] = "abc"
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(ValueError) as error:
        read_features(path)
    message = str(error.value)
    assert str(path) in message
    assert "row 3 (line 4)" in message
    assert "'Rate'" in message
    assert "'abc'" in message


def test_missing_column_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    rows = [row[:-1] for row in ping_sweep_rows[:4]]
    path = write_csv(tmp_path / "short_header.csv", rows)
    with pytest.raises(ValueError, match=r"missing required columns \['Weight'\]") as error:
        read_features(path)
    assert str(path) in str(error.value)


def test_extra_column_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    rows = [ping_sweep_rows[0] + ["Flow ID"]] + [row + ["7"] for row in ping_sweep_rows[1:4]]
    with pytest.raises(ValueError, match=r"unexpected columns \['Flow ID'\]"):
        read_features(write_csv(tmp_path / "extra.csv", rows))


def test_duplicate_column_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    rows = [ping_sweep_rows[0] + ["Rate"]] + [row + ["7"] for row in ping_sweep_rows[1:4]]
    with pytest.raises(ValueError, match=r"\['Rate'\] appear more than once"):
        read_features(write_csv(tmp_path / "twice.csv", rows))


def test_header_differs_between_files(ping_sweep_rows: list[list[str]], tmp_path: Path):
    write_csv(tmp_path / "a.csv", ping_sweep_rows[:4])
    swapped = [[row[1], row[0], *row[2:]] for row in ping_sweep_rows[:4]]
    write_csv(tmp_path / "b.csv", swapped)
    with pytest.raises(ValueError, match="header differs from .*a.csv: column 1 is 'Protocol Type' here"):
        read_features(tmp_path)


def test_empty_file_error(tmp_path: Path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(ValueError, match="empty.csv: file is empty"):
        read_features(path)


def test_header_only_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    path = write_csv(tmp_path / "header.csv", ping_sweep_rows[:1])
    with pytest.raises(ValueError, match="header.csv: file has a header but no data rows"):
        read_features(path)


def test_short_row_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    rows = [list(row) for row in ping_sweep_rows[:5]]
    rows[2] = rows[2][:30]
    with pytest.raises(ValueError, match=r"row 2 \(line 3\) has 30 fields, expected 45"):
        read_features(write_csv(tmp_path / "short.csv", rows))


def test_long_row_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    rows = [list(row) for row in ping_sweep_rows[:5]]
    rows[4] = rows[4] + ["1.0"]
    with pytest.raises(ValueError, match=r"row 4 \(line 5\) has 46 fields, expected 45"):
        read_features(write_csv(tmp_path / "long.csv", rows))


def test_blank_line_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    path = write_csv(tmp_path / "blank.csv", ping_sweep_rows[:4])
    path.write_text(path.read_text() + "\n")
    with pytest.raises(ValueError, match=r"row 4 \(line 5\) has 1 fields"):
        read_features(path)


# --- labelled tables and the 39-column layout ----------------------------------------------------------


def labelled_rows(ping_sweep_rows: list[list[str]], labels: list[str]) -> list[list[str]]:
    return [ping_sweep_rows[0] + ["label"]] + [
        row + [label] for row, label in zip(ping_sweep_rows[1:], labels)
    ]


def test_table_labels_from_column(ping_sweep_rows: list[list[str]], tmp_path: Path):
    labels = ["benign", "scan", "benign", "flood"]
    dataset = load_table(write_csv(tmp_path / "t.csv", labelled_rows(ping_sweep_rows, labels)), label_column="label")
    assert list(dataset.labels) == labels
    assert dataset.label_source == "label"
    assert list(dataset.targets("multiclass")) == labels
    assert list(dataset.targets("binary")) == ["Benign", "Attack", "Benign", "Attack"]
    assert dataset.files[0].class_name is None
    assert dataset.files[0].side is None


def test_table_unknown_labels_have_no_category(ping_sweep_rows: list[list[str]], tmp_path: Path):
    dataset = load_table(write_csv(tmp_path / "t.csv", labelled_rows(ping_sweep_rows, ["scan"] * 3)), label_column="label")
    with pytest.raises(ValueError, match="label 'scan' .* has no 'category' label"):
        dataset.targets("category")


def test_table_release_labels_map_to_categories(ping_sweep_rows: list[list[str]], tmp_path: Path):
    labels = ["Recon-Ping_Sweep", "Benign", "MQTT-Malformed_Data"]
    path = write_csv(tmp_path / "t.csv", labelled_rows(ping_sweep_rows, labels))
    dataset = load_dataset(path, label_column="label")
    assert list(dataset.targets("category")) == ["Recon", "Benign", "MQTT"]


def test_table_empty_label_error(ping_sweep_rows: list[list[str]], tmp_path: Path):
    path = write_csv(tmp_path / "t.csv", labelled_rows(ping_sweep_rows, ["scan", "", "scan"]))
    with pytest.raises(ValueError, match="row 2, column 'label': label is empty"):
        load_table(path, label_column="label")


def test_table_label_column_not_found(ping_sweep_rows: list[list[str]], tmp_path: Path):
    path = write_csv(tmp_path / "t.csv", labelled_rows(ping_sweep_rows, ["scan"] * 3))
    with pytest.raises(ValueError, match="label column 'Label' not found"):
        load_table(path, label_column="Label")


def test_table_with_constant_class(cases_dir: Path):
    dataset = load_table(cases_dir / "C06_missing_cells.csv", label_column=None, class_name="Benign")
    assert len(dataset) == 8
    assert set(dataset.targets("binary")) == {"Benign"}


def test_parquet_table_equals_csv(ping_sweep_rows: list[list[str]], tmp_path: Path):
    labels = ["Recon-Ping_Sweep"] * 185
    csv_path = write_csv(tmp_path / "t.csv", labelled_rows(ping_sweep_rows, labels))
    pl.read_csv(csv_path).write_parquet(tmp_path / "t.parquet")
    from_csv = load_table(csv_path, label_column="label")
    from_parquet = load_table(tmp_path / "t.parquet", label_column="label")
    np.testing.assert_array_equal(from_parquet.X, from_csv.X)
    np.testing.assert_array_equal(from_parquet.row_hash, from_csv.row_hash)


def test_read_features_ignores_label(ping_sweep_rows: list[list[str]], tmp_path: Path):
    path = write_csv(tmp_path / "t.csv", labelled_rows(ping_sweep_rows, ["a"] * 10))
    X, names, row_numbers = read_features(path)
    assert X.shape == (10, 45)
    np.testing.assert_array_equal(row_numbers, np.arange(1, 11))
    renamed = write_csv(tmp_path / "c.csv", [["Class" if n == "label" else n for n in r] for r in read_csv(path)])
    assert read_features(renamed, label_column="Class")[0].shape == (10, 45)


def test_read_features_sources(ping_sweep_rows: list[list[str]], tmp_path: Path):
    write_csv(tmp_path / "a.csv", ping_sweep_rows[:4])
    write_csv(tmp_path / "b.csv", ping_sweep_rows[:3])
    X, _, row_numbers, sources = read_features(tmp_path, with_sources=True)
    assert X.shape == (5, 45)
    np.testing.assert_array_equal(row_numbers, [1, 2, 3, 1, 2])
    assert [Path(source).name for source in sources] == ["a.csv"] * 3 + ["b.csv"] * 2


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_layout39_loads_with_derived_columns(ping_sweep_rows: list[list[str]], tmp_path: Path, caplog):
    header = ping_sweep_rows[0]
    keep = [i for i, name in enumerate(header) if name not in LAYOUT39_MISSING]
    rows = [["Time_To_Live" if header[i] == "Duration" else header[i] for i in keep]]
    rows += [[row[i] for i in keep] for row in ping_sweep_rows[1:]]
    path = write_csv(tmp_path / "layout39.csv", rows)
    with caplog.at_level(logging.WARNING, logger="hclr_ids.data"):
        X, names, _ = read_features(path)
    assert len(rows[0]) == 39
    assert "39-column CIC layout" in caplog.text
    original, _, _ = read_features(write_csv(tmp_path / "full.csv", ping_sweep_rows))
    kept = [column(name) for name in FEATURE_COLUMNS if name not in LAYOUT39_MISSING]
    np.testing.assert_array_equal(X[:, kept], original[:, kept])
    np.testing.assert_array_equal(X[:, column("Srate")], X[:, column("Rate")])
    assert (X[:, column("Drate")] == 0).all()
    for name in ("Magnitue", "Radius", "Covariance", "Weight"):
        assert np.isnan(X[:, column(name)]).all()
