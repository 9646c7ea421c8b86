"""CHASE_DB1: _1stHO reference, _2ndHO 2nd observer; the usual split (first 20 train, last 8 test).

No official FOV masks exist; the FOV is estimated from the image during preprocessing.
"""
from __future__ import annotations

import re
from pathlib import Path

from .base import ReadResult, Sample, find_with_suffixes, list_folder, register_reader

TRAIN_COUNT = 20
_NAME = re.compile(r"^Image_(\d+[LR])\.(jpe?g|png|tif)$", re.IGNORECASE)


@register_reader("chase")
def read_chase(source: Path) -> ReadResult:
    notes: list[str] = []
    images = sorted((p for p in list_folder(source, notes) if _NAME.match(p.name)),
                    key=lambda p: _NAME.match(p.name).group(1))
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    for index, image in enumerate(images):
        stem = image.stem
        split = "train" if index < TRAIN_COUNT else "test"
        annotation = find_with_suffixes(source, f"{stem}_1stHO", (".png", ".gif", ".tif"), notes)
        if annotation is None:
            skipped.append((image, "no _1stHO annotation" + (
                " (a test image: the test set loses it)" if split == "test" else "")))
            continue
        second = find_with_suffixes(source, f"{stem}_2ndHO", (".png", ".gif", ".tif"), notes)
        samples.append(Sample(id=f"chase_{stem.split('_', 1)[1]}", dataset="chase",
                              split=split, image=image,
                              annotation=annotation, fov=None, second_observer=second))
    return ReadResult(samples, skipped, notes)
