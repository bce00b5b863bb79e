"""Shared fixtures: paths to the real CICIoMT2024 subset, the field cases and the reference captures.

The data lives outside the repository, in ``../shared`` beside the checkout, or wherever
``HCLR_IDS_SHARED`` points. Under CI (``CI`` set) a missing folder is an error, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    configured = os.environ.get("HCLR_IDS_SHARED")
    return Path(configured) if configured else REPO_ROOT.parent / "shared"


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}; set HCLR_IDS_SHARED to the folder holding data/ and cases/"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_root() -> Path:
    return _require(_shared_root(), "shared folder")


@pytest.fixture(scope="session")
def release_root() -> Path:
    """Root of the real CICIoMT2024 subset in the release layout (10 of the 19 classes)."""
    return _require(_shared_root() / "data" / "ciciomt2024", "CICIoMT2024 subset")


@pytest.fixture(scope="session")
def release_csv_dir(release_root: Path) -> Path:
    return release_root / "WiFI_and_MQTT" / "attacks" / "csv"


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """Small field cases: odd CSV cells, other link layers, non-finite service input."""
    return _require(_shared_root() / "cases", "field cases")


@pytest.fixture(scope="session")
def pcap_reference_dir() -> Path:
    """Real captures with the original CIC extractor's output beside each."""
    return _require(_shared_root() / "data" / "pcap-reference", "reference captures")
