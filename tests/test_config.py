"""Configs: exact save/load round trips, and every invalid value is a ConfigError naming its key."""
from __future__ import annotations

import json

import pytest

from vesselseg.benchmarks.accuracy import RECIPES
from vesselseg.config import (
    AugmentConfig,
    PreprocessConfig,
    TrainConfig,
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


@pytest.mark.parametrize("recipe", sorted(RECIPES.rglob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads(recipe):
    """The recipes behind README's rows stay valid configs as TrainConfig evolves."""
    config = load_config(TrainConfig, recipe)
    assert config.budget_minutes > 0 and config.loss
