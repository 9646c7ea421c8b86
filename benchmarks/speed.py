"""Speed and memory benchmark of a model on this machine; prints every figure next to its target
and writes them as JSON and as the markdown table docs/speed.md shows.

    python -m benchmarks.speed --source ../shared/datasets/DRIVE \\
        --hrf ../shared/datasets/HRF [--run RUN] [--out FOLDER]

Figures (default model: the shipped pretrained one, else --run; "default" means the path eval
takes without options: Keras, at the shipped model's default precision or a run's own):
- model-only inference at 512x512, images/s at batch 1, 4 and 8: Keras float32 and bfloat16,
  and the same weights exported to ONNX Runtime and TFLite (float32); for a model that works at
  a larger size (its config's working_size) all of them again at that size, which eval runs and
  the exports take, and the backend and eval comparisons use;
- achieved GFLOP/s of the forward pass against a 4096^3 matrix product in the same dtype;
- end-to-end `eval` on the 20 DRIVE test photos (read, preprocess, predict, map back, 3 PNGs)
  and its ratio to model-only throughput at the batch eval uses;
- training images/s at batch 4: tf.data pipeline vs in-memory tensors, float32 vs bfloat16;
- peak RSS of training at batch 4 and of eval on a full 3504x2336 HRF photo (each in its own
  process);
- eval seconds against pixel count for three sizes of the same photo.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from vesselseg.cli import run_cli

BATCHES = (1, 4, 8)
EVAL_BATCH = 4  # Segmenter's default batch size: the fair model-only reference for eval
TARGETS = {
    "seconds_per_image": 0.1, "aim_seconds_per_image": 0.05, "eval_ratio": 0.9,
    "pipeline_overhead": 0.10, "hrf_rss_mb": 2048.0, "backend_ratio": 1.2,
    "linearity": 1.5,  # marginal cost per pixel, last step / first step (growth at most linear)
}
#: Training precisions the benchmark times, and the prefix of their keys in figures["training"].
TRAINING_PRECISIONS = (("float32", ""), ("bfloat16", "bfloat16_"))


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


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def model_source(run: Path | None) -> Path:
    from vesselseg.runs import PRETRAINED_NAME, RunFolder

    return RunFolder.existing(run or PRETRAINED_NAME).path


def build_model(source: Path, policy: str):
    """The run's model as eval runs it (batch norm folded), for a Keras dtype policy ("float32"
    or "mixed_bfloat16")."""
    from vesselseg.backends import inference_model
    from vesselseg.runs import RunFolder

    run = RunFolder(source)
    return inference_model(run.model_path, run.config(),
                           "bfloat16" if policy == "mixed_bfloat16" else "float32")


def runner_throughputs(runners: dict[str, Callable], size: int = 512, repeat: int = 5,
                       rounds: int = 2) -> dict[str, dict[str, float]]:
    """Images/s of each runner (float32 [N,S,S,3] -> [N,S,S]) at each batch size. The runners
    take turns over `rounds` and each keeps its best median: measured one after the other, a slow
    spell of this shared machine landed on one backend alone and decided the comparison."""
    results: dict[str, dict[str, float]] = {name: {} for name in runners}
    for batch in BATCHES:
        x = np.random.default_rng(0).random((batch, size, size, 3), np.float32)
        for _ in range(rounds):
            for name, runner in runners.items():
                rate = batch / _timed(lambda runner=runner, x=x: runner(x), repeat)
                results[name][f"batch{batch}"] = max(results[name].get(f"batch{batch}", 0.0),
                                                     rate)
    return results


def matmul_gflops(dtype: str, n: int = 4096, repeat: int = 5) -> float:
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_uniform((n, n), (1, 2)), dtype)
    b = tf.cast(tf.random.stateless_uniform((n, n), (3, 4)), dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    seconds = _timed(lambda: matmul().numpy(), repeat)
    return 2 * n**3 / seconds / 1e9


def eval_throughput(segmenter, drive: Path) -> dict:
    """End-to-end eval over the DRIVE test photos: read, preprocess, predict, write 3 PNGs."""
    from vesselseg.eval import segment_images

    images = sorted((drive / "test" / "images").iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        segment_images(segmenter, images[:4], Path(tmp) / "warmup", quiet=True)
        start = time.perf_counter()
        segment_images(segmenter, images, Path(tmp) / "out", quiet=True)
        seconds = time.perf_counter() - start
    return {"images": len(images), "images_per_s": len(images) / seconds}


HOST_STAGES = ("read", "prepare", "map back", "PNGs")


def host_seconds_per_photo(segmenter, drive: Path) -> dict[str, float]:
    """CPU seconds per photo of everything eval does besides the model, by stage: read (decode),
    prepare (FOV, crop, resize, enhance), map back (to native size, threshold) and PNGs (encode
    and write the three outputs); "total" is their sum. On a machine whose cores the model
    already fills, this work cannot hide behind it: it bounds the end-to-end/model-only ratio.
    The model's real maps are computed first, untimed, so the PNGs compress what eval writes."""
    from vesselseg.io import read_image
    from vesselseg.photo_outputs import OUTPUT_KINDS, _write_outputs

    images = sorted((drive / "test" / "images").iterdir())
    maps = [segmenter.predict_prepared(segmenter.prepare(read_image(path))[0][None])[0]
            for path in images]
    seconds = dict.fromkeys(HOST_STAGES, 0.0)

    def timed(stage: str, work: Callable, *args):
        start = time.process_time()
        result = work(*args)
        seconds[stage] += time.process_time() - start
        return result

    with tempfile.TemporaryDirectory() as tmp:
        outputs = {kind: Path(tmp) / f"{kind}.png" for kind in OUTPUT_KINDS}
        for path, probability in zip(images, maps):
            image = timed("read", read_image, path)
            _, fov, box = timed("prepare", segmenter.prepare, image)
            prediction = timed("map back", segmenter.finish, probability, fov, box)
            timed("PNGs", _write_outputs, outputs, image, prediction)
    per_photo = {stage: total / len(images) for stage, total in seconds.items()}
    return {**per_photo, "total": sum(per_photo.values())}


def _stage_list(stages: dict[str, float]) -> str:
    return ", ".join(f"{stage} {1000 * stages[stage]:.0f} ms" for stage in HOST_STAGES)


def training_throughput(data: str | Path, base_filters: int, steps: int = 40,
                        depth: int = 4, policy: str = "float32",
                        sources: tuple[str, ...] = ("in_memory", "pipeline"),
                        rounds: int = 2) -> dict:
    """Training images/s at batch 4, 512x512: real tf.data pipeline vs in-memory tensors
    (the best of `rounds` alternating timings of `steps` steps each)."""
    import keras
    import tensorflow as tf

    from vesselseg.config import AugmentConfig
    from vesselseg.devices import dtype_policy, gpus
    from vesselseg.losses import make_loss
    from vesselseg.model import get_model
    from vesselseg.pipeline import make_dataset, split_rows
    from vesselseg.preprocess import load_manifest, load_preprocess_config

    rows = split_rows(load_manifest(data), "train")
    # the pipeline exactly as train() builds it (autotune off on a CPU-only machine)
    real = make_dataset(rows, 4, training=True, augment_config=AugmentConfig(),
                        autotune=bool(gpus()), gray=load_preprocess_config(data).gray)
    # the baseline gets the pipeline's tf.data options too: left at the defaults, its autotuner
    # threads competed with the model for the 2 cores and made the baseline the slower source
    in_memory = tf.data.Dataset.from_tensors(next(iter(real))).repeat().with_options(real.options())
    datasets = {"pipeline": real, "in_memory": in_memory}
    with dtype_policy(policy):
        models = {}
        for label in sources:
            keras.utils.set_random_seed(0)
            model = get_model("unet", base_filters=base_filters, depth=depth, batch_norm=True)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("bce_dice"))
            model.fit(datasets[label], steps_per_epoch=3, epochs=1, verbose=0)  # warm-up, trace
            models[label] = model
        # alternate the sources over several rounds and keep each one's best: a single pass in a
        # fixed order measured whichever came first up to 2x slower on this shared machine
        results = dict.fromkeys(sources, 0.0)
        for _ in range(rounds):
            for label in sources:
                start = time.perf_counter()
                models[label].fit(datasets[label], steps_per_epoch=steps, epochs=1, verbose=0)
                results[label] = max(results[label], 4 * steps / (time.perf_counter() - start))
    return results


#: The repository root: child processes run there, so `benchmarks` imports as a package.
REPO_ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh Python process running `code` (Linux: it reports its
    own VmHWM, so neither this process nor earlier children inflate the figure)."""
    # VmHWM (peak RSS of this process image); getrusage's ru_maxrss would also count what the
    # forked child inherited from this (large) benchmark process before exec.
    report = ("\nfrom pathlib import Path\n"
              "print([x for x in Path('/proc/self/status').read_text().splitlines() "
              "if x.startswith('VmHWM')][0])\n")
    done = subprocess.run([sys.executable, "-c", code + report], check=True,
                          capture_output=True, text=True, cwd=REPO_ROOT)
    line = next(x for x in done.stdout.splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024.0  # kB


def pixel_scaling(segmenter, photo: Path, tmp: Path) -> list[dict]:
    """Eval seconds of the same photo at three sizes (1/4, 1/2 and all of its pixels)."""
    import cv2

    from vesselseg.eval import segment_images
    from vesselseg.io import read_image, write_png

    image = read_image(photo)
    rows = []
    for index, share in enumerate((0.25, 0.5, 1.0)):
        factor = share ** 0.5
        resized = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        path = tmp / f"scaled_{index}.png"
        write_png(path, resized)
        segment_images(segmenter, [path], tmp / f"warm_{index}", quiet=True)
        times = []
        for repeat in range(3):
            start = time.perf_counter()
            segment_images(segmenter, [path], tmp / f"out_{index}_{repeat}", quiet=True)
            times.append(time.perf_counter() - start)
        rows.append({"width": resized.shape[1], "height": resized.shape[0],
                     "pixels": resized.shape[0] * resized.shape[1],
                     "seconds": float(np.median(times))})
    return rows


def machine() -> str:
    from vesselseg.devices import cpu_has_bf16

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{name}, {os.cpu_count()} logical CPUs, "
            f"{'bf16 matrix units' if cpu_has_bf16() else 'no bf16 units'}, no GPU")


def default_precision(run: Path | None) -> str:
    """The precision eval runs a model in without options, "float32" or "bfloat16": the shipped
    model at PRETRAINED_PRECISION, a run as it was trained (a float16 run is timed as float32)."""
    from vesselseg.backends import load_keras_model
    from vesselseg.inference import PRETRAINED_PRECISION, resolve_inference_precision
    from vesselseg.model import trained_policy
    from vesselseg.runs import RunFolder

    if run is None:
        chosen = resolve_inference_precision(PRETRAINED_PRECISION)
    else:
        chosen = trained_policy(load_keras_model(RunFolder(run).model_path))
    return "bfloat16" if (chosen or "").endswith("bfloat16") else "float32"


def measure(source: Path, drive: Path, hrf: Path, say=print, precision: str = "float32") -> dict:
    """Every figure of the benchmark, printed as it comes; returns them as a dict. `precision`
    is the default path's ("float32" or "bfloat16", see default_precision)."""
    import tensorflow as tf

    from vesselseg.backends import KerasRunner, load_keras_model
    from vesselseg.config import TrainConfig, load_config
    from vesselseg.export import export_run
    from vesselseg.inference import Segmenter, export_size
    from vesselseg.model import forward_flops
    from vesselseg.preprocess import preprocess_dataset
    from vesselseg.runs import RunFolder

    config = load_config(TrainConfig, source / "config.json")
    default_key = f"keras_{precision}"
    figures: dict = {"machine": machine(), "model": str(source), "default": default_key,
                     "tensorflow": tf.__version__, "targets": TARGETS}
    say(f"machine: {figures['machine']}; TensorFlow {tf.__version__}\nmodel: {source} "
        f"(U-Net base {config.base_filters}, depth {config.depth})")

    # a run made to work at a larger size (working_size) runs that size in eval, and its
    # exports take it: those comparisons are made at that size, the target at 512x512
    working = export_size(config)  # the side the model runs at in one piece
    say("\nmodel-only inference, 512x512 (images/s)")
    model32 = build_model(source, "float32")
    flops = forward_flops(model32, 512, 512)
    figures["forward_gflop"] = flops / 1e9
    # the trained model's count: folding batch norm into the convolutions changes it
    figures["parameters"] = int(load_keras_model(RunFolder(source).model_path).count_params())
    say(f"  forward pass {flops / 1e9:.1f} GFLOP, {figures['parameters']:,} parameters")
    runners = {"keras_float32": KerasRunner(model32),
               "keras_bfloat16": KerasRunner(build_model(source, "mixed_bfloat16"))}
    exports: dict[str, Callable] = {}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("export", "tests"))
        segmenters = {"keras": Segmenter.from_run(copy, precision=precision)}
        for backend in ("onnx", "tflite"):
            try:
                export_run(copy, backend)  # into the temporary copy's export/
                segmenters[backend] = Segmenter.from_run(copy, backend=backend)
            except Exception as exc:  # noqa: BLE001 - a missing optional runtime is reported
                say(f"  {backend}: not measured ({exc})")
                continue
            exports[f"{backend}_float32"] = segmenters[backend].runner
        model_only = runner_throughputs({**runners, **(exports if working == 512 else {})})
        figures["model_only"] = model_only
        _say_rates(say, model_only)
        at_working = model_only
        if working != 512:
            say(f"\nmodel-only inference at the model's working size {working}x{working}, what "
                f"eval runs (images/s)")
            at_working = runner_throughputs({**runners, **exports}, size=working)
            figures["working_size"] = working
            figures["model_only_working"] = at_working
            _say_rates(say, at_working)
        default_rate = model_only[default_key][f"batch{EVAL_BATCH}"]
        seconds = 1 / default_rate
        say(f"  target: <= {TARGETS['seconds_per_image']} s per image (aim "
            f"{TARGETS['aim_seconds_per_image']}), default path (Keras {precision}, batch "
            f"{EVAL_BATCH}): {seconds:.3f} s [{_verdict(seconds <= TARGETS['seconds_per_image'])}"
            f"{', aim met' if seconds <= TARGETS['aim_seconds_per_image'] else ''}]")
        # the default path against every way of running the same weights at the size eval runs;
        # _backend_ok judges it
        rates = _rates(at_working)
        fastest = max(rates, key=rates.get)
        ratio = rates[fastest] / rates[default_key]
        figures["fastest_model_only"] = {"name": fastest, "ratio_to_default": ratio,
                                         "size": working}
        say(f"  fastest at batch {EVAL_BATCH}, {working}x{working}: {fastest}, {ratio:.2f}x the "
            f"default {default_key} (target: the default within {TARGETS['backend_ratio']}x of "
            f"the fastest) [{_verdict(_backend_ok(at_working, default_key))}]")

        say("\nachieved GFLOP/s of the forward pass (batch 8) vs a 4096^3 matrix product")
        for label, dtype in (("float32", "float32"), ("bfloat16", "bfloat16")):
            peak = matmul_gflops(dtype)
            achieved = model_only[f"keras_{label}"]["batch8"] * flops / 1e9
            figures[f"gflops_{label}"] = {"model": achieved, "matmul": peak}
            say(f"  {label:9s} model {achieved:7.1f} GFLOP/s, matmul {peak:7.1f} GFLOP/s "
                f"({100 * achieved / peak:.0f} % of the matrix-product rate)")

        say("\nend-to-end eval on the DRIVE test photos (read, preprocess, predict, 3 PNGs)")
        figures["eval"] = {}
        for backend, segmenter in segmenters.items():
            e2e = eval_throughput(segmenter, drive)
            key = default_key if backend == "keras" else f"{backend}_float32"
            e2e["ratio_to_model_only"] = (e2e["images_per_s"]
                                          / at_working[key][f"batch{EVAL_BATCH}"])
            figures["eval"][backend] = e2e
            say(f"  {backend:7s} {e2e['images_per_s']:.2f} img/s = "
                f"{e2e['ratio_to_model_only']:.2f} of model-only at batch {EVAL_BATCH}, "
                f"{working}x{working} (target >= "
                f"{TARGETS['eval_ratio']}) "
                f"[{_verdict(e2e['ratio_to_model_only'] >= TARGETS['eval_ratio'])}]")
        stages = host_seconds_per_photo(segmenters["keras"], drive)
        host = stages["total"]
        model_seconds = 1.0 / at_working[default_key][f"batch{EVAL_BATCH}"]
        figures["eval_host_seconds_per_photo"] = host
        figures["eval_host_stages"] = stages
        say(f"  work besides the model: {1000 * host:.0f} ms of CPU per photo, "
            f"{host / model_seconds:.2f}x the model's {1000 * model_seconds:.0f} ms (which "
            f"keeps all {os.cpu_count()} cores busy)")
        say(f"    of which {_stage_list(stages)}")

    say("\ntraining throughput, batch 4, 512x512 (images/s)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "drive"
        # the model's own preprocessing: the pipeline path its training takes (gray or RGB)
        preprocess_dataset("drive", drive, data,
                           replace(config.preprocess, size=512, augment=0), progress=False)
        training = training_throughput(data, config.base_filters, depth=config.depth)
        bfloat16 = training_throughput(data, config.base_filters, depth=config.depth,
                                       policy="mixed_bfloat16")
        training.update(bfloat16_pipeline=bfloat16["pipeline"],
                        bfloat16_in_memory=bfloat16["in_memory"],
                        pipeline_overhead=training["in_memory"] / training["pipeline"] - 1,
                        bfloat16_pipeline_overhead=bfloat16["in_memory"] / bfloat16["pipeline"] - 1)
        figures["training"] = training
        for label, prefix in TRAINING_PRECISIONS:
            overhead = training[f"{prefix}pipeline_overhead"]
            say(f"  {label}: in-memory {training[f'{prefix}in_memory']:.2f}, tf.data pipeline "
                f"{training[f'{prefix}pipeline']:.2f}: overhead {100 * overhead:.1f} % (target "
                f"<= {100 * TARGETS['pipeline_overhead']:.0f} %) "
                f"[{_verdict(overhead <= TARGETS['pipeline_overhead'])}]")
        say(f"  bfloat16 against float32 with the pipeline: "
            f"{training['bfloat16_pipeline'] / training['pipeline']:.2f}x")
        code = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'\n"
                "from benchmarks.speed import training_throughput\n"
                f"training_throughput({str(data)!r}, {config.base_filters}, steps=4, rounds=1, "
                f"depth={config.depth}, sources=('pipeline',))")
        figures["training_peak_rss_mb"] = peak_rss_mb(code)
        say(f"  peak RSS of training at batch 4: {figures['training_peak_rss_mb']:.0f} MB")

    say("\neval on a full HRF photo (3504x2336): peak RSS, and time against pixel count")
    photo = next(p for p in sorted((hrf / "images").iterdir()) if p.name.startswith("01_h"))
    with tempfile.TemporaryDirectory() as tmp:
        code = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'\n"
                "from pathlib import Path\nfrom vesselseg.inference import Segmenter\n"
                "from vesselseg.eval import segment_images\n"
                f"segment_images(Segmenter.from_run({str(source)!r}, precision={precision!r}), "
                f"[Path({str(photo)!r})], "
                f"Path({tmp!r}) / 'o', quiet=True)")
        figures["hrf_eval_peak_rss_mb"] = peak_rss_mb(code)
        say(f"  peak RSS {figures['hrf_eval_peak_rss_mb']:.0f} MB (target <= "
            f"{TARGETS['hrf_rss_mb']:.0f} MB) "
            f"[{_verdict(figures['hrf_eval_peak_rss_mb'] <= TARGETS['hrf_rss_mb'])}]")
        figures["scaling"] = pixel_scaling(Segmenter.from_run(source, precision=precision),
                                           photo, Path(tmp))
    rows = figures["scaling"]
    # linear growth = a fixed cost per photo plus a constant cost per extra pixel: compare the
    # marginal cost per pixel between consecutive sizes
    marginal = [(b["seconds"] - a["seconds"]) / (b["pixels"] - a["pixels"])
                for a, b in zip(rows, rows[1:])]
    spread = marginal[-1] / max(marginal[0], 1e-12)  # > 1: the cost per pixel grows
    figures["scaling_spread"] = spread
    for row in rows:
        say(f"  {row['width']}x{row['height']}: {row['seconds']:.3f} s")
    say(f"  marginal cost {', '.join(f'{1e9 * m:.0f}' for m in marginal)} ns per extra pixel: "
        f"last / first {spread:.2f} (at most linear: <= {TARGETS['linearity']}) "
        f"[{_verdict(spread <= TARGETS['linearity'])}]")
    return figures


def _say_rates(say, model_only: dict) -> None:
    for name, rates in model_only.items():
        say(f"  {name:16s} " + "  ".join(
            f"batch {b}: {rates[f'batch{b}']:6.2f} img/s ({1 / rates[f'batch{b}']:.3f} s)"
            for b in BATCHES))


def _rates(model_only: dict) -> dict[str, float]:
    """Images/s at the eval batch of every backend and precision: the set the target compares."""
    return {k: v[f"batch{EVAL_BATCH}"] for k, v in model_only.items()}


def _backend_ok(model_only: dict, default_key: str = "keras_float32") -> bool:
    rates = _rates(model_only)
    return max(rates.values()) <= TARGETS["backend_ratio"] * rates[default_key]


def markdown_table(figures: dict) -> str:
    """The docs/speed.md table."""
    m = figures["model_only"]
    rows = [f"Machine: {figures['machine']}; TensorFlow {figures['tensorflow']}. Model: "
            f"{figures['parameters']:,} parameters, {figures['forward_gflop']:.1f} GFLOP per "
            f"512x512 forward pass.", "",
            "| figure | measured | target |", "|---|---|---|"]
    key = figures.get("default", "keras_float32")
    default = m[key][f"batch{EVAL_BATCH}"]
    rows.append(f"| model only, Keras {key.split('_')[1]}, batch {EVAL_BATCH} (default) | "
                f"{1 / default:.3f} s/img ({default:.1f} img/s) | <= 0.1 s (aim 0.05) |")
    for name, rates in m.items():
        rows.append(f"| model only, {name.replace('_', ' ')}, batch 1 / 8 | "
                    f"{rates['batch1']:.1f} / {rates['batch8']:.1f} img/s | |")
    working = figures.get("working_size")
    for name, rates in figures.get("model_only_working", {}).items():
        rows.append(f"| model only at the working size {working}x{working}, "
                    f"{name.replace('_', ' ')}, batch 1 / {EVAL_BATCH} / 8 | {rates['batch1']:.1f} "
                    f"/ {rates[f'batch{EVAL_BATCH}']:.1f} / {rates['batch8']:.1f} img/s | |")
    for label in ("float32", "bfloat16"):
        g = figures[f"gflops_{label}"]
        rows.append(f"| forward pass {label}: achieved vs 4096^3 matmul | {g['model']:.0f} vs "
                    f"{g['matmul']:.0f} GFLOP/s ({100 * g['model'] / g['matmul']:.0f} %) | |")
    for backend, e2e in figures["eval"].items():
        rows.append(f"| end-to-end eval, 20 DRIVE photos, {backend} | "
                    f"{e2e['images_per_s']:.1f} img/s ({e2e['ratio_to_model_only']:.2f} of "
                    f"model-only{f' at {working}' if working else ''}) | >= 0.9 |")
    if "eval_host_seconds_per_photo" in figures:
        host = figures["eval_host_seconds_per_photo"]
        model_rate = figures.get("model_only_working", m)[key][f"batch{EVAL_BATCH}"]
        rows.append(f"| eval work besides the model (read, FOV, resize, 3 PNGs) | "
                    f"{1000 * host:.0f} ms CPU/photo ({host * model_rate:.2f}x the model's time) "
                    f"| |")
        if "eval_host_stages" in figures:
            rows.append(f"| the same by stage | {_stage_list(figures['eval_host_stages'])} | |")
    t = figures["training"]
    rows += [f"| training batch 4, tf.data vs in-memory ({label}) | {t[f'{prefix}pipeline']:.2f} "
             f"vs {t[f'{prefix}in_memory']:.2f} img/s "
             f"({100 * t[f'{prefix}pipeline_overhead']:.1f} % overhead) | <= 10 % |"
             for label, prefix in TRAINING_PRECISIONS]
    rows += [f"| training batch 4, bfloat16 vs float32 (pipeline) | "
             f"{t['bfloat16_pipeline']:.2f} vs {t['pipeline']:.2f} img/s | |",
             f"| peak RSS, training batch 4 | {figures['training_peak_rss_mb']:.0f} MB | |",
             f"| peak RSS, eval of a 3504x2336 HRF photo | "
             f"{figures['hrf_eval_peak_rss_mb']:.0f} MB | <= 2048 MB |"]
    sizes = ", ".join(f"{r['width']}x{r['height']} {r['seconds']:.2f} s"
                      for r in figures["scaling"])
    rows.append(f"| eval time vs size (HRF photo) | {sizes} (marginal cost per pixel, last / "
                f"first step: {figures['scaling_spread']:.2f}) | at most linear (<= 1.5) |")
    return "\n".join(rows) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (default: the shipped pretrained model)")
    parser.add_argument("--source", default="../shared/datasets/DRIVE", help="DRIVE folder")
    parser.add_argument("--hrf", default="../shared/datasets/HRF", help="HRF folder")
    parser.add_argument("--out", help="folder for speed.json and speed.md "
                                      "(default: a new folder in artifacts/benchmarks)")
    return parser


def _main(args: argparse.Namespace) -> int:
    from vesselseg.errors import DatasetError
    from vesselseg.io import write_text_atomic
    from vesselseg.outputs import new_folder

    source = model_source(Path(args.run) if args.run else None)
    drive, hrf = Path(args.source), Path(args.hrf)
    for folder, needed in ((drive, "test/images"), (hrf, "images")):
        if not (folder / needed).is_dir():
            raise DatasetError(f"{folder}: no {needed} folder (pass --source / --hrf)")
    figures = measure(source, drive, hrf,
                      precision=default_precision(Path(args.run) if args.run else None))
    out = Path(args.out) if args.out else new_folder("artifacts/benchmarks", "speed")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "speed.json", json.dumps(figures, indent=2) + "\n")
    write_text_atomic(out / "speed.md", markdown_table(figures))
    print(f"\nresults: {out / 'speed.json'}, {out / 'speed.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
