"""Session fixtures that need TensorFlow: a tiny preprocessed synthetic set and a trained run.
Merged into conftest.py via pytest_plugins."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_SIZE = 128


def tiny_config(data: Path, runs: Path, **overrides):
    from vesselseg.config import TrainConfig

    values = {"data": [str(data)], "runs_dir": str(runs), "run_name": "tiny", "base_filters": 4,
              "depth": 2, "epochs": 2, "steps_per_epoch": 3, "batch_size": 2, "cache": True}
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def synthetic_preprocessed(tmp_path_factory) -> Path:
    """A small synthetic dataset, preprocessed at 128x128."""
    from vesselseg.config import PreprocessConfig
    from vesselseg.datasets import write_synthetic_dataset
    from vesselseg.preprocess import preprocess_dataset

    root = tmp_path_factory.mktemp("synthetic")
    raw = write_synthetic_dataset(root / "raw", count=10, size=TINY_SIZE, seed=3)
    out = root / "preprocessed"
    preprocess_dataset("folder", raw, out, PreprocessConfig(size=TINY_SIZE, val_fraction=0.2),
                       progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(synthetic_preprocessed, tmp_path_factory) -> Path:
    """A finished run of a tiny U-Net trained for 2 epochs on the synthetic set."""
    from vesselseg.train import train

    runs = tmp_path_factory.mktemp("runs")
    return train(tiny_config(synthetic_preprocessed, runs), progress=False).path
