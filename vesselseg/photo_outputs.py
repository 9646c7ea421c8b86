"""One photo's outputs and results.csv row: what both eval engines (this process, or Ray
workers) write for a photo, so that their files and rows are the same.

`start_results` opens an eval's results.csv and says which photos remain; `finish_photo` writes a
segmented photo's three PNGs (all or none), measures its vessels and builds its row. The eval
command (`vesselseg.eval`) and the Ray engine (`vesselseg.ray_engine`) both call them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .cli import describe_os_error
from .errors import VesselsegError
from .inference import Prediction, Segmenter
from .io import write_png
from .morphology import save_centreline_figure
from .outputs import write_probability
from .results import ResultsFile

OUTPUT_KINDS = ("probability", "mask", "overlay")
#: results.csv, one row per photo: the photo and its outcome, the model, then the vessel
#: measurements (`morphology.COLUMNS`; `morphology_reason` says why values are empty).
BASE_COLUMNS = ("image", "status", "error", "width", "height", "fov_area_px", "vessel_density",
                "mask_file", "model", "model_version", "setting", "threshold")


def morphology_columns() -> tuple[str, ...]:
    from .morphology import COLUMNS as MEASURED

    return tuple("morphology_reason" if name == "reason" else name
                 for name in MEASURED if name not in BASE_COLUMNS)


def result_columns(morphology: bool = True, ids: bool = False) -> tuple[str, ...]:
    """results.csv's columns; `ids` adds an "id" column after "image" (a CSV input with ids)."""
    base = BASE_COLUMNS[:1] + ("id",) + BASE_COLUMNS[1:] if ids else BASE_COLUMNS
    return base + (morphology_columns() if morphology else ())
RESULTS, SUMMARY = "results.csv", "summary.json"


@dataclass
class EvalResult:
    path: Path
    outputs: dict[str, Path]
    vessel_density: float | None
    error: str | None = None
    row: dict = field(default_factory=dict)


@dataclass
class Inputs:
    """The photos to segment, and the files that were passed over (named, never silent)."""

    images: list[Path]
    skipped: list[tuple[Path, str]]
    roots: dict[Path, Path]  # photo -> the folder it was found in (outputs mirror subfolders)
    #: From a CSV of photos (`photo_lists`): a photo's id (its row's id, its output files'
    #: name) and its pixel size (over --pixel-size-um).
    ids: dict[Path, str] = field(default_factory=dict)
    pixel_sizes: dict[Path, float] = field(default_factory=dict)


def output_names(inputs: Inputs | list[Path], out: Path) -> dict[Path, dict[str, Path]]:
    """Output paths per photo, mirroring subfolders of a recursive search; photos sharing a
    stem get a numeric suffix instead of clashing."""
    if not isinstance(inputs, Inputs):
        inputs = Inputs(list(inputs), [], {})
    used: set[Path] = set()
    names: dict[Path, dict[str, Path]] = {}
    for image in inputs.images:
        root = inputs.roots.get(image)
        folder = out / image.parent.relative_to(root) if root is not None else out
        stem = image.name[:-3] if image.name.lower().endswith(".gz") else image.name
        stem = Path(stem).stem
        if image in inputs.ids:  # checked by photo_lists: plain names, inside `out`
            folder, stem = (out / inputs.ids[image]).parent, Path(inputs.ids[image]).name
        candidate, counter = folder / stem, 1
        while candidate in used:
            counter += 1
            candidate = folder / f"{stem}-{counter}"
        used.add(candidate)
        names[image] = {kind: candidate.with_name(f"{candidate.name}_{kind}.png")
                        for kind in OUTPUT_KINDS}
    return names


def _write_outputs(outputs: dict[str, Path], image, prediction: Prediction) -> None:
    """All three outputs of a photo, or none of them."""
    from .plots import overlay  # here, not at import: matplotlib costs start-up ~1 s

    try:
        write_probability(outputs["probability"], prediction.probability)
        write_png(outputs["mask"], prediction.mask)
        write_png(outputs["overlay"], overlay(image, prediction.mask))
    except BaseException:
        for path in outputs.values():
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise


def remove_unfinished_files(out: Path) -> int:
    """Delete the temporary files a killed eval left in `out` (io.atomic_path's
    .<name>.<random>.part for outputs eval writes); returns how many."""
    names = tuple(f"_{kind}.png" for kind in OUTPUT_KINDS) + (RESULTS, SUMMARY)
    removed = 0
    for part in out.rglob(".*.part"):
        target = part.name[1:-len(".part")].rsplit(".", 1)[0]  # .a_mask.png.x1y2.part
        if target.endswith(names):
            part.unlink(missing_ok=True)
            removed += 1
    return removed


def result_row(path: Path, segmenter: Segmenter, prediction: Prediction | None = None,
               mask_file: str = "", error: str | None = None,
               measurements: dict | None = None) -> dict:
    """The results.csv row of one photo (a failed photo keeps its path, status and error)."""
    row = dict.fromkeys(BASE_COLUMNS)
    row.update(image=str(path), status="failed" if error else "done", error=error or "",
               model=segmenter.model_name, model_version=segmenter.model_version,
               setting=segmenter.setting or "plain", threshold=segmenter.threshold)
    if prediction is not None:
        height, width = prediction.mask.shape
        row.update(width=width, height=height, fov_area_px=int(prediction.fov.sum()),
                   vessel_density=prediction.vessel_density, mask_file=mask_file)
    if measurements is not None:
        row.update({"morphology_reason" if key == "reason" else key: value
                    for key, value in measurements.items() if key not in BASE_COLUMNS})
    return row


def _measure(prediction: Prediction, pixel_size_um: float | None) -> dict:
    """The photo's measurements; a failure of the measuring itself empties them with the
    reason, and the photo keeps its row and masks."""
    try:
        return prediction.morphology(pixel_size_um)
    except (ValueError, MemoryError, RuntimeError) as exc:
        return {"reason": f"measurement failed: {type(exc).__name__}: {exc}"}


@dataclass(frozen=True)
class MorphologyOptions:
    """What eval measures besides vessel density: `enabled` adds the morphology columns;
    `pixel_size_um` fills their micrometre versions; `figure` ("width" / "tortuosity")
    draws each photo's centreline coloured by it."""

    enabled: bool = True
    pixel_size_um: float | None = None
    figure: str | None = None


def finish_photo(path: Path, image, prediction, outputs: dict[str, Path], out: Path,
                 segmenter: Segmenter, columns: list[str],
                 morphology: MorphologyOptions = MorphologyOptions(),
                 pixel_size_um: float | None = None, photo_id: str | None = None) -> EvalResult:
    """One photo after the model: its PNGs written atomically (all three or none), its
    measurements, its results.csv row (`columns`). Both engines call this, so their files and
    rows are the same; rewriting a photo (a retried Ray task) replaces the same files whole.
    `pixel_size_um` (a CSV's per-photo value) overrides morphology.pixel_size_um."""
    pixel_size = pixel_size_um if pixel_size_um is not None else morphology.pixel_size_um
    measurements, mask_file = None, ""
    if isinstance(prediction, Exception):
        result = EvalResult(path, {}, None, str(prediction))
    else:
        try:
            _write_outputs(outputs, image, prediction)
            mask_file = os.path.relpath(outputs["mask"], out)
            result = EvalResult(path, outputs, prediction.vessel_density)
            if morphology.enabled:
                measurements = _measure(prediction, pixel_size)
            if morphology.figure:
                figure = outputs["mask"].with_name(
                    outputs["mask"].name.replace("_mask.png", f"_{morphology.figure}.png"))
                save_centreline_figure(figure, image, prediction.mask, prediction.fov,
                                       morphology.figure, pixel_size, title=path.name)
                result.outputs = {**result.outputs, morphology.figure: figure}
        except OSError as exc:
            result = EvalResult(path, {}, None, f"{path}: cannot write outputs "
                                                f"({describe_os_error(exc)})")
            prediction, mask_file = None, ""
    error = result.error
    row = result_row(path, segmenter, None if error else prediction,
                     "" if error else mask_file, error,
                     measurements if morphology.enabled and not error else None)
    row["id"] = photo_id or ""
    result.row = {column: row.get(column) for column in columns}
    return result


def failed_row(path: Path, columns: list[str], inputs: Inputs, error: str) -> dict:
    """The row of a photo that never came back from the model (its worker died)."""
    row = dict.fromkeys(columns)
    row.update(image=str(path), status="failed", error=error, id=inputs.ids.get(path, ""))
    return {column: row[column] for column in columns}


def start_results(inputs: Inputs, out: Path, overwrite: bool, resume: bool,
                  morphology: MorphologyOptions
                  ) -> tuple[dict[Path, dict[str, Path]], ResultsFile, list[Path]]:
    """Both engines' start: the output names, results.csv opened (earlier results refused
    unless `overwrite` or `resume`; with `resume` its complete rows kept and a killed run's
    temporary files removed) and the photos still to do, in input order."""
    names = output_names(inputs, out)
    table = ResultsFile(out / RESULTS, result_columns(morphology.enabled, bool(inputs.ids)),
                        key="image")
    if table.path.exists() and not (overwrite or resume):
        raise VesselsegError(f"{table.path} already exists (an earlier eval); pass --resume to "
                             f"finish it, --overwrite to replace it, or choose another --out")
    if not (overwrite or resume):
        existing = [p for paths in names.values() for p in paths.values() if p.exists()]
        if existing:
            raise VesselsegError(f"{existing[0]} already exists ({len(existing)} output files "
                                 f"would be replaced); pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        remove_unfinished_files(out)
    done = table.start(resume)
    return names, table, [image for image in inputs.images if str(image) not in done]
