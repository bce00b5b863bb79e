"""Datasets shipped with the package."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def builtin_dataset_path() -> Path:
    """Return the folder of the built-in lab dataset (release layout, readable by ``hclr_ids.data.load_dataset``).

    The rows were captured by ``hclr-ids lab`` in network namespaces, as the README.md in that folder describes.
    """
    path = Path(str(files("hclr_ids") / "datasets" / "builtin"))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: the built-in dataset is missing from this installation; reinstall "
                                "hclr-ids, or build a dataset with 'sudo hclr-ids lab --out DIR'")
    return path
