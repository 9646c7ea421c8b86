"""Run a self-describing export (ONNX, TFLite or SavedModel) without TensorFlow.

    from vesselseg.runtime import load
    segmenter = load("/models/vesselseg.onnx")      # any path; no TensorFlow, no Keras
    prediction = segmenter.predict("photo.png")     # .probability, .mask, .fov at native size

`load` reads the record the export carries (`metadata`: preprocessing, working size, tiling,
thresholds, model name and version) and builds the same `Segmenter` that `eval` uses around the
ONNX Runtime or LiteRT runner, so a photo goes through exactly eval's steps: FOV estimate,
preprocessing, whole or tiled inference, mapping back to the native size, threshold. Nothing
here (nor in what it imports) imports TensorFlow or Keras for ONNX and TFLite files; a test
blocks their import and segments a photo. A SavedModel needs TensorFlow to run.
"""
from __future__ import annotations

from pathlib import Path

from .backends import load_runner
from .config import PreprocessConfig, from_dict
from .errors import ConfigError, ModelFileError
from .inference import Segmenter, setting_key
from .metadata import PLAIN, export_format, read_metadata


def threshold_for(facts: dict, setting: str) -> tuple[float, str]:
    """(threshold, source) of an inference setting from an export's record, with the same
    fallbacks as a run folder (`RunFolder.threshold`)."""
    thresholds = facts.get("thresholds") or {}
    if not thresholds:
        return 0.5, "default 0.5 (the run had no threshold.json)"
    if setting in thresholds:
        return float(thresholds[setting]), "validation"
    if setting and PLAIN in thresholds:
        return float(thresholds[PLAIN]), "validation, plain setting"
    return float(facts.get("default_threshold", 0.5)), "validation"


def load(path: str | Path, backend: str | None = None, fmt: str | None = None,
         **kwargs) -> Segmenter:
    """The Segmenter of the export at `path` (format `fmt`, default from the file; `backend`,
    when given, must match it). kwargs as for Segmenter (tta, scales, threshold, working_size,
    batch_size...); the threshold defaults to the one the run chose on validation images for
    that setting."""
    path = Path(path)
    fmt = fmt or export_format(path)
    if backend is not None and backend not in ("keras", fmt):
        raise ConfigError(f"backend: {path} is a {fmt} export, not {backend}; pass "
                          f"--backend {fmt} or leave --backend out")
    runner = load_runner(fmt, path)
    facts = read_metadata(path, fmt, session=getattr(runner, "session", None))
    try:
        preprocess = from_dict(PreprocessConfig, facts["preprocess"])
        tiling = facts["tiling"]
        working = int(facts["working_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: its vesselseg metadata is incomplete ({exc})") from None
    if kwargs.get("working_size") is None:
        kwargs["working_size"] = working
    kwargs.setdefault("tile_overlap", int(tiling.get("overlap", 64)))
    threshold = kwargs.pop("threshold", None)
    source = "given"
    if threshold is None:
        setting = setting_key(kwargs.get("tta", False), tuple(kwargs.get("scales", (1.0,))))
        threshold, source = threshold_for(facts, setting)
    runner.precision = str(facts.get("precision", "float32"))
    segmenter = Segmenter(None, preprocess, threshold=threshold, source=str(path),
                          runner=runner, backend=fmt, depth=int(tiling.get("depth", 4)),
                          **kwargs)
    segmenter.threshold_source = source
    model = facts.get("model") or {}
    segmenter.model_name = str(model.get("name", ""))
    segmenter.model_version = str(model.get("version", ""))
    segmenter.metadata = facts
    return segmenter
