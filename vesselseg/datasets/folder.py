"""Any user's data with no code: images/ and masks/ matched by file stem, optional fov/ and split.

Layout::

    my_data/
      images/  a.jpg  b.png ...
      masks/   a.png  b.png ...      vessel annotations, same stem as the image
      fov/     a.png ...             optional FOV masks (estimated when absent)
      split.csv                      optional: columns id,split with split in train/val/test

Without split.csv every image is a training image (preprocess then holds out a validation part).
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DatasetError
from ..io import is_image_file
from .base import SPLITS, ReadResult, Sample, register_reader


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem


def _index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and is_image_file(path)):
            continue
        stem = _stem(path)
        if stem in index:  # e.g. a.jpg and a.png: which one is meant is ambiguous
            raise DatasetError(f"{folder}: two files with the stem {stem!r} ({index[stem].name}, "
                               f"{path.name}); keep one")
        index[stem] = path
    return index


def read_split_file(path: Path) -> dict[str, str]:
    splits: dict[str, str] = {}
    # utf-8-sig: a spreadsheet's byte-order mark must not hide the "id" column.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            name, split = (row.get("id") or "").strip(), (row.get("split") or "").strip()
            if split not in SPLITS:
                raise DatasetError(f"{path}:{line}: split {split!r} is not one of {SPLITS}")
            splits[name] = split
    return splits


@register_reader("folder")
def read_folder(source: Path) -> ReadResult:
    images = _index(source / "images")
    if not (source / "images").is_dir():
        raise DatasetError(f"{source}: expected an images/ folder (and masks/) inside it")
    if not images:
        raise DatasetError(f"{source / 'images'}: no image files found")
    if not (source / "masks").is_dir():
        raise DatasetError(f"{source / 'masks'}: annotation folder is missing")
    masks, fovs = _index(source / "masks"), _index(source / "fov")
    split_file = source / "split.csv"
    splits = read_split_file(split_file) if split_file.exists() else {}
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    for stem, image in images.items():
        if stem not in masks:
            skipped.append((image, f"no annotation masks/{stem}.*"))
            continue
        samples.append(Sample(id=stem, dataset=source.name or "folder",
                              split=splits.get(stem, "train"), image=image, annotation=masks[stem],
                              fov=fovs.get(stem)))
    return ReadResult(samples, skipped)
