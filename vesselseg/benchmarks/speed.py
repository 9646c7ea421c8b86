"""Speed and memory benchmark of the default model on this machine; prints every figure next to
its target.

    python -m vesselseg.benchmarks.speed --source ../shared/datasets/DRIVE \\
        --hrf ../shared/datasets/HRF [--run RUN]

Figures: model-only inference (images/s at batch 1 and 8, float32 and bfloat16); end-to-end
`eval` throughput on the DRIVE test images and its ratio to model-only; training throughput with
the real tf.data pipeline vs in-memory tensors; achieved GFLOP/s of the forward pass against a
large matrix product in the same dtype; peak RSS of training and of eval on a full HRF image;
eval time against pixel count for three sizes.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..cli import run_cli


def _timed(func, repeat: int, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _build(run: Path | None, policy: str):
    import keras

    from ..inference import PRETRAINED_DIR, load_keras_model
    from ..model import get_model

    keras.mixed_precision.set_global_policy(policy)
    source = run or PRETRAINED_DIR
    if (source / "best.keras").exists():
        trained = load_keras_model(source / "best.keras")
        model = keras.Model.from_config(trained.get_config())
        model.set_weights(trained.get_weights())
    else:
        model = get_model("unet", base_filters=16, depth=4, batch_norm=True)
    keras.mixed_precision.set_global_policy("float32")
    return model


def model_throughput(run: Path | None, size: int = 512, repeat: int = 5) -> dict:
    """Images/s of the bare model at batch 1 and 8 in float32 and bfloat16."""
    import tensorflow as tf

    results = {}
    for policy, label in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
        model = _build(run, policy)
        infer = tf.function(lambda x, m=model: m(x, training=False), jit_compile=False)
        for batch in (1, 8):
            x = tf.constant(np.random.default_rng(0).random((batch, size, size, 3), np.float32))
            seconds = _timed(lambda x=x, f=infer: f(x).numpy(), repeat)
            results[f"{label}_batch{batch}"] = batch / seconds
    return results


def matmul_gflops(dtype: str, n: int = 4096, repeat: int = 5) -> float:
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_uniform((n, n), (1, 2)), dtype)
    b = tf.cast(tf.random.stateless_uniform((n, n), (3, 4)), dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    seconds = _timed(lambda: matmul().numpy(), repeat)
    return 2 * n**3 / seconds / 1e9


def eval_throughput(run: Path | None, drive: Path, backend: str | None = None) -> dict:
    """End-to-end eval over the DRIVE test photos: read, preprocess, predict, write 3 PNGs."""
    from ..eval import segment_images
    from ..inference import Segmenter

    images = sorted((drive / "test" / "images").iterdir())
    kwargs = {"backend": backend} if backend else {}
    segmenter = Segmenter.from_run(run, **kwargs) if run else Segmenter.pretrained(**kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        segment_images(segmenter, images[:4], Path(tmp) / "warmup", progress=False)
        start = time.perf_counter()
        segment_images(segmenter, images, Path(tmp) / "out", progress=False)
        seconds = time.perf_counter() - start
    return {"images": len(images), "images_per_s": len(images) / seconds}


def training_throughput(data: Path, base_filters: int, steps: int = 12) -> dict:
    """Training images/s at batch 4, 512x512: real tf.data pipeline vs in-memory tensors."""
    import keras
    import tensorflow as tf

    from ..config import AugmentConfig
    from ..losses import make_loss
    from ..model import get_model
    from ..pipeline import make_dataset, split_rows
    from ..preprocess import load_manifest

    rows = split_rows(load_manifest(data), "train")
    real = make_dataset(rows, 4, training=True, augment_config=AugmentConfig())
    batch = next(iter(real))
    memory = tf.data.Dataset.from_tensors(batch).repeat()
    results = {}
    for label, dataset in (("in_memory", memory), ("pipeline", real)):
        keras.utils.set_random_seed(0)
        model = get_model("unet", base_filters=base_filters, depth=4, batch_norm=True)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("dice"))
        model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # warm-up and tracing
        start = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        results[label] = 4 * steps / (time.perf_counter() - start)
    return results


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a child Python process running `code`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 1024.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vesselseg.benchmarks.speed",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (default: the shipped pretrained model)")
    parser.add_argument("--source", default="../shared/datasets/DRIVE", help="DRIVE folder")
    parser.add_argument("--hrf", default="../shared/datasets/HRF", help="HRF folder")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser


def _main(args: argparse.Namespace) -> int:
    from ..config import PreprocessConfig, TrainConfig, load_config
    from ..inference import PRETRAINED_DIR
    from ..model import forward_flops
    from ..preprocess import preprocess_dataset

    run = Path(args.run) if args.run else None
    config = load_config(TrainConfig, (run or PRETRAINED_DIR) / "config.json")
    drive, hrf = Path(args.source), Path(args.hrf)
    figures: dict = {}

    print("model-only inference, 512x512 (images/s)")
    model = _build(run, "float32")
    flops = forward_flops(model, 512, 512)
    figures["forward_gflop"] = flops / 1e9
    figures["model"] = model_throughput(run)
    for key, value in figures["model"].items():
        print(f"  {key:18s} {value:7.2f} img/s  {1 / value:.3f} s/img")
    best = max(figures["model"].values())
    print(f"  target: <= 0.1 s per image (aim 0.05): best {1 / best:.3f} s "
          f"[{'met' if 1 / best <= 0.1 else 'NOT met'}]")

    print("\nachieved GFLOP/s of the forward pass vs a 4096^3 matrix product")
    for label, dtype in (("float32", "float32"), ("bfloat16", "bfloat16")):
        peak = matmul_gflops(dtype)
        achieved = figures["model"][f"{label}_batch8"] * flops / 1e9
        figures[f"gflops_{label}"] = {"model": achieved, "matmul": peak}
        print(f"  {label:9s} model {achieved:7.1f} GFLOP/s, matmul {peak:7.1f} GFLOP/s "
              f"({100 * achieved / peak:.0f} % of the matrix-product rate)")

    print("\nend-to-end eval on the DRIVE test photos (read, preprocess, predict, 3 PNGs)")
    e2e = eval_throughput(run, drive)
    model_rate = figures["model"]["float32_batch8"]
    figures["eval"] = {**e2e, "ratio_to_model_only": e2e["images_per_s"] / model_rate}
    print(f"  {e2e['images_per_s']:.2f} img/s = {figures['eval']['ratio_to_model_only']:.2f} of "
          f"model-only (target >= 0.9)")

    print("\ntraining throughput, batch 4, 512x512")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "drive"
        preprocess_dataset("drive", drive, data, PreprocessConfig(), progress=False)
        training = training_throughput(data, config.base_filters)
        overhead = training["in_memory"] / training["pipeline"] - 1
        figures["training"] = {**training, "pipeline_overhead": overhead}
        print(f"  in-memory {training['in_memory']:.2f} img/s, tf.data pipeline "
              f"{training['pipeline']:.2f} img/s: overhead {100 * overhead:.1f} % (target <= 10 %)")
        code = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'\n"
                "from vesselseg.benchmarks.speed import training_throughput\n"
                f"training_throughput({str(data)!r}, {config.base_filters}, steps=4)")
        figures["training_peak_rss_mb"] = peak_rss_mb(code)
        print(f"  peak RSS of training at batch 4: {figures['training_peak_rss_mb']:.0f} MB")

    print("\neval on a full HRF photo (3504x2336): peak RSS, and time against pixel count")
    photo = next(p for p in sorted((hrf / "images").iterdir()) if p.name.startswith("01_h"))
    run_arg = f"Segmenter.from_run({str(run)!r})" if run else "Segmenter.pretrained()"
    with tempfile.TemporaryDirectory() as tmp:
        code = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'\n"
                "from pathlib import Path\nfrom vesselseg.inference import Segmenter\n"
                "from vesselseg.eval import segment_images\n"
                f"segment_images({run_arg}, [Path({str(photo)!r})], Path({tmp!r}) / 'o', "
                "progress=False)")
        figures["hrf_eval_peak_rss_mb"] = peak_rss_mb(code)
        print(f"  peak RSS {figures['hrf_eval_peak_rss_mb']:.0f} MB (target <= 2048 MB)")
        figures["scaling"] = _pixel_scaling(run, photo, Path(tmp))
    for row in figures["scaling"]:
        print(f"  {row['width']}x{row['height']}: {row['seconds']:.3f} s, "
              f"{1e6 * row['seconds'] / row['pixels']:.3f} us/pixel")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def _pixel_scaling(run: Path | None, photo: Path, tmp: Path) -> list[dict]:
    """Eval seconds of the same photo at three sizes (1x, 2x, 4x the pixels)."""
    import cv2

    from ..eval import segment_images
    from ..inference import Segmenter
    from ..io import read_image, write_png

    segmenter = Segmenter.from_run(run) if run else Segmenter.pretrained()
    image = read_image(photo)
    rows = []
    for index, share in enumerate((0.25, 0.5, 1.0)):
        factor = share ** 0.5
        resized = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        path = tmp / f"scaled_{index}.png"
        write_png(path, resized)
        segment_images(segmenter, [path], tmp / f"warm_{index}", progress=False)
        start = time.perf_counter()
        segment_images(segmenter, [path], tmp / f"out_{index}", progress=False)
        rows.append({"width": resized.shape[1], "height": resized.shape[0],
                     "pixels": resized.shape[0] * resized.shape[1],
                     "seconds": time.perf_counter() - start})
    return rows


def main(argv: list[str] | None = None) -> int:
    from ..inference import quiet_tensorflow

    quiet_tensorflow()
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
