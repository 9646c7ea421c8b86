"""Error classes say what went wrong: the input, the settings, the run folder or the model file,
each under one base class that the commands print as a single line."""
from __future__ import annotations

import pytest

from vesselseg import errors
from vesselseg.errors import (
    ConfigError,
    DatasetError,
    ImageReadError,
    InputError,
    ModelFileError,
    ModelLoadError,
    RunFolderError,
    VesselsegError,
)


def test_each_kind_has_its_class_under_one_base():
    assert issubclass(ImageReadError, InputError) and issubclass(DatasetError, InputError)
    assert issubclass(RunFolderError, ModelLoadError) and issubclass(ModelFileError,
                                                                     ModelLoadError)
    for cls in (InputError, ConfigError, ModelLoadError):
        assert issubclass(cls, VesselsegError)
    names = {name for name in dir(errors) if name.endswith("Error")}
    assert {"InputError", "ConfigError", "RunFolderError", "ModelFileError"} <= names


def test_image_errors_name_the_file():
    error = ImageReadError("/photos/a.png", "is empty (0 bytes)")
    assert str(error) == "/photos/a.png: is empty (0 bytes)" and error.path.name == "a.png"


def test_the_package_raises_the_class_that_fits(tmp_path):
    from vesselseg.backends import load_keras_model
    from vesselseg.config import TrainConfig, find_recipe
    from vesselseg.io import read_image
    from vesselseg.runs import RunFolder

    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ConfigError, match="keep"):
        TrainConfig(keep="median")
    with pytest.raises(ConfigError, match="no recipe named"):
        find_recipe("no_such_recipe")
    with pytest.raises(RunFolderError, match="missing_run"):
        RunFolder.existing(tmp_path / "missing_run")
    with pytest.raises(ModelFileError, match="model.keras: model file does not exist"):
        load_keras_model(tmp_path / "model.keras")
