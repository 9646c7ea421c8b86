"""Deployment benchmark of the shipped model: exports, the TensorFlow-free runtime, int8, start-up.

    python -m benchmarks.deploy --datasets ../shared/datasets [--out FOLDER]

One run prints every figure beside its target and writes deploy.json and deploy.md (the table in
docs/deploy.md) into a new folder under --out:
- the agreement check (issue #34's Done-when): a fresh process with tensorflow, keras and tf2onnx
  blocked segments the 20 DRIVE test photos with `vesselseg.runtime` from an ONNX export of the
  shipped model; its masks against `vesselseg eval`'s (Keras, default settings) on the FOV pixels
  (eval's estimated FOV), and both masks' pooled DRIVE F1 (1st observer, official FOV);
- time to the first result for one photo, each in a fresh process: `vesselseg eval PHOTO` (Keras),
  `vesselseg eval PHOTO --model X.onnx`, and python + runtime.load + predict (TensorFlow blocked);
- seconds per DRIVE test photo (Segmenter.predict: prepare, model, map back; one warm-up photo
  first): Keras float32 (eval's default on a CPU without bf16 units), Keras bfloat16 (emulated
  there, on 5 photos), ONNX float32 and ONNX int8;
- int8 against float32: pooled F1 and AUC-ROC on the DRIVE, CHASE_DB1 and HRF test images (the
  `test` protocol: native resolution, inside the FOV, pooled), the int8 model calibrated on the
  three training sets, never on test images. The export command publishes int8 only when the
  DRIVE F1 change is within quantize.INT8_F1_BAR, the same figure measured the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vesselseg.cli import run_cli

AGREEMENT_TARGET = 0.999
F1_TARGET = 0.001
BLOCKER = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tf_keras"):
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, _Blocker())
"""
#: A fresh process segments photos with the runtime (TensorFlow blocked) and saves the masks.
RUNTIME_SCRIPT = BLOCKER + """
import time
start = time.perf_counter()
from pathlib import Path
from vesselseg.io import write_png
from vesselseg.runtime import load
segmenter = load(sys.argv[1])
out = Path(sys.argv[2])
for photo in sys.argv[3:]:
    prediction = segmenter.predict(photo)
    write_png(out / (Path(photo).stem + "_mask.png"), prediction.mask)
    if photo == sys.argv[3]:
        print(f"first {time.perf_counter() - start:.3f}", flush=True)
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
"""
DATASETS = (("drive", "DRIVE"), ("chase", "CHASEDB1"), ("hrf", "HRF"))


def _vesselseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "vesselseg", *args]


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def first_result_seconds(photo: Path, onnx: Path, tmp: Path, repeat: int = 3) -> dict:
    """Median wall seconds from process start to one photo's result, three ways."""
    runs: dict[str, list[float]] = {"cli_keras": [], "cli_onnx": [], "runtime_onnx": []}
    for i in range(repeat):
        runs["cli_keras"].append(_wall(_vesselseg("eval", str(photo), "-q", "--out",
                                                  str(tmp / f"k{i}"))))
        runs["cli_onnx"].append(_wall(_vesselseg("eval", str(photo), "-q", "--model", str(onnx),
                                                 "--out", str(tmp / f"o{i}"))))
        (tmp / f"r{i}").mkdir()
        runs["runtime_onnx"].append(_wall([sys.executable, "-c", RUNTIME_SCRIPT, str(onnx),
                                           str(tmp / f"r{i}"), str(photo)]))
    return {key: statistics.median(values) for key, values in runs.items()}


def agreement(onnx: Path, drive: Path, tmp: Path) -> dict:
    """The Done-when check: runtime masks (TensorFlow blocked) against eval's (Keras)."""
    from vesselseg.evaluation import confusion, scores_from_counts
    from vesselseg.fov import estimate_fov
    from vesselseg.io import read_image, read_mask
    from vesselseg.test import items_from_dataset

    items = items_from_dataset("drive", drive, "test")
    photos = [str(item.image) for item in items]
    keras_out, runtime_out = tmp / "eval_keras", tmp / "runtime"
    runtime_out.mkdir()
    start = time.perf_counter()
    subprocess.run(_vesselseg("eval", *photos, "-q", "--out", str(keras_out)), check=True,
                   capture_output=True, text=True)
    eval_seconds = time.perf_counter() - start
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNTIME_SCRIPT, str(onnx), str(runtime_out),
                           *photos], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the TensorFlow-free runtime failed: {done.stderr[-2000:]}")
    runtime_seconds = time.perf_counter() - start
    same = fov_pixels = 0
    counts = {"eval": None, "runtime": None}
    for item in items:
        image = read_image(item.image)
        fov = estimate_fov(image)
        name = f"{item.image.stem}_mask.png"
        masks = {"eval": read_mask(keras_out / name, fov.shape),
                 "runtime": read_mask(runtime_out / name, fov.shape)}
        same += int((masks["eval"] == masks["runtime"])[fov].sum())
        fov_pixels += int(fov.sum())
        truth = read_mask(item.annotation, fov.shape)
        official = read_mask(item.fov, fov.shape)
        for key, mask in masks.items():
            c = confusion(mask[official], truth[official])
            counts[key] = c if counts[key] is None else counts[key] + c
    f1 = {key: scores_from_counts(c)["f1"] for key, c in counts.items()}
    share = same / fov_pixels
    return {"photos": len(items), "fov_pixels": fov_pixels, "agreeing_pixels": same,
            "agreement": share, "f1_eval_keras": f1["eval"], "f1_runtime_onnx": f1["runtime"],
            "f1_difference": abs(f1["runtime"] - f1["eval"]),
            "eval_seconds": eval_seconds, "runtime_seconds": runtime_seconds,
            "agreement_ok": share >= AGREEMENT_TARGET,
            "f1_ok": abs(f1["runtime"] - f1["eval"]) <= F1_TARGET}


def timed_scores(segmenter, items: list, timed: int | None = None) -> dict:
    """Pooled test figures and median seconds per photo of Segmenter.predict (one warm-up)."""
    from vesselseg.evaluation import PooledEvaluator
    from vesselseg.test import _load

    evaluator = PooledEvaluator(threshold=segmenter.threshold)
    seconds = []
    segmenter.predict(_load(items[0])[0])  # warm-up: first-call costs are start-up's
    for item in items[:timed] if timed else items:
        image, (truth, fov) = _load(item)
        start = time.perf_counter()
        prediction = segmenter.predict(image, fov)
        seconds.append(time.perf_counter() - start)
        evaluator.add(item.id, prediction.probability, truth, fov)
    pooled = evaluator.pooled()
    return {"f1": pooled["f1"], "auc_roc": pooled["auc_roc"], "images": len(seconds),
            "seconds_per_photo": statistics.median(seconds)}


def measure(datasets: Path, out: Path, say=print) -> dict:
    from vesselseg.export import export_run
    from vesselseg.inference import Segmenter
    from vesselseg.quantize import (
        INT8_F1_BAR,
        calibration_photos,
        load_unlabelled,
        prepared_windows,
        quantize_onnx,
    )
    from vesselseg.runs import RunFolder
    from vesselseg.runtime import load
    from vesselseg.test import items_from_dataset

    figures: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                                f"{os.cpu_count()} CPUs"}
    onnx = out / "pretrained.onnx"
    exported = export_run("pretrained", "onnx", onnx)
    figures["export_seconds"] = exported.seconds
    say(f"float32 ONNX export: {exported.seconds:.1f} s, max abs diff vs Keras "
        f"{exported.max_abs_diff:.2g}")
    drive = datasets / "DRIVE"
    with tempfile.TemporaryDirectory(prefix="vesselseg-deploy-") as tmp:
        tmp = Path(tmp)
        check = agreement(onnx, drive, tmp)
        figures["agreement"] = check
        say(f"agreement, runtime (TF blocked) vs eval (Keras), 20 DRIVE photos: "
            f"{check['agreement']:.5%} of FOV pixels (target >= {AGREEMENT_TARGET:.1%}: "
            f"{'met' if check['agreement_ok'] else 'NOT met'}); pooled F1 "
            f"{check['f1_runtime_onnx']:.4f} vs {check['f1_eval_keras']:.4f} (difference "
            f"{check['f1_difference']:.4f}, target <= {F1_TARGET}: "
            f"{'met' if check['f1_ok'] else 'NOT met'})")
        photo = items_from_dataset("drive", drive, "test")[0].image
        figures["first_result"] = first_result_seconds(photo, onnx, tmp)
        say("time to first result, one photo, fresh process: " + ", ".join(
            f"{key} {value:.2f} s" for key, value in figures["first_result"].items()))
    int8 = out / "pretrained.int8.onnx"
    run = RunFolder.named("pretrained")
    photos = calibration_photos(run, [f"{name}={datasets / folder}"
                                      for name, folder in DATASETS])
    start = time.perf_counter()
    quantize_onnx(onnx, int8, prepared_windows(load(onnx), photos))
    figures["int8_calibration"] = {"photos": len(photos),
                                   "seconds": time.perf_counter() - start}
    say(f"int8: calibrated on {len(photos)} training photos in "
        f"{figures['int8_calibration']['seconds']:.0f} s")
    floating = load(onnx)
    quantised = load_unlabelled(int8, floating)
    accuracy: dict = {}
    for name, folder in DATASETS:
        items = items_from_dataset(name, datasets / folder, "test")
        accuracy[name] = {"float32": timed_scores(floating, items),
                          "int8": timed_scores(quantised, items)}
        a, b = accuracy[name]["float32"], accuracy[name]["int8"]
        say(f"{name} ({len(items)} test images): F1 float32 {a['f1']:.4f} int8 {b['f1']:.4f} "
            f"({b['f1'] - a['f1']:+.4f}); AUC-ROC {a['auc_roc']:.4f} / {b['auc_roc']:.4f}")
    figures["accuracy"] = accuracy
    change = accuracy["drive"]["int8"]["f1"] - accuracy["drive"]["float32"]["f1"]
    figures["int8_offered"] = {"drive_f1_change": change, "bar": INT8_F1_BAR,
                               "offered": abs(change) <= INT8_F1_BAR}
    say(f"int8 DRIVE F1 change {change:+.4f} (bar {INT8_F1_BAR}): "
        f"{'offered' if abs(change) <= INT8_F1_BAR else 'refused by vesselseg export'}")
    drive_items = items_from_dataset("drive", drive, "test")
    per_photo = {"onnx_float32": accuracy["drive"]["float32"]["seconds_per_photo"],
                 "onnx_int8": accuracy["drive"]["int8"]["seconds_per_photo"]}
    keras = timed_scores(Segmenter.pretrained(precision="float32"), drive_items)
    per_photo["keras_float32"] = keras["seconds_per_photo"]
    figures["keras_float32_drive"] = keras
    bf16 = timed_scores(Segmenter.pretrained(precision="bfloat16"), drive_items, timed=5)
    per_photo["keras_bfloat16_emulated"] = bf16["seconds_per_photo"]
    figures["seconds_per_photo"] = per_photo
    say("seconds per DRIVE photo: " + ", ".join(f"{k} {v:.2f}" for k, v in per_photo.items()))
    return figures


def markdown_table(figures: dict) -> str:
    check, first = figures["agreement"], figures["first_result"]
    per, acc = figures["seconds_per_photo"], figures["accuracy"]
    offered = figures["int8_offered"]
    rows = [
        ("runtime (TensorFlow blocked) vs eval (Keras) masks, 20 DRIVE photos, FOV pixels",
         f"{check['agreement']:.4%} agree", f">= {AGREEMENT_TARGET:.1%}"),
        ("pooled DRIVE F1, runtime masks vs eval masks",
         f"{check['f1_runtime_onnx']:.4f} vs {check['f1_eval_keras']:.4f} "
         f"(difference {check['f1_difference']:.4f})", f"<= {F1_TARGET}"),
        ("first result, one photo: `vesselseg eval PHOTO` (Keras)",
         f"{first['cli_keras']:.2f} s", ""),
        ("first result, one photo: `vesselseg eval PHOTO --model X.onnx`",
         f"{first['cli_onnx']:.2f} s", ""),
        ("first result, one photo: python + runtime.load + predict (TF blocked)",
         f"{first['runtime_onnx']:.2f} s", ""),
        ("per DRIVE photo: Keras float32 (default here) / bfloat16 (emulated, 5 photos)",
         f"{per['keras_float32']:.2f} / {per['keras_bfloat16_emulated']:.2f} s", ""),
        ("per DRIVE photo: ONNX float32 / ONNX int8",
         f"{per['onnx_float32']:.2f} / {per['onnx_int8']:.2f} s", ""),
    ]
    for name, label in (("drive", "DRIVE"), ("chase", "CHASE_DB1"), ("hrf", "HRF")):
        a, b = acc[name]["float32"], acc[name]["int8"]
        rows.append((f"{label} test ({a['images']} images): F1 / AUC-ROC, float32 -> int8",
                     f"{a['f1']:.4f} -> {b['f1']:.4f} ({b['f1'] - a['f1']:+.4f}) / "
                     f"{a['auc_roc']:.4f} -> {b['auc_roc']:.4f}",
                     f"DRIVE change <= {offered['bar']}" if name == "drive" else ""))
    rows.append(("int8 export offered", "yes" if offered["offered"] else "no (refused)", ""))
    lines = [f"Machine: {figures['machine']}.", "", "| figure | measured | target |",
             "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", required=True,
                        help="folder holding DRIVE/, CHASEDB1/ and HRF/ (../shared/datasets)")
    parser.add_argument("--out", default="artifacts/benchmarks/deploy",
                        help="a new folder is made here for the exports and the figures")
    return parser


def _main(args: argparse.Namespace) -> int:
    from vesselseg.io import write_text_atomic
    from vesselseg.outputs import new_folder

    out = new_folder(args.out, "deploy")
    figures = measure(Path(args.datasets), out)
    write_text_atomic(out / "deploy.json", json.dumps(figures, indent=2, default=float) + "\n")
    table = markdown_table(figures)
    write_text_atomic(out / "deploy.md", table)
    print(table)
    print(f"figures: {out / 'deploy.json'}")
    return 0 if figures["agreement"]["agreement_ok"] and figures["agreement"]["f1_ok"] else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
