"""The HCLR-IDS feature extractor: scaled flow features read as a sequence by a 1D-CNN and an LSTM.

Each flow window is a vector of ``n_features`` values min-max scaled to [0, 1]. The encoder reads it as a
sequence of length ``n_features`` whose channels are either the scalar itself or a piecewise-linear
encoding of it (PLE, Gorishniy et al. 2022, "On Embeddings for Numerical Features in Tabular Deep
Learning") followed by a learned per-feature projection. Conv1d, ReLU and max-pooling turn that sequence
into feature maps, an LSTM reads the pooled maps, and a dense layer ending in tanh gives the embedding
in [-1, 1] that the decision heads use as their state.

Every module here exports to ONNX with a dynamic batch dimension.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from hclr_ids.config import EncoderConfig

logger = logging.getLogger(__name__)

_MIN_BIN_WIDTH = 1e-6


class PiecewiseLinearEncoding(nn.Module):
    """Per-feature piecewise-linear encoding of scalars into ``n_bins`` channels.

    For feature ``j`` with bin edges ``e_0 <= ... <= e_T``, channel ``t`` is
    ``clip((x_j - e_t) / (e_{t+1} - e_t), 0, 1)``, so the channels sum to the fraction of the range below
    ``x_j`` counted in quantile bins. Edges start evenly spaced on [0, 1] and are set from training data by
    :meth:`fit`; they are buffers, so they are saved and loaded with the weights.
    """

    edges: torch.Tensor

    def __init__(self, n_features: int, n_bins: int) -> None:
        super().__init__()
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_features = n_features
        self.n_bins = n_bins
        grid = torch.linspace(0.0, 1.0, n_bins + 1)
        self.register_buffer("edges", grid.repeat(n_features, 1))

    @torch.no_grad()
    def fit(self, x: np.ndarray) -> PiecewiseLinearEncoding:
        """Set the bin edges of every feature to quantiles of ``x``, of shape (n_samples, n_features).

        Tied quantiles (a feature with few distinct values) give zero-width bins, which act as steps.
        """
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"expected training features of shape (n_samples, {self.n_features}), got {x.shape}"
            )
        levels = np.linspace(0.0, 1.0, self.n_bins + 1)
        edges = np.nanquantile(np.asarray(x, dtype=np.float64), levels, axis=0).T
        self.edges.copy_(torch.from_numpy(np.ascontiguousarray(edges, dtype=np.float32)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (batch, n_features) to (batch, n_features, n_bins)."""
        lower = self.edges[:, :-1]
        width = (self.edges[:, 1:] - lower).clamp_min(_MIN_BIN_WIDTH)
        return ((x.unsqueeze(-1) - lower) / width).clamp(0.0, 1.0)


class FeatureEmbedding(nn.Module):
    """Separate linear map of each feature's channels into ``dim`` channels, followed by ReLU.

    Weight of shape (n_features, in_channels, dim): feature ``j`` gets its own projection, so the same
    scaled value means different things in different columns.
    """

    def __init__(self, n_features: int, in_channels: int, dim: int) -> None:
        super().__init__()
        bound = in_channels**-0.5
        self.weight = nn.Parameter(torch.empty(n_features, in_channels, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_features, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (batch, n_features, in_channels) to channels-first (batch, dim, n_features)."""
        return torch.relu(torch.einsum("bfc,fcd->bdf", x, self.weight) + self.bias.t())


class InputEncoding(nn.Module):
    """Turn (batch, n_features) scaled values into a channels-first (batch, channels, n_features) sequence."""

    def __init__(self, config: EncoderConfig, n_features: int) -> None:
        super().__init__()
        self.ple: PiecewiseLinearEncoding | None = None
        self.embedding: FeatureEmbedding | None = None
        channels = 1
        if config.input_encoding == "ple":
            self.ple = PiecewiseLinearEncoding(n_features, config.ple_bins)
            channels = config.ple_bins
        elif config.input_encoding != "scalar":
            raise ValueError(f"unknown input_encoding {config.input_encoding!r}; expected 'scalar' or 'ple'")
        if config.feature_embedding_dim > 0:
            self.embedding = FeatureEmbedding(n_features, channels, config.feature_embedding_dim)
            channels = config.feature_embedding_dim
        self.channels = channels

    def fit(self, x: np.ndarray) -> InputEncoding:
        """Fit the PLE bin edges, if any, on training features of shape (n_samples, n_features)."""
        if self.ple is not None:
            self.ple.fit(x)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = self.ple(x) if self.ple is not None else x.unsqueeze(-1)  # (batch, n_features, channels)
        if self.embedding is not None:
            return self.embedding(sequence)
        return sequence.transpose(1, 2)


def _conv_stack(config: EncoderConfig, in_channels: int) -> nn.Sequential:
    """Conv1d + ReLU blocks along the feature axis, then one max-pooling that divides the length by ``pool_size``."""
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(config.conv_layers):
        layers += [
            nn.Conv1d(channels, config.conv_filters, config.kernel_size, padding=config.kernel_size // 2),
            nn.ReLU(),
        ]
        channels = config.conv_filters
    layers.append(nn.MaxPool1d(kernel_size=config.pool_size, ceil_mode=True))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """CNN, LSTM or CNN-LSTM encoder of one flow window into an embedding in [-1, 1].

    ``forward`` maps (batch, n_features) float32 to (batch, embedding_dim).
    """

    def __init__(self, config: EncoderConfig, n_features: int) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if config.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {config.pool_size}")
        if config.architecture not in ("cnn", "lstm", "cnn-lstm"):
            raise ValueError(
                f"unknown architecture {config.architecture!r}; expected 'cnn', 'lstm' or 'cnn-lstm'"
            )
        self.architecture = config.architecture
        self.n_features = n_features
        self.embedding_dim = config.embedding_dim
        self.inputs = InputEncoding(config, n_features)
        self.conv: nn.Sequential | None = None
        self.lstm: nn.LSTM | None = None

        channels = self.inputs.channels
        length = n_features
        if config.architecture in ("cnn", "cnn-lstm"):
            self.conv = _conv_stack(config, channels)
            channels = config.conv_filters
            length = -(-n_features // config.pool_size)
        if config.architecture in ("lstm", "cnn-lstm"):
            self.lstm = nn.LSTM(
                channels, config.lstm_units, bidirectional=config.bidirectional
            )
            summary = config.lstm_units * (2 if config.bidirectional else 1)
        else:
            summary = channels * length
        self.dropout = nn.Dropout(config.dropout)
        self.project = nn.Linear(summary, config.embedding_dim)

    def fit_inputs(self, x: np.ndarray) -> Encoder:
        """Fit the PLE bin edges, the only input state not learned by gradient descent, on training features."""
        self.inputs.fit(x)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The layout stays channels-first, which Conv1d takes as is and the time-major LSTM after one permute.
        # Each layout change is a Transpose node in ONNX, and they took 20% of onnxruntime's time with 32 filters.
        sequence = self.inputs(x)  # (batch, channels, n_features)
        if self.conv is not None:
            sequence = self.conv(sequence)  # (batch, filters, length)
        if self.lstm is not None:
            _, (hidden, _) = self.lstm(sequence.permute(2, 0, 1))  # hidden: (directions, batch, units)
            summary = hidden[0] if hidden.shape[0] == 1 else torch.cat([hidden[0], hidden[1]], dim=1)
        else:
            summary = sequence.transpose(1, 2).flatten(1)  # (batch, length * filters), position-major
        return torch.tanh(self.project(self.dropout(summary)))


def build_encoder(config: EncoderConfig, n_features: int) -> Encoder:
    """Build the encoder described by ``config`` for inputs of ``n_features`` scaled values."""
    encoder = Encoder(config, n_features)
    n_parameters = sum(p.numel() for p in encoder.parameters())
    logger.info("built %s encoder: %d features, %d parameters", config.architecture, n_features, n_parameters)
    return encoder


class EncoderClassifier(nn.Module):
    """The encoder with a linear softmax head, used for supervised pre-training.

    ``forward`` returns logits of shape (batch, n_classes); ``embed`` returns the encoder's output.
    """

    def __init__(self, config: EncoderConfig, n_features: int, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.encoder = build_encoder(config, n_features)
        self.head = nn.Linear(config.embedding_dim, n_classes)
        self.n_features = n_features
        self.n_classes = n_classes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
