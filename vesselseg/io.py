"""Reading images and annotations of any common format, and writing outputs atomically.

Every reader failure becomes an ImageReadError naming the file, so a folder with one odd file can be
reported and skipped instead of crashing a whole run.

One reader for every decoder: the size a file declares in its header (PIL's, or the header parsed
here for what PIL cannot decode correctly: TIFF, Radiance HDR, PFM) is checked before any pixel is
decoded: at most MAX_PIXELS pixels, MAX_SIDE pixels a side, an aspect ratio of MAX_ASPECT:1 and
MAX_DECODED_BYTES of samples. A file whose size no header gives is refused.

Over 350 lines: one reader with the same guards for every decoder (header sizes, orientation,
bit depths) and the atomic writers; kept together so no decoder can bypass a guard.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile

from .errors import ImageReadError

#: Largest image accepted (pixels). HRF is 8.2 Mpx; a 50000x50000 "decompression bomb" is refused.
MAX_PIXELS = 120_000_000
#: Longest side accepted (pixels), whatever the pixel count.
MAX_SIDE = 20_000
#: Most elongated photo accepted (long side / short side): a fundus photo is roughly square, and
#: its square FOV crop costs up to the square of the long side in memory.
MAX_ASPECT = 4.0
#: Most bytes the decoded samples may take (16-bit RGB at MAX_PIXELS): 32-bit float or 64-bit
#: data is accepted up to proportionally fewer pixels.
MAX_DECODED_BYTES = MAX_PIXELS * 6
#: Most bytes a .gz image may inflate to (16-bit RGBA at MAX_PIXELS plus headers).
MAX_GUNZIP_BYTES = MAX_PIXELS * 8 + 2**20
#: Largest image file read (an uncompressed image at the limits above fits).
MAX_FILE_BYTES = MAX_GUNZIP_BYTES
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".bmp",
                  ".webp", ".ppm.gz", ".pgm.gz")

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class InputWarning(UserWarning):
    """A usable but suspicious input (e.g. only the first frame of a multi-page file is used).

    The readers append the message to `notes` when given one, else warn with this category."""


def _note(notes: list[str] | None, message: str) -> None:
    if notes is None:
        warnings.warn(message, InputWarning, stacklevel=2)
    else:
        notes.append(message)


def is_plain_name(name: str) -> bool:
    """True for a name that stays inside the folder it is joined to: no separator, not . or ..
    (run names and manifest ids become file and folder names)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of the supported image extensions (any case)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES) and not name.startswith(".")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, after checking from its status that reading them ends: a FIFO (or a
    device, a socket) named like an image would block or never end, a huge file would fill the
    memory."""
    import stat

    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    try:
        status = path.stat()
    except OSError as exc:
        raise ImageReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    mode, size = status.st_mode, status.st_size
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a special file")
        raise ImageReadError(path, f"is {kind}, not a regular image file")
    if size > MAX_FILE_BYTES:
        raise ImageReadError(path, f"is {size:,} bytes, more than the {MAX_FILE_BYTES:,} of the "
                                   f"largest image accepted")
    try:
        with open(path, "rb") as handle:  # a file grown since its status is cut at the limit
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ImageReadError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(path, f"is more than the {MAX_FILE_BYTES:,} bytes of the largest "
                                   f"image accepted")
    if not data:
        raise ImageReadError(path, "is empty (0 bytes)")
    if path.name.lower().endswith(".gz"):
        data = _gunzip(data, path)
        if not data:
            raise ImageReadError(path, "is empty after gzip decompression")
    return data




def _gunzip(data: bytes, path: Path) -> bytes:
    """Inflate a .gz image without letting a gzip bomb exhaust memory.

    The image header is checked first (declared size), and the output is capped in any case.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
            head = handle.read(65536)
            with contextlib.suppress(_Unsized):  # header cut short here: the full read decides
                _probe(head, path)
            rest = handle.read(MAX_GUNZIP_BYTES + 1 - len(head))
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise ImageReadError(path, f"is not a valid gzip file ({exc})") from exc
    if len(head) + len(rest) > MAX_GUNZIP_BYTES:
        raise ImageReadError(path, f"inflates to more than {MAX_GUNZIP_BYTES:,} bytes "
                                   f"(decompression bomb?)")
    return head + rest


# -- headers: the size a file declares, read before anything is decoded ------------------------


@dataclass
class _Header:
    """What a file's header declares; `cv2` marks data PIL cannot decode or decodes wrongly."""

    format: str
    width: int
    height: int
    frames: int = 1
    orientation: int = 1
    channels: int = 0  # 0: unknown (PIL decodes to at most 4 bytes a pixel)
    sample_bytes: int = 0
    cv2: bool = False
    orientation_at: int = -1  # TIFF: byte offset of the orientation tag's value


class _Unsized(Exception):
    """No header gave the image's size (the file is refused: it cannot be size-checked)."""


def _sniff(data: bytes) -> str:
    """The format OpenCV would pick from the leading bytes ('' for none handled here)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "HDR"
    if data[:2] in (b"PF", b"Pf") and data[2:3].isspace():
        return "PFM"
    return ""


def _check_size(path: Path, header: _Header) -> None:
    width, height = header.width, header.height
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"declares an empty size {width}x{height}")
    if width * height > MAX_PIXELS:
        raise ImageReadError(path, f"declares {width}x{height} pixels, more than the "
                                   f"{MAX_PIXELS:,} accepted (decompression bomb?)")
    if max(width, height) > MAX_SIDE:
        raise ImageReadError(path, f"declares {width}x{height} pixels, a side longer than the "
                                   f"{MAX_SIDE:,} accepted (decompression bomb?)")
    if min(width, height) < 8:
        raise ImageReadError(path, f"has an unusable size {width}x{height} "
                                   f"(need at least 8x8 pixels)")
    decoded = width * height * header.channels * header.sample_bytes
    if decoded > MAX_DECODED_BYTES:
        raise ImageReadError(path, f"declares {width}x{height} pixels of {header.channels} x "
                                   f"{8 * header.sample_bytes}-bit samples ({decoded:,} bytes), "
                                   f"more than the {MAX_DECODED_BYTES:,} accepted")


def check_proportions(width: int, height: int, path: str | Path) -> None:
    """Refuse a photo more elongated than MAX_ASPECT:1 (ImageReadError naming it and its size):
    its square FOV crop would cost the square of its long side in memory."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT:
        raise ImageReadError(path, f"is {width}x{height} pixels, an aspect ratio of "
                                   f"{ratio:.1f}:1; a fundus photo is roughly square (at most "
                                   f"{MAX_ASPECT:g}:1 accepted)")


def _probe(data: bytes, path: Path) -> _Header:
    """The header of `data`, its size checked; ImageReadError when too large, _Unsized when no
    header gives the size (nothing has been decoded either way)."""
    kind = _sniff(data)
    header = None
    if kind == "TIFF":
        try:
            header = _tiff_header(data)
        except (ValueError, struct.error, IndexError):
            header = None  # let PIL try; if it cannot either, the file is unreadable
    elif kind == "HDR":
        header = _radiance_header(data, path)
    elif kind == "PFM":
        header = _pfm_header(data, path)
    if header is None:
        header = _pil_header(data, path, kind)
    _check_size(path, header)
    return header


def _pil_header(data: bytes, path: Path, kind: str) -> _Header:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Corrupt EXIF data"
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                frames = 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1) or 1)
                form = im.format or ""
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(path, f"refused as a decompression bomb ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on bad data
        raise _Unsized(f"{type(exc).__name__}: {exc}") from exc
    header = _Header(form, width, height, frames)
    if kind == "PNG" and len(data) > 25 and data[12:16] == b"IHDR":
        depth, colour = data[24], data[25]
        header.channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)
        header.sample_bytes = 2 if depth == 16 else 1
        # PIL keeps only the high byte of 16-bit colour: a 12-bit photo would turn black.
        header.cv2 = depth == 16 and colour in (2, 6)
    return header


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation PIL finds in `data` (1 when none or unreadable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return _orientation_of(im)
    except Exception:  # noqa: BLE001 - no EXIF to apply
        return 1


def _orientation_of(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a corrupt EXIF block: leave the photo as stored
        return 1
    return value if value in _ORIENTATIONS else 1


_TIFF_FORMATS = {1: "B", 3: "H", 4: "I", 8: "h", 9: "i", 16: "Q"}
_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
               16: 8, 17: 8, 18: 8}
_TIFF_TAGS = (254, 256, 257, 258, 274, 277, 339)


def _tiff_header(data: bytes) -> _Header:
    """Size, layout and page count from the IFDs of a TIFF or BigTIFF (what libtiff will read)."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    offset = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0]
    count_format, entry_size, inline = (("Q", 20, 8) if big else ("H", 12, 4))
    first: dict[int, tuple[int, ...]] | None = None
    first_orientation_at = -1
    pages, seen = 0, set()
    while offset and offset not in seen and len(seen) < 10_000:
        seen.add(offset)
        count = struct.unpack_from(order + count_format, data, offset)[0]
        start = offset + (8 if big else 2)
        tags: dict[int, tuple[int, ...]] = {}
        orientation_at = -1
        for index in range(min(count, 4096)):
            at = start + index * entry_size
            tag, kind = struct.unpack_from(order + "HH", data, at)
            number = struct.unpack_from(order + ("Q" if big else "I"), data, at + 4)[0]
            if tag not in _TIFF_TAGS or kind not in _TIFF_FORMATS or not 0 < number <= 16:
                continue
            where = at + (12 if big else 8)
            if _TIFF_SIZES[kind] * number > inline:
                where = struct.unpack_from(order + ("Q" if big else "I"), data, where)[0]
            tags[tag] = struct.unpack_from(f"{order}{number}{_TIFF_FORMATS[kind]}", data, where)
            if tag == 274 and kind == 3 and number == 1:
                orientation_at = where
        offset = struct.unpack_from(order + ("Q" if big else "I"), data,
                                    start + min(count, 4096) * entry_size)[0]
        if first is None:
            first, first_orientation_at = tags, orientation_at
        if not tags.get(254, (0,))[0] & 1:  # reduced-resolution copies are not pages
            pages += 1
    if not first or 256 not in first or 257 not in first:
        raise ValueError("no image size in the first IFD")
    bits = max(first.get(258, (1,)))
    sample_format = first.get(339, (1,))[0]
    orientation = first.get(274, (1,))[0]
    return _Header("TIFF", first[256][0], first[257][0], max(1, pages),
                   orientation if orientation in _ORIENTATIONS else 1,
                   channels=first.get(277, (1,))[0], sample_bytes=max(1, bits // 8),
                   # PIL decodes signed, 32-bit, float and some big-endian 16-bit data wrongly
                   # (wrapped, byte-swapped or as unsigned); libtiff through OpenCV does not.
                   cv2=bits >= 16 or sample_format != 1, orientation_at=first_orientation_at)


_RADIANCE_SIZE = re.compile(rb"([-+][XY]) +(\d+) +([-+][XY]) +(\d+)")


def _radiance_header(data: bytes, path: Path) -> _Header:
    """Radiance HDR (.hdr, .pic): text lines, a blank line, then `-Y <height> +X <width>`."""
    end = data.find(b"\n\n", 0, 65536)
    if end < 0:
        raise ImageReadError(path, "is a Radiance HDR file without a complete header")
    line = data[end + 2:end + 2 + 64].split(b"\n", 1)[0]
    match = _RADIANCE_SIZE.fullmatch(line.strip())
    if not match:
        raise ImageReadError(path, f"is a Radiance HDR file with an unreadable size line "
                                   f"{line[:40]!r}")
    if match.group(1) != b"-Y" or match.group(3) != b"+X":
        raise ImageReadError(path, f"is a Radiance HDR file with an unsupported orientation "
                                   f"{line.strip().decode('ascii')!r} (only -Y H +X W)")
    return _Header("HDR", int(match.group(4)), int(match.group(2)), channels=3, sample_bytes=4,
                   cv2=True)


def _pfm_header(data: bytes, path: Path) -> _Header:
    """Portable float map: `PF` (colour) or `Pf` (gray), width, height, scale."""
    fields = data[:256].split(maxsplit=4)
    try:
        width, height = int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        raise ImageReadError(path, "is a PFM file with an unreadable size") from None
    return _Header("PFM", width, height, channels=3 if data[1:2] == b"F" else 1, sample_bytes=4,
                   cv2=True)


# -- decoding ---------------------------------------------------------------------------------


_ORIENTATION = 0x0112
_ORIENTATIONS = range(1, 9)


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (1-8) as ImageOps.exif_transpose does, to any array."""
    if orientation == 2:
        array = array[:, ::-1]
    elif orientation == 3:
        array = array[::-1, ::-1]
    elif orientation == 4:
        array = array[::-1]
    elif orientation == 5:
        array = array.swapaxes(0, 1)
    elif orientation == 6:
        array = np.rot90(array, -1)
    elif orientation == 7:
        array = array[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        array = np.rot90(array, 1)
    return np.ascontiguousarray(array)


def _row_chunks(array: np.ndarray) -> Iterator[slice]:
    """Row ranges of about a million samples: conversions never copy a whole image to float."""
    per_row = max(1, array[:1].size)
    step = max(1, 2**20 // per_row)
    for start in range(0, array.shape[0], step):
        yield slice(start, start + step)


def _to_uint8(array: np.ndarray, path: Path, notes: list[str] | None) -> np.ndarray:
    """Convert decoded samples to uint8 (documented in `read_image`)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype.kind not in "uif":
        raise ImageReadError(path, f"holds {array.dtype} samples, which are not supported")
    floating = array.dtype.kind == "f"
    top, negative, bad = 0.0, 0, 0
    for rows in _row_chunks(array):
        chunk = array[rows]
        if floating:
            finite = np.isfinite(chunk)
            bad += chunk.size - int(np.count_nonzero(finite))
            chunk = chunk[finite]
        if chunk.size:
            top = max(top, float(chunk.max()))
            if array.dtype.kind != "u":
                negative += int(np.count_nonzero(chunk < 0))
    if bad:
        raise ImageReadError(path, f"holds {bad:,} NaN or infinite values (floating-point "
                                   f"data); their brightness is unknown")
    if negative:
        _note(notes, f"{path}: {negative:,} negative values ({array.dtype} data) clipped to 0")
    if floating and top <= 1.0:
        scale = 255.0
    else:
        # 16-bit sensors often fill only 10-14 bits: stretch by the real maximum, not by 65535.
        scale = 255.0 / top if top > 255 else 1.0
    out = np.empty(array.shape, dtype=np.uint8)
    for rows in _row_chunks(array):
        out[rows] = np.clip(np.rint(array[rows].astype(np.float64) * scale), 0, 255)
    return out


def _decode_with_cv2(data: bytes, path: Path, header: _Header,
                     notes: list[str] | None) -> np.ndarray | None:
    """OpenCV's decode as uint8 gray or RGB (alpha composited on black), or None."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if decoded is None:
        return None
    if decoded.shape[:2] != (header.height, header.width):  # never trust a decoder blindly
        raise ImageReadError(path, f"decodes to {decoded.shape[1]}x{decoded.shape[0]} pixels "
                                   f"but its header declares {header.width}x{header.height}")
    alpha = None
    if decoded.ndim == 3:
        channels = decoded.shape[2]
        if channels in (2, 4):
            alpha = decoded[..., -1]
        decoded = decoded[..., 0] if channels <= 2 else decoded[..., 2::-1]
    image = _to_uint8(decoded, path, notes)
    if alpha is not None:
        full = 1.0 if alpha.dtype.kind == "f" else float(np.iinfo(alpha.dtype).max)
        for rows in _row_chunks(image):
            weight = np.clip(alpha[rows].astype(np.float32) / full, 0.0, 1.0)
            image[rows] = np.rint(image[rows] * (weight if image.ndim == 2 else
                                                 weight[..., None]))
    return image


def _pil_pixels(im: Image.Image, path: str | Path, notes: list[str] | None) -> np.ndarray:
    """The pixels of an open PIL image as uint8 (HxW or HxWx3), orientation not applied."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16S", "I", "F"):
        return _to_uint8(np.asarray(im), Path(path), notes)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        return composite_on_black(np.asarray(im.convert("RGBA")))
    return np.asarray(im.convert("RGB") if mode != "L" else im)


def _decode_with_pil(data: bytes, path: Path, notes: list[str] | None
                     ) -> tuple[np.ndarray, int]:
    """(pixels, the EXIF orientation still to apply): read after loading, as
    ImageOps.exif_transpose does (PIL applies a TIFF's orientation itself while loading)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _pil_pixels(im, path, notes), _orientation_of(im)


def _decode(path: str | Path, notes: list[str] | None = None, photo: bool = False
            ) -> np.ndarray:
    path = Path(path)
    data = _read_bytes(path)
    try:
        header = _probe(data, path)
    except _Unsized as exc:
        raise ImageReadError(path, f"is not a readable image ({exc})") from None
    if photo:
        check_proportions(header.width, header.height, path)
    if header.frames > 1:
        _note(notes, f"{path}: holds {header.frames} frames or pages (multi-page or animated "
                     f"{header.format or 'file'}); only the first is used")
    # The orientation is applied in one place (_orient) for every decoder and bit depth: a
    # TIFF's tag is read from its header and reset to 1 in the bytes handed to the decoders
    # (libtiff, through PIL and OpenCV alike, would otherwise apply it itself, or not).
    orientation = 1
    if header.orientation_at >= 0 and header.orientation != 1:
        patched = bytearray(data)
        order = "<" if data[:2] == b"II" else ">"
        struct.pack_into(order + "H", patched, header.orientation_at, 1)
        data, orientation = bytes(patched), header.orientation
    array = None
    if header.cv2:
        try:
            array = _decode_with_cv2(data, path, header, notes)
        except cv2.error:
            array = None
        if array is not None and orientation == 1:
            orientation = _exif_orientation(data)
    if array is None:
        try:
            array, exif = _decode_with_pil(data, path, notes)
            orientation = orientation if orientation != 1 else exif
        except ImageReadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageReadError(path, f"refused as a decompression bomb ({exc})") from exc
        except Exception as pil_error:  # PIL raises many types on bad data; cv2 may read it
            fallback = None
            if not header.cv2 and header.format.upper() in ("PNG", "JPEG", "TIFF", "BMP",
                                                            "WEBP", "PPM", "GIF"):
                # the header checked above is the one OpenCV reads too: same format family
                try:
                    fallback = _decode_with_cv2(data, path, header, notes)
                except ImageReadError:
                    raise
                except Exception:  # noqa: BLE001 - OpenCV cannot read it either
                    fallback = None
            if fallback is None:
                raise ImageReadError(path, f"is not a readable image ({type(pil_error).__name__}"
                                           f": {pil_error})") from pil_error
            array = fallback
            if orientation == 1:
                orientation = _exif_orientation(data)
        if array.shape[:2] != (header.height, header.width):
            raise ImageReadError(path, f"decodes to {array.shape[1]}x{array.shape[0]} pixels "
                                       f"but its header declares {header.width}x{header.height}")
    if array.ndim not in (2, 3):
        raise ImageReadError(path, f"has an unusable shape {array.shape}")
    return _orient(array, orientation)


def read_image(path: str | Path, notes: list[str] | None = None) -> np.ndarray:
    """Read any supported photo as HxWx3 uint8 RGB.

    Before anything is decoded, the header's size is checked (MAX_PIXELS, MAX_SIDE,
    MAX_DECODED_BYTES, MAX_ASPECT). Conversions (documented): grayscale is replicated;
    transparent pixels are composited on black (the fundus background); the EXIF/TIFF
    orientation is applied at every bit depth. Samples wider than 8 bits (16/32-bit integers,
    signed or not, and floats) keep their values when the maximum is at most 255 and are
    stretched by their maximum above it; floats whose maximum is at most 1 are taken as 0..1;
    negative values are clipped to 0 with a note; NaN or infinite values are an error.
    Multi-page and animated files give their first frame, with a note.

    Notes (usable but suspicious inputs, one message naming the file each) are appended to
    `notes` when given, else issued as `InputWarning`s.
    """
    array = _decode(path, notes, photo=True)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_levels(path: str | Path, notes: list[str] | None = None) -> np.ndarray:
    """The 8-bit values of a gray image as stored (no thresholding): e.g. the vessel coverage
    that `preprocess` writes into vessels/."""
    array = _decode(path, notes)
    return array[..., :3].max(axis=2) if array.ndim == 3 else array


def read_mask(path: str | Path, expected_shape: tuple[int, int] | None = None,
              notes: list[str] | None = None) -> np.ndarray:
    """Read an annotation or FOV mask as a boolean HxW array.

    Threshold (documented): files holding only 0 and 1 are labels; otherwise a pixel is foreground
    when its 8-bit value is at least 128. Colour masks use their brightest channel, so an annotation
    drawn in pure red, green or blue counts (their gray value would be below 128).

    With `notes`, a message naming the file is appended when the mask is not binary (it was
    thresholded) or has no foreground pixel at all: suspicious, but not an error. Reader notes
    (see `read_image`) go to `notes` too, or are warnings without it.
    """
    array = _decode(path, notes)
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
    name = getattr(image, "filename", "") or "PIL image"
    return _orient(_pil_pixels(image, name, None), _orientation_of(image))
