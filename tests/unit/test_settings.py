"""One source for every setting: the YAML files; the environment read in one place per program."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from serving.settings import ServiceSettings, load_service_settings
from training.config import (
    PROJECT_ROOT,
    ConfigError,
    TrainingSettings,
    load_training_config,
    with_overrides,
)


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """A settings model and every settings model nested in it."""
    found = [model]
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _models(field.annotation)
    return found


@pytest.mark.parametrize("root", [TrainingSettings, ServiceSettings])
def test_no_setting_has_a_default_in_code(root: type[BaseModel]):
    """Each value is set once, in configs/*.yaml: a default here would be a second source."""
    with_defaults = [
        f"{model.__name__}.{name}"
        for model in _models(root)
        for name, field in model.model_fields.items()
        if not field.is_required()
    ]
    assert with_defaults == []


def test_a_missing_setting_is_refused_by_name(tmp_path: Path):
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "training.yaml").read_text())
    del raw["train"]["epochs"]
    path = tmp_path / "training.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train\.epochs: Field required"):
        load_training_config(path)


def test_overrides_are_validated_like_the_file():
    settings = with_overrides(load_training_config(), {"train.epochs": 3})
    assert settings.train.epochs == 3
    with pytest.raises(ConfigError, match="unknown setting 'train.epoch'"):
        with_overrides(settings, {"train.epoch": 3})
    with pytest.raises(ConfigError, match="train.epochs"):
        with_overrides(settings, {"train.epochs": 0})


def test_the_environment_overrides_the_model_tag_and_gives_the_token(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("GAMEREC_MODEL_TAG", raising=False)
    monkeypatch.delenv("GAMEREC_ADMIN_TOKEN", raising=False)
    plain = load_service_settings()
    assert plain.model_tag == "gamerec:latest" and plain.admin_token.get_secret_value() == ""
    monkeypatch.setenv("GAMEREC_MODEL_TAG", "gamerec:abc")
    monkeypatch.setenv("GAMEREC_ADMIN_TOKEN", "t0ken")
    given = load_service_settings()
    assert given.model_tag == "gamerec:abc" and given.admin_token.get_secret_value() == "t0ken"
    assert "t0ken" not in repr(given)


def test_a_token_in_the_file_is_refused(tmp_path: Path):
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "service.yaml").read_text())
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump({**raw, "admin_token": "oops"}))
    with pytest.raises(ConfigError, match="GAMEREC_ADMIN_TOKEN"):
        load_service_settings(path)


ENV_READERS = {"serving/settings.py", "dashboard/settings.py"}


def test_gamerec_variables_are_read_in_one_place_per_program():
    """No module but the two settings modules reads the environment for a GAMEREC_ variable."""
    reads = re.compile(r"(os\.environ|os\.getenv|environ\.get)")
    offenders = []
    for package in ("serving", "training", "index", "dashboard"):
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            relative = path.relative_to(PROJECT_ROOT).as_posix()
            text = path.read_text()
            if relative not in ENV_READERS and reads.search(text) and "GAMEREC_" in text:
                offenders.append(relative)
    for path in [PROJECT_ROOT / "service.py", *sorted((PROJECT_ROOT / "benchmarks").glob("*.py"))]:
        text = path.read_text()
        if re.search(r"environ(\.get)?\(?\[?\"GAMEREC_", text):
            offenders.append(path.name)
    assert offenders == []
