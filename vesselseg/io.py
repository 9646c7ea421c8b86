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
import zlib
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


def is_plain_name(name: str) -> bool:
    """True for a name that stays inside the folder it is joined to: no separator, not . or ..
    (run names and manifest ids become file and folder names)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


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
        data = _gunzip(data, path)
        if not data:
            raise ImageReadError(path, "is empty after gzip decompression")
    return data


#: Most bytes a .gz image may inflate to (16-bit RGBA at MAX_PIXELS plus headers).
MAX_GUNZIP_BYTES = MAX_PIXELS * 8 + 2**20


def _gunzip(data: bytes, path: Path) -> bytes:
    """Inflate a .gz image without letting a gzip bomb exhaust memory.

    The image header is checked first (declared size), and the output is capped in any case.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
            head = handle.read(65536)
            _check_declared_size(head, path)
            rest = handle.read(MAX_GUNZIP_BYTES + 1 - len(head))
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise ImageReadError(path, f"is not a valid gzip file ({exc})") from exc
    if len(head) + len(rest) > MAX_GUNZIP_BYTES:
        raise ImageReadError(path, f"inflates to more than {MAX_GUNZIP_BYTES:,} bytes "
                                   f"(decompression bomb?)")
    return head + rest


def _check_declared_size(head: bytes, path: Path) -> None:
    """Refuse an image whose header declares more than MAX_PIXELS (when PIL can read the header)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(head)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"refused as a decompression bomb ({exc})") from exc
    except Exception:  # noqa: BLE001 - header unreadable here; the full decode will report it
        return
    if width * height > MAX_PIXELS:
        raise ImageReadError(path, f"declares {width}x{height} pixels, more than the "
                                   f"{MAX_PIXELS:,} accepted (decompression bomb?)")


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
            if _is_16bit_colour(im, data):
                # PIL keeps only the high byte of 16-bit colour: a 12-bit photo would turn black.
                decoded = _decode_with_cv2(data)
                if decoded is not None:
                    return _orient(decoded, im.getexif().get(_ORIENTATION, 1))
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


_ORIENTATION = 0x0112
_TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}


def _is_16bit_colour(im: Image.Image, data: bytes) -> bool:
    """True for 16-bit-per-channel colour PNG/TIFF, which PIL opens as 8-bit RGB(A)."""
    if im.mode not in ("RGB", "RGBA"):
        return False
    if im.format == "PNG":
        return len(data) > 24 and data[24] == 16  # IHDR bit depth
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258, ())
        bits = bits if isinstance(bits, tuple) else (bits,)
        return any(b == 16 for b in bits)
    return False


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to a uint8 array, as ImageOps.exif_transpose does."""
    method = _TRANSPOSES.get(orientation)
    if method is None:
        return array
    return np.asarray(Image.fromarray(array).transpose(method))


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
        raise ImageReadError(path, f"has an unusable shape {array.shape} "
                                   f"(need at least 8x8 pixels)")
    return np.ascontiguousarray(array)


def read_image(path: str | Path) -> np.ndarray:
    """Read any supported photo as HxWx3 uint8 RGB.

    Grayscale is replicated; transparent pixels are composited on black (the fundus background);
    16-bit data is stretched by its maximum; the EXIF orientation is applied.
    """
    array = _decode(path)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_levels(path: str | Path) -> np.ndarray:
    """The 8-bit values of a gray image as stored (no thresholding): e.g. the vessel coverage
    that `preprocess` writes into vessels/."""
    array = _decode(path)
    return array[..., :3].max(axis=2) if array.ndim == 3 else array


def read_mask(path: str | Path, expected_shape: tuple[int, int] | None = None,
              notes: list[str] | None = None) -> np.ndarray:
    """Read an annotation or FOV mask as a boolean HxW array.

    Threshold (documented): files holding only 0 and 1 are labels; otherwise a pixel is foreground
    when its 8-bit value is at least 128. Colour masks use their brightest channel, so an annotation
    drawn in pure red, green or blue counts (their gray value would be below 128).

    With `notes`, a message naming the file is appended when the mask is not binary (it was
    thresholded) or has no foreground pixel at all: suspicious, but not an error.
    """
    array = _decode(path)
    if array.ndim == 3:
        array = array[..., :3].max(axis=2)
    top = int(array.max(initial=0))
    mask = array > 0 if top <= 1 else array >= 128
    if expected_shape is not None and mask.shape != tuple(expected_shape):
        raise ImageReadError(path, f"has size {mask.shape[1]}x{mask.shape[0]} but its image is "
                                   f"{expected_shape[1]}x{expected_shape[0]}")
    if notes is not None:
        between = int(np.count_nonzero((array > 0) & (array < top)))
        if between:
            notes.append(f"{path}: not binary ({between} pixels between 0 and {top}); "
                         f"thresholded at 128 as documented")
        if not mask.any():
            notes.append(f"{path}: no foreground pixel" + (
                f" after thresholding at 128 (its brightest value is {top})" if top > 1 else
                " (all zero)"))
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


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: os.umask is process-wide and not thread-safe


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
        # mkstemp creates the file private (0600); give the result the usual permissions.
        os.chmod(tmp, 0o666 & ~_UMASK)
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
    """Write a uint8/bool image as PNG atomically (non-ASCII paths work, unlike cv2.imwrite)."""
    return write_bytes_atomic(path, encode_png(array))


def composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA uint8 photo laid on black, as transparent files are read: fundus
    backgrounds are black, so the FOV estimate still works."""
    image = Image.fromarray(np.ascontiguousarray(rgba), "RGBA")
    background = Image.new("RGBA", image.size, (0, 0, 0, 255))
    return np.asarray(Image.alpha_composite(background, image).convert("RGB"))


def pil_to_array(image: Image.Image) -> np.ndarray:
    """An open PIL image as a uint8 array (HxW or HxWx3), converted as files are read: EXIF
    orientation applied, 16-bit and float modes scaled, transparency composited on black."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return composite_on_black(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB") if image.mode != "L" else image)
