"""`vesselseg compare`: runs side by side (differing settings, training, latest tests)."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from vesselseg import test as test_command
from vesselseg.compare import compare_runs, main


@pytest.fixture(scope="module")
def two_tested_runs(tiny_run, synthetic_preprocessed, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    runs = []
    for name, rate in (("a", None), ("b", 0.5)):
        run = shutil.copytree(tiny_run, root / name, ignore=shutil.ignore_patterns("tests"))
        if rate is not None:  # a second run that differs in one setting
            config = json.loads((run / "config.json").read_text())
            (run / "config.json").write_text(json.dumps({**config, "learning_rate": rate}))
        assert test_command.main(["--run", str(run), "--data", str(synthetic_preprocessed), "-q",
                          "--no-images", "--no-morphology"]) == 0
        runs.append(run)
    return runs


def test_only_differing_settings_and_the_latest_metrics_are_shown(two_tested_runs):
    table = compare_runs(two_tested_runs)
    assert list(table.columns) == ["a", "b"]
    assert "learning_rate" in table.index and "depth" not in table.index
    assert table.loc["learning_rate", "b"] == 0.5
    (f1_row,) = [index for index in table.index if index.endswith(": f1")]
    for run, name in zip(two_tested_runs, "ab"):
        (result,) = (run / "tests").iterdir()
        pooled = json.loads((result / "summary.json").read_text())["pooled"]
        assert table.loc[f1_row, name] == pytest.approx(pooled["f1"])
    assert "depth" in compare_runs(two_tested_runs, all_settings=True).index


def test_cli_prints_writes_and_plots(two_tested_runs, tmp_path, capsys):
    csv, png = tmp_path / "table.csv", tmp_path / "bars.png"
    assert main([*map(str, two_tested_runs), "--out", str(csv), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "learning_rate" in printed and ": f1" in printed
    assert list(pd.read_csv(csv, index_col=0).columns) == ["a", "b"]
    assert png.stat().st_size > 5_000
    assert main([*map(str, two_tested_runs), "--out", str(csv)]) == 1  # never overwritten
    assert "already exists" in capsys.readouterr().err
    assert main([str(two_tested_runs[0]), "--metrics", "f2"]) == 2
    assert main([str(tmp_path / "missing")]) == 1


def test_plot_of_values_that_are_not_numbers_or_an_unknown_format(tiny_run, tmp_path, capsys):
    """A summary.json whose pooled F1 is a string was a pandas ValueError traceback, one with no
    metric drew an empty chart, and --plot x.xyz was matplotlib's ValueError."""
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("tests"))
    (run / "tests" / "t").mkdir(parents=True)
    summary = run / "tests" / "t" / "summary.json"
    for pooled in ({"f1": "high"}, {}):
        summary.write_text(json.dumps({"data": "d", "pooled": pooled}))
        assert main([str(run), "--plot", str(tmp_path / "bars.png")]) == 1
        assert "error: no test results to plot" in capsys.readouterr().err
    assert not (tmp_path / "bars.png").exists()
    summary.write_text(json.dumps({"data": "d", "pooled": {"f1": 0.5}}))
    assert main([str(run), "--plot", str(tmp_path / "bars.xyz")]) == 2
    assert "'xyz' is not a figure format" in capsys.readouterr().err
    assert main([str(run), "--plot", str(tmp_path / "bars.PDF")]) == 0
