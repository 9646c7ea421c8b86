"""STARE: stare-images/imNNNN.ppm[.gz], labels-ah (reference), labels-vk (2nd observer).

STARE has no official split; a seeded shuffle puts a quarter of the annotated images in test.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from ..errors import DatasetError
from .base import ReadResult, Sample, find_with_suffixes, list_folder, register_reader

TEST_FRACTION = 0.25
SPLIT_SEED = 0
_NAME = re.compile(r"^(im\d+)\.(ppm|png|jpe?g|tif)(\.gz)?$", re.IGNORECASE)


@register_reader("stare")
def read_stare(source: Path) -> ReadResult:
    folder = source / "stare-images"
    if not folder.is_dir():
        raise DatasetError(f"{source}: not a STARE folder (expected stare-images/ and labels-ah/)")
    found: list[tuple[str, Path, Path, Path | None]] = []
    skipped: list[tuple[Path, str]] = []
    notes: list[str] = []
    suffixes = (".ppm", ".ppm.gz", ".png", ".gif")
    for image in list_folder(folder, notes):
        match = _NAME.match(image.name)
        if not match:
            continue
        stem = match.group(1)
        annotation = find_with_suffixes(source / "labels-ah", f"{stem}.ah", suffixes, notes)
        if annotation is None:
            skipped.append((image, "no labels-ah annotation"))
            continue
        second = find_with_suffixes(source / "labels-vk", f"{stem}.vk", suffixes, notes)
        found.append((stem, image, annotation, second))
    order = list(range(len(found)))
    random.Random(SPLIT_SEED).shuffle(order)
    test_count = max(1, round(TEST_FRACTION * len(found))) if len(found) > 1 else 0
    test_indices = set(order[:test_count])
    samples = [Sample(id=f"stare_{stem}", dataset="stare",
                      split="test" if i in test_indices else "train", image=image,
                      annotation=annotation, second_observer=second)
               for i, (stem, image, annotation, second) in enumerate(found)]
    return ReadResult(samples, skipped, notes)
