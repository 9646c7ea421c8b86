"""Image I/O: every common format reads as HxWx3 uint8, every bad file is an ImageReadError."""
from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vesselseg.errors import ImageReadError
from vesselseg.io import (
    MAX_PIXELS,
    atomic_path,
    is_image_file,
    read_image,
    read_mask,
    write_bytes_atomic,
    write_png,
    write_text_atomic,
)


def photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth RGB test picture (smooth so that JPEG round trips stay close)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1),
                     (xx + yy) * 127 // max(1, width + height - 2)], axis=-1)
    noise = rng.integers(0, 8, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def assert_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags["C_CONTIGUOUS"]


def no_part_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


# --------------------------------------------------------------------------- formats


def test_rgb_png_is_exact(tmp_path):
    image = photo()
    Image.fromarray(image).save(tmp_path / "a.png")
    result = read_image(tmp_path / "a.png")
    assert_rgb(result, 48, 64)
    np.testing.assert_array_equal(result, image)


def test_grayscale_is_replicated(tmp_path):
    gray = photo()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    result = read_image(tmp_path / "g.png")
    assert_rgb(result, 48, 64)
    for channel in range(3):
        np.testing.assert_array_equal(result[..., channel], gray)


def test_rgba_is_composited_on_black(tmp_path):
    image = photo()
    alpha = np.full(image.shape[:2], 255, np.uint8)
    alpha[:, :16] = 0  # fully transparent strip
    Image.fromarray(np.dstack([image, alpha]), mode="RGBA").save(tmp_path / "a.png")
    result = read_image(tmp_path / "a.png")
    assert_rgb(result, 48, 64)
    np.testing.assert_array_equal(result[:, 16:], image[:, 16:])
    assert result[:, :16].max() == 0


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_image(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    Image.fromarray(photo()).convert("P").save(path)
    with Image.open(path) as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("RGB"))
    result = read_image(path)
    assert_rgb(result, 48, 64)
    np.testing.assert_array_equal(result, expected)


def test_16bit_grayscale_png_is_scaled(tmp_path):
    gray = photo()[..., 1]
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    result = read_image(tmp_path / "g16.png")
    assert_rgb(result, 48, 64)
    assert np.abs(result[..., 0].astype(int) - gray).max() <= 1


def test_12bit_data_in_16bit_grayscale_is_stretched(tmp_path):
    gray = photo()[..., 1]
    Image.fromarray(gray.astype(np.uint16) * 16).save(tmp_path / "g12.png")  # max 4080
    result = read_image(tmp_path / "g12.png")
    assert result.max() == 255
    assert np.abs(result[..., 0].astype(int) - gray.astype(int) * 255 // gray.max()).max() <= 1


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_16bit_rgb_written_by_cv2(tmp_path, suffix):
    image = photo()
    path = tmp_path / f"rgb16{suffix}"
    assert cv2.imwrite(str(path), (image.astype(np.uint16) * 257)[..., ::-1])  # cv2 is BGR
    result = read_image(path)
    assert_rgb(result, 48, 64)
    assert np.abs(result.astype(int) - image).max() <= 1


def test_16bit_rgb_tiff_with_12bit_data_is_not_black(tmp_path):
    """PIL keeps only the high byte of 16-bit colour; the reader must stretch like grayscale."""
    image = photo()
    path = tmp_path / "rgb12.tif"
    assert cv2.imwrite(str(path), (image.astype(np.uint16) * 16)[..., ::-1])
    result = read_image(path)
    expected = np.rint(image.astype(np.float64) * 16 * 255 / (int(image.max()) * 16))
    assert np.abs(result.astype(int) - expected).max() <= 1
    assert result.max() == 255


def test_one_bit_image(tmp_path):
    bits = photo()[..., 0] > 128
    Image.fromarray(bits).save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "1"
    result = read_image(tmp_path / "b.png")
    assert_rgb(result, 48, 64)
    assert set(np.unique(result)) <= {0, 255}
    np.testing.assert_array_equal(result[..., 0] == 255, bits)
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), bits)


def test_cmyk_jpeg(tmp_path):
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (200, 40, 30)
    image[:, 32:] = (30, 60, 220)
    Image.fromarray(image).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    result = read_image(tmp_path / "c.jpg")
    assert_rgb(result, 48, 64)
    assert np.abs(result[8:-8, 4:28].mean(axis=(0, 1)) - (200, 40, 30)).max() < 12
    assert np.abs(result[8:-8, 36:60].mean(axis=(0, 1)) - (30, 60, 220)).max() < 12


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, :64] = 230  # bright left half, dark right half
    image[:32, :64, 0] = 90  # top-left quarter different in red: the corners tell the rotation
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(tmp_path / "r.jpg", exif=exif, quality=95)
    result = read_image(tmp_path / "r.jpg").astype(int)
    expected = {3: np.rot90(image, 2), 6: np.rot90(image, -1), 8: np.rot90(image, 1)}[orientation]
    assert result.shape == expected.shape
    if orientation in (6, 8):
        assert result.shape == (128, 64, 3)
    assert np.abs(result - expected).mean() < 4


def test_ppm_and_gzipped_ppm(tmp_path):
    image = photo()
    Image.fromarray(image).save(tmp_path / "im0001.ppm")
    (tmp_path / "im0002.ppm.gz").write_bytes(gzip.compress((tmp_path / "im0001.ppm").read_bytes()))
    np.testing.assert_array_equal(read_image(tmp_path / "im0001.ppm"), image)
    np.testing.assert_array_equal(read_image(tmp_path / "im0002.ppm.gz"), image)


@pytest.mark.parametrize("name", ["with space.png", "rétine ü 眼底.png", "a b/ç d.tif"])
def test_unusual_file_names(tmp_path, name):
    image = photo()
    path = tmp_path / name
    write_png(path, image)  # even with a .tif name the bytes are PNG: detection is by content
    np.testing.assert_array_equal(read_image(path), image)
    assert no_part_files(tmp_path)


def test_is_image_file():
    assert is_image_file("a/B.JPG")
    assert is_image_file("im0001.ah.ppm.gz")
    assert is_image_file(Path("x.TIF"))
    assert not is_image_file("notes.txt")
    assert not is_image_file(".a.png.1234.part")
    assert not is_image_file(".hidden.png")


# --------------------------------------------------------------------------- errors


def assert_read_error(path: Path, *fragments: str, reader=read_image) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        reader(path)
    message = str(info.value)
    assert path.name in message, message
    assert info.value.path == path
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert_read_error(tmp_path / "empty.png", "empty")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path, suffix):
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 2)
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(image).save(whole)
    data = whole.read_bytes()
    for fraction in (0.2, 0.6, 0.95):
        cut = tmp_path / f"cut{int(fraction * 100)}{suffix}"
        cut.write_bytes(data[: int(len(data) * fraction)])
        assert_read_error(cut)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".ppm.gz"])
def test_not_an_image(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_bytes(b"these are meeting notes, not a fundus photo\n" * 20)
    assert_read_error(path)


def test_missing_file_and_folder(tmp_path):
    assert_read_error(tmp_path / "missing.png", "does not exist")
    (tmp_path / "dir.png").mkdir()
    assert_read_error(tmp_path / "dir.png", "folder")
    assert_read_error(tmp_path / "missing.png", reader=read_mask)


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height pixels (IHDR patched, CRC recomputed)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [50_000, 11_000])
def test_decompression_bomb_png(tmp_path, side):
    assert side * side > MAX_PIXELS
    assert_read_error(bomb_png(tmp_path / f"bomb{side}.png", side, side), "bomb")


def test_decompression_bomb_gzip(tmp_path):
    """A .ppm.gz declaring 50000x50000 is refused before it is inflated."""
    path = tmp_path / "bomb.ppm.gz"
    path.write_bytes(gzip.compress(b"P6\n50000 50000\n255\n" + bytes(100_000)))
    assert_read_error(path, "bomb")
    (tmp_path / "bad.ppm.gz").write_bytes(b"\x1f\x8b\x08 definitely not gzip")
    assert_read_error(tmp_path / "bad.ppm.gz", "gzip")


def test_too_small_image(tmp_path):
    Image.new("RGB", (3, 3)).save(tmp_path / "tiny.png")
    assert_read_error(tmp_path / "tiny.png", "8x8")


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL: "Corrupt EXIF data" on random TIFFs
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00",
                               b"MM\x00*", b"GIF89a", b"P6\n", b"BM"]),
       body=st.binary(max_size=600),
       suffix=st.sampled_from([".png", ".jpg", ".tif"]))
def test_random_bytes_only_raise_image_read_error(tmp_path, prefix, body, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(prefix + body)
    try:
        result = read_image(path)
    except ImageReadError as exc:
        assert path.name in str(exc)
    else:  # a random file that happens to decode is fine, as long as it is a proper image
        assert result.ndim == 3 and result.shape[2] == 3 and result.dtype == np.uint8


# --------------------------------------------------------------------------- masks


def test_mask_of_zero_one_labels(tmp_path):
    labels = (photo()[..., 0] > 100).astype(np.uint8)  # values 0 and 1 only
    Image.fromarray(labels).save(tmp_path / "labels.png")
    mask = read_mask(tmp_path / "labels.png")
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, labels == 1)


def test_mask_threshold_is_128(tmp_path):
    values = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    Image.fromarray(values).save(tmp_path / "ramp.png")
    mask = read_mask(tmp_path / "ramp.png")
    np.testing.assert_array_equal(mask[0], np.arange(256) >= 128)


def test_all_zero_mask(tmp_path):
    write_png(tmp_path / "zero.png", np.zeros((16, 16), np.uint8))
    assert not read_mask(tmp_path / "zero.png").any()


@pytest.mark.parametrize("colour", [(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)])
def test_colour_mask(tmp_path, colour):
    truth = photo()[..., 0] > 128
    rgb = np.zeros(truth.shape + (3,), np.uint8)
    rgb[truth] = colour
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "colour.png"), truth)


def test_gray_colour_mask_below_128_is_background(tmp_path):
    rgb = np.full((16, 16, 3), 100, np.uint8)
    rgb[4:8] = 200
    Image.fromarray(rgb).save(tmp_path / "gray.tif")
    mask = read_mask(tmp_path / "gray.tif")
    assert mask[4:8].all() and not mask[:4].any() and not mask[8:].any()


def test_rgba_mask_with_transparent_background(tmp_path):
    truth = photo()[..., 1] > 128
    rgba = np.zeros(truth.shape + (4,), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = np.where(truth, 255, 0)  # white everywhere, opaque only on vessels
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), truth)


def test_mask_size_mismatch_names_file_and_sizes(tmp_path):
    write_png(tmp_path / "m.png", np.zeros((20, 30), np.uint8))
    assert read_mask(tmp_path / "m.png", expected_shape=(20, 30)).shape == (20, 30)
    error = assert_read_error(tmp_path / "m.png", "30x20", "40x10",
                              reader=lambda p: read_mask(p, expected_shape=(10, 40)))
    assert "size" in error.reason


# --------------------------------------------------------------------------- writing


def test_write_png_round_trip_and_no_part_files(tmp_path):
    image = photo()
    path = tmp_path / "out" / "nested" / "x.png"
    assert write_png(path, image) == path
    np.testing.assert_array_equal(read_image(path), image)
    write_png(tmp_path / "mask.png", photo()[..., 0] > 128)
    mask = cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
    assert no_part_files(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["mask.png", "x.png"]


def test_write_png_non_ascii_path(tmp_path):
    folder = tmp_path / "résultats 眼底"
    write_png(folder / "vaisseaux ü.png", photo())
    assert (folder / "vaisseaux ü.png").exists()
    np.testing.assert_array_equal(read_image(folder / "vaisseaux ü.png"), photo())
    assert no_part_files(tmp_path)


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "keep.txt"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert no_part_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_atomic_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = write_bytes_atomic(tmp_path / "a.bin", b"x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------- one reader, the same guards for every decoder
# Issue #36: what OpenCV decodes (Radiance HDR, PAM, 16-bit colour, signed TIFF) gets the same
# header checks as what PIL decodes, before any pixel is decoded.


@pytest.fixture
def decoder_calls(monkeypatch) -> list[str]:
    """Record every cv2.imdecode call (a refused file must never reach a decoder)."""
    calls: list[str] = []
    real = cv2.imdecode

    def imdecode(buffer, flags):
        calls.append(bytes(buffer[:12]).decode("latin-1"))
        return real(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    return calls


def radiance(path: Path, image: np.ndarray | None = None, size_line: str | None = None) -> Path:
    """A Radiance HDR file of a float RGB image, or only a header declaring `size_line`."""
    if size_line is not None:
        path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + size_line.encode()
                         + b"\n" + bytes(4096))
        return path
    ok, buffer = cv2.imencode(".hdr", image[..., ::-1].astype(np.float32))
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def test_hdr_named_png_is_size_checked_before_opencv_decodes_it(tmp_path, decoder_calls):
    """A 9 MB HDR named .png took 11.6 GB: OpenCV decoded whatever size its header declared."""
    bomb = radiance(tmp_path / "bomb.png", size_line="-Y 11000 +X 11000")
    assert_read_error(bomb, "11000x11000", "bomb")
    long = radiance(tmp_path / "long.png", size_line="-Y 100 +X 30000")
    assert_read_error(long, "30000x100", "20,000", reader=read_mask)
    assert decoder_calls == []


def test_hdr_reads_as_a_photo(tmp_path):
    image = photo().astype(np.float32) / 255.0
    result = read_image(radiance(tmp_path / "scene.hdr", image))
    assert_rgb(result, 48, 64)
    assert np.abs(result.astype(int) - photo().astype(int)).mean() < 3  # RGBE keeps ~1 %


def test_format_without_a_readable_size_is_refused(tmp_path, decoder_calls):
    """PAM: OpenCV reads it, PIL cannot size it: refused rather than decoded blindly."""
    path = tmp_path / "bomb.ppm"
    path.write_bytes(b"P7\nWIDTH 11000\nHEIGHT 11000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\n"
                     b"ENDHDR\n" + bytes(4096))
    assert_read_error(path, "not a readable image")
    assert decoder_calls == []


def test_photo_of_absurd_proportions_is_refused(tmp_path):
    """An 8x20000 PNG of 572 bytes cost 2 GB: its square FOV crop is 20800x20800."""
    write_png(tmp_path / "strip.png", np.full((8, 400, 3), 120, np.uint8))
    assert_read_error(tmp_path / "strip.png", "400x8", "50.0:1", "roughly square")
    assert read_mask(tmp_path / "strip.png").shape == (8, 400)  # a mask is no photo
    write_png(tmp_path / "wide.png", np.full((16, 64, 3), 120, np.uint8))
    assert_rgb(read_image(tmp_path / "wide.png"), 16, 64)  # 4:1 is accepted


def tiff(path: Path, array: np.ndarray, orientation: int = 1, **kwargs) -> Path:
    import tifffile

    extratags = [(274, "H", 1, orientation, True)] if orientation != 1 else []
    tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 else "minisblack",
                     extratags=extratags, **kwargs)
    return path


ORIENTED = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
            7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("colour", [False, True])
def test_tiff_orientation_is_applied_once_at_every_bit_depth(tmp_path, dtype, colour):
    """16-bit colour TIFFs with an orientation tag gave masks in the wrong orientation."""
    image = photo()
    stored = image if colour else image[..., 1]
    scale = {"uint8": 1, "uint16": 257, "int16": 100, "float32": 1}[dtype]
    for orientation, turn in ORIENTED.items():
        data = np.rint(stored.astype(np.float64) * scale)
        path = tiff(tmp_path / f"o{orientation}.tif", data.astype(dtype), orientation)
        result = read_image(path).astype(int)
        expected = turn(image if colour else np.repeat(stored[..., None], 3, axis=2))
        assert result.shape == expected.shape, orientation
        expected = expected.astype(int) * (255 / stored.max() if dtype == "int16" else 1)
        assert np.abs(result - expected).max() <= 1, orientation


def test_exif_orientation_matches_pil_for_jpeg(tmp_path):
    for orientation in ORIENTED:
        pil = Image.fromarray(photo())
        exif = pil.getexif()
        exif[0x0112] = orientation
        pil.save(tmp_path / "r.jpg", exif=exif, quality=95)
        with Image.open(tmp_path / "r.jpg") as im:
            from PIL import ImageOps
            expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        np.testing.assert_array_equal(read_image(tmp_path / "r.jpg"), expected)


@pytest.mark.parametrize("dtype, top", [("int16", 30000), (">i2", 30000), ("int32", 2_000_000_000),
                                        (">i4", 4000), ("uint32", 4_000_000_000), ("int8", 100)])
def test_signed_and_32bit_tiffs_are_decoded_correctly(tmp_path, dtype, top):
    """Big-endian compressed signed data came out byte-swapped, uint32 above 2**31 wrapped,
    int8 was read as unsigned."""
    ramp = np.linspace(0, top, 64)[None, :].repeat(48, axis=0).astype(dtype)
    result = read_image(tiff(tmp_path / "ramp.tif", ramp, compression="zlib"))[..., 0]
    expected = np.rint(ramp.astype(np.float64) * (255 / top if top > 255 else 1))
    assert np.abs(result.astype(int) - expected).max() <= 1


def test_negative_values_are_clipped_with_a_note(tmp_path):
    ramp = np.linspace(-1000, 3000, 64)[None, :].repeat(48, axis=0).astype(np.int16)
    path = tiff(tmp_path / "signed.tif", ramp)
    notes: list[str] = []
    result = read_image(path, notes=notes)[..., 0]
    assert result[:, :16].max() == 0 and result[:, -1].min() == 255
    assert len(notes) == 1 and "signed.tif" in notes[0] and "negative" in notes[0]
    from vesselseg.io import InputWarning

    with pytest.warns(InputWarning, match="signed.tif"):
        read_image(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_nan_or_infinite_is_an_error(tmp_path, bad):
    image = (photo().astype(np.float32) / 255.0)
    image[5, 5] = bad
    assert_read_error(tiff(tmp_path / "f.tif", image), "NaN or infinite")


def test_float_ranges_are_converted_as_documented(tmp_path):
    image = photo().astype(np.float32)
    for name, data, factor in (("unit", image / 255, 1.0), ("bytes", image, 1.0),
                               ("wide", image * 40, 255 / (image.max() * 40) * 40)):
        result = read_image(tiff(tmp_path / f"{name}.tif", data)).astype(float)
        assert np.abs(result - np.rint(image * factor)).max() <= 1, name


@pytest.mark.parametrize("name", ["pages.tif", "animated.gif"])
def test_multi_frame_files_warn_that_only_the_first_frame_is_used(tmp_path, name):
    frames = [Image.fromarray(photo(seed=k)) for k in range(3)]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    notes: list[str] = []
    first = read_image(tmp_path / name, notes=notes)
    assert len(notes) == 1 and name in notes[0] and "3 frames" in notes[0], notes
    assert np.abs(first.astype(int) - photo(seed=0)).mean() < 8  # the first frame
    from vesselseg.io import InputWarning

    with pytest.warns(InputWarning, match=name):
        read_mask(tmp_path / name)
    notes.clear()
    read_image(tmp_path / "single.png" if write_png(tmp_path / "single.png", photo()) else "",
               notes=notes)
    assert notes == []


# --------------------------------------------------------------------------- special files


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_named_like_an_image_is_refused_without_reading(kind, tmp_path):
    """Reading a FIFO without a writer blocks for ever, and /dev/zero never ends: both are
    refused from the file's status, before anything is read."""
    path = tmp_path / "photo.png"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    reason = "is a FIFO (named pipe)" if kind == "fifo" else "is a device"
    for reader in (read_image, read_mask):
        with pytest.raises(ImageReadError, match=re.escape(f"photo.png: {reason}, not a regular")):
            reader(path)


def test_a_file_larger_than_any_accepted_image_is_refused_before_reading(tmp_path, monkeypatch):
    import vesselseg.io as vio

    path = tmp_path / "huge.png"
    write_png(path, photo())
    monkeypatch.setattr(vio, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(ImageReadError, match=r"huge.png: is [\d,]+ bytes, more than the"):
        read_image(path)
