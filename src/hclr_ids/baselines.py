"""Strong tabular baselines trained on the same split and features as HCLR-IDS."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BASELINE_NAMES = ("random-forest", "lightgbm")


@dataclass
class BaselineResult:
    name: str
    proba: np.ndarray
    """Test-set class probabilities, shape (n_samples, n_classes)."""
    fit_seconds: float
    predict_seconds: float
    params: dict[str, Any]


def make_baseline(name: str, *, n_classes: int, seed: int, threads: int = 2) -> Any:
    """Build an unfitted estimator with the settings used for the published reference figures.

    RandomForest: scikit-learn defaults with 100 trees. LightGBM: 200 trees, other settings default.
    """
    if name == "random-forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=100, n_jobs=threads, random_state=seed)
    if name == "lightgbm":
        import lightgbm

        objective = "binary" if n_classes == 2 else "multiclass"
        return lightgbm.LGBMClassifier(
            n_estimators=200, objective=objective, random_state=seed, n_jobs=threads, verbose=-1
        )
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINE_NAMES)}")


def fit_baseline(
    name: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    *,
    n_classes: int,
    seed: int,
    threads: int = 2,
) -> BaselineResult:
    """Fit one baseline on the training rows and return its probabilities on the test rows.

    Args:
        X_train: preprocessed training features, shape (n_train, n_features).
        y_train: class indices in ``range(n_classes)``, shape (n_train,).
        X_test: preprocessed test features, shape (n_test, n_features).
    """
    model = make_baseline(name, n_classes=n_classes, seed=seed, threads=threads)
    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    raw = model.predict_proba(X_test)
    predict_seconds = time.perf_counter() - start
    # A class missing from y_train has no probability column: place the known ones by label.
    proba = np.zeros((len(X_test), n_classes), dtype=np.float64)
    proba[:, np.asarray(model.classes_, dtype=np.int64)] = raw
    logger.info("%s: fit %.1f s, predict %.2f s on %d rows", name, fit_seconds, predict_seconds, len(X_test))
    return BaselineResult(name, proba, fit_seconds, predict_seconds, model.get_params())
