"""Time the evaluation of the 20 DRIVE test images at native size against a target.

The "probability map" of each image is the 2nd human observer's annotation with light noise (a
realistic float map with vessels near 1 and background near 0), evaluated against the 1st
observer inside the official FOV: per-image metrics (including exact AUC-ROC, AUC-PR and clDice)
and the pooled figures, as `python -m vesselseg.test` computes them. Reading the files is timed
separately and not counted.

    python -m benchmarks.evaluation_speed --source ../shared/datasets/DRIVE
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

TARGET_SECONDS = 5.0


def load_drive_test(source: Path, noise: float, seed: int):
    """[(id, probability map, truth, fov)] of the 20 DRIVE test images."""
    from vesselseg.io import read_mask

    test = source / "test"
    rng = np.random.default_rng(seed)
    images = []
    for number in range(1, 21):
        truth = read_mask(test / "1st_manual" / f"{number:02d}_manual1.gif")
        second = read_mask(test / "2nd_manual" / f"{number:02d}_manual2.gif", truth.shape)
        fov = read_mask(test / "mask" / f"{number:02d}_test_mask.gif", truth.shape)
        probability = second.astype(np.float32) * 0.8 + 0.1
        probability += rng.normal(0.0, noise, truth.shape).astype(np.float32)
        images.append((f"{number:02d}", np.clip(probability, 0.0, 1.0), truth, fov))
    return images


def evaluate(images, threshold: float = 0.5):
    from vesselseg.evaluation import PooledEvaluator, summary_rows

    evaluator = PooledEvaluator(threshold=threshold)
    for image_id, probability, truth, fov in images:
        evaluator.add(image_id, probability, truth, fov)
    pooled = evaluator.pooled()
    return pooled, summary_rows(evaluator.rows, pooled)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.evaluation_speed",
        description="Time evaluating the 20 DRIVE test images at native resolution (per-image "
                    "metrics with AUCs and clDice, plus pooled figures). Target: < "
                    f"{TARGET_SECONDS:g} s.")
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/DRIVE"),
                        help="DRIVE folder holding test/1st_manual, test/2nd_manual and test/mask "
                             "(default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed repetitions; the best is reported (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="standard deviation of the Gaussian noise added to the 2nd observer "
                             "map (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 when slower than the target")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.source / "test" / "2nd_manual").is_dir():
        print(f"error: {args.source} does not hold the DRIVE test set (test/2nd_manual missing)",
              file=sys.stderr)
        return 2
    if args.repeat < 1:
        print("error: --repeat must be at least 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    images = load_drive_test(args.source, args.noise, args.seed)
    reading = time.perf_counter() - start
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        pooled, _ = evaluate(images)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    pixels = sum(int(fov.sum()) for _, _, _, fov in images)
    print(f"read {len(images)} DRIVE test images in {reading:.2f} s ({pixels:,} FOV pixels)")
    print("pooled: " + ", ".join(f"{k} {v:.4f}" for k, v in pooled.items()))
    verdict = "OK" if seconds < TARGET_SECONDS else "SLOWER THAN TARGET"
    print(f"evaluation: {seconds:.2f} s for {len(images)} images (target < {TARGET_SECONDS:g} s)"
          f" {verdict}")
    return 1 if args.check and seconds >= TARGET_SECONDS else 0


if __name__ == "__main__":
    sys.exit(main())
