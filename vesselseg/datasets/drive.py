"""DRIVE: official split (training 21-40, test 01-20), 1st_manual reference, optional 2nd_manual."""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..io import is_image_file
from .base import ReadResult, Sample, find_with_suffixes, list_folder, register_reader


@register_reader("drive")
def read_drive(source: Path) -> ReadResult:
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    notes: list[str] = []
    folders = {"training": "train", "test": "test"}
    if not any((source / f / "images").is_dir() for f in folders):
        raise DatasetError(f"{source}: not a DRIVE folder "
                           f"(expected training/images and test/images)")
    for folder, split in folders.items():
        images = source / folder / "images"
        if not images.is_dir():
            continue
        for image in list_folder(images, notes):
            if not image.is_file() or not is_image_file(image):
                continue  # hidden files, Thumbs.db, notes...
            number = image.name.split("_")[0]
            annotation = find_with_suffixes(source / folder / "1st_manual", f"{number}_manual1",
                                            (".gif", ".png", ".tif"), notes)
            if annotation is None:
                skipped.append((image, "no 1st_manual annotation" + _loses(split)))
                continue
            fov = find_with_suffixes(source / folder / "mask", f"{number}_{folder}_mask",
                                     (".gif", ".png", ".tif"), notes)
            second = find_with_suffixes(source / folder / "2nd_manual", f"{number}_manual2",
                                        (".gif", ".png", ".tif"), notes)
            samples.append(Sample(id=f"drive_{number}", dataset="drive", split=split, image=image,
                                  annotation=annotation, fov=fov, second_observer=second))
    return ReadResult(samples, skipped, notes)


def _loses(split: str) -> str:
    return f" (a {split} image: the {split} set loses it)" if split != "train" else ""
