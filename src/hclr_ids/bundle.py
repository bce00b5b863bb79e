"""The model bundle: a directory holding everything needed to score raw flow records.

Layout (no pickle anywhere):

- ``manifest.json``: format, package version, task, classes, input and selected features, decision head,
  model version, and the SHA-256 and tensor shapes of every weight file;
- ``preprocessor.json`` + ``preprocessor.safetensors``: the fitted imputation and scaling;
- ``selector.json``: the selected features and their mutual-information scores;
- ``encoder.json`` + ``encoder.safetensors``: the CNN-LSTM feature extractor and its softmax head;
- ``head.json`` + ``head.safetensors``: the reinforcement-learning decision head, when there is one;
- ``config.json``: the full run configuration.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hclr_ids import __version__

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "hclr-ids-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
WEIGHT_FILES = ("preprocessor.safetensors", "encoder.safetensors", "head.safetensors")
JSON_FILES = ("preprocessor.json", "selector.json", "encoder.json", "head.json", "config.json")


class BundleError(ValueError):
    """A model bundle is missing, damaged or inconsistent with its manifest."""


@dataclass
class ModelBundle:
    """A loaded model: raw release columns in, class probabilities out."""

    path: Path
    manifest: dict[str, Any]
    preprocessor: Any
    selected_indices: np.ndarray
    encoder: Any
    head: Any | None

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def input_features(self) -> list[str]:
        """Raw columns that ``predict_proba`` expects, in order."""
        return list(self.manifest["input_features"])

    @property
    def version(self) -> str:
        return str(self.manifest["model_version"])

    def inference_module(self) -> Any:
        """Return one torch module: raw features (n, n_inputs) float32 -> probabilities (n, n_classes)."""
        return InferenceModule(self.preprocessor.torch_module(), self.selected_indices, self.encoder, self.head)

    def predict_proba(self, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Score raw feature rows.

        Args:
            X: raw values of ``input_features``, shape (n_samples, n_inputs); NaN and +-inf are imputed.
        Returns:
            Class probabilities, shape (n_samples, n_classes), float32.
        """
        import torch

        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.input_features):
            raise ValueError(
                f"expected rows of {len(self.input_features)} features ({', '.join(self.input_features)}), "
                f"got an array of shape {X.shape}"
            )
        module = self._module()
        out = np.empty((len(X), len(self.classes)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(X), batch_size):
                chunk = torch.from_numpy(X[start:start + batch_size])
                out[start:start + batch_size] = module(chunk).numpy()
        return out

    def _module(self) -> Any:
        module = getattr(self, "_cached_module", None)
        if module is None:
            module = self.inference_module().eval()
            self._cached_module = module
        return module


def _inference_module_class() -> type:
    import torch
    from torch import nn

    class _InferenceModule(nn.Module):
        """Preprocessing, feature selection, encoder and decision head as one exportable graph."""

        def __init__(self, preprocess: nn.Module, selected: np.ndarray, encoder: nn.Module, head: Any) -> None:
            super().__init__()
            self.preprocess = preprocess
            self.register_buffer("selected", torch.as_tensor(np.asarray(selected, dtype=np.int64)))
            self.encoder = encoder
            self.head = head.torch_module() if head is not None else None

        def forward(self, raw: torch.Tensor) -> torch.Tensor:
            features = torch.index_select(self.preprocess(raw), 1, self.selected)
            if self.head is None:
                return torch.softmax(self.encoder(features), dim=1)
            return self.head(self.encoder.embed(features))

    return _InferenceModule


def InferenceModule(preprocess: Any, selected: np.ndarray, encoder: Any, head: Any) -> Any:  # noqa: N802
    """Build the exportable inference graph (the torch class is defined lazily to keep imports light)."""
    return _inference_module_class()(preprocess, selected, encoder, head)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def save_bundle(
    out_dir: Path,
    *,
    config: dict[str, Any],
    task: str,
    classes: list[str],
    preprocessor: Any,
    selector: Any,
    selected_indices: np.ndarray,
    encoder: Any,
    encoder_metadata: dict[str, Any],
    head: Any | None,
    head_kind: str,
) -> dict[str, Any]:
    """Write a bundle into ``out_dir`` (created if needed) and return its manifest."""
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    out_dir.mkdir(parents=True, exist_ok=True)
    save_numpy({k: np.ascontiguousarray(v) for k, v in preprocessor.state_tensors().items()},
               str(out_dir / "preprocessor.safetensors"))
    _write_json(out_dir / "preprocessor.json", preprocessor.metadata())
    _write_json(out_dir / "selector.json", selector.metadata())
    save_torch({k: v.detach().contiguous() for k, v in encoder.state_dict().items()},
               str(out_dir / "encoder.safetensors"))
    _write_json(out_dir / "encoder.json", encoder_metadata)
    if head is not None:
        save_torch({k: v.detach().contiguous() for k, v in head.state_tensors().items()},
                   str(out_dir / "head.safetensors"))
        _write_json(out_dir / "head.json", head.metadata())
    _write_json(out_dir / "config.json", config)

    files = {name: _sha256(out_dir / name) for name in WEIGHT_FILES + JSON_FILES if (out_dir / name).exists()}
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "package_version": __version__,
        "created": created,
        "model_version": f"{task}-{created.replace(':', '').replace('-', '')[:15]}-{files['encoder.safetensors'][:8]}",
        "task": task,
        "classes": list(classes),
        "input_features": list(preprocessor.input_features_),
        "selected_features": [preprocessor.output_features_[i] for i in selected_indices],
        "selected_indices": [int(i) for i in selected_indices],
        "head": head_kind,
        "files": files,
        "tensor_shapes": _tensor_shapes(out_dir),
    }
    _write_json(out_dir / MANIFEST_NAME, manifest)
    logger.info("saved model bundle %s (%s, %d classes, head %s)", out_dir, task, len(classes), head_kind)
    return manifest


def _tensor_shapes(out_dir: Path) -> dict[str, dict[str, list[int]]]:
    from safetensors import safe_open

    shapes: dict[str, dict[str, list[int]]] = {}
    for name in WEIGHT_FILES:
        path = out_dir / name
        if path.exists():
            with safe_open(str(path), framework="numpy") as handle:
                shapes[name] = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    return shapes


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Read and check a bundle's manifest, raising BundleError with the fix when it is not a bundle."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_NAME
    if not run_dir.is_dir():
        raise BundleError(f"model bundle {run_dir} not found: pass the output directory of 'hclr-ids train'")
    if not path.is_file():
        raise BundleError(f"{run_dir} is not a model bundle: {MANIFEST_NAME} is missing; "
                          "pass the output directory of 'hclr-ids train' or 'hclr-ids run'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path} is damaged ({error}); retrain or restore the bundle") from error
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} has format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format version {manifest.get('format_version')}, this hclr-ids "
            f"({__version__}) reads version {BUNDLE_FORMAT_VERSION}; retrain with this version"
        )
    return manifest


def verify_files(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Check that every file listed in the manifest exists and has its recorded SHA-256."""
    for name, expected in manifest["files"].items():
        path = run_dir / name
        if not path.is_file():
            raise BundleError(f"model bundle {run_dir} is incomplete: {name} is missing")
        actual = _sha256(path)
        if actual != expected:
            raise BundleError(
                f"model bundle file {path} is damaged: SHA-256 {actual[:16]}... does not match the manifest's "
                f"{expected[:16]}...; restore the file or retrain"
            )


def load_bundle(run_dir: str | Path) -> ModelBundle:
    """Load a bundle written by :func:`save_bundle`, checking checksums and tensor shapes."""
    from hclr_ids.preprocessing import Preprocessor

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    verify_files(run_dir, manifest)
    try:
        preprocessor = Preprocessor.from_state(
            _read_json(run_dir / "preprocessor.json"), _read_numpy(run_dir / "preprocessor.safetensors")
        )
        encoder = encoder_from_metadata(_read_json(run_dir / "encoder.json"))
        _load_state(encoder, _read_torch(run_dir / "encoder.safetensors"), run_dir / "encoder.safetensors")
        encoder.eval()
        head = None
        if manifest["head"] != "softmax":
            head = _load_head(manifest["head"], _read_json(run_dir / "head.json"),
                              _read_torch(run_dir / "head.safetensors"), run_dir / "head.safetensors")
    except (KeyError, TypeError) as error:
        raise BundleError(f"model bundle {run_dir} is inconsistent with its manifest: {error}") from error
    selected = np.asarray(manifest["selected_indices"], dtype=np.int64)
    n_out = len(preprocessor.output_features_)
    if len(selected) and (selected.min() < 0 or selected.max() >= n_out):
        raise BundleError(f"model bundle {run_dir}: selected feature index out of range 0..{n_out - 1}")
    return ModelBundle(run_dir, manifest, preprocessor, selected, encoder, head)


def encoder_metadata(encoder: Any, config: Any) -> dict[str, Any]:
    """Describe an EncoderClassifier so :func:`encoder_from_metadata` can rebuild it before loading weights."""
    import dataclasses

    return {"config": dataclasses.asdict(config), "n_features": int(encoder.n_features),
            "n_classes": int(encoder.n_classes)}


def encoder_from_metadata(metadata: dict[str, Any]) -> Any:
    from hclr_ids.config import EncoderConfig, _from_dict
    from hclr_ids.networks import EncoderClassifier

    stored = dict(metadata["config"])
    # Bundles written before ``pool_size`` existed always pooled by 2; the pooling has no weights, so a
    # missing value must not fall back to a different default.
    stored.setdefault("pool_size", 2)
    config = _from_dict(EncoderConfig, stored, "encoder.json config")
    return EncoderClassifier(config, int(metadata["n_features"]), int(metadata["n_classes"]))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"cannot read {path}: {error}") from error


def _read_numpy(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise BundleError(f"cannot read weights {path}: {error}") from error


def _read_torch(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise BundleError(f"cannot read weights {path}: {error}") from error


def _load_state(module: Any, tensors: dict[str, Any], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        details = []
        if missing:
            details.append(f"missing tensors {missing}")
        if extra:
            details.append(f"unexpected tensors {extra}")
        for key in wrong:
            details.append(f"{key} has shape {list(found[key])}, expected {list(expected[key])}")
        raise BundleError(f"weights in {path} do not match the model described in the bundle: " + "; ".join(details))
    module.load_state_dict(tensors)


def _load_head(kind: str, metadata: dict[str, Any], tensors: dict[str, Any], path: Path) -> Any:
    from hclr_ids.rl import hybrid

    if metadata.get("head") != kind:
        raise BundleError(f"{path.parent}: the manifest names head {kind!r} but head.json describes "
                          f"{metadata.get('head')!r}")
    try:
        return hybrid.head_from_state(metadata, tensors)
    except (RuntimeError, KeyError) as error:  # torch reports shape mismatches as RuntimeError
        raise BundleError(f"weights in {path} do not match the head described in the bundle: {error}") from error
