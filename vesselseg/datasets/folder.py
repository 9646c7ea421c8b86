"""Any user's data with no code: images/ and masks/ matched by file stem, optional fov/ and split.

Layout::

    my_data/
      images/  a.jpg  b.png ...
      masks/   a.png  b.png ...      vessel annotations, same stem as the image
      fov/     a.png ...             optional FOV masks (estimated when absent)
      split.csv                      optional: columns id,split with split in train/val/test

Without split.csv every image is a training image (preprocess then holds out a validation part).
An id in split.csv with no image in images/ is an error (a typo would otherwise put a test photo
in training); images split.csv does not name are training images.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DatasetError
from ..io import is_image_file
from .base import SPLITS, ReadResult, Sample, list_folder, register_reader


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem


def _index(folder: Path, notes: list[str]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for path in list_folder(folder, notes):
        if not (path.is_file() and is_image_file(path)):
            continue
        stem = _stem(path)
        if stem in index:  # e.g. a.jpg and a.png: which one is meant is ambiguous
            raise DatasetError(f"{folder}: two files with the stem {stem!r} ({index[stem].name}, "
                               f"{path.name}); keep one")
        index[stem] = path
    return index


def read_split_file(path: Path, lines: dict[str, int] | None = None) -> dict[str, str]:
    """id -> split from a split.csv; `lines` receives each id's line number."""
    splits: dict[str, str] = {}
    lines = {} if lines is None else lines
    try:
        # utf-8-sig: a spreadsheet's byte-order mark must not hide the "id" column.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"id", "split"} <= {
                    (name or "").strip() for name in reader.fieldnames}:
                raise DatasetError(f"{path}: expected a CSV file with the columns id,split "
                                   f"(first line: {','.join(reader.fieldnames or [])!r})")
            for line, row in enumerate(reader, start=2):
                row = {(key or "").strip(): value for key, value in row.items()}
                name, split = (row.get("id") or "").strip(), (row.get("split") or "").strip()
                if not name and not split:
                    continue  # a blank line
                if split not in SPLITS:
                    raise DatasetError(f"{path}:{line}: split {split!r} is not one of {SPLITS}")
                if name in splits and splits[name] != split:
                    raise DatasetError(f"{path}:{line}: id {name!r} is also in split "
                                       f"{splits[name]!r} (line {lines[name]})")
                splits[name], lines[name] = split, line
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save "
                           f"it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from None
    return splits


@register_reader("folder")
def read_folder(source: Path) -> ReadResult:
    notes: list[str] = []
    if not (source / "images").is_dir():
        raise DatasetError(f"{source}: expected an images/ folder (and masks/) inside it")
    images = _index(source / "images", notes)
    if not images:
        raise DatasetError(f"{source / 'images'}: no image files found")
    if not (source / "masks").is_dir():
        raise DatasetError(f"{source / 'masks'}: annotation folder is missing")
    masks, fovs = _index(source / "masks", notes), _index(source / "fov", notes)
    split_file = source / "split.csv"
    lines: dict[str, int] = {}
    splits = read_split_file(split_file, lines) if split_file.exists() else {}
    unknown = [name for name in splits if name not in images]
    if unknown:
        listed = ", ".join(f"{name!r} (line {lines[name]})" for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DatasetError(f"{split_file}: names {len(unknown)} id(s) with no image in "
                           f"{source / 'images'}: {listed}{more}; fix the ids (the file stems)")
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    for stem, image in images.items():
        split = splits.get(stem, "train")
        if stem not in masks:
            skipped.append((image, f"no annotation masks/{stem}.*" + (
                f" (a {split} image: the {split} set loses it)" if split != "train" else "")))
            continue
        samples.append(Sample(id=stem, dataset=source.name or "folder", split=split, image=image,
                              annotation=masks[stem], fov=fovs.get(stem)))
    return ReadResult(samples, skipped, notes)
