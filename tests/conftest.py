"""Shared, generic fixtures: where the real datasets are, and small synthetic datasets."""
from __future__ import annotations

from pathlib import Path

import pytest

#: TensorFlow-backed fixtures (tiny trained runs) live in their own module.
pytest_plugins = ["run_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real datasets, read from `../shared/datasets/` relative to the repository root.
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def shared_dataset(name: str) -> Path:
    """Path of one real dataset folder (e.g. "DRIVE"); skips the test when it is absent."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name} not available at {path}")
    return path


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder holding the real datasets (skips when missing)."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not available at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def drive_dir() -> Path:
    return shared_dataset("DRIVE")


@pytest.fixture(scope="session")
def chase_dir() -> Path:
    return shared_dataset("CHASEDB1")


@pytest.fixture(scope="session")
def hrf_dir() -> Path:
    return shared_dataset("HRF")


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset in the `folder` layout (8 photos of 128 px, 2 of them test).

    Session-scoped and shared: treat it as read-only (copy it to change it).
    """
    from vesselseg.datasets import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), count=8, size=128, seed=0)


@pytest.fixture
def make_synthetic_dataset(tmp_path):
    """Factory: write a fresh synthetic dataset under tmp_path (for tests that modify it)."""
    from vesselseg.datasets import write_synthetic_dataset

    def make(name: str = "synthetic", count: int = 4, size: int = 96, seed: int = 0) -> Path:
        return write_synthetic_dataset(tmp_path / name, count=count, size=size, seed=seed)

    return make


#: Fixtures that train a model or read the real datasets: a test using one is slow, and `make
#: test-fast` (pytest -m "not slow") leaves it out. Other slow tests carry @pytest.mark.slow.
SLOW_FIXTURES = {"tiny_run", "other_run", "synthetic_preprocessed", "shared_datasets",
                 "drive_dir", "chase_dir", "hrf_dir"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
