"""`python -m vesselseg.demo` (what `make demo` runs): the whole workflow on data the package
generates itself: synthetic photos -> preprocess -> train a small model -> test -> eval, ending
with the shipped pretrained model segmenting scikit-image's retina photo (when a model is shipped).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import run_cli
from .config import PreprocessConfig, TrainConfig
from .inference import Segmenter
from .io import write_png


def run_demo(out: str | Path, epochs: int = 6, size: int = 256, images: int = 16) -> dict:
    """Run every stage into `out` (a new subfolder per stage); returns the paths produced."""
    from .datasets import write_synthetic_dataset
    from .eval import segment_images
    from .outputs import new_folder
    from .preprocess import preprocess_dataset
    from .test import format_table, items_from_manifest, run_test
    from .train import train

    out = Path(out)
    print("1/5 generating synthetic fundus photos with exact vessel masks")
    raw = write_synthetic_dataset(out / "synthetic", count=images, size=size, seed=0)
    print("2/5 preprocess")
    data = out / "preprocessed"
    report = preprocess_dataset("folder", raw, data, PreprocessConfig(size=size), progress=False)
    print(f"    {report.counts}")
    print("3/5 train (small model, a few epochs)")
    run = train(TrainConfig(data=[str(data)], run_name="demo", runs_dir=str(out / "runs"),
                            base_filters=8, depth=3, epochs=epochs, steps_per_epoch=6,
                            batch_size=2), progress=False).path
    print(f"    run folder: {run}")
    print("4/5 test (native resolution, inside the FOV, pooled + per image)")
    segmenter = Segmenter.from_run(run)
    test_report = run_test(segmenter, items_from_manifest(data), new_folder(run / "tests", "test"),
                           progress=False)
    print(format_table(test_report.table))
    print("5/5 eval on photos without annotation")
    photos = [Path(p) for p in sorted((raw / "images").iterdir())[:2]]
    retina = _retina_photo(out)
    from .runs import PRETRAINED_NAME, RunFolder

    if RunFolder.named(PRETRAINED_NAME).model_path.exists():
        eval_segmenter, label = Segmenter.pretrained(), "shipped pretrained model"
        photos = [retina]
    else:
        eval_segmenter, label = segmenter, "demo model (no pretrained model shipped yet)"
        photos.append(retina)
    eval_out = new_folder(out / "eval", "eval")
    results = segment_images(eval_segmenter, photos, eval_out)
    for r in results:
        print(f"    {r.path.name}: vessel density {100 * (r.vessel_density or 0):.2f} % "
              f"({label}) -> {r.outputs.get('overlay')}")
    return {"run": run, "test": test_report.out, "eval": eval_out}


def _retina_photo(out: Path) -> Path:
    from skimage import data

    path = out / "retina.png"
    if not path.exists():
        write_png(path, data.retina())
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vesselseg demo", description=__doc__)
    parser.add_argument("--out", default="artifacts/demo", help="demo folder (artifacts/demo)")
    parser.add_argument("--epochs", type=int, default=6)
    return parser


def _main(args: argparse.Namespace) -> int:
    paths = run_demo(args.out, epochs=args.epochs)
    print(f"done: {paths}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
