"""Mutual information estimates and the MI-threshold and MIFS selectors."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import mutual_info_score

from hclr_ids.config import SelectionConfig
from hclr_ids.selection import (
    KeepAllSelector,
    MIFSSelector,
    MutualInfoSelector,
    discretize,
    from_metadata,
    make_selector,
    mutual_information,
    pairwise_mutual_information,
    stratified_sample,
)

LN2 = math.log(2.0)


def column(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


def test_mi_dependent_binary_is_ln2() -> None:
    mi = mutual_information(column([0, 0, 1, 1, 0, 1]), np.array([0, 0, 1, 1, 0, 1]))
    assert mi[0] == pytest.approx(LN2, abs=1e-12)


def test_mi_independent_is_zero() -> None:
    mi = mutual_information(column([0, 0, 1, 1]), np.array(["a", "b", "a", "b"]))
    assert mi[0] == 0.0


def test_mi_three_by_two_table() -> None:
    # Counts (x, y): (0,0)=2, (1,0)=1, (1,1)=1, (2,1)=2; p(x)=1/3, p(y)=1/2, so
    # MI = 2/6 ln(2/6 / (1/3 * 1/2)) * 2 + 1/6 ln(1/6 / (1/6)) * 2 = (2/3) ln 2.
    x = column([0, 0, 1, 1, 2, 2])
    y = np.array([0, 0, 0, 1, 1, 1])
    assert mutual_information(x, y)[0] == pytest.approx(2 / 3 * LN2, abs=1e-12)


def test_mi_constant_column_is_zero() -> None:
    x = np.column_stack([np.full(8, 3.5), np.arange(8)])
    mi = mutual_information(x, np.array([0, 1] * 4))
    assert mi[0] == 0.0


def test_mi_sparse_point_mass_kept_apart() -> None:
    # x is 0 in 99 % of the rows and 1 exactly in the rows of class 1, so MI = H(y).
    y = np.zeros(1000, dtype=np.int64)
    y[:10] = 1
    entropy = -(0.01 * math.log(0.01) + 0.99 * math.log(0.99))
    assert mutual_information(column(y.tolist()), y)[0] == pytest.approx(entropy, abs=1e-12)
    assert mutual_information(column((1 - y).tolist()), y)[0] == pytest.approx(entropy, abs=1e-12)


def test_mi_matches_sklearn_on_codes(release_csv_dir: Path) -> None:
    frames = [pl.read_csv(path) for path in sorted((release_csv_dir / "train").glob("*.pcap.csv"))]
    X = np.vstack([frame.to_numpy() for frame in frames])
    y = np.concatenate([np.full(frame.height, i) for i, frame in enumerate(frames)])

    mi = mutual_information(X, y, sample_size=None)

    codes, _ = discretize(X, 32)
    expected = [mutual_info_score(y, codes[:, j]) for j in range(X.shape[1])]
    np.testing.assert_allclose(mi, expected, rtol=0, atol=1e-12)
    assert mi.max() <= math.log(len(frames))


def test_discretize_equal_frequency() -> None:
    codes, levels = discretize(column(list(range(64))), n_bins=4)
    np.testing.assert_array_equal(np.bincount(codes[:, 0]), [16, 16, 16, 16])
    assert levels.tolist() == [4]


def test_stratified_sample_proportions() -> None:
    labels = np.repeat(["a", "b", "c"], [700, 290, 10])
    rows = stratified_sample(labels, 100, seed=3)
    assert rows.size == 100
    values, counts = np.unique(labels[rows], return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {"a": 70, "b": 29, "c": 1}


def test_stratified_sample_keeps_rare_class() -> None:
    labels = np.repeat([0, 1], [9990, 10])
    rows = stratified_sample(labels, 50, seed=0)
    assert rows.size == 50
    assert (labels[rows] == 1).sum() == 1


def test_stratified_sample_seeded() -> None:
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    np.testing.assert_array_equal(stratified_sample(labels, 64, seed=7), stratified_sample(labels, 64, seed=7))
    assert not np.array_equal(stratified_sample(labels, 64, seed=7), stratified_sample(labels, 64, seed=8))


def test_mi_rejects_nan() -> None:
    X = np.array([[0.0, 1.0], [1.0, np.nan]])
    with pytest.raises(ValueError, match="row 1, column 1"):
        mutual_information(X, np.array([0, 1]))


def mifs_example() -> tuple[np.ndarray, np.ndarray]:
    """Eight rows, eight classes: I(f;C) = H(f), so relevance is ln 2, ln 4 and ln 2.

    f0 is a function of f1 (I(f0; f1) = ln 2); f2 is independent of both.
    """
    y = np.arange(8)
    f0 = [0, 0, 0, 0, 1, 1, 1, 1]
    f1 = [0, 0, 1, 1, 2, 2, 3, 3]
    f2 = [0, 1, 0, 1, 0, 1, 0, 1]
    return np.column_stack([f0, f1, f2]).astype(np.float64), y


def test_pairwise_mi_example() -> None:
    X, _ = mifs_example()
    codes, _ = discretize(X)
    np.testing.assert_allclose(pairwise_mutual_information(codes, 1, [0, 2]), [LN2, 0.0], atol=1e-12)


def test_mifs_order_and_scores() -> None:
    X, y = mifs_example()
    selector = MIFSSelector(k=3, beta=0.5).fit(X, y, ["f0", "f1", "f2"])
    # Step 1: f1 (ln 4). Step 2: f0 scores ln 2 - 0.5 ln 2, f2 scores ln 2 - 0. Step 3: f0.
    assert selector.selection_order_.tolist() == [1, 2, 0]
    np.testing.assert_allclose(selector.greedy_scores_, [2 * LN2, LN2, 0.5 * LN2], atol=1e-12)
    np.testing.assert_allclose(selector.scores_, [LN2, 2 * LN2, LN2], atol=1e-12)
    assert selector.selected_.tolist() == [0, 1, 2]


def test_mifs_min_score_stops() -> None:
    X, y = mifs_example()
    selector = MIFSSelector(k=3, beta=0.5, min_score=0.4).fit(X, y, ["f0", "f1", "f2"])
    assert selector.selection_order_.tolist() == [1, 2]
    assert selector.selected_names_ == ["f1", "f2"]


def test_mifs_k_limits() -> None:
    X, y = mifs_example()
    selector = MIFSSelector(k=1).fit(X, y)
    assert selector.selection_order_.tolist() == [1]
    np.testing.assert_array_equal(selector.transform(X), X[:, [1]])


def test_mi_selector_threshold() -> None:
    X, y = mifs_example()
    selector = MutualInfoSelector(threshold=1.0).fit(X, y, ["f0", "f1", "f2"])
    assert selector.selected_names_ == ["f1"]
    np.testing.assert_array_equal(selector.transform(X), X[:, [1]])


def test_mi_selector_keeps_best_when_none_pass(caplog: pytest.LogCaptureFixture) -> None:
    X, y = mifs_example()
    with caplog.at_level(logging.WARNING, logger="hclr_ids.selection"):
        selector = MutualInfoSelector(threshold=5.0).fit(X, y, ["f0", "f1", "f2"])
    assert selector.selected_names_ == ["f1"]
    assert any("keeping only that one" in record.getMessage() for record in caplog.records)


def test_selector_transform_before_fit_raises() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        MutualInfoSelector().transform(np.zeros((2, 3)))


def test_c08_constant_columns_score_zero(cases_dir: Path) -> None:
    frame = pl.read_csv(cases_dir / "C08_constant_columns.csv")
    X = frame.to_numpy().astype(np.float64)
    constant = np.ptp(X, axis=0) == 0
    assert constant.sum() == 18
    y = np.repeat([0, 1], 15)  # first and second half of the capture

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mi = mutual_information(X, y)
        mifs = MIFSSelector(k=45, beta=0.5).fit(X, y, frame.columns)

    assert np.isfinite(mi).all()
    np.testing.assert_array_equal(mi[constant], 0.0)
    assert (mi[~constant] >= 0).all()
    assert np.isfinite(mifs.greedy_scores_).all()
    np.testing.assert_array_equal(mifs.scores_[constant], 0.0)


def test_make_selector_methods() -> None:
    assert isinstance(make_selector(SelectionConfig(method="none")), KeepAllSelector)
    mi = make_selector(SelectionConfig(method="mi", mi_threshold=0.2), seed=4)
    assert isinstance(mi, MutualInfoSelector)
    assert (mi.threshold, mi.seed) == (0.2, 4)
    mifs = make_selector(SelectionConfig(method="mifs", mifs_k=7, mifs_beta=0.3, mifs_min_score=0.01))
    assert isinstance(mifs, MIFSSelector)
    assert (mifs.k, mifs.beta, mifs.min_score) == (7, 0.3, 0.01)


def test_keep_all_selector() -> None:
    X, y = mifs_example()
    selector = make_selector(SelectionConfig(method="none")).fit(X, y)
    assert selector.selected_.tolist() == [0, 1, 2]


@pytest.mark.parametrize("method", ["none", "mi", "mifs"])
def test_selector_metadata_round_trip(method: str) -> None:
    X, y = mifs_example()
    selector = make_selector(SelectionConfig(method=method, mi_threshold=0.5, mifs_k=2)).fit(X, y, ["a", "b", "c"])

    loaded = from_metadata(json.loads(json.dumps(selector.metadata())))

    assert type(loaded) is type(selector)
    assert loaded.selected_.tolist() == selector.selected_.tolist()
    assert loaded.selected_names_ == selector.selected_names_
    np.testing.assert_array_equal(loaded.transform(X), selector.transform(X))
    if method == "mifs":
        np.testing.assert_array_equal(loaded.greedy_scores_, selector.greedy_scores_)
