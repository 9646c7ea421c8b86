"""The deployment benchmark's table (its figures come from running it on the real datasets)."""
from __future__ import annotations

import subprocess
import sys

from benchmarks.deploy import BLOCKER, markdown_table


def _figures(int8_change: float) -> dict:
    scores = {"f1": 0.82, "auc_roc": 0.979, "images": 20, "seconds_per_photo": 1.0}
    int8 = {**scores, "f1": 0.82 + int8_change}
    return {
        "machine": "test CPU, 2 CPUs",
        "agreement": {"agreement": 0.99995, "f1_runtime_onnx": 0.8235, "f1_eval_keras": 0.8236,
                      "f1_difference": 0.0001},
        "first_result": {"cli_keras": 9.5, "cli_onnx": 6.1, "runtime_onnx": 2.9},
        "seconds_per_photo": {"keras_float32": 1.2, "keras_bfloat16_emulated": 2.0,
                              "onnx_float32": 2.2, "onnx_int8": 1.5},
        "accuracy": {name: {"float32": scores, "int8": int8} for name in ("drive", "chase",
                                                                           "hrf")},
        "int8_offered": {"drive_f1_change": int8_change, "bar": 0.003,
                         "offered": abs(int8_change) <= 0.003},
    }


def test_the_table_puts_each_figure_beside_its_target():
    table = markdown_table(_figures(-0.001))
    assert "| runtime (TensorFlow blocked) vs eval (Keras) masks" in table
    assert "99.9950% agree | >= 99.9%" in table
    assert "(difference 0.0001) | <= 0.001" in table
    assert "9.50 s" in table and "2.90 s" in table and "1.20 / 2.00 s" in table
    assert "0.8200 -> 0.8190 (-0.0010)" in table
    assert "| int8 export offered | yes |" in table


def test_the_table_says_when_int8_is_refused():
    assert "| int8 export offered | no (refused) |" in markdown_table(_figures(-0.004))


def test_the_blocker_refuses_tensorflow_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-c", BLOCKER + "import keras\n"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "blocked: keras" in done.stderr
