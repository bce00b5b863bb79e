"""Supervised pre-training of the encoder with a softmax head, and batched inference with it."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from hclr_ids.config import EncoderConfig
from hclr_ids.networks import EncoderClassifier

logger = logging.getLogger(__name__)

History = dict[str, list[float]]
ProgressCallback = Callable[[int, dict[str, float]], None]
"""Called after each epoch with the 1-based epoch number and that epoch's metrics."""


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(y: np.ndarray, n_classes: int, weighting: str) -> np.ndarray:
    """Return cross-entropy weights of shape (n_classes,) from the label counts of ``y``.

    ``balanced`` gives ``n / (k * count)`` with ``k`` the number of classes present, ``sqrt`` its square root,
    ``none`` ones. A class absent from ``y`` gets weight 0.
    """
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if weighting == "none":
        return np.ones(n_classes, dtype=np.float32)
    if weighting not in ("balanced", "sqrt"):
        raise ValueError(f"unknown class_weighting {weighting!r}; expected 'balanced', 'sqrt' or 'none'")
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    if weighting == "sqrt":
        weights = np.sqrt(weights)
    return weights.astype(np.float32)


def _check_xy(x: np.ndarray, y: np.ndarray, n_classes: int, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"X_{name} must have shape (n_samples, n_features), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y_{name} must have shape ({x.shape[0]},) to match X_{name}, got {y.shape}")
    if len(y) == 0:
        raise ValueError(f"X_{name} has no rows")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"y_{name} contains labels in [{y.min()}, {y.max()}] but n_classes is {n_classes}; "
            "encode labels as integers 0..n_classes-1"
        )
    if not np.isfinite(x).all():
        row, column = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(
            f"X_{name} row {row}, column {column} is {x[row, column]}; impute and scale the features first"
        )


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the labels that occur in ``y_true`` or ``y_pred``."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def _evaluate(
    model: EncoderClassifier, x: torch.Tensor, y: np.ndarray, loss_fn: nn.Module, batch_size: int
) -> dict[str, float]:
    logits = _logits(model, x, batch_size)
    loss = float(loss_fn(logits, torch.from_numpy(y)))
    predicted = logits.argmax(dim=1).numpy()
    return {
        "loss": loss,
        "macro_f1": _macro_f1(y, predicted),
        "accuracy": float(np.mean(predicted == y)),
    }


@torch.no_grad()
def _logits(model: EncoderClassifier, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    chunks = [model(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(chunks)


MIN_STEPS_PER_EPOCH = 16


def effective_batch_size(n_rows: int, batch_size: int) -> int:
    """Shrink the batch on small training sets so an epoch has at least ``MIN_STEPS_PER_EPOCH`` steps.

    With the default 1024 rows per batch, a few thousand rows give a handful of optimiser steps per epoch and
    the encoder barely trains; 64 rows is the floor.
    """
    return max(1, min(batch_size, max(64, n_rows // MIN_STEPS_PER_EPOCH)))


def train_encoder(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    config: EncoderConfig,
    *,
    seed: int,
    progress: ProgressCallback | None = None,
) -> tuple[EncoderClassifier, History]:
    """Train an :class:`EncoderClassifier` with weighted cross-entropy and early stopping.

    Args:
        X_train: scaled training features, shape (n_train, n_features), float32 in about [0, 1].
        y_train: class indices in ``[0, n_classes)``, shape (n_train,).
        X_val, y_val: the validation split, used only to pick the best epoch and to stop.
        n_classes: number of output classes.
        config: architecture and optimisation settings.
        seed: seeds weight initialisation, dropout and the shuffling order.
        progress: called after each epoch with the epoch number and its metrics.

    Returns:
        The model in eval mode with the weights of the epoch of highest validation macro-F1 (the
        earliest on ties), and the history: per-epoch lists ``train/loss``, ``val/loss``,
        ``val/macro_f1``, ``val/accuracy`` and ``time_s`` (seconds since the start of training).

    Training stops after ``config.patience`` epochs without a better validation macro-F1, after
    ``config.max_epochs`` epochs, or once ``config.time_budget_s`` seconds have passed (when > 0),
    checked after every batch. The PLE bin edges, if any, are fitted on ``X_train``.
    """
    y_train = np.asarray(y_train, dtype=np.int64)
    y_val = np.asarray(y_val, dtype=np.int64)
    _check_xy(X_train, y_train, n_classes, "train")
    _check_xy(X_val, y_val, n_classes, "val")
    if X_val.shape[1] != X_train.shape[1]:
        raise ValueError(f"X_val has {X_val.shape[1]} features but X_train has {X_train.shape[1]}")

    set_seed(seed)
    model = EncoderClassifier(config, X_train.shape[1], n_classes)
    model.encoder.fit_inputs(X_train)

    x_train = torch.from_numpy(np.ascontiguousarray(X_train, dtype=np.float32))
    t_train = torch.from_numpy(y_train)
    x_val = torch.from_numpy(np.ascontiguousarray(X_val, dtype=np.float32))
    weights = torch.from_numpy(class_weights(y_train, n_classes, config.class_weighting))
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss(weight=weights)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batch_size = effective_batch_size(len(x_train), config.batch_size)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    if config.scheduler == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=config.max_epochs * steps_per_epoch
        )
    elif config.scheduler != "none":
        raise ValueError(f"unknown scheduler {config.scheduler!r}; expected 'onecycle' or 'none'")
    shuffler = torch.Generator().manual_seed(seed)

    history: History = {key: [] for key in ("train/loss", "val/loss", "val/macro_f1", "val/accuracy", "time_s")}
    best_f1 = -math.inf
    best_state: dict[str, Any] = copy.deepcopy(model.state_dict())
    best_epoch = 0
    start = time.perf_counter()
    out_of_time = False

    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=shuffler)
        total_loss = 0.0
        seen = 0
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            loss = loss_fn(model(x_train[batch]), t_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.item() * len(batch)
            seen += len(batch)
            if config.time_budget_s > 0 and time.perf_counter() - start > config.time_budget_s:
                out_of_time = True
                break

        val = _evaluate(model, x_val, y_val, val_loss_fn, batch_size=4096)
        metrics = {
            "train/loss": total_loss / seen,
            "val/loss": val["loss"],
            "val/macro_f1": val["macro_f1"],
            "val/accuracy": val["accuracy"],
            "time_s": time.perf_counter() - start,
        }
        for key, value in metrics.items():
            history[key].append(value)
        logger.info(
            "epoch %d: train/loss %.4f val/loss %.4f val/macro_f1 %.4f val/accuracy %.4f (%.1f s)",
            epoch, metrics["train/loss"], metrics["val/loss"], metrics["val/macro_f1"],
            metrics["val/accuracy"], metrics["time_s"],
        )
        if progress is not None:
            progress(epoch, metrics)

        if val["macro_f1"] > best_f1:
            best_f1 = val["macro_f1"]
            best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            logger.info("early stop after epoch %d: best val/macro_f1 %.4f at epoch %d", epoch, best_f1, best_epoch)
            break
        if out_of_time:
            logger.warning(
                "encoder training reached its time budget of %.0f s in epoch %d; keeping epoch %d",
                config.time_budget_s, epoch, best_epoch,
            )
            break

    model.load_state_dict(best_state)
    model.eval()
    return model, history


def _as_tensor(x: np.ndarray, n_features: int) -> torch.Tensor:
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"expected features of shape (n_samples, {n_features}), got {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


@torch.no_grad()
def embed(model: EncoderClassifier, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Return the encoder embeddings of ``X``, float32 of shape (n_samples, embedding_dim), in [-1, 1]."""
    x = _as_tensor(X, model.n_features)
    was_training = model.training
    model.eval()
    chunks = [model.embed(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
    model.train(was_training)
    if not chunks:
        return np.empty((0, model.encoder.embedding_dim), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def predict_proba(model: EncoderClassifier, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Return softmax class probabilities of ``X``, float32 of shape (n_samples, n_classes)."""
    x = _as_tensor(X, model.n_features)
    if len(x) == 0:
        return np.empty((0, model.n_classes), dtype=np.float32)
    return torch.softmax(_logits(model, x, batch_size), dim=1).numpy().astype(np.float32, copy=False)
