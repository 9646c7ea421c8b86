"""What `vesselseg eval` costs a user: peak memory over a folder of full-size photos, and the
time from starting the command to the first result row of one photo.

Each measurement runs the real command in a fresh process (as a user would), with the shipped
model: peak RSS is the child's maximum resident set (getrusage), time to first row is the wall
time until results.csv holds its first data row. Photos are read in place.

    python -m benchmarks.eval_resources --source ../shared/datasets/HRF --photos 12
    python -m benchmarks.eval_resources --source ../shared/datasets/DRIVE/test --photos 20 \
        --morphology-cost
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Issue targets: peak RSS over 12 full-size HRF photos.
TARGET_PEAK_GB = 2.0


def _photos(source: Path, count: int) -> list[Path]:
    from vesselseg.io import is_image_file

    folder = source / "images"
    photos = sorted(p for p in folder.iterdir() if is_image_file(p))[:count]
    if len(photos) < count:
        raise SystemExit(f"{folder}: only {len(photos)} photos, {count} asked")
    return photos


def peak_rss(photos: list[Path], extra: list[str]) -> tuple[float, float]:
    """(peak resident memory in GB, seconds) of one eval process over `photos`."""
    with tempfile.TemporaryDirectory() as out:
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child becomes the command, so its rusage is the command's alone
            os.execvp(sys.executable, [sys.executable, "-m", "vesselseg", "eval",
                                       *map(str, photos), "--out", out, "-q", *extra])
        _, status, usage = os.wait4(pid, 0)
        seconds = time.monotonic() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"eval failed (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_maxrss / 2**20, seconds  # ru_maxrss is in KiB on Linux


def first_row_seconds(photo: Path, extra: list[str]) -> float:
    """Seconds from starting `vesselseg eval PHOTO` to its first results.csv data row."""
    with tempfile.TemporaryDirectory() as out:
        table = Path(out) / "results.csv"
        start = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "vesselseg", "eval", str(photo),
                                    "--out", out, "-q", *extra])
        while process.poll() is None:
            if table.exists() and table.read_text().count("\n") >= 2:
                break
            time.sleep(0.005)
        seconds = time.monotonic() - start
        process.wait()
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_resources",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/HRF"),
                        help="dataset folder with images/ (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=12,
                        help="photos in the memory run (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="time-to-first-row repetitions, best reported (default: "
                             "%(default)s)")
    parser.add_argument("--no-morphology", action="store_true",
                        help="measure eval without the vessel measurements")
    parser.add_argument("--morphology-cost", action="store_true",
                        help="also time the same photos without the measurements and print "
                             "the ratio (issue target: at most 1.5x)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    photos = _photos(args.source, args.photos)
    extra = ["--no-morphology"] if args.no_morphology else []
    gigabytes, seconds = peak_rss(photos, extra)
    print(f"eval of {len(photos)} photos from {args.source}: peak RSS {gigabytes:.2f} GB "
          f"(target {TARGET_PEAK_GB:g} GB: {'met' if gigabytes <= TARGET_PEAK_GB else 'MISSED'})"
          f", {seconds:.1f} s, {seconds / len(photos):.2f} s per photo")
    if args.morphology_cost and not args.no_morphology:
        _, without = peak_rss(photos, ["--no-morphology"])
        print(f"same photos without the measurements: {without:.1f} s; with them "
              f"{seconds / without:.2f}x that (target at most 1.5x)")
    best = min(first_row_seconds(photos[0], extra) for _ in range(args.repeat))
    print(f"time to the first result row for one photo ({photos[0].name}): {best:.2f} s "
          f"(best of {args.repeat}, from process start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
