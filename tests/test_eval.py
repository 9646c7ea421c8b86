import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from vesselseg.eval import collect_images, main
from vesselseg.io import read_image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The same retina photo as JPEG, grayscale PNG, RGBA PNG, 16-bit TIFF, GIF and PPM."""
    folder = tmp_path_factory.mktemp("photos")
    retina = cv2.resize(skdata.retina(), (300, 300), interpolation=cv2.INTER_AREA)
    Image.fromarray(retina).save(folder / "retina.jpg", quality=92)
    Image.fromarray(retina).convert("L").save(folder / "gray scale.png")
    rgba = np.dstack([retina, np.full(retina.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    cv2.imwrite(str(folder / "sixteen.tif"), cv2.cvtColor(retina, cv2.COLOR_RGB2BGR)
                .astype(np.uint16) * 257)
    Image.fromarray(retina).convert("P").save(folder / "palette.gif")
    Image.fromarray(retina).save(folder / "netpbm.ppm")
    return folder


def test_every_format_is_segmented_at_native_size(tiny_run, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(photos), "--run", str(tiny_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("vessel density") == 6
    for stem in ("retina", "gray scale", "rgba", "sixteen", "palette", "netpbm"):
        for kind in ("probability", "mask", "overlay"):
            written = read_image(out / f"{stem}_{kind}.png")
            assert written.shape[:2] == (300, 300), (stem, kind)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["results"]) == 6 and all(r["error"] is None for r in summary["results"])
    assert summary["compute_precision"] == "float32"


def test_multiscale_eval_writes_the_averaged_maps_and_records_the_setting(tiny_run, photos,
                                                                          tmp_path):
    from vesselseg.inference import Segmenter

    out = tmp_path / "out"
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out", str(out),
                 "--scales", "1,1.5", "--json"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scales"] == [1.0, 1.5]
    assert summary["threshold_source"] == "validation, plain setting"  # none of its own yet
    expected = Segmenter.from_run(tiny_run, scales=(1.0, 1.5)).predict(
        read_image(photos / "retina.jpg")).probability
    written = read_image(out / "retina_probability.png")
    assert written.shape[:2] == expected.shape
    assert np.abs(written[..., 0].astype(float) / 255 - expected).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("scales", ["0.5", "1,1", "big"])
def test_a_bad_scales_list_is_a_usage_error(scales, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["photo.jpg", "--scales", scales])
    assert exit_info.value.code == 2
    assert "--scales" in capsys.readouterr().err


def test_broken_file_is_reported_and_the_others_still_processed(tiny_run, photos, tmp_path,
                                                                capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((photos / "retina.jpg").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "z.png").write_bytes((photos / "rgba.png").read_bytes())
    out = tmp_path / "out"
    assert main([str(folder), "--run", str(tiny_run), "--out", str(out), "--json"]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "empty.jpg" in captured.err
    assert "2 of 4 image(s) failed" in captured.err
    assert (out / "a_overlay.png").exists() and (out / "z_overlay.png").exists()
    assert not (out / "broken_mask.png").exists()
    results = json.loads(captured.out)
    assert [r["error"] is None for r in results] == [True, False, False, True]


def test_existing_outputs_need_overwrite(tiny_run, photos, tmp_path, capsys):
    out = tmp_path / "out"
    image = str(photos / "retina.jpg")
    assert main([image, "--run", str(tiny_run), "--out", str(out)]) == 0
    before = (out / "retina_mask.png").stat().st_mtime_ns
    assert main([image, "--run", str(tiny_run), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "retina_mask.png").stat().st_mtime_ns == before
    assert main([image, "--run", str(tiny_run), "--out", str(out), "--overwrite"]) == 0


def test_an_earlier_summary_is_never_replaced(tiny_run, photos, tmp_path, capsys):
    """Other photos into the same --out must not silently replace the earlier summary.json."""
    out = tmp_path / "out"
    assert main([str(photos / "retina.jpg"), "--run", str(tiny_run), "--out", str(out)]) == 0
    before = (out / "summary.json").read_bytes()
    assert main([str(photos / "rgba.png"), "--run", str(tiny_run), "--out", str(out)]) == 1
    assert "summary.json already exists" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before
    assert not (out / "rgba_mask.png").exists()


def test_default_output_is_a_new_folder_per_run(tiny_run, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main([str(photos / "retina.jpg"), "--run", str(tiny_run)]) == 0
    folders = sorted((tmp_path / "artifacts" / "eval").iterdir())
    assert len(folders) == 2
    assert all((f / "retina_overlay.png").exists() and (f / "summary.json").exists()
               for f in folders)


def test_empty_folder_and_missing_input_are_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no image files" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing.jpg")]) == 1
    assert "nothing.jpg" in capsys.readouterr().err


def test_full_size_hrf_image(tiny_run, hrf_dir, tmp_path):
    out = tmp_path / "hrf"
    assert main([str(hrf_dir / "images" / "01_h.jpg"), "--run", str(tiny_run), "--out",
                 str(out)]) == 0
    assert read_image(out / "01_h_mask.png").shape[:2] == (2336, 3504)


def test_collect_images_skips_non_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "b.png").write_bytes(b"")
    assert [p.name for p in collect_images([tmp_path])] == ["b.png"]


def test_help():
    result = subprocess.run([sys.executable, "-m", "vesselseg.eval", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--run", "--out", "--tta", "--threshold", "--json"):
        assert flag in result.stdout


def test_without_run_the_shipped_model_is_used(photos, tmp_path, capsys):
    from vesselseg.runs import PRETRAINED_DIR

    out = tmp_path / "out"
    assert main([str(photos / "retina.jpg"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(PRETRAINED_DIR)
    assert 0.02 < summary["results"][0]["vessel_density"] < 0.3  # a plausible vessel share


def test_working_size_runs_tiled_and_is_checked(tiny_run, photos, tmp_path, capsys):
    from vesselseg.config import TrainConfig, load_config

    size = load_config(TrainConfig, tiny_run / "config.json").preprocess.size
    out = tmp_path / "out"
    photo = str(photos / "retina.jpg")
    assert main([photo, "--run", str(tiny_run), "--out", str(out),
                 "--working-size", str(2 * size)]) == 0
    assert read_image(out / "retina_mask.png").shape[:2] == (300, 300)
    assert main([photo, "--run", str(tiny_run), "--out", str(tmp_path / "small"),
                 "--working-size", str(size // 2)]) == 1
    assert "working_size" in capsys.readouterr().err
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize("threshold", ["nan", "5", "-0.1", "high"])
def test_a_threshold_outside_0_1_is_a_usage_error(threshold, capsys):
    from vesselseg.eval import main

    with pytest.raises(SystemExit) as stop:
        main(["photo.png", "--threshold", threshold])
    assert stop.value.code == 2 and "--threshold" in capsys.readouterr().err
