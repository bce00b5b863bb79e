"""A small trained model with the scoring interface of ``ModelBundle``, built from real rows.

It chains the real fitted ``Preprocessor``, a real CNN-LSTM ``Encoder`` and a linear softmax head, trained for
40 steps on 300 rows per class of the CICIoMT2024 subset. Detection, serving and ONNX export so run through the
same kinds of layers as a trained bundle; its verdicts are weak and only compared with its own probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hclr_ids import data
from hclr_ids.config import EncoderConfig, PreprocessConfig
from hclr_ids.networks import build_encoder
from hclr_ids.preprocessing import Preprocessor

TRAIN_ROWS_PER_CLASS = 300
TRAIN_STEPS = 40


class StandInModule(nn.Module):
    """Raw release columns (n, 45) -> class probabilities (n, n_classes)."""

    def __init__(self, preprocess: nn.Module, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.encoder = encoder
        self.head = nn.Linear(encoder.embedding_dim, n_classes)

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.preprocess(raw)))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(raw), dim=1)


class StandInBundle:
    """The attributes and methods of ``ModelBundle`` that scoring uses."""

    def __init__(self, module: StandInModule, classes: list[str], input_features: list[str]) -> None:
        self._module = module.eval()
        self.classes = classes
        self.input_features = input_features
        self.task = "multiclass"
        self.version = "multiclass-standin-1"
        self.path: Path | None = None

    def inference_module(self) -> nn.Module:
        return self._module

    def predict_proba(self, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        out = np.empty((len(X), len(self.classes)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(X), batch_size):
                out[start:start + batch_size] = self._module(torch.from_numpy(X[start:start + batch_size])).numpy()
        return out


def build_standin(release_root: Path, seed: int = 0) -> tuple[StandInBundle, data.Dataset]:
    """Train the stand-in on a per-class sample of the release subset; return it and the dataset."""
    torch.manual_seed(seed)
    dataset = data.load_release(release_root, cache=False)
    rng = np.random.default_rng(seed)
    names, codes = dataset.encode_labels()
    picked = np.concatenate([
        rng.choice(np.flatnonzero(codes == k), size=min(TRAIN_ROWS_PER_CLASS, int((codes == k).sum())), replace=False)
        for k in range(len(names))
    ])
    X = dataset.X[picked]
    y = torch.as_tensor(codes[picked], dtype=torch.int64)

    preprocessor = Preprocessor(PreprocessConfig()).fit(X, dataset.feature_names)
    encoder_config = EncoderConfig(conv_filters=16, lstm_units=16, embedding_dim=16, dropout=0.0)
    encoder = build_encoder(encoder_config, len(preprocessor.output_features_))
    module = StandInModule(preprocessor.torch_module(), encoder, len(names))

    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-2)
    raw = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    for _ in range(TRAIN_STEPS):
        batch = torch.randint(0, len(raw), (128,))
        loss = nn.functional.cross_entropy(module.logits(raw[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return StandInBundle(module, [str(n) for n in names], list(dataset.feature_names)), dataset


_CACHE: dict[Path, tuple[StandInBundle, data.Dataset, Path]] = {}


def standin_with_onnx(release_root: Path) -> tuple[StandInBundle, data.Dataset, Path]:
    """Return the stand-in, the dataset and a folder holding its ``model.onnx``, built once per process."""
    import tempfile

    from hclr_ids.export import ONNX_FILE_NAME, export_onnx

    if release_root not in _CACHE:
        bundle, dataset = build_standin(release_root)
        folder = Path(tempfile.mkdtemp(prefix="hclr-ids-standin-"))
        export_onnx(bundle, folder / ONNX_FILE_NAME)
        _CACHE[release_root] = (bundle, dataset, folder)
    return _CACHE[release_root]
