"""`vesselseg calibrate RUN [--tta] [--scales LIST]`: choose a run's decision threshold on its
validation images.

The threshold is the best-F1 one over the validation images at native resolution inside the
FOV, every image weighing the same (so one camera's large photos do not choose it for all).
`train` calls `choose_threshold` as its last step. The command chooses it again (the threshold it
replaces is kept in threshold.json under "replaced"), or, with --tta and/or --scales, chooses
one for that averaging inference setting and adds it under "settings": averaging shifts the
probabilities, so each setting gets its own.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .cli import add_scales_argument, run_cli
from .errors import ConfigError
from .inference import setting_key
from .runs import RunFolder

HOW = ("best-F1 threshold over the validation images, each image weighing the same, native "
       "resolution, inside the FOV")


def choose_threshold(run: str | Path | RunFolder, val_rows, replaced: dict | None = None,
                     tta: bool = False, scales: tuple[float, ...] = (1.0,)) -> float:
    """Choose and record the threshold of `run` for an inference setting on `val_rows` (rows of
    a preprocessed manifest); returns it."""
    from .evaluation import PooledEvaluator, best_f1_threshold
    from .inference import Segmenter
    from .io import read_image, read_mask

    run = RunFolder.existing(run)
    segmenter = Segmenter.from_run(run, threshold=0.5, tta=tta, scales=scales)
    evaluator = PooledEvaluator(threshold=0.5)
    for _, row in val_rows.iterrows():
        image = read_image(row["native_image"])
        truth = read_mask(row["native_annotation"], image.shape[:2])
        fov = read_mask(row["native_fov"], image.shape[:2])
        prediction = segmenter.predict(image, fov)
        evaluator.add(row["id"], prediction.probability, truth, fov)
    threshold, f1 = evaluator.per_image_threshold()
    pooled_threshold, pooled_f1 = best_f1_threshold(evaluator.positive_hist,
                                                    evaluator.negative_hist)
    choice = {"threshold": threshold, "validation_f1": f1,
              "validation_images": list(val_rows["id"]), "how": HOW,
              "working_size": segmenter.working_size,
              "pooled_pixels_threshold": pooled_threshold, "pooled_pixels_f1": pooled_f1}
    setting = setting_key(tta, scales)
    if setting:
        record = run.threshold_record()
        record.setdefault("settings", {})[setting] = {
            key: value for key, value in choice.items() if key != "validation_images"}
    else:
        # the settings' thresholds stay beside the new plain one (not also under "replaced")
        replaced = dict(replaced or {})
        kept = replaced.pop("settings", None)
        record = {**choice, **({"replaced": replaced} if replaced else {}),
                  **({"settings": kept} if kept else {})}
    run.write_threshold_record(record)
    return threshold


def validation_rows(data: list[str], expected: list[str] | None, run: str | Path):
    """The validation rows of the preprocessed folders `data`, which must be the images `run`
    recorded in its threshold.json."""
    from .pipeline import split_rows
    from .preprocess import merged_manifest

    val_rows = split_rows(merged_manifest(data), "val")
    if list(val_rows["id"]) != expected:
        raise ConfigError(f"{run}: the data folders ({', '.join(data)}) do not hold the "
                          f"validation images it was trained with; run from where it was "
                          f"trained, or pass --data with the same preprocessed folders")
    return val_rows


def calibrate(run: str | Path | RunFolder, tta: bool = False,
              scales: tuple[float, ...] = (1.0,), data: list[str] | None = None) -> float:
    """Choose a finished run's threshold again on its validation images, or choose one for an
    averaging inference setting (flip TTA, several scales). `data`: the preprocessed folders
    holding them, when not where the run was trained (the shipped model); they must hold the
    very validation images the run recorded. Returns the threshold."""
    run = RunFolder.named(run).require_finished()
    if run.is_shipped:
        raise ConfigError(f"{run.path}: the shipped model's thresholds are part of the package; "
                          f"calibrate a copy of it (copy the folder) instead")
    config = run.config()
    previous = run.threshold_record()
    if data:
        config = replace(config, data=[str(folder) for folder in data])
    val_rows = validation_rows(config.data, previous.get("validation_images"), run.path)
    if setting_key(tta, scales):
        return choose_threshold(run, val_rows, tta=tta, scales=scales)
    threshold = choose_threshold(run, val_rows, replaced=previous)  # one write keeps both
    run.update_status(threshold=threshold)
    return threshold


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg calibrate",
        description="Choose a finished run's decision threshold again on its validation images "
                    "(best F1, every image weighing the same, native resolution, inside the "
                    "FOV; the old one is kept in threshold.json), or, with --tta and/or "
                    "--scales, choose one for that inference setting.")
    parser.add_argument("run", metavar="RUN", help="finished run folder from vesselseg train")
    parser.add_argument("--tta", action="store_true", help="for flip TTA (test/eval --tta)")
    add_scales_argument(parser, prefix="for multi-scale inference: ")
    parser.add_argument("--data", nargs="+", metavar="FOLDER",
                        help="preprocessed folder(s) holding the run's validation images "
                             "(default: the folders it was trained on)")
    parser.add_argument("--json", action="store_true",
                        help="print the run, setting and threshold as JSON")
    return parser


def _main(args: argparse.Namespace) -> int:
    threshold = calibrate(args.run, args.tta, args.scales, args.data)
    setting = setting_key(args.tta, args.scales) or "plain setting"
    if args.json:
        import json

        print(json.dumps({"run": str(args.run), "setting": setting, "threshold": threshold}))
        return 0
    print(f"{args.run}: threshold {threshold:.3f} for {setting} (validation best F1, every "
          f"image weighing the same)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
