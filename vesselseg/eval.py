"""`vesselseg eval IMAGE_OR_FOLDER ...`: segment photos, no annotation needed.

Per photo: <name>_probability.png, <name>_mask.png and <name>_overlay.png at the photo's native
size, and one row of results.csv (size, FOV area, vessel density, model, setting, threshold,
status), written the moment that photo is done, so a killed run keeps its finished rows and
`--resume` does only the rest. summary.json records vesselseg's and the model's versions and the
settings. Any size; JPEG, PNG, TIFF, GIF, PPM, BMP; grayscale, RGBA and 16-bit are converted. A
broken file is a failed row, not a failed run.

Over 350 lines: input collection, per-photo rows, resume and the command are one workflow step;
the results file itself lives in `results`.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from .cli import (
    add_inference_arguments,
    add_run_argument,
    describe_os_error,
    positive_float,
    positive_int,
    run_cli,
    segmenter_from_args,
)
from .errors import ConfigError, DatasetError, NothingProcessed, VesselsegError
from .inference import Segmenter
from .io import is_image_file, read_image, write_text_atomic
from .locks import hold_folder
from .morphology import COLOUR_BY
from .outputs import new_folder, refuse_overlap
from .photo_lists import is_photo_list, read_photo_list
from .photo_outputs import (  # re-exported: eval's API since before the Ray engine
    OUTPUT_KINDS,
    RESULTS,
    SUMMARY,
    EvalResult,
    Inputs,
    MorphologyOptions,
    finish_photo,
    output_names,
    start_results,
)

#: eval's default batch: 1 keeps 12 full-size HRF photos under 2 GB peak memory (1.82 GB; 2.10
#: GB at 2) and was no slower on a 2-core CPU (67.8 s against 69.3 s; benchmarks.eval_resources,
#: docs/speed.md); a GPU gains from --batch-size 4 or more.
EVAL_BATCH = 1


def collect_images(inputs: list[str | Path], recursive: bool = False,
                   path_column: str | None = None) -> Inputs:
    """Files given directly, the image files inside given folders (sorted; subfolders only with
    `recursive`) and the photos named by .csv / .txt lists (`photo_lists`). Everything passed
    over is listed with the reason."""
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    roots: dict[Path, Path] = {}
    ids: dict[Path, str] = {}
    pixel_sizes: dict[Path, float] = {}
    for entry in map(Path, inputs):
        if entry.is_file() and is_photo_list(entry):
            listed = read_photo_list(entry, path_column)
            images.extend(listed.images)
            ids.update(listed.ids)
            pixel_sizes.update(listed.pixel_sizes)
        elif entry.is_dir():
            found = _images_in(entry, recursive, skipped)
            if not found:
                raise DatasetError(f"{entry}: folder contains no image files"
                                   + ("" if recursive else " (subfolders need --recursive)"))
            images.extend(found)
            roots.update({image: entry for image in found})
        elif entry.exists():
            images.append(entry)
        else:
            raise DatasetError(f"{entry}: no such file or folder")
    if not images:
        raise DatasetError("no input images given")
    if len(images) > len(set(images)):
        seen: set[Path] = set()
        twice = next(image for image in images if image in seen or seen.add(image))
        raise DatasetError(f"{twice}: given twice (each photo once: its row is its key)")
    return Inputs(images, skipped, roots, ids, pixel_sizes)


def _images_in(folder: Path, recursive: bool, skipped: list[tuple[Path, str]]) -> list[Path]:
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            if recursive and not path.is_symlink():
                found.extend(_images_in(path, recursive, skipped))
            elif not recursive:
                skipped.append((path, "a subfolder (use --recursive)"))
            else:
                skipped.append((path, "a linked folder (not followed)"))
        elif not path.exists():
            skipped.append((path, "a broken link"))
        elif path.name.startswith("."):
            continue  # hidden files (.DS_Store and the like) are not photos
        elif is_image_file(path):
            found.append(path)
        else:
            skipped.append((path, "not an image file name"))
    return found


def segment_images(segmenter: Segmenter, inputs: Inputs | list[Path], out: str | Path,
                   overwrite: bool = False, resume: bool = False, quiet: bool = True,
                   on_result=None, morphology: MorphologyOptions = MorphologyOptions(),
                   keep_results: bool = True) -> list[EvalResult]:
    """Segment every photo into `out` with a row of `out`/results.csv each, written as soon as
    the photo is done; failures are rows, never raised. With `resume`, photos that already
    have a row are skipped. `on_result(EvalResult)` is called as each photo finishes.

    Returns this run's results; with `keep_results=False` an empty list, so that memory does
    not grow with the photos (100,000 rows of measurements are about 0.5 GB): count them
    in `on_result` instead."""
    from .console import progress

    out = Path(out)
    if not isinstance(inputs, Inputs):
        inputs = Inputs(list(inputs), [], {})
    names, table, todo = start_results(inputs, out, overwrite, resume, morphology)
    photos: dict[Path, object] = {}

    def load(path: Path):
        image = read_image(path)
        photos[path] = image
        return image, None

    def finish(path: Path, image, prediction) -> EvalResult:
        result = finish_photo(path, image, prediction, names[path], out, segmenter,
                              table.columns, morphology, inputs.pixel_sizes.get(path),
                              inputs.ids.get(path))
        table.append(result.row)
        if on_result is not None:
            on_result(result)
        return result

    if morphology.enabled and todo:  # numba compiles skan's code while the model starts
        from .morphology import warm_up

        threading.Thread(target=warm_up, daemon=True).start()
    results: list[EvalResult] = []
    keep = results.append if keep_results else (lambda result: None)
    stream = segmenter.predict_many(todo, load)
    with ThreadPoolExecutor(max_workers=1) as writer:  # rows stay in input order
        jobs: collections.deque[Future] = collections.deque()
        for path, prediction in progress(stream, total=len(todo), desc="eval", quiet=quiet):
            jobs.append(writer.submit(finish, path, photos.pop(path, None), prediction))
            while len(jobs) > 1:  # one photo's outputs in the writer's hands: they are large
                keep(jobs.popleft().result())
        for job in jobs:
            keep(job.result())
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vesselseg eval",
        description="Segment the vessels of fundus photos (files or folders). Writes a "
                    "probability map, a binary mask and an overlay per photo at native size, "
                    "and results.csv (one row per photo, written as it finishes) and "
                    "summary.json (versions and settings) in --out.")
    parser.add_argument("inputs", nargs="+",
                        help="image files, folders of images, and lists of photos: a .csv with "
                             "a path (or image) column and optional id and pixel_size_um "
                             "columns, or a .txt with one path per line; relative paths in a "
                             "list are relative to the list's folder (docs/cohort.md)")
    add_run_argument(parser)
    parser.add_argument("--out", help="output folder (default: a new folder in artifacts/eval/; "
                                      "an earlier result there is never replaced without "
                                      "--overwrite)")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="also segment the photos in subfolders (outputs mirror them)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted eval in --out: photos that already have a "
                             "row in results.csv are skipped")
    add_inference_arguments(parser)
    parser.add_argument("--pixel-size-um", type=positive_float, metavar="UM",
                        help="the side of one pixel on the retina in micrometres, for the _um "
                             "measurement columns (empty without it); the _norm columns compare "
                             "cameras without it")
    parser.add_argument("--no-morphology", action="store_true",
                        help="only vessel density: skip the vessel measurements (widths, "
                             "fractal dimension, graph, tortuosity; docs/morphology.md)")
    parser.add_argument("--figure", choices=COLOUR_BY,
                        help="also draw each photo's centreline coloured by vessel width or "
                             "tortuosity (<name>_width.png / <name>_tortuosity.png)")
    parser.add_argument("--batch-size", type=positive_int, metavar="N", default=EVAL_BATCH,
                        help=f"photos per model call (default: {EVAL_BATCH}; larger batches "
                             f"take more memory for little speed on a CPU, more on a GPU)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON (a list of rows) at the end")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs and results.csv of an earlier eval in --out")
    parser.add_argument("--path-column", metavar="NAME",
                        help="the column of photo paths in a .csv input (default: path, else "
                             "image)")
    add_engine_arguments(parser)
    return parser


ENGINES = ("local", "ray")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--engine and the Ray engine's options (docs/cohort.md)."""
    group = parser.add_argument_group("engine (many photos; docs/cohort.md)")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this process (default); ray: a pool of Ray workers, each "
                            "loading the model once (pip install \"vesselseg[ray]\")")
    group.add_argument("--address", metavar="ADDRESS",
                       help="ray: the Ray cluster to join, e.g. auto or ray://HEAD:10001 "
                            "(default: start a Ray on this machine); photos and --out must be "
                            "at the same paths on every node")
    group.add_argument("--workers", type=positive_int, metavar="N", default=1,
                       help="ray: model workers in the pool (default: 1)")
    group.add_argument("--gpus-per-worker", type=positive_float, metavar="G",
                       help="ray: GPUs each worker reserves, e.g. 1, or 0.5 to share one "
                            "(default: none)")


def summary_record(segmenter: Segmenter, inputs: Inputs, state: str,
                   results: list[EvalResult] | None = None, started: str = "",
                   morphology: MorphologyOptions = MorphologyOptions(),
                   counts: tuple[int, int] | None = None) -> dict:
    """summary.json; `counts` (photos this run, failed) stands for `results` when those were
    not kept."""
    from . import __version__

    record = {
        "vesselseg_version": __version__,
        "state": state,
        "started": started,
        "model": {"name": segmenter.model_name, "version": segmenter.model_version,
                  "source": segmenter.source},
        "settings": {"backend": segmenter.backend, "setting": segmenter.setting or "plain",
                     "threshold": segmenter.threshold,
                     "threshold_source": segmenter.threshold_source, "tta": segmenter.tta,
                     "scales": list(segmenter.scales),
                     "compute_precision": segmenter.compute_precision,
                     "working_size": segmenter.working_size,
                     "batch_size": segmenter.batch_size,
                     "morphology": morphology.enabled,
                     "pixel_size_um": morphology.pixel_size_um},
        "results_file": RESULTS,
        "skipped_files": [{"path": str(path), "reason": reason}
                          for path, reason in inputs.skipped],
    }
    if results is not None and counts is None:
        counts = (len(results), sum(1 for r in results if r.error))
    if counts is not None:
        record["finished"] = datetime.now(timezone.utc).isoformat()
        record["photos"] = {"this_run": counts[0], "failed": counts[1]}
    return record


def morphology_options(args: argparse.Namespace) -> MorphologyOptions:
    return MorphologyOptions(not args.no_morphology, args.pixel_size_um, args.figure)


def _main(args: argparse.Namespace) -> int:
    try:
        return _eval(args)
    except VesselsegError as exc:
        if exc.exit_code == 1:  # stopped before any photo was done: nothing processed
            exc.exit_code = NothingProcessed.exit_code
        raise
    except OSError as exc:  # the output cannot be written at all
        raise NothingProcessed(describe_os_error(exc)) from exc


def _eval(args: argparse.Namespace) -> int:
    from .process import limit_malloc_arenas

    limit_malloc_arenas()  # before the reader and writer threads start
    engine_options(args)  # a missing Ray, or a Ray flag without --engine ray: before any work
    inputs = collect_images(args.inputs, recursive=args.recursive, path_column=args.path_column)
    if args.resume and not args.out:
        raise VesselsegError("--resume needs the --out folder of the eval to continue")
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues an earlier eval and --overwrite replaces it: "
                          "pass one of them")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out is not None:
        refuse_overlap(out, [Path(p) for p in args.inputs if Path(p).is_dir()], "input folder")
    for path, reason in inputs.skipped:
        if not args.quiet:
            print(f"skipped: {path} ({reason})", file=sys.stderr)
    segmenter = eval_segmenter(args)
    if out is None:
        out = new_folder("artifacts/eval", "eval")
    started = datetime.now(timezone.utc).isoformat()
    if (out / SUMMARY).exists() and not (args.overwrite or args.resume):
        raise VesselsegError(f"{out / SUMMARY} already exists (an earlier eval); pass --resume "
                             f"to finish it, --overwrite to replace it, or choose another --out")
    with hold_folder(out, "eval"):  # one eval per folder: a second one is refused
        if args.overwrite and (out / SUMMARY).exists():
            return _replace_earlier_eval(out, args, inputs, segmenter, started)
        if args.overwrite:  # no earlier eval here: any file in the way is someone else's
            clashes = [path for paths in output_names(inputs, out).values()
                       for path in paths.values() if path.exists()]
            if clashes:
                raise VesselsegError(f"{clashes[0]} already exists and no eval wrote it (no "
                                     f"{SUMMARY} in {out}); --overwrite only replaces an "
                                     f"earlier eval's outputs: choose another --out")
        return _segment_into(out, args, inputs, segmenter, started)


def eval_segmenter(args: argparse.Namespace) -> Segmenter:
    """The Segmenter eval's flags ask for; each Ray worker builds its own with this too."""
    segmenter = segmenter_from_args(args)
    if args.batch_size:
        segmenter.batch_size = args.batch_size
    return segmenter


def engine_options(args: argparse.Namespace):
    """The Ray engine's options (None for --engine local), checked before any work: the Ray
    flags without --engine ray, or a missing Ray, are usage errors."""
    if args.engine != "ray":
        given = [flag for flag, value in (("--address", args.address),
                                          ("--gpus-per-worker", args.gpus_per_worker),
                                          ("--workers", args.workers != 1 or None)) if value]
        if given:
            raise ConfigError(f"{given[0]} is an option of the Ray engine: add --engine ray")
        return None
    from .ray_engine import RayOptions, import_ray

    import_ray()
    return RayOptions(workers=args.workers, gpus_per_worker=args.gpus_per_worker or 0.0,
                      address=args.address, verbose=args.verbose)


class _Tally:
    """Photos done and failed in this run, counted as they finish (nothing kept per photo)."""

    def __init__(self):
        self.count = self.failed = 0

    def add(self, result: EvalResult) -> None:
        self.count += 1
        self.failed += bool(result.error)


def earlier_eval_files(out: Path) -> set[Path]:
    """The files an earlier eval wrote in `out`, from its record: results.csv, summary.json
    and, per row of results.csv, the photo's PNGs (outputs and centreline figures)."""
    files = {out / RESULTS, out / SUMMARY}
    if (out / RESULTS).exists():
        import pandas as pd

        try:
            masks = pd.read_csv(out / RESULTS, usecols=["mask_file"], dtype=str,
                                keep_default_na=False)["mask_file"]
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise VesselsegError(f"{out / RESULTS}: cannot read the earlier eval's record "
                                 f"({exc}); --overwrite only replaces what eval wrote") from None
        for mask in filter(None, masks):
            stem = (out / mask).name[:-len("_mask.png")]
            files.update((out / mask).with_name(f"{stem}_{kind}.png")
                         for kind in OUTPUT_KINDS + COLOUR_BY)
    return files


def _foreign_files(out: Path) -> list[Path]:
    """Files in `out` that no earlier eval wrote (--overwrite must not replace them)."""
    from .locks import LOCK_NAME

    ours = earlier_eval_files(out)
    return sorted(path for path in out.rglob("*") if path.is_file() and path not in ours
                  and path.name != LOCK_NAME and not path.name.endswith(".part"))


def _replace_earlier_eval(out: Path, args: argparse.Namespace, inputs: Inputs,
                          segmenter: Segmenter, started: str) -> int:
    """--overwrite: segment into a hidden folder beside `out`, and only once that result is
    complete swap it in, so a failure, a kill or Ctrl-C half-way leaves the earlier eval whole.
    A folder that also holds files eval did not write is refused rather than emptied."""
    import shutil

    from .locks import LOCK_NAME
    from .outputs import replace_folder

    out = out.resolve()  # a linked --out: swap the folder it points to, not the link
    foreign = _foreign_files(out)
    if foreign:
        more = f" and {len(foreign) - 1} more file(s)" if len(foreign) > 1 else ""
        raise VesselsegError(f"--overwrite replaces a whole earlier eval, and {out} also holds "
                             f"{foreign[0]}{more}, which eval did not write; move it away or "
                             f"choose another --out")
    stage = out.parent / f".{out.name}.eval-new"
    if stage.exists():  # left by a killed --overwrite: out's lock is ours, so no one uses it
        shutil.rmtree(stage)
    stage.mkdir()
    swapped = False
    try:
        code = _segment_into(stage, args, inputs, segmenter, started, shown=out)
        shutil.copy2(out / LOCK_NAME, stage / LOCK_NAME)  # the swapped-in folder stays held
        replace_folder(out, stage)
        swapped = True
        return code
    except NothingProcessed as exc:
        exc.args = (f"{exc}; the earlier eval in {out} is kept",)
        raise
    finally:
        if not swapped:
            shutil.rmtree(stage, ignore_errors=True)


def _segment_into(out: Path, args: argparse.Namespace, inputs: Inputs, segmenter: Segmenter,
                  started: str, shown: Path | None = None) -> int:
    """Segment every photo into `out`; messages name `shown` (the folder the result will
    be in, when `out` is a staging folder)."""
    shown = shown or out

    def where(path: Path) -> Path:
        return shown / path.relative_to(out)

    write_text_atomic(out / SUMMARY, json.dumps(
        summary_record(segmenter, inputs, "running", started=started,
                       morphology=morphology_options(args)), indent=2) + "\n")

    tally = _Tally()

    def report(result: EvalResult) -> None:
        tally.add(result)
        if result.error:
            print(f"error: {result.error}", file=sys.stderr, flush=True)
        elif not (args.quiet or args.json):
            print(f"{result.path}: vessel density {100 * result.vessel_density:.2f} % of the "
                  f"FOV -> {where(result.outputs['overlay'])}", flush=True)

    # rows are kept only for --json: 100,000 photos' rows would take ~0.5 GB
    options = {"resume": args.resume, "quiet": args.quiet or args.json, "on_result": report,
               "morphology": morphology_options(args), "keep_results": args.json}
    ray_options = engine_options(args)
    if ray_options is not None:
        from functools import partial

        from .ray_engine import segment_images as segment_on_ray

        results = segment_on_ray(partial(eval_segmenter, args), inputs, out, ray_options,
                                 overwrite=False, **options)
    else:
        results = segment_images(segmenter, inputs, out, overwrite=False, **options)
    write_text_atomic(out / SUMMARY, json.dumps(
        summary_record(segmenter, inputs, "finished", None, started,
                       morphology_options(args), (tally.count, tally.failed)), indent=2) + "\n")
    if args.json:
        print(json.dumps([r.row for r in results], indent=2))
    if tally.count and tally.failed == tally.count:
        raise NothingProcessed(f"none of the {tally.count} photo(s) could be segmented "
                               f"(rows in {where(out / RESULTS)})")
    if tally.failed:
        print(f"error: {tally.failed} of {tally.count} photo(s) failed (rows in "
              f"{where(out / RESULTS)})", file=sys.stderr)
        return 1
    if not args.quiet and not args.json:
        print(f"results: {where(out / RESULTS)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":  # the package's module, not a copy named __main__: the Ray
    from vesselseg.cli import exit_now_if_model_call_abandoned  # engine pickles its
    from vesselseg.eval import main as package_main  # classes by name

    sys.exit(exit_now_if_model_call_abandoned(package_main()))
