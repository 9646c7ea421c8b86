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

from .inference import Segmenter
from .metadata import threshold_for  # noqa: F401 - part of the runtime's API


def load(path: str | Path, backend: str | None = None, fmt: str | None = None,
         **kwargs) -> Segmenter:
    """The Segmenter of the export at `path` (`Segmenter.from_export`: format `fmt`, default from
    the file; `backend`, when given, must match it; kwargs as for Segmenter)."""
    return Segmenter.from_export(path, backend=backend, fmt=fmt, **kwargs)
