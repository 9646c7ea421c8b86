import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from run_fixtures import tiny_config

from vesselseg.callbacks import cosine_learning_rate
from vesselseg.config import TrainConfig, load_config
from vesselseg.errors import ConfigError
from vesselseg.preprocess import load_preprocess_config
from vesselseg.runs import RunFolder
from vesselseg.train import (
    TrainingDiverged,
    build_callbacks,
    build_parser,
    config_from_args,
    main,
    train,
)

RUN_FILES = ("config.json", "best.keras", "history.csv", "learning_curves.png", "tensorboard",
             "threshold.json", "environment.json", "status.json")


def test_run_folder_has_every_file_and_a_falling_loss(synthetic_preprocessed, tmp_path):
    result = train(tiny_config(synthetic_preprocessed, tmp_path, epochs=3, steps_per_epoch=4,
                               learning_rate=3e-3), progress=False)
    run = result.path
    assert result.run == RunFolder(run) and run.parent == tmp_path
    assert list(result.history.epoch) == [0, 1, 2]
    assert result.history.history["learning_rate"] == pytest.approx([3e-3] * 3)
    for name in RUN_FILES:
        assert (run / name).exists(), name
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert list(history["learning_rate"]) == pytest.approx([3e-3] * 3)  # every epoch's rate
    config = load_config(TrainConfig, run / "config.json")
    assert config.base_filters == 4 and config.preprocess.size == 128
    threshold = json.loads((run / "threshold.json").read_text())
    assert 0.0 <= threshold["threshold"] <= 1.0 and threshold["validation_images"]
    assert result.threshold == threshold["threshold"]
    environment = json.loads((run / "environment.json").read_text())
    assert environment["precision_policy"] in ("float32", "mixed_bfloat16")
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_soft_labels_train_and_warn_when_the_data_has_none(synthetic_preprocessed, tmp_path,
                                                           capsys):
    from PIL import Image

    from vesselseg.io import write_png

    run = train(tiny_config(synthetic_preprocessed, tmp_path / "runs", epochs=1,
                            soft_labels=True), progress=False).path
    assert load_config(TrainConfig, run / "config.json").soft_labels
    assert np.isfinite(pd.read_csv(run / "history.csv")["loss"]).all()
    assert "soft_labels" not in capsys.readouterr().err
    binary = tmp_path / "binary"  # as preprocessed before the coverage was kept
    shutil.copytree(synthetic_preprocessed, binary)
    for path in (binary / "vessels").iterdir():
        write_png(path, np.asarray(Image.open(path)) >= 128)
    train(tiny_config(binary, tmp_path / "runs", epochs=1, steps_per_epoch=1,
                      soft_labels=True), progress=False)
    assert "hold only 0 and 255" in capsys.readouterr().err


def test_a_finished_run_is_never_reused(synthetic_preprocessed, tmp_path):
    config = tiny_config(synthetic_preprocessed, tmp_path, epochs=1, steps_per_epoch=1)
    first = train(config, progress=False).path
    second = train(config, progress=False).path
    assert first != second and first.exists() and second.exists()


def _train_command(data, runs, epochs):
    return [sys.executable, "-m", "vesselseg.train", "--data", str(data), "--runs-dir", str(runs),
            "--epochs", str(epochs), "--base-filters", "4", "--depth", "2", "--steps-per-epoch",
            "2", "--batch-size", "2", "--quiet"]


#: Runs the train command's arguments with a callback that SIGKILLs the process right after the
#: given epoch (its own callbacks, checkpoint and logs, have run): a crash at an exact point.
KILLED_AFTER_EPOCH = """
import os, signal, sys
import keras
from vesselseg.train import build_parser, config_from_args, train

class KillAfter(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

train(config_from_args(build_parser().parse_args(sys.argv[2:])), progress=False,
      callbacks=[KillAfter()])
"""


def test_a_killed_run_resumes_at_the_right_epoch(synthetic_preprocessed, tmp_path):
    command = _train_command(synthetic_preprocessed, tmp_path, epochs=4)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_EPOCH, "2", *command[3:]],
                            env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL
    (run,) = list(tmp_path.iterdir())
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0, 1]
    elapsed = json.loads((run / "status.json").read_text())["elapsed"]
    assert elapsed > 0  # the clock of the killed epochs is kept for the budget
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming unfinished run" in resumed.stdout
    assert list(tmp_path.iterdir()) == [run]
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0, 1, 2, 3]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished"
    assert status["epochs"] == 4 and status["seconds"] > elapsed  # counted across the resume


def test_nan_loss_stops_with_a_clear_message(synthetic_preprocessed, tmp_path):
    config = tiny_config(synthetic_preprocessed, tmp_path, epochs=3, learning_rate=1e38,
                         batch_norm=False, loss="bce")
    with pytest.raises(TrainingDiverged, match="NaN"):
        train(config, progress=False)


#: Trains over two logical CPU devices, as docs/devices.md shows (a fresh process: the split
#: must come before TensorFlow initialises its devices).
ON_TWO_LOGICAL_CPUS = """
import sys
from vesselseg.devices import split_cpu
from vesselseg.train import build_parser, config_from_args, train

devices = [device.name for device in split_cpu(2)]
train(config_from_args(build_parser().parse_args(sys.argv[1:])), devices=devices,
      progress=False)
"""


def test_mirrored_strategy_over_two_logical_cpus(synthetic_preprocessed, tmp_path):
    command = _train_command(synthetic_preprocessed, tmp_path, epochs=1)
    result = subprocess.run([sys.executable, "-c", ON_TWO_LOGICAL_CPUS, *command[3:]],
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = list(tmp_path.iterdir())
    environment = json.loads((run / "environment.json").read_text())
    assert environment["strategy"] == "MirroredStrategy" and environment["replicas"] == 2


def test_config_file_with_unknown_key_names_it(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 2, "learnig_rate": 0.1}))
    assert main(["--config", str(path)]) != 0
    assert "learnig_rate" in capsys.readouterr().err


def test_config_file_with_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": "many"}))
    with pytest.raises(ConfigError, match="epochs"):
        load_config(TrainConfig, path)


def test_help_lists_the_common_settings():
    result = subprocess.run([sys.executable, "-m", "vesselseg.train", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--data", "--config", "--epochs", "--batch-size", "--learning-rate",
                 "--base-filters", "--loss", "--seed", "--run-name"):
        assert flag in result.stdout


def test_soft_labels_flag_sets_the_config_and_its_absence_keeps_the_files_value(tmp_path):
    from vesselseg.train import build_parser, config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["--soft-labels"])).soft_labels
    assert not config_from_args(parse([])).soft_labels
    recipe = tmp_path / "soft.json"
    recipe.write_text(json.dumps({"soft_labels": True}))
    assert config_from_args(parse(["--config", str(recipe)])).soft_labels


def test_cosine_schedule_follows_the_wall_clock_budget():
    """A budgeted run stops long before `epochs`: the decay must end when the budget does."""
    config = TrainConfig(lr_schedule="cosine", learning_rate=1e-3, min_learning_rate=1e-5,
                         epochs=300, budget_minutes=10)
    assert cosine_learning_rate(config, 0, 0.0) == pytest.approx(1e-3)
    assert cosine_learning_rate(config, 5, 300.0) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_learning_rate(config, 9, 600.0) == pytest.approx(1e-5)
    assert cosine_learning_rate(config, 10, 900.0) == pytest.approx(1e-5)
    by_epoch = TrainConfig(lr_schedule="cosine", learning_rate=1e-3, min_learning_rate=1e-5,
                           epochs=11)
    assert cosine_learning_rate(by_epoch, 5, 1e6) == pytest.approx((1e-3 + 1e-5) / 2)


def test_cosine_schedule_ends_with_the_epochs_when_they_run_out_before_the_budget():
    """A fast machine (a GPU) runs a recipe's epochs well inside its budget: the decay must
    still reach its low-rate end by the last epoch."""
    config = TrainConfig(lr_schedule="cosine", learning_rate=1e-3, min_learning_rate=1e-5,
                         epochs=11, budget_minutes=60)
    assert cosine_learning_rate(config, 5, 60.0) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_learning_rate(config, 10, 120.0) == pytest.approx(1e-5)
    # and the budget still wins when time runs out first
    assert cosine_learning_rate(config, 1, 1800.0) == pytest.approx((1e-3 + 1e-5) / 2)


def test_a_recipe_asking_for_other_preprocessing_names_the_fix(synthetic_preprocessed, tmp_path):
    """The DRIVE recipe asks for green-channel CLAHE: data made without it is an error, not a
    silent fallback to whatever the folder holds."""
    used = load_preprocess_config(synthetic_preprocessed)
    config = tiny_config(synthetic_preprocessed, tmp_path / "runs",
                         preprocess=replace(used, enhancement="green_clahe"))
    with pytest.raises(ConfigError, match=r"enhancement 'green_clahe'.*--enhancement green_clahe"):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists()  # checked before any run folder is made
    assert train(tiny_config(synthetic_preprocessed, tmp_path / "runs", epochs=1,
                             preprocess=used), progress=False).path.exists()


def test_window_views_train_and_the_run_works_at_the_stored_size(synthetic_preprocessed,
                                                                  tmp_path):
    """Training on 64-px windows of 128-px data: the model still runs whole at 128."""
    from vesselseg.config import AugmentConfig
    from vesselseg.inference import Segmenter

    too_wide = tiny_config(synthetic_preprocessed, tmp_path / "runs",
                           augment=AugmentConfig(window=160))
    with pytest.raises(ConfigError, match=r"augment.window: 160 .*\(128\)"):
        train(too_wide, progress=False)
    assert not (tmp_path / "runs").exists()
    run = train(tiny_config(synthetic_preprocessed, tmp_path / "runs", epochs=1,
                            augment=AugmentConfig(window=64, pan=True)), progress=False).path
    segmenter = Segmenter.from_run(run)
    assert segmenter.working_size == 128 and segmenter.runs_whole
    image = np.zeros((150, 150, 3), np.uint8)
    assert segmenter.predict(image).probability.shape == (150, 150)


@pytest.mark.parametrize("flag, bad", [("--architecture", "vnet"), ("--loss", "dise")])
def test_an_unknown_name_lists_the_valid_ones_before_any_run_folder(flag, bad,
                                                                    synthetic_preprocessed,
                                                                    tmp_path, capsys):
    code = main(["--data", str(synthetic_preprocessed), "--runs-dir", str(tmp_path / "runs"),
                 flag, bad])
    error = capsys.readouterr().err
    assert code != 0 and repr(bad) in error and "valid names" in error
    assert ("wnet" in error) if flag == "--architecture" else ("bce_dice" in error)
    assert not (tmp_path / "runs").exists()


def test_a_wnet_trains_and_its_run_segments(synthetic_preprocessed, tmp_path):
    from vesselseg.inference import Segmenter

    run = train(tiny_config(synthetic_preprocessed, tmp_path, epochs=1, architecture="wnet"),
                progress=False).path
    assert load_config(TrainConfig, run / "config.json").architecture == "wnet"
    image = np.zeros((100, 120, 3), np.uint8)
    assert Segmenter.from_run(run).predict(image).mask.shape == (100, 120)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_decides_which_epoch_becomes_the_runs_model(keep, tmp_path):
    import keras

    config = TrainConfig(keep=keep)
    callbacks = build_callbacks(config, tmp_path, None, 0.0)
    checkpoint = next(c for c in callbacks if isinstance(c, keras.callbacks.ModelCheckpoint))
    stopping = next(c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping))
    assert checkpoint.filepath.endswith("best.keras")
    assert checkpoint.save_best_only == (keep == "best")
    assert stopping.restore_best_weights == (keep == "best")
    with pytest.raises(ConfigError, match="keep"):
        TrainConfig(keep="median")


def test_fine_tuning_inherits_the_starting_runs_network(tiny_run, synthetic_preprocessed,
                                                         tmp_path):
    """From Python, the network settings left at their defaults (base 16, depth 4) are the
    starting run's (base 4, depth 2): no mismatch to fix by hand."""
    config = TrainConfig(data=[str(synthetic_preprocessed)], runs_dir=str(tmp_path),
                         init_from=str(tiny_run), epochs=1, steps_per_epoch=1, batch_size=2,
                         learning_rate=1e-9, min_learning_rate=1e-10)
    run = train(config, progress=False).path
    saved = load_config(TrainConfig, run / "config.json")
    assert (saved.base_filters, saved.depth, saved.init_from) == (4, 2, str(tiny_run))
    _assert_same_kernels(tiny_run / "best.keras", run / "best.keras")


def test_the_command_line_inherits_what_it_does_not_set(tiny_run, synthetic_preprocessed):
    from vesselseg.train import build_parser, config_from_args

    parse = build_parser().parse_args
    base = ["--data", str(synthetic_preprocessed), "--init-from", str(tiny_run)]
    config = config_from_args(parse(base))
    assert (config.architecture, config.base_filters, config.depth) == ("unet", 4, 2)
    assert config_from_args(parse([*base, "--depth", "2"])).depth == 2  # asked, and the same
    grown = config_from_args(parse([*base, "--architecture", "wnet"]))  # may differ: grows
    assert (grown.architecture, grown.base_filters, grown.depth) == ("wnet", 4, 2)
    assert config_from_args(parse(["--data", str(synthetic_preprocessed)])).depth == 4


def test_a_wnet_grows_from_a_unet_run(tiny_run, tmp_path):
    """The U-Net's weights go to the W-Net's first U-Net; the second starts silent."""
    from vesselseg.backends import load_keras_model

    config = replace(load_config(TrainConfig, tiny_run / "config.json"), runs_dir=str(tmp_path),
                     architecture="wnet", init_from=str(tiny_run), epochs=1, steps_per_epoch=1,
                     learning_rate=1e-9, min_learning_rate=1e-10)
    grown = load_keras_model(train(config, progress=False).path / "best.keras")
    unet = load_keras_model(tiny_run / "best.keras")
    for layer in unet.layers:
        if isinstance(layer, keras.layers.Conv2D):
            after = grown.get_layer(f"first_{layer.name}").get_weights()[0]
            assert abs(after - layer.get_weights()[0]).max() < 1e-6, layer.name
    assert abs(grown.get_layer("second_logits").get_weights()[0]).max() < 1e-6


def _assert_same_kernels(before_file, after_file):
    """After training at a vanishing learning rate only BatchNorm's moving statistics move: the
    convolution kernels must be the starting model's."""
    from vesselseg.backends import load_keras_model

    before = load_keras_model(before_file).get_weights()
    after = load_keras_model(after_file).get_weights()
    assert all(a.shape == b.shape for a, b in zip(before, after))
    kernels = [(a, b) for a, b in zip(before, after) if a.ndim == 4]
    assert kernels and all(abs(a - b).max() < 1e-6 for a, b in kernels)


@pytest.mark.parametrize("asked, where", [
    (["--base-filters", "8"], "base_filters 8 (set by --base-filters)"),
    (["--depth", "4"], "depth 4 (set by --depth)"),  # the default, but asked for explicitly
    ("recipe", "depth 3 (set by the recipe"),
])
def test_fine_tuning_a_network_asked_otherwise_names_both_values(
        asked, where, tiny_run, synthetic_preprocessed, tmp_path, capsys):
    if asked == "recipe":
        recipe = tmp_path / "deeper.json"
        recipe.write_text(json.dumps({"depth": 3}))
        asked = ["--config", str(recipe)]
    runs = tmp_path / "runs"
    code = main(["--data", str(synthetic_preprocessed), "--runs-dir", str(runs), *asked,
                 "--init-from", str(tiny_run)])
    assert code != 0
    error = capsys.readouterr().err
    assert f"this run asks for {where}" in error and str(tiny_run) in error
    assert "trained with " + where.split()[0] in error and "leave those settings out" in error
    assert not runs.exists()  # no run folder was made


def test_fine_tuning_from_python_with_a_changed_network_is_refused(tiny_run,
                                                                   synthetic_preprocessed,
                                                                   tmp_path):
    config = TrainConfig(data=[str(synthetic_preprocessed)], runs_dir=str(tmp_path / "runs"),
                         init_from=str(tiny_run), depth=3)
    with pytest.raises(ConfigError, match=r"depth 3 \(set in the TrainConfig\).*with depth 2"):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists()


def test_fine_tuning_on_data_preprocessed_otherwise_names_the_preprocess_flags(
        tiny_run, synthetic_preprocessed, tmp_path, capsys):
    from vesselseg.preprocess import SETTINGS

    data = Path(shutil.copytree(synthetic_preprocessed, tmp_path / "clahe data"))
    settings = json.loads((data / SETTINGS).read_text())
    settings["config"]["enhancement"] = "clahe"
    (data / SETTINGS).write_text(json.dumps(settings))
    runs = tmp_path / "runs"
    code = main(["--data", str(data), "--runs-dir", str(runs), "--init-from", str(tiny_run)])
    assert code != 0
    error = capsys.readouterr().err
    assert (f"{tiny_run} was trained on data preprocessed with enhancement 'none', but {data} "
            f"has enhancement 'clahe'") in error
    assert "vesselseg preprocess --size 128 --enhancement none" in error
    assert not runs.exists()


def test_fine_tuning_from_a_folder_without_a_model_names_it(synthetic_preprocessed, tmp_path,
                                                            capsys):
    code = main(["--data", str(synthetic_preprocessed), "--runs-dir", str(tmp_path / "runs"),
                 "--init-from", str(tmp_path)])
    assert code != 0 and f"{tmp_path} is not a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_fine_tuning_the_shipped_model(make_synthetic_dataset, tmp_path):
    from vesselseg.preprocess import preprocess_dataset
    from vesselseg.runs import PRETRAINED_DIR

    shipped = load_config(TrainConfig, PRETRAINED_DIR / "config.json")
    data, settings = tmp_path / "data", replace(shipped.preprocess, val_fraction=0.25)
    preprocess_dataset("folder", make_synthetic_dataset(count=4, size=160), data, settings,
                       progress=False)
    config = replace(shipped, data=[str(data)], runs_dir=str(tmp_path / "runs"),
                     augment=replace(shipped.augment, window=128),  # one small training step
                     preprocess=settings, init_from="pretrained", epochs=1, steps_per_epoch=1,
                     batch_size=1, budget_minutes=0.0, lr_schedule="plateau", learning_rate=1e-9,
                     min_learning_rate=1e-10)
    run = train(config, progress=False).path
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert load_config(TrainConfig, run / "config.json").init_from == "pretrained"
    _assert_same_kernels(PRETRAINED_DIR / "best.keras", run / "best.keras")


def test_fine_tuning_refuses_an_unfinished_run(tiny_run, synthetic_preprocessed, tmp_path,
                                               capsys):
    unfinished = shutil.copytree(tiny_run, tmp_path / "unfinished")
    status = json.loads((unfinished / "status.json").read_text())
    (unfinished / "status.json").write_text(json.dumps({**status, "state": "running"}))
    code = main(["--data", str(synthetic_preprocessed), "--runs-dir", str(tmp_path / "runs"),
                 "--base-filters", "4", "--depth", "2", "--init-from", str(unfinished)])
    assert code != 0
    assert "says the run is running, not finished" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_settings_added_later_keep_old_runs_fingerprints():
    """A run started before working_size/zoom/pan/init_from/soft_labels existed must still be
    found and resumed: those settings count only once they are used. The hashes are the ones these
    configs had before the settings existed (computed at commit 790e122)."""
    from vesselseg.config import AugmentConfig
    from vesselseg.runs import config_fingerprint

    config = TrainConfig(run_name="old")
    assert config_fingerprint(config) == "f17130df30a0bc07"
    recipe = load_config(TrainConfig, Path(__file__).parents[1] / "experiments" / "recipes"
                         / "pretrained_finetune.json")
    assert config_fingerprint(recipe) == "425022c436d38d01"
    for changed in (replace(config, working_size=576),
                    replace(config, augment=AugmentConfig(zoom=1.125)),
                    replace(config, augment=AugmentConfig(pan=True)),
                    replace(config, soft_labels=True)):
        assert config_fingerprint(changed) != "f17130df30a0bc07"


def test_weights_that_diverge_under_a_finite_loss_never_make_a_finished_run(
        synthetic_preprocessed, tmp_path):
    """Learning rate 1e6: the Dice loss stays finite while batch-norm statistics blow up; the
    run stops as diverged, says its model is unusable, and is never marked finished."""
    config = tiny_config(synthetic_preprocessed, tmp_path, epochs=3, learning_rate=1e6)
    with pytest.raises(TrainingDiverged, match="weights became NaN/inf at epoch 1.*do not use"):
        train(config, progress=False)
    (run,) = list(tmp_path.iterdir())
    assert json.loads((run / "status.json").read_text())["state"] == "diverged"
    assert not (run / "threshold.json").exists()


def test_a_network_too_deep_for_the_images_is_refused_before_any_run_folder(
        synthetic_preprocessed, tmp_path):
    config = tiny_config(synthetic_preprocessed, tmp_path / "runs", depth=7)  # 128 / 2**7 = 1
    with pytest.raises(ConfigError, match="depth: 7 pooling steps do not fit the 128x128"):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_run_stopped_by_an_error_is_marked_failed_and_resumed_by_the_rerun(
        synthetic_preprocessed, tmp_path):
    class DiskFullAtEpoch2(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise OSError(28, "No space left on device")

    config = tiny_config(synthetic_preprocessed, tmp_path, epochs=3, steps_per_epoch=1)
    with pytest.raises(OSError):
        train(config, progress=False, callbacks=[DiskFullAtEpoch2()])
    (run,) = list(tmp_path.iterdir())
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "No space left on device" in status["reason"]
    assert train(config, progress=False).path == run  # the same folder, resumed
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0, 1, 2]


# -- kills at chosen moments, in-process ------------------------------------------------------
# A SimulatedKill (not an Exception) stops train() where a SIGKILL would: nothing catches it, no
# finishing step runs, the run stays "running". The real SIGKILL is
# test_a_killed_run_resumes_at_the_right_epoch.


class SimulatedKill(BaseException):
    """Raised where a SIGKILL would stop the process."""


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise SimulatedKill


def _kill_before(monkeypatch, names: tuple[str, ...], callback) -> None:
    """Run `callback` just before the first of the run's own callbacks whose class is named in
    `names` (e.g. the one that writes history.csv)."""
    import vesselseg.train as train_module

    real = train_module.build_callbacks

    def build(*args, **kwargs):
        own = real(*args, **kwargs)
        index = next(i for i, c in enumerate(own) if type(c).__name__ in names)
        return [*own[:index], callback, *own[index:]]

    monkeypatch.setattr(train_module, "build_callbacks", build)


def _epochs(run) -> list[int]:
    return list(pd.read_csv(run / "history.csv")["epoch"])


def _status(run) -> dict:
    return json.loads((run / "status.json").read_text())


def test_a_damaged_resume_state_falls_back_to_the_one_before(synthetic_preprocessed, tmp_path,
                                                             capsys):
    """A write cut short (its file truncated) must never block resuming: the rerun resumes from
    the state before it, and history.csv follows that state (no epoch logged twice)."""
    config = tiny_config(synthetic_preprocessed, tmp_path, epochs=3, steps_per_epoch=1,
                         lr_schedule="cosine")
    with pytest.raises(SimulatedKill):
        train(config, progress=False, callbacks=[KillAfterEpoch(1)])
    (run,) = list(tmp_path.iterdir())
    assert _epochs(run) == [0, 1]
    newest = max((run / "backup").rglob("*.h5"), key=lambda path: path.stat().st_mtime_ns)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    train(config, progress=False)
    assert "cannot resume from the state after epoch 2" in capsys.readouterr().err
    assert _status(run)["state"] == "finished" and _epochs(run) == [0, 1, 2]
    rates = list(pd.read_csv(run / "history.csv")["learning_rate"])
    assert rates[0] == pytest.approx(config.learning_rate) and rates[0] > rates[1] > rates[2]
    assert not (run / "backup").exists()  # removed once training is over


def test_a_kill_between_the_resume_state_and_the_history_leaves_no_gap(
        synthetic_preprocessed, tmp_path, monkeypatch):
    config = tiny_config(synthetic_preprocessed, tmp_path, epochs=3, steps_per_epoch=1)
    _kill_before(monkeypatch, ("HistoryLog", "CSVLogger"), KillAfterEpoch(1))
    with pytest.raises(SimulatedKill):
        train(config, progress=False)
    monkeypatch.undo()
    (run,) = list(tmp_path.iterdir())
    assert _epochs(run) == [0]  # epoch 1 was saved for resuming, but not yet logged
    train(config, progress=False)
    assert _status(run)["state"] == "finished" and _epochs(run) == [0, 1, 2]


def test_a_kill_after_training_finishes_the_run_without_training_again(
        synthetic_preprocessed, tmp_path, monkeypatch):
    import vesselseg.calibrate

    def killed(*args, **kwargs):
        raise SimulatedKill  # fit has returned; the threshold is being chosen

    class NoTraining(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            raise AssertionError("the rerun trained again")

    config = tiny_config(synthetic_preprocessed, tmp_path, epochs=2, steps_per_epoch=1)
    monkeypatch.setattr(vesselseg.calibrate, "choose_threshold", killed)
    with pytest.raises(SimulatedKill):
        train(config, progress=False)
    monkeypatch.undo()
    (run,) = list(tmp_path.iterdir())
    assert _status(run)["state"] == "running" and _epochs(run) == [0, 1]
    result = train(config, progress=False, callbacks=[NoTraining()])
    assert result.path == run and result.history is None  # nothing trained by this call
    status = _status(run)
    assert status["state"] == "finished" and status["epochs"] == 2
    assert _epochs(run) == [0, 1] and (run / "threshold.json").exists()


def test_a_full_disk_while_saving_the_state_fails_in_one_line_and_the_rerun_resumes(
        synthetic_preprocessed, tmp_path, monkeypatch, capsys):
    """The disk fills while the second epoch's state is written (half of it on disk): one
    `error:` line naming the file, the run marked failed, and the rerun (space freed) resumes."""
    import errno

    real, calls = keras.Model.save_weights, []

    def full_disk(self, filepath, *args, **kwargs):
        calls.append(filepath)
        real(self, filepath, *args, **kwargs)
        if len(calls) == 2:
            data = Path(filepath).read_bytes()
            Path(filepath).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    argv = ["--data", str(synthetic_preprocessed), "--runs-dir", str(tmp_path), "--epochs", "3",
            "--steps-per-epoch", "1", "--batch-size", "2", "--base-filters", "4", "--depth", "2",
            "--quiet"]
    capsys.readouterr()
    assert main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    (run,) = list(tmp_path.iterdir())
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in errors[0]
    assert "No space left on device" in errors[0] and str(run / "backup") in errors[0]
    status = _status(run)
    assert status["state"] == "failed" and "No space left on device" in status["reason"]
    monkeypatch.undo()
    assert main(argv) == 0
    assert _status(run)["state"] == "finished" and _epochs(run) == [0, 1, 2]
    assert not [path for path in run.rglob("*") if ".part" in path.name]


def test_training_puts_the_global_dtype_policy_back(synthetic_preprocessed, tmp_path):
    """A notebook user's own Keras models must not inherit a run's mixed precision."""
    import keras
    from run_fixtures import tiny_config

    from vesselseg.train import train

    assert keras.mixed_precision.global_policy().name == "float32"
    train(tiny_config(synthetic_preprocessed, tmp_path, precision="bfloat16", epochs=1),
          progress=False)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_recipe_saved_with_a_utf8_byte_order_mark_is_read(tmp_path):
    """load_config accepts a BOM, but the flags' bookkeeping re-read the file as plain UTF-8: a
    JSONDecodeError traceback."""
    recipe = tmp_path / "recipe.json"
    recipe.write_bytes(b"\xef\xbb\xbf" + json.dumps({"epochs": 3}).encode())
    args = build_parser().parse_args(["--config", str(recipe), "--data", "d"])
    assert config_from_args(args).epochs == 3


@pytest.mark.parametrize("flags,fragment", [
    (["--batch-size", "1000000000"], "batch_size: 1000000000 is too large"),  # never formed
    (["--runs-dir", "{data}"], "is inside the data folder"),
    (["--runs-dir", "{data}/runs"], "is inside the data folder"),
])
def test_impossible_batch_or_runs_among_the_data_are_refused_before_a_run_folder(
        flags, fragment, synthetic_preprocessed, tmp_path, capsys):
    """--batch-size 1000000000 spun for ever filling its first batch; a runs_dir inside the
    preprocessed data put run folders among its files."""
    before = sorted(p.name for p in synthetic_preprocessed.iterdir())
    flags = [flag.format(data=synthetic_preprocessed) for flag in flags]
    runs = ["--runs-dir", str(tmp_path / "runs")] if "--runs-dir" not in flags else []
    code = main(["--data", str(synthetic_preprocessed), *runs, "--epochs", "1", "--base-filters",
                 "4", "--depth", "2", "-q", *flags])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in synthetic_preprocessed.iterdir()) == before
