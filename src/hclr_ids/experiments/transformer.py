"""A small FT-Transformer (Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular Data")."""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
from torch import nn

from hclr_ids.config import EncoderConfig

logger = logging.getLogger(__name__)


class FTTransformer(nn.Module):
    """Per-feature linear tokens plus a [CLS] token, a Transformer encoder, and a linear head on [CLS].

    ``forward`` maps (batch, n_features) float32 to logits of shape (batch, n_classes).
    """

    def __init__(self, n_features: int, n_classes: int, *, d_token: int = 32, n_layers: int = 2, n_heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.n_features = n_features
        self.weight = nn.Parameter(torch.randn(n_features, d_token) / d_token**0.5)
        self.bias = nn.Parameter(torch.zeros(n_features, d_token))
        self.cls = nn.Parameter(torch.zeros(1, 1, d_token))
        layer = nn.TransformerEncoderLayer(d_token, n_heads, dim_feedforward=2 * d_token, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_token), nn.ReLU(), nn.Linear(d_token, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, :, None] * self.weight + self.bias  # (batch, n_features, d_token)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.encoder(tokens)[:, 0])


def train_ft_transformer(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                         n_classes: int, config: EncoderConfig, *, seed: int) -> FTTransformer:
    """Train with AdamW and class-weighted cross-entropy, keeping the epoch of best validation macro-F1.

    Uses the encoder's ``max_epochs``, ``batch_size``, ``weight_decay``, ``class_weighting`` and
    ``time_budget_s``; the learning rate is fixed at 1e-3, the usual FT-Transformer setting.
    """
    from sklearn.metrics import f1_score

    from hclr_ids.training import class_weights

    torch.manual_seed(seed)
    model = FTTransformer(X_train.shape[1], n_classes)
    x = torch.from_numpy(np.ascontiguousarray(X_train, dtype=np.float32))
    y = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    weights = torch.from_numpy(class_weights(np.asarray(y_train), n_classes, config.class_weighting))
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=config.weight_decay)
    shuffler = torch.Generator().manual_seed(seed)
    best_f1, best_state = -1.0, copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=shuffler)
        for first in range(0, len(order), config.batch_size):
            batch = order[first : first + config.batch_size]
            loss = loss_fn(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if config.time_budget_s > 0 and time.perf_counter() - start > config.time_budget_s:
                break
        f1 = float(f1_score(y_val, predict_proba(model, X_val).argmax(axis=1), average="macro", zero_division=0))
        logger.info("FT-Transformer epoch %d: val/macro_f1 %.4f (%.1f s)", epoch, f1, time.perf_counter() - start)
        if f1 > best_f1:
            best_f1, best_state = f1, copy.deepcopy(model.state_dict())
        if config.time_budget_s > 0 and time.perf_counter() - start > config.time_budget_s:
            break
    model.load_state_dict(best_state)
    return model.eval()


@torch.no_grad()
def predict_proba(model: FTTransformer, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Return softmax probabilities of shape (n_samples, n_classes)."""
    was_training = model.training
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    chunks = [torch.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.empty((0, model.head[-1].out_features), np.float32)
