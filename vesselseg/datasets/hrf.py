"""HRF: images/, manual1/ and mask/; images without an annotation are reported and skipped.

No official split exists; we use the common one: numbers 01-05 of each group (healthy, glaucoma,
diabetic retinopathy) train, 06-15 test.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DatasetError
from .base import ReadResult, Sample, find_with_suffixes, list_folder, register_reader

TRAIN_NUMBERS = range(1, 6)
_SUFFIXES = (".tif", ".tiff", ".png", ".gif")
_NAME = re.compile(r"^(\d+)_(h|g|dr)\.(jpe?g|png|tif)$", re.IGNORECASE)


@register_reader("hrf")
def read_hrf(source: Path) -> ReadResult:
    folder = source / "images"
    if not folder.is_dir():
        raise DatasetError(f"{source}: not an HRF folder (expected images/, manual1/, mask/)")
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    notes: list[str] = []
    for image in list_folder(folder, notes):
        match = _NAME.match(image.name)
        if not match:
            continue
        stem = f"{match.group(1)}_{match.group(2).lower()}"
        split = "train" if int(match.group(1)) in TRAIN_NUMBERS else "test"
        annotation = find_with_suffixes(source / "manual1", stem, _SUFFIXES, notes)
        if annotation is None:
            skipped.append((image, "no manual1 annotation" + (
                " (a test image: the test set loses it)" if split == "test" else "")))
            continue
        fov = find_with_suffixes(source / "mask", f"{stem}_mask", _SUFFIXES, notes)
        samples.append(Sample(id=f"hrf_{stem}", dataset="hrf", split=split, image=image,
                              annotation=annotation, fov=fov))
    return ReadResult(samples, skipped, notes)
