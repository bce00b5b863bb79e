"""Metrics against hand-computed values, including labels absent from training."""

from __future__ import annotations

import numpy as np
import pytest

from hclr_ids.evaluation import compute_metrics, format_per_class_table, roc_auc_macro


def test_metrics_three_classes_hand_computed():
    # true:  A A A B B C ; pred: A A B B C C
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    metrics = compute_metrics(y_true, y_pred, None, ["A", "B", "C"])
    # A: P 2/2, R 2/3; B: P 1/2, R 1/2; C: P 1/2, R 1/1
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["A"]["precision"] == pytest.approx(1.0)
    assert metrics["per_class"]["A"]["recall"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["C"]["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert metrics["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert metrics["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    f1 = [0.8, 0.5, 2 / 3]
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1))
    assert metrics["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_unseen_label_counts_in_macro_average():
    # Label "X" occurs only in y_true (never predicted): recall 0, and it joins the macro average.
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 0])
    metrics = compute_metrics(y_true, y_pred, None, ["A", "B", "X"])
    assert metrics["per_class"]["X"]["recall"] == 0.0
    assert metrics["per_class"]["X"]["support"] == 1
    assert metrics["macro_recall"] == pytest.approx((1 + 1 + 0) / 3)
    assert metrics["labels"] == ["A", "B", "X"]
    assert len(metrics["confusion_matrix"]) == 3


def test_label_absent_everywhere_excluded_from_macro():
    y_true = np.array([0, 1])
    y_pred = np.array([0, 1])
    metrics = compute_metrics(y_true, y_pred, None, ["A", "B", "C"])
    assert metrics["macro_f1"] == pytest.approx(1.0)


def test_roc_auc_binary_and_multiclass():
    y_true = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.35, 0.65], [0.2, 0.8]])
    assert roc_auc_macro(y_true, proba, ["Benign", "Attack"]) == pytest.approx(1.0)
    proba_bad = np.array([[0.1, 0.9], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    # Positives score 0.35 and 0.8, negatives 0.9 and 0.4: only the pair (0.8, 0.4) is ordered correctly.
    assert roc_auc_macro(y_true, proba_bad, ["Benign", "Attack"]) == pytest.approx(0.25)
    y3 = np.array([0, 1, 2])
    assert roc_auc_macro(y3, np.eye(3), ["A", "B", "C"]) == pytest.approx(1.0)


def test_roc_auc_none_when_single_class():
    assert roc_auc_macro(np.array([1, 1]), np.array([[0.2, 0.8], [0.3, 0.7]]), ["Benign", "Attack"]) is None


def test_per_class_table_has_summary_rows():
    metrics = compute_metrics(np.array([0, 1]), np.array([0, 1]), None, ["A", "B"])
    table = format_per_class_table(metrics)
    assert "| macro average |" in table
    assert "| weighted average |" in table


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.array([0, 1]), np.array([0]), None, ["A", "B"])
