"""The speed benchmark's measuring helpers (the figures themselves come from running it)."""
from __future__ import annotations

import numpy as np

from benchmarks.speed import BATCHES, runner_throughputs


def test_runner_throughputs_alternate_backends_and_report_every_batch_size():
    calls: list[tuple[str, int]] = []

    def runner(name):
        def run(x: np.ndarray) -> np.ndarray:
            calls.append((name, len(x)))
            return x[..., 0]
        return run

    rates = runner_throughputs({"a": runner("a"), "b": runner("b")}, size=8, repeat=1, rounds=2)

    assert set(rates) == {"a", "b"}
    for name in rates:
        assert sorted(rates[name]) == sorted(f"batch{b}" for b in BATCHES)
        assert all(rate > 0 for rate in rates[name].values())
    # per batch size: a, b, a, b (each turn = 2 warm-up calls + 1 timed call)
    first_batch = [name for name, batch in calls if batch == BATCHES[0]]
    assert first_batch == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3


def test_the_default_path_is_the_shipped_models_auto_precision_or_a_runs_own(tiny_run,
                                                                              monkeypatch):
    from benchmarks.speed import default_precision
    from vesselseg import devices

    monkeypatch.setattr(devices, "gpus", lambda: [])
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert default_precision(None) == "bfloat16"
    assert default_precision(tiny_run) == "float32"  # trained in float32
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert default_precision(None) == "float32"


def test_the_backend_target_judges_the_default_path_against_every_way_to_run_it():
    from benchmarks.speed import _backend_ok, markdown_table

    rates = {"keras_float32": {"batch4": 10.0}, "keras_bfloat16": {"batch4": 14.0},
             "onnx_float32": {"batch4": 12.5}}
    assert not _backend_ok(rates, "keras_float32")  # bfloat16 is 1.4x the float32 default
    assert _backend_ok(rates, "keras_bfloat16")
    rows = markdown_table({"machine": "m", "tensorflow": "t", "parameters": 1, "forward_gflop": 1.0,
                           "default": "keras_bfloat16",
                           "model_only": {k: {"batch1": 1.0, "batch4": v["batch4"],
                                              "batch8": 1.0} for k, v in rates.items()},
                           "gflops_float32": {"model": 1, "matmul": 2},
                           "gflops_bfloat16": {"model": 1, "matmul": 2}, "eval": {},
                           "training": {"pipeline": 1, "in_memory": 1, "pipeline_overhead": 0,
                                        "bfloat16_pipeline": 2, "bfloat16_in_memory": 2.5,
                                        "bfloat16_pipeline_overhead": 0.25},
                           "training_peak_rss_mb": 1, "hrf_eval_peak_rss_mb": 1,
                           "scaling": [], "scaling_spread": 1.0}).splitlines()
    assert rows[4].startswith("| model only, Keras bfloat16, batch 4 (default) | 0.071 s/img")
    # the pipeline's overhead is judged in both training precisions
    assert ("| training batch 4, tf.data vs in-memory (bfloat16) | 2.00 vs 2.50 img/s "
            "(25.0 % overhead) | <= 10 % |") in rows


def test_eval_host_work_is_timed_by_stage_on_the_models_real_maps(tiny_run, synthetic_dataset,
                                                                    tmp_path, monkeypatch):
    import shutil

    from benchmarks.speed import HOST_STAGES, host_seconds_per_photo
    from vesselseg import photo_outputs as eval_module
    from vesselseg.inference import Segmenter
    from vesselseg.io import read_image

    photos = tmp_path / "drive" / "test" / "images"  # the DRIVE layout the benchmark reads
    shutil.copytree(synthetic_dataset / "images", photos)
    written = []
    real_write = eval_module._write_outputs
    monkeypatch.setattr(eval_module, "_write_outputs", lambda outputs, image, prediction: (
        written.append(prediction.probability), real_write(outputs, image, prediction)))
    segmenter = Segmenter.from_run(tiny_run)
    stages = host_seconds_per_photo(segmenter, tmp_path / "drive")

    assert list(stages) == [*HOST_STAGES, "total"]
    assert stages["PNGs"] > 0  # three PNGs per photo are real work
    expected = [segmenter.predict(read_image(path)).probability
                for path in sorted(photos.iterdir())]
    assert len(written) == len(expected)
    for probability, direct in zip(written, expected):  # what eval would write, not a constant
        np.testing.assert_allclose(probability, direct, atol=1e-5)
