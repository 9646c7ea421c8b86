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


def replace_folder(target: str | Path, new: str | Path) -> Path:
    """Put the complete folder `new` in the place of `target` (an earlier result of the same
    command): the earlier one is moved aside, the new one renamed in, then the earlier one
    deleted, so a failure at any point leaves one whole result, never a mix or nothing."""
    import shutil

    target, new = Path(target), Path(new)
    aside = new_folder(target.parent, f".{target.name}.old")
    aside.rmdir()
    target.rename(aside)
    try:
        new.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return target


def refuse_overlap(out: str | Path, inputs: list[str | Path], what: str = "input") -> None:
    """An output folder that is, lies inside, or contains an input folder would mix results
    with the data (or replace it): refused, naming both."""
    from .errors import ConfigError

    target = Path(out).resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if target == source_path or source_path in target.parents:
            raise ConfigError(f"--out {out} is inside the {what} {source}: outputs would mix "
                              f"with (or replace) the data; choose a folder outside it")
        if target in source_path.parents:
            raise ConfigError(f"--out {out} contains the {what} {source}: choose a folder "
                              f"that does not hold the data")


def probability_png(probability: np.ndarray) -> np.ndarray:
    """8-bit gray image of a probability map (0..255)."""
    return np.clip(np.rint(probability * 255.0), 0, 255).astype(np.uint8)


def write_probability(path: str | Path, probability: np.ndarray) -> Path:
    return write_png(path, probability_png(probability))
