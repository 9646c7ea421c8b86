"""The record an export carries inside itself, so that the file alone reproduces `eval`.

One JSON object (`describe_run`): the preprocessing settings (PreprocessConfig), the working
size and tiling, the decision threshold of every inference setting (threshold.json), the model's
name and version, vesselseg's version and the input/output contract. It lives where each
format keeps such things, under the key `vesselseg` (METADATA_KEY):

- onnx: a model metadata property (`metadata_props`; `onnx` or ONNX Runtime read it);
- tflite: a metadata entry of the flatbuffer (read here with the `flatbuffers` package only);
- savedmodel: the file assets/vesselseg.json inside the SavedModel folder.

Reading needs no TensorFlow (the runtime uses it with TensorFlow absent); writing the TFLite
entry uses the flatbuffer schema of TensorFlow or LiteRT, at export time.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from .errors import ModelFileError

METADATA_KEY = "vesselseg"
#: Version of the record's layout (a reader refuses a newer one rather than misread it).
SCHEMA = 1
SAVEDMODEL_FILE = Path("assets") / "vesselseg.json"
FORMATS = ("onnx", "tflite", "savedmodel")
#: The plain inference setting's name in `thresholds` (inference.setting_key gives "").
PLAIN = "plain"


# -- building ----------------------------------------------------------------------------------
def describe_run(run, fmt: str, size: int, precision: str = "float32",
                 tile_overlap: int = 64, extra: dict | None = None) -> dict:
    """The record of an export of `run` (a RunFolder) in `fmt`, taking [N, size, size, 3]."""
    from . import __version__
    from .config import to_dict

    config = run.config()
    status = run.status()
    record = run.threshold_record()
    thresholds = {}
    if run.threshold_path.exists():
        thresholds[PLAIN] = run.threshold("")[0]
        for setting in sorted(record.get("settings", {}) or {}):
            thresholds[setting] = run.threshold(setting)[0]
    name = "pretrained" if run.is_shipped else run.path.name
    facts = {
        "schema": SCHEMA,
        "vesselseg_version": __version__,
        "model": {"name": status.get("model_name") or name,
                  "version": status.get("model_version") or status.get("fingerprint", ""),
                  "fingerprint": status.get("fingerprint", ""),
                  "source_sha256": run.model_sha256(),
                  "architecture": config.architecture, "base_filters": config.base_filters,
                  "depth": config.depth},
        "format": fmt,
        "precision": precision,
        "preprocess": to_dict(config.preprocess),
        "working_size": config.working_size or config.preprocess.size,
        "tiling": {"window": size, "overlap": tile_overlap, "depth": config.depth},
        "thresholds": thresholds,
        "default_threshold": thresholds.get(PLAIN, 0.5),
        "threshold_how": record.get("how", "no threshold.json: 0.5") if record else
        "no threshold.json: 0.5",
        "input": {"shape": [None, size, size, 3], "dtype": "float32", "layout": "NHWC",
                  "values": "RGB / 255 of the photo prepared by vesselseg (FOV crop to a "
                            "square, resize to the working size, enhancement), windows of "
                            "`tiling.window` when the working size is larger"},
        "output": {"shape": [None, size, size, 1], "dtype": "float32",
                   "meaning": "vessel probability; mapped back to the photo's native size, "
                              "vessel = probability >= threshold inside the FOV"},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    facts.update(extra or {})
    return facts


def to_json(facts: dict) -> str:
    return json.dumps(facts, sort_keys=True)


# -- writing -----------------------------------------------------------------------------------
def embed_onnx(path: Path, facts: dict) -> None:
    """Set the `vesselseg` metadata property of the ONNX file at `path` (rewritten in place)."""
    import onnx

    model = onnx.load(str(path))
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=to_json(facts))
    model.doc_string = (f"vesselseg {facts['model']['name']} {facts['model']['version']}: "
                        f"vessel probabilities; see the '{METADATA_KEY}' metadata property")
    onnx.save(model, str(path))


def _flatbuffer_utils():
    try:
        from tensorflow.lite.tools import flatbuffer_utils
    except ImportError:
        from ai_edge_litert.tools import flatbuffer_utils
    return flatbuffer_utils


def embed_tflite(data: bytes, facts: dict) -> bytes:
    """`data` (a .tflite flatbuffer) with a `vesselseg` metadata entry holding the record."""
    utils = _flatbuffer_utils()
    schema = utils.schema_fb
    model = utils.convert_bytearray_to_object(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = list(to_json(facts).encode("utf-8"))
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or [])
                      if _decode(m.name) != METADATA_KEY] + [entry]
    return bytes(utils.convert_object_to_bytearray(model))


def _decode(name) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def embed_savedmodel(folder: Path, facts: dict) -> None:
    """Write the record into the SavedModel folder (assets/vesselseg.json)."""
    target = folder / SAVEDMODEL_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# -- reading (no TensorFlow) -------------------------------------------------------------------
def export_format(path: str | Path) -> str:
    """onnx, tflite or savedmodel, from the file itself (a folder with saved_model.pb, the
    TFLite file identifier) or else its name; a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise ModelFileError(f"{path}: a folder without saved_model.pb is not a SavedModel "
                             f"export")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() == ".keras":
        raise ModelFileError(f"{path}: a Keras model, not an export; run it with --run (its run "
                             f"folder) or export it with vesselseg export")
    raise ModelFileError(f"{path}: not an export vesselseg knows (expected a .onnx file, a "
                         f".tflite file or a SavedModel folder)")


def read_onnx_metadata(path: Path, session=None) -> str | None:
    """The property's text, through an ONNX Runtime session (given or opened here) or `onnx`."""
    if session is None:
        try:
            import onnx
        except ImportError:  # a runtime-only install: ONNX Runtime reads it too
            import onnxruntime as ort

            try:
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped errors
                raise ModelFileError(f"{path}: not a loadable ONNX model ({exc})") from None
        else:
            try:
                model = onnx.load(str(path), load_external_data=False)
            except Exception as exc:  # noqa: BLE001 - protobuf decode errors are untyped
                raise ModelFileError(f"{path}: not a readable ONNX model ({exc})") from None
            return next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)


def read_tflite_metadata(data: bytes) -> str | None:
    """The `vesselseg` metadata entry of a .tflite flatbuffer, read with `flatbuffers` alone:
    Model.metadata (field 6) -> Metadata{name, buffer} -> Model.buffers (field 4) -> data."""
    from flatbuffers import encode, number_types, table

    buf = bytearray(data)
    model = table.Table(buf, encode.Get(number_types.UOffsetTFlags.packer_type, buf, 0))

    def vector(tab, field_index: int) -> tuple[int, int]:
        offset = tab.Offset(4 + 2 * field_index)
        return (tab.Vector(offset), tab.VectorLen(offset)) if offset else (0, 0)

    def child(tab, start: int, index: int):
        return table.Table(buf, tab.Indirect(start + 4 * index))

    start, count = vector(model, 6)
    for i in range(count):
        entry = child(model, start, i)
        name_offset = entry.Offset(4)
        if not name_offset or entry.String(name_offset + entry.Pos).decode() != METADATA_KEY:
            continue
        index_offset = entry.Offset(6)
        index = entry.Get(number_types.Uint32Flags, index_offset + entry.Pos) if index_offset \
            else 0
        b_start, b_count = vector(model, 4)
        if index >= b_count:
            return None
        buffer = child(model, b_start, index)
        d_start, d_len = vector(buffer, 0)
        if d_len:
            return bytes(buf[d_start:d_start + d_len]).decode("utf-8")
        off_o, size_o = buffer.Offset(6), buffer.Offset(8)  # models over 2 GB keep data after
        if off_o and size_o:
            begin = buffer.Get(number_types.Uint64Flags, off_o + buffer.Pos)
            size = buffer.Get(number_types.Uint64Flags, size_o + buffer.Pos)
            return bytes(buf[begin:begin + size]).decode("utf-8")
        return None
    return None


def read_metadata(path: str | Path, fmt: str | None = None, session=None) -> dict:
    """The `vesselseg` record of an export; a clear error when it has none (an export from
    before records were embedded, or not a vesselseg model)."""
    path = Path(path)
    fmt = fmt or export_format(path)
    try:
        if fmt == "onnx":
            text = read_onnx_metadata(path, session)
        elif fmt == "tflite":
            text = read_tflite_metadata(path.read_bytes())
        elif fmt == "savedmodel":
            file = path / SAVEDMODEL_FILE
            text = file.read_text(encoding="utf-8") if file.exists() else None
        else:
            raise ModelFileError(f"format: unknown {fmt!r}; valid formats: {', '.join(FORMATS)}")
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read its {fmt} metadata ({exc})") from None
    if text is None:
        raise ModelFileError(f"{path}: this {fmt} export carries no vesselseg metadata (made "
                             f"before exports described themselves, or not by vesselseg); "
                             f"re-export it with: vesselseg export --run RUN --format {fmt} "
                             f"--out {path} --overwrite")
    try:
        facts = json.loads(text)
    except ValueError as exc:
        raise ModelFileError(f"{path}: its vesselseg metadata is not JSON ({exc})") from None
    if not isinstance(facts, dict) or not isinstance(facts.get("schema"), int):
        raise ModelFileError(f"{path}: its vesselseg metadata is not a vesselseg record")
    if facts["schema"] > SCHEMA:
        raise ModelFileError(f"{path}: metadata schema {facts['schema']} is newer than this "
                             f"vesselseg reads ({SCHEMA}); upgrade vesselseg")
    return facts


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
