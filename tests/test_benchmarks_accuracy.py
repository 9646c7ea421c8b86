"""The accuracy benchmark's results table (the figures themselves come from running it)."""
from __future__ import annotations

from benchmarks.accuracy import PUBLISHED, markdown_table


def test_results_table_puts_the_run_above_the_published_figures():
    pooled = dict.fromkeys(("accuracy", "sensitivity", "specificity", "precision", "f1", "iou",
                            "auc_roc", "auc_pr", "cldice"), 0.5)
    pooled["f1"] = 0.8123
    table = markdown_table({"dataset": "chase", "test_images": 8, "training_minutes": 59.5,
                            "pooled": pooled}).splitlines()
    assert table[2].startswith("| chase (8 images) | vesselseg (59.5 min CPU) |")
    assert "0.8123" in table[2]
    assert len(table) == 3 + len(PUBLISHED["chase"])
    assert "SA-UNet (published)" in table[-1] and "0.9905" in table[-1]


def test_pretrained_table_names_the_model_it_tested():
    from benchmarks.pretrained import markdown_table as pretrained_table

    pooled = dict.fromkeys(("accuracy", "sensitivity", "specificity", "precision", "f1", "iou",
                            "auc_roc", "auc_pr", "cldice"), 0.5)
    test = {"test_images": 20, "tta": False, "pooled": pooled}
    shipped = pretrained_table({"model": "shipped pretrained model", "tests": {"drive": test}})
    assert "| DRIVE (20 images) | vesselseg pretrained |" in shipped
    run = pretrained_table({"model": "/x/runs/20261124_mix", "tests": {"drive": {**test,
                                                                             "tta": True}}})
    assert "| run 20261124_mix + TTA |" in run
    larger = pretrained_table({"model": "shipped pretrained model", "tests": {"drive": {
        **test, "working_size": 576, "training_size": 512}}})
    assert "| vesselseg pretrained at 576 |" in larger
    own_size = pretrained_table({"model": "shipped pretrained model", "tests": {"drive": {
        **test, "working_size": 512, "training_size": 512}}})
    assert "| vesselseg pretrained |" in own_size


def test_pretrained_benchmark_refuses_init_from_without_train(capsys, tmp_path, monkeypatch):
    from benchmarks.pretrained import main

    monkeypatch.chdir(tmp_path)
    assert main(["--init-from", "pretrained"]) != 0
    assert "--init-from only applies with --train" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no output folder made


def test_a_benchmark_run_gets_a_threshold_for_its_test_setting(tiny_run, tmp_path):
    """Tested with flip TTA or several scales, a run the benchmark trained uses a threshold
    chosen on its validation images for that setting; the plain setting needs none."""
    import json
    import shutil

    from benchmarks.accuracy import choose_setting_threshold

    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = (run / "threshold.json").read_text()
    choose_setting_threshold(run, False, (1.0,))
    assert (run / "threshold.json").read_text() == before
    choose_setting_threshold(run, True, (1.0, 1.5))
    assert list(json.loads((run / "threshold.json").read_text())["settings"]) == [
        "flips+scales=1,1.5"]
