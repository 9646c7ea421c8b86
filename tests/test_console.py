"""What commands print: TensorFlow's native start-up lines dropped, plain progress in logs, and
no global state of the user's changed by importing vesselseg."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vesselseg.console import is_native_log_line, native_log_filter, progress

NATIVE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796301776.135292   28193 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.",
    b"E0000 00:00:1796301788.874334   28193 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error",
]
OURS = [b"error: photo.png: is empty (0 bytes)", b"eval: 3/10 img",
        b"Traceback (most recent call last):", b"warning: masks/b.png: not binary"]


@pytest.mark.parametrize("line", NATIVE)
def test_tensorflow_lines_are_recognised(line):
    assert is_native_log_line(line)


@pytest.mark.parametrize("line", OURS)
def test_other_lines_are_kept(line):
    assert not is_native_log_line(line)


def test_the_filter_drops_native_lines_and_keeps_everything_else():
    """In a child process whose stderr is a pipe: C-level writes to descriptor 2 pass the
    filter line by line, Python's own sys.stderr writes go straight through."""
    absl, cuda = NATIVE[0] + b"\n", NATIVE[2] + b"\n"
    code = (
        "import os, sys\n"
        "from vesselseg.console import native_log_filter\n"
        "with native_log_filter():\n"
        f"    os.write(2, {absl!r})\n"
        "    os.write(2, b'native but ours\\n')\n"
        f"    os.write(2, {cuda!r})\n"
        "    print('python line', file=sys.stderr)\n"
        "os.write(2, b'after\\n')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "native but ours" in err and "python line" in err and "after" in err
    assert "absl" not in err and "cuInit" not in err


def test_disabled_filter_changes_nothing():
    before = sys.stderr
    with native_log_filter(enabled=False):
        assert sys.stderr is before


def test_progress_in_a_log_is_plain_lines(capsys):
    assert list(progress(range(20), total=20, desc="eval")) == list(range(20))
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err and "\x1b" not in err
    assert err.splitlines() == [f"eval: {n}/20 img" for n in range(2, 21, 2)]
    assert list(progress(range(3), total=3, quiet=True)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_importing_and_plotting_leaves_the_users_matplotlib_backend(tmp_path):
    """A user's notebook backend must survive `import vesselseg...` and our figures."""
    code = (
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import pandas as pd\n"
        "import vesselseg.test, vesselseg.eval, vesselseg.plots, vesselseg.compare\n"
        "from vesselseg.plots import learning_curves\n"
        "learning_curves(pd.DataFrame({'epoch': [0, 1], 'loss': [1.0, 0.5]}), "
        f"{str(tmp_path / 'curves.png')!r})\n"
        "print(matplotlib.get_backend())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_the_shipped_model_loads_with_plain_keras_in_a_fresh_process():
    from vesselseg.runs import PRETRAINED_DIR

    code = ("import sys, keras\n"
            f"model = keras.saving.load_model({str(PRETRAINED_DIR / 'best.keras')!r})\n"
            "assert not any(name.startswith('vesselseg') for name in sys.modules)\n"
            "print(model.count_params())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(PRETRAINED_DIR.parent.parent))
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) > 1_000_000


def test_input_warnings_print_as_warning_lines(capsys):
    import warnings

    from vesselseg.console import warnings_as_lines
    from vesselseg.io import InputWarning

    with warnings_as_lines(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("scan.tif: 3 frames; only the first is used", InputWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: scan.tif: 3 frames; only the first is used\n"
