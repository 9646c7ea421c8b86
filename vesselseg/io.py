"""Reading images and annotations of any common format, and writing outputs atomically.

Every reader failure becomes an ImageReadError naming the file, so a folder with one odd file can be
reported and skipped instead of crashing a whole run.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import ImageReadError

#: Largest image accepted (pixels). HRF is 8.2 Mpx; a 50000x50000 "decompression bomb" is refused.
MAX_PIXELS = 120_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".bmp",
                  ".webp", ".ppm.gz", ".pgm.gz")

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of the supported image extensions (any case)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES) and not name.startswith(".")


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(path, "is empty (0 bytes)")
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, ValueError) as exc:
            raise ImageReadError(path, f"is not a valid gzip file ({exc})") from exc
        if not data:
            raise ImageReadError(path, "is empty after gzip decompression")
    return data


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit / float data into 0..255; 8-bit data passes unchanged."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if np.issubdtype(array.dtype, np.floating) and top <= 1.0:
        scale = 255.0
    else:
        # 16-bit sensors often fill only 10-14 bits: stretch by the real maximum, not by 65535.
        scale = 255.0 / top if top > 255 else 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _decode_with_pil(data: bytes, path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise ImageReadError(path, f"declares {width}x{height} pixels, more than the "
                                           f"{MAX_PIXELS:,} accepted (decompression bomb?)")
            im.load()
            im = ImageOps.exif_transpose(im) or im
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return _to_uint8(np.asarray(im))
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                # Composite on black: fundus backgrounds are black, so the FOV estimate still works.
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
            return np.asarray(im.convert("RGB") if mode != "L" else im)


def _decode_with_cv2(data: bytes) -> np.ndarray | None:
    buffer = np.frombuffer(data, dtype=np.uint8)
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        return None
    if decoded.ndim == 3:
        if decoded.shape[2] == 4:
            decoded = cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
        else:
            decoded = cv2.cvtColor(decoded[..., :3], cv2.COLOR_BGR2RGB)
    return _to_uint8(decoded)


def _decode(path: str | Path) -> np.ndarray:
    path = Path(path)
    data = _read_bytes(path)
    try:
        array = _decode_with_pil(data, path)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"refused as a decompression bomb ({exc})") from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageReadError(path, f"refused as a decompression bomb ({exc})") from exc
    except Exception as pil_error:  # PIL raises many types on bad data; cv2 may still read it
        try:
            fallback = _decode_with_cv2(data)
        except Exception:  # noqa: BLE001 - any decoder failure means "not an image"
            fallback = None
        if fallback is None:
            raise ImageReadError(path, f"is not a readable image ({type(pil_error).__name__}: "
                                       f"{pil_error})") from pil_error
        array = fallback
    if array.ndim not in (2, 3) or array.shape[0] < 8 or array.shape[1] < 8:
        raise ImageReadError(path, f"has an unusable shape {array.shape} (need at least 8x8 pixels)")
    return np.ascontiguousarray(array)


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported photo as HxWx3 uint8 RGB (grayscale is replicated, alpha dropped)."""
    array = _decode(path)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_mask(path: str | Path, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an annotation or FOV mask as a boolean HxW array.

    Threshold (documented): files holding only 0 and 1 are labels; otherwise a pixel is foreground
    when its 8-bit gray value is at least 128. Colour masks are converted to gray first.
    """
    array = _decode(path)
    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array[..., :3]), cv2.COLOR_RGB2GRAY)
    mask = array > 0 if int(array.max(initial=0)) <= 1 else array >= 128
    if expected_shape is not None and mask.shape != tuple(expected_shape):
        raise ImageReadError(path, f"has size {mask.shape[1]}x{mask.shape[0]} but its image is "
                                   f"{expected_shape[1]}x{expected_shape[0]}")
    return mask


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 gray or RGB array (lossless)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write bytes so that readers never see a half-written file."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8/bool image as PNG atomically (works with non-ASCII paths, unlike cv2.imwrite)."""
    return write_bytes_atomic(path, encode_png(array))
