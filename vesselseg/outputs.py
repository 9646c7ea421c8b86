"""Where results go: new timestamped folders that never overwrite earlier ones, and the PNGs
written for each segmented photo."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .io import write_png


def new_folder(parent: str | Path, name: str) -> Path:
    """Create parent/<UTC timestamp>_<name>, adding a counter rather than reusing a folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / f"{stamp}_{name}"
    folder, counter = base, 1
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            counter += 1
            folder = base.with_name(f"{base.name}-{counter}")


def probability_png(probability: np.ndarray) -> np.ndarray:
    """8-bit gray image of a probability map (0..255)."""
    return np.clip(np.rint(probability * 255.0), 0, 255).astype(np.uint8)


def write_probability(path: str | Path, probability: np.ndarray) -> Path:
    return write_png(path, probability_png(probability))
