"""benchmarks.interrupt: the SIGINT timing harness on a stand-in command (the measurement itself
runs the real commands on real photos: a benchmark, not a test)."""
from __future__ import annotations

import sys

from benchmarks.interrupt import interrupt_once, summary_table

WAITS_FOR_CTRL_C = ("import pathlib, sys, time\n"
                    "pathlib.Path(sys.argv[1]).write_text('working')\n"
                    "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")


def test_sigint_reaches_the_command_even_from_a_background_job(tmp_path):
    flag = tmp_path / "flag"
    result = interrupt_once([sys.executable, "-c", WAITS_FOR_CTRL_C, str(flag)], flag.exists,
                            tmp_path / "out")
    assert result["exit"] == 130 and result["seconds"] < 10 and result["part_files"] == 0
    table = summary_table({"stand-in": [result]})
    assert "| stand-in |" in table and "130" in table


def test_a_command_that_finishes_first_is_recorded_not_timed(tmp_path):
    result = interrupt_once([sys.executable, "-c", "pass"], lambda: False, tmp_path / "out")
    assert result["seconds"] is None
    assert "finished before SIGINT" in summary_table({"quick": [result]})
