"""Configs: exact save/load round trips, and every invalid value is a ConfigError naming its key."""
from __future__ import annotations

import json

import pytest

from benchmarks.accuracy import RECIPE_FOLDERS
from vesselseg.config import (
    RECIPES_DIR,
    AugmentConfig,
    PreprocessConfig,
    TrainConfig,
    find_recipe,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from vesselseg.errors import ConfigError


def test_train_config_round_trip(tmp_path):
    config = TrainConfig(run_name="ü run", epochs=3, learning_rate=5e-4, dropout=0.1,
                         augment=AugmentConfig(flips=False, rotation_degrees=7.5),
                         preprocess=PreprocessConfig(size=256, enhancement="clahe", seed=4))
    path = save_config(config, tmp_path / "config.json")
    loaded = load_config(TrainConfig, path)
    assert loaded == config
    assert isinstance(loaded.augment, AugmentConfig)
    assert isinstance(loaded.preprocess, PreprocessConfig)
    assert json.loads(path.read_text(encoding="utf-8"))["augment"]["flips"] is False
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))


def test_preprocess_config_round_trip(tmp_path):
    config = PreprocessConfig(size=384, enhancement="green_clahe", crop_to_fov=False,
                              val_fraction=0.2, augment=2, seed=9)
    assert load_config(PreprocessConfig, save_config(config, tmp_path / "p.json")) == config


def test_defaults_round_trip(tmp_path):
    path = save_config(TrainConfig(), tmp_path / "d.json")
    assert load_config(TrainConfig, path) == TrainConfig()
    assert from_dict(TrainConfig, to_dict(TrainConfig())) == TrainConfig()


def test_partial_file_uses_defaults_and_int_is_a_float(tmp_path):
    (tmp_path / "c.json").write_text('{"epochs": 5, "learning_rate": 1, "augment": {"hue": 0}}')
    config = load_config(TrainConfig, tmp_path / "c.json")
    assert config.epochs == 5 and config.learning_rate == 1.0
    assert isinstance(config.learning_rate, float)
    assert config.augment.hue == 0.0 and config.augment.flips is True
    assert config.preprocess == PreprocessConfig()


def config_error(cls, data) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data)
    return str(info.value)


def test_unknown_key_is_named():
    message = config_error(TrainConfig, {"epochz": 3})
    assert message.startswith("epochz:") and "unknown key" in message and "epochs" in message
    message = config_error(TrainConfig, {"augment": {"flipz": True}})
    assert message.startswith("augment.flipz:") and "flips" in message
    message = config_error(TrainConfig, {"preprocess": {"sise": 512}})
    assert message.startswith("preprocess.sise:")


@pytest.mark.parametrize(("data", "key"), [
    ({"epochs": "10"}, "epochs"),
    ({"epochs": 1.5}, "epochs"),
    ({"epochs": True}, "epochs"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"learning_rate": False}, "learning_rate"),
    ({"cache": "yes"}, "cache"),
    ({"cache": 1}, "cache"),
    ({"run_name": 7}, "run_name"),
    ({"augment": {"flips": "true"}}, "augment.flips"),
    ({"augment": {"flips": 1}}, "augment.flips"),
    ({"augment": {"rotation_degrees": None}}, "augment.rotation_degrees"),
    ({"augment": ["flips"]}, "augment"),
    ({"preprocess": {"size": "512"}}, "preprocess.size"),
    ({"preprocess": {"crop_to_fov": "no"}}, "preprocess.crop_to_fov"),
])
def test_wrong_type_names_the_key(data, key):
    message = config_error(TrainConfig, data)
    assert message.startswith(f"{key}:"), message


@pytest.mark.parametrize(("data", "key"), [
    ({"precision": "float16"}, "precision"),
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": -1}, "batch_size"),
    ({"preprocess": {"enhancement": "sharpen"}}, "preprocess.enhancement"),
    ({"preprocess": {"size": 500}}, "preprocess.size"),
    ({"preprocess": {"size": 0}}, "preprocess.size"),
    ({"preprocess": {"val_fraction": 1.0}}, "preprocess.val_fraction"),
    ({"preprocess": {"augment": -1}}, "preprocess.augment"),
    ({"preprocess": {"clahe_tiles": 0}}, "preprocess.clahe_tiles"),
    ({"augment": {"zoom": 1.1, "scale_range": 1.2}}, "augment.scale_range"),
    ({"augment": {"zoom": 0.0}}, "augment.zoom"),
    ({"augment": {"window": 500}}, "augment.window"),
    ({"augment": {"window": -32}}, "augment.window"),
    ({"working_size": 500}, "working_size"),
    ({"working_size": 256, "preprocess": {"size": 512}}, "working_size"),
])
def test_invalid_values_name_the_key(data, key):
    message = config_error(TrainConfig, data)
    assert message.startswith(f"{key}:"), message


def test_invalid_enum_in_preprocess_config_directly():
    with pytest.raises(ConfigError, match="enhancement"):
        PreprocessConfig(enhancement="sharpen")
    with pytest.raises(ConfigError, match="enhancement: 'x'"):
        from_dict(PreprocessConfig, {"enhancement": "x"})


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(TrainConfig, tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(TrainConfig, tmp_path / "list.json")
    (tmp_path / "typo.json").write_text('{"augment": {"flips": "no"}}')
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, tmp_path / "typo.json")
    assert "typo.json" in str(info.value) and "augment.flips" in str(info.value)


@pytest.mark.parametrize("recipe", sorted(p for folder in RECIPE_FOLDERS
                                           for p in folder.glob("*.json")),
                         ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_recipe_loads(recipe):
    """The recipes behind the docs' rows stay valid configs as TrainConfig evolves."""
    config = load_config(TrainConfig, recipe)
    assert config.budget_minutes > 0 and config.loss


def test_the_package_holds_only_product_recipes():
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.json")) == ["chase", "drive", "finetune",
                                                                "pretrained"]
    assert not list(RECIPES_DIR.rglob("*/*.json"))  # no ablation folder inside the package


def test_the_shipped_recipe_is_the_shipped_models_training_settings():
    """vesselseg/recipes/pretrained.json retrains the model in vesselseg/pretrained/: every
    setting but where the data and runs live (and the run's name) matches its config.json."""
    from vesselseg.runs import PRETRAINED_DIR

    recipe = to_dict(load_config(TrainConfig, RECIPES_DIR / "pretrained.json"))
    shipped = to_dict(load_config(TrainConfig, PRETRAINED_DIR / "config.json"))
    for where in ("data", "runs_dir", "run_name"):
        recipe.pop(where), shipped.pop(where)
    assert recipe == shipped


def test_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_recipe("finetune") == RECIPES_DIR / "finetune.json"
    assert load_config(TrainConfig, find_recipe("pretrained")).preprocess.size == 704
    assert find_recipe("drive_wide", RECIPE_FOLDERS).name == "drive_wide.json"  # the lab's
    (tmp_path / "mine.json").write_text('{"epochs": 3}')
    assert find_recipe("mine.json") == tmp_path.joinpath("mine.json").relative_to(tmp_path)
    with pytest.raises(ConfigError, match="no recipe named 'nope'.*finetune"):
        find_recipe("nope")


def test_data_is_a_list_and_old_comma_joined_files_still_load(tmp_path):
    (tmp_path / "old.json").write_text('{"data": "a, b"}')
    assert load_config(TrainConfig, tmp_path / "old.json").data == ["a", "b"]
    assert TrainConfig(data=["x"]).data == ["x"]
    with pytest.raises(ConfigError, match="data: expected a list of strings"):
        from_dict(TrainConfig, {"data": [1]})


@pytest.mark.parametrize("key,value", [
    ("steps_per_epoch", -3), ("learning_rate", 0.0), ("learning_rate", -1e-3),
    ("learning_rate", float("nan")), ("budget_minutes", -1.0), ("dropout", 1.5),
    ("min_learning_rate", 1.0), ("focal_alpha", 2.0), ("loss_balance", -0.1),
    ("plateau_patience", 0), ("run_name", "../outside"), ("run_name", "a/b"), ("run_name", ".."),
])
def test_invalid_training_settings_are_refused_by_name(key, value):
    """Settings that would train forever, train nothing, or write outside runs_dir."""
    with pytest.raises(ConfigError, match=key):
        from_dict(TrainConfig, {key: value})


@pytest.mark.parametrize("key,value", [("blur_probability", 1.5), ("brightness", -0.2),
                                       ("rotation_degrees", float("inf"))])
def test_invalid_augmentation_settings_are_refused_by_name(key, value):
    with pytest.raises(ConfigError, match=f"augment.{key}"):
        from_dict(TrainConfig, {"augment": {key: value}})


def test_a_bad_setting_on_the_command_line_leaves_no_run_folder(tmp_path, capsys):
    from vesselseg.train import main

    assert main(["--data", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
                 "--steps-per-epoch", "-3"]) == 2
    assert "steps_per_epoch: -3 must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("data", "key"), [
    ({"seed": -1}, "seed"),  # NumPy's seeding raised mid-run, after the run folder was made
    ({"seed": 2**70}, "seed"),
    ({"base_filters": 1_000_000}, "base_filters"),  # TensorFlow OOM traceback
    ({"depth": 13}, "depth"),
    ({"working_size": 1_000_000}, "working_size"),  # failed at the threshold, after training
    ({"run_name": "a\nb"}, "run_name"),  # a folder name with a newline
    ({"run_name": "x" * 300}, "run_name"),  # "File name too long" after checks
    ({"preprocess": {"augment": 1_000_000_000}}, "preprocess.augment"),  # filled 22 GB
    ({"preprocess": {"clahe_tiles": 1_000_000_000}}, "preprocess.clahe_tiles"),
    ({"preprocess": {"size": 1_000_000}}, "preprocess.size"),
    ({"preprocess": {"clahe_clip": float("inf")}}, "preprocess.clahe_clip"),
    ({"preprocess": {"seed": -5}}, "preprocess.seed"),
])
def test_absurd_values_found_by_the_reliability_sweep_name_the_key(data, key):
    message = config_error(TrainConfig, data)
    assert message.startswith(f"{key}:"), message


@pytest.mark.parametrize("text", ['{"epochs": 1' + "0" * 5000 + "}",
                                  "[" * 100_000 + "]" * 100_000])
def test_json_that_python_cannot_parse_is_a_config_error(text, tmp_path):
    """A 5000-digit number (Python's int limit) or nesting 100000 deep (RecursionError) were
    tracebacks from json.loads."""
    path = tmp_path / "recipe.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="recipe.json: not valid JSON"):
        load_config(TrainConfig, path)
