"""Split methods, K-fold, duplicate counts and stratified subsampling on the real subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hclr_ids import data
from hclr_ids.splits import Split, dedup_indices, duplicate_report, kfold_splits, make_split, subsample_stratified


@pytest.fixture(scope="module")
def release(release_root: Path, tmp_path_factory: pytest.TempPathFactory) -> data.Dataset:
    return data.load_release(release_root, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def unseen_class(cases_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> data.Dataset:
    return data.load_release(cases_dir / "C05_unseen_class", cache_dir=tmp_path_factory.mktemp("cache"))


def rounded(value: float) -> int:
    return int(np.floor(value + 0.5))


def rows_of(dataset: data.Dataset, class_name: str, side: str) -> np.ndarray:
    index = next(i for i, f in enumerate(dataset.files) if f.class_name == class_name and f.side == side)
    return np.flatnonzero(dataset.file_index == index)


def assert_partition(split: Split, n_rows: int) -> None:
    combined = np.concatenate([split.train, split.val, split.test])
    assert len(combined) == n_rows
    np.testing.assert_array_equal(np.sort(combined), np.arange(n_rows))


# --- contiguous -------------------------------------------------------------------------------------------


def test_contiguous_cuts_each_file_in_order(release: data.Dataset):
    split = make_split(release, "contiguous", task="multiclass")
    for index, source in enumerate(release.files):
        n = source.n_rows
        n_test, n_val = rounded(n * 0.2), rounded(n * 0.1)
        n_train = n - n_test - n_val
        for part, first, last in ((split.train, 1, n_train), (split.val, n_train + 1, n_train + n_val), (split.test, n_train + n_val + 1, n)):
            numbers = release.row_number[part[release.file_index[part] == index]]
            np.testing.assert_array_equal(numbers, np.arange(first, last + 1))


def test_contiguous_is_a_partition(release: data.Dataset):
    assert_partition(make_split(release, "contiguous", task="multiclass"), len(release))


def test_contiguous_cuts_labels_within_table(tmp_path: Path, release_csv_dir: Path):
    lines = (release_csv_dir / "test" / "Recon-Ping_Sweep_test.pcap.csv").read_text().splitlines()
    labels = ["a"] * 50 + ["b"] * 50
    table = tmp_path / "t.csv"
    table.write_text("\n".join([lines[0] + ",label"] + [f"{line},{label}" for line, label in zip(lines[1:], labels)]) + "\n")
    dataset = data.load_table(table, label_column="label")
    split = make_split(dataset, "contiguous", task="multiclass")
    np.testing.assert_array_equal(split.test, np.r_[40:50, 90:100])
    np.testing.assert_array_equal(split.val, np.r_[35:40, 85:90])


# --- stratified -------------------------------------------------------------------------------------------


def test_stratified_exact_per_class(release: data.Dataset):
    split = make_split(release, "stratified", task="multiclass", seed=3)
    targets = release.targets("multiclass")
    for class_name in np.unique(targets):
        n = int((targets == class_name).sum())
        assert (targets[split.test] == class_name).sum() == rounded(n * 0.2)
        assert (targets[split.val] == class_name).sum() == rounded(n * 0.1)
    assert_partition(split, len(release))


def test_stratified_same_seed_same_split(release: data.Dataset):
    first = make_split(release, "stratified", task="category", seed=1)
    again = make_split(release, "stratified", task="category", seed=1)
    other = make_split(release, "stratified", task="category", seed=2)
    np.testing.assert_array_equal(first.test, again.test)
    assert not np.array_equal(first.test, other.test)


def test_stratified_tiny_class_stays_in_train(unseen_class: data.Dataset, caplog):
    rows = np.r_[rows_of(unseen_class, "ARP_Spoofing", "test")[:2], rows_of(unseen_class, "Benign", "train")]
    split = make_split(unseen_class.subset(rows), "stratified", task="multiclass")
    assert split.train[:2].tolist() == [0, 1]
    assert "ARP_Spoofing" in caplog.text


def test_fractions_leaving_no_train_rejected(release: data.Dataset):
    with pytest.raises(ValueError, match="leaves no training rows"):
        make_split(release, "stratified", task="binary", val_fraction=0.5, test_fraction=0.5)


def test_unknown_method_rejected(release: data.Dataset):
    with pytest.raises(ValueError, match="unknown split method 'random'"):
        make_split(release, "random", task="binary")


# --- official ---------------------------------------------------------------------------------------------


def test_official_names_unseen_class(unseen_class: data.Dataset):
    with pytest.raises(ValueError) as error:
        make_split(unseen_class, "official", task="multiclass")
    message = str(error.value)
    assert "ARP_Spoofing (ARP_Spoofing_test.pcap.csv)" in message
    assert "--split contiguous" in message
    assert "Benign" not in message


def test_official_binary_uses_release_files(unseen_class: data.Dataset):
    split = make_split(unseen_class, "official", task="binary")
    sides = np.array([f.side for f in unseen_class.files])[unseen_class.file_index]
    assert (sides[np.r_[split.train, split.val]] == "train").all()
    assert (sides[split.test] == "test").all()
    assert (len(split.train), len(split.val), len(split.test)) == (72, 8, 30)
    assert (unseen_class.labels[split.val] == "Benign").sum() == 4


def test_official_on_subset_lists_six_classes(release: data.Dataset):
    with pytest.raises(ValueError, match="6 multiclass labels have test rows but no training rows"):
        make_split(release, "official", task="multiclass")


def test_official_needs_release_layout(cases_dir: Path):
    dataset = data.load_table(cases_dir / "C08_constant_columns.csv", label_column=None, class_name="Recon-Ping_Sweep")
    with pytest.raises(ValueError, match="needs the release layout"):
        make_split(dataset, "official", task="binary")


# --- k-fold -----------------------------------------------------------------------------------------------


def test_kfold_tests_cover_rows_once(release: data.Dataset):
    folds = kfold_splits(release, 5, task="multiclass")
    assert [fold.fold for fold in folds] == [0, 1, 2, 3, 4]
    tests = np.concatenate([fold.test for fold in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(len(release)))
    for fold in folds:
        assert_partition(fold, len(release))


def test_kfold_is_stratified(release: data.Dataset):
    targets = release.targets("multiclass")
    for fold in kfold_splits(release, 4, task="multiclass", val_fraction=0.1):
        for class_name in np.unique(targets):
            n = int((targets == class_name).sum())
            n_test = int((targets[fold.test] == class_name).sum())
            assert abs(n_test - n / 4) <= 1
            n_train_val = n - n_test
            assert (targets[fold.val] == class_name).sum() == rounded(n_train_val * 0.1)


# --- duplicates -------------------------------------------------------------------------------------------


def test_duplicates_in_os_scan_file(release: data.Dataset):
    rows = rows_of(release, "Recon-OS_Scan", "test")
    report = duplicate_report(release, Split(train=rows, val=rows[:0], test=rows[:0], method="given"))
    assert report["train"] == {"rows": 3_834, "duplicates": 339}


def test_duplicates_in_vulscan_files(release: data.Dataset):
    vulscan = release.subset(np.flatnonzero(release.labels == "Recon-VulScan"))
    split = make_split(vulscan, "official", task="multiclass", val_fraction=0.0)
    report = duplicate_report(vulscan, split)
    assert report["train"]["duplicates"] == 44
    assert report["test"]["duplicates"] == 23


def test_test_rows_found_in_train(release: data.Dataset, release_csv_dir: Path):
    rows = rows_of(release, "MQTT-Malformed_Data", "test")
    split = Split(train=rows[:1000], val=rows[:0], test=rows[600:1400], method="given")
    lines = (release_csv_dir / "test" / "MQTT-Malformed_Data_test.pcap.csv").read_text().splitlines()[1:]
    train_lines = set(lines[:1000])
    expected = sum(line in train_lines for line in lines[600:1400])
    assert duplicate_report(release, split)["test_in_train"] == expected
    assert expected >= 400


def test_dedup_keeps_first_occurrences(release: data.Dataset, release_csv_dir: Path):
    rows = rows_of(release, "Recon-OS_Scan", "test")
    subset = release.subset(rows)
    lines = (release_csv_dir / "test" / "Recon-OS_Scan_test.pcap.csv").read_text().splitlines()[1:]
    seen: set[str] = set()
    expected = []
    for index, line in enumerate(lines):
        if line not in seen:
            seen.add(line)
            expected.append(index)
    np.testing.assert_array_equal(dedup_indices(subset), expected)


def test_dedup_without_row_hash_uses_values():
    X = np.array([[1, 2], [1, 2], [1, 3], [1, 2], [np.nan, 0], [np.nan, 0]], dtype=np.float32)
    labels = np.array(["a", "a", "a", "b", "a", "a"], dtype=object)
    source = data.SourceFile(Path("made.csv"), None, None, 6, 0)
    dataset = data.Dataset(X, ["p", "q"], labels, np.zeros(6, np.int32), np.arange(1, 7), [source], "label")
    np.testing.assert_array_equal(dedup_indices(dataset), [0, 2, 3, 4])


# --- subsampling ------------------------------------------------------------------------------------------


def test_subsample_keeps_shares():
    labels = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    indices = np.arange(100, 200)
    kept = subsample_stratified(indices, labels, 10, seed=0)
    chosen = labels[kept - 100]
    assert [(chosen == name).sum() for name in "abc"] == [6, 3, 1]
    assert np.all(np.diff(kept) > 0)


def test_subsample_keeps_rare_labels():
    labels = np.array(["a"] * 97 + ["b"] * 2 + ["c"])
    kept = subsample_stratified(np.arange(100), labels, 10, seed=0)
    assert [(labels[kept] == name).sum() for name in "abc"] == [8, 1, 1]


def test_subsample_seeded():
    labels = np.array(["a"] * 50 + ["b"] * 50)
    first = subsample_stratified(np.arange(100), labels, 20, seed=5)
    np.testing.assert_array_equal(first, subsample_stratified(np.arange(100), labels, 20, seed=5))
    assert not np.array_equal(first, subsample_stratified(np.arange(100), labels, 20, seed=6))


def test_subsample_no_limit_returns_all():
    labels = np.array(["a", "b", "a"])
    np.testing.assert_array_equal(subsample_stratified(np.array([4, 9, 7]), labels, 0, seed=0), [4, 9, 7])
    np.testing.assert_array_equal(subsample_stratified(np.array([4, 9, 7]), labels, 3, seed=0), [4, 9, 7])
