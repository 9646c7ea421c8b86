"""DRIVE: official split (training 21-40, test 01-20), 1st_manual reference, optional 2nd_manual."""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ..io import is_image_file
from .base import ReadResult, Sample, find_with_suffixes, register_reader


@register_reader("drive")
def read_drive(source: Path) -> ReadResult:
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    folders = {"training": "train", "test": "test"}
    if not any((source / f / "images").is_dir() for f in folders):
        raise DatasetError(f"{source}: not a DRIVE folder "
                           f"(expected training/images and test/images)")
    for folder, split in folders.items():
        images = source / folder / "images"
        if not images.is_dir():
            continue
        for image in sorted(images.iterdir()):
            if not image.is_file() or not is_image_file(image):
                continue  # hidden files, Thumbs.db, notes...
            number = image.name.split("_")[0]
            annotation = find_with_suffixes(source / folder / "1st_manual", f"{number}_manual1",
                                            (".gif", ".png", ".tif"))
            if annotation is None:
                skipped.append((image, "no 1st_manual annotation"))
                continue
            fov = find_with_suffixes(source / folder / "mask", f"{number}_{folder}_mask",
                                     (".gif", ".png", ".tif"))
            second = find_with_suffixes(source / folder / "2nd_manual", f"{number}_manual2",
                                        (".gif", ".png", ".tif"))
            samples.append(Sample(id=f"drive_{number}", dataset="drive", split=split, image=image,
                                  annotation=annotation, fov=fov, second_observer=second))
    return ReadResult(samples, skipped)
