import json
import os
import subprocess
import sys
import time

from benchmarks import cohort


def test_tree_memory_counts_the_children_too():
    grandchild = "b = bytes(range(256)) * (300 * 2**12); import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c",
                              "import subprocess, sys, time; subprocess.Popen([sys.executable, "
                              f"'-c', {grandchild!r}]); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        rss = pss = 0.0
        while time.monotonic() < deadline and rss < 0.3:
            rss, pss = cohort.tree_memory(child.pid)  # the grandchild holds 300 MB
            time.sleep(0.1)
        assert rss >= 0.3 and 0.29 <= pss <= rss
        assert cohort.tree_memory(os.getpid())[0] > rss / 10  # this process, for scale
    finally:
        import psutil

        for process in psutil.Process(child.pid).children(recursive=True):
            process.kill()
        child.kill()
        child.wait()


def test_a_tiny_cohort_prints_the_table_and_writes_json(tiny_run, tmp_path, capsys):
    figures = tmp_path / "cohort.json"
    assert cohort.main(["--photos", "6", "--size", "64", "--run", str(tiny_run), "--configs",
                        "local", "--no-morphology", "--json", str(figures)]) == 0
    printed = capsys.readouterr().out
    assert "| engine | photos/s (steady)" in printed and "| local |" in printed
    record = json.loads(figures.read_text())
    local = record["results"]["local"]
    assert local["photos"] == 6 and local["peak_pss_gb"] > 0.1 and local["wall_s"] > 0
    assert local["cpu_s"] > 1 and local["other_cpu_s"] >= 0
    assert record["setup"]["photos"] == 6 and record["setup"]["morphology"] is False


def test_real_photos_are_linked_under_new_names(tmp_path):
    source = tmp_path / "DRIVE" / "images"
    source.mkdir(parents=True)
    for name in ("01_test.tif", "02_test.tif"):
        (source / name).write_bytes(b"tiff")
    table = cohort.link_real_cohort(tmp_path / "cohort", source.parent, 5)
    names = table.read_text().split()
    assert names[0] == "path" and len(names) == 6
    linked = [table.parent / name for name in names[1:]]
    assert [p.resolve().name for p in linked] == ["01_test.tif", "02_test.tif"] * 2 + [
        "01_test.tif"]
    assert len({p.name for p in linked}) == 5


def test_the_path_list_memory_is_measured(capsys):
    assert cohort.main(["--paths", "3000"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["paths"] == 3000 and 100 < figures["bytes_per_photo"] < 20_000
