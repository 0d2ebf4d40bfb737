"""Settings: defaults, params file, environment and CLI overrides, clear errors."""

from pathlib import Path

import pytest

from clip_har.config import DEFAULT_MODEL, load_settings
from clip_har.errors import ConfigError


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("CLIP_HAR_PARAMS", "CLIP_HAR_PREDICT__TOP_K", "CLIP_HAR_MODEL__SPEC"):
        monkeypatch.delenv(var, raising=False)


def test_defaults_without_params_file() -> None:
    settings = load_settings()
    assert settings.model.spec == DEFAULT_MODEL
    assert settings.predict.top_k == 5
    assert settings.data.classes == "har15"


def test_precedence_cli_over_env_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  spec: tiny\npredict:\n  top_k: 2\n  batch_size: 4\n")
    assert load_settings().model.spec == "tiny"  # ./params.yaml is found
    monkeypatch.setenv("CLIP_HAR_PREDICT__TOP_K", "3")
    settings = load_settings()
    assert (settings.predict.top_k, settings.predict.batch_size) == (3, 4)
    settings = load_settings(overrides={"predict": {"top_k": 7}})
    assert (settings.predict.top_k, settings.predict.batch_size) == (7, 4)


def test_explicit_params_file_and_env_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("predict:\n  batch_size: 9\n")
    assert load_settings(other).predict.batch_size == 9
    monkeypatch.setenv("CLIP_HAR_PARAMS", str(other))
    assert load_settings().predict.batch_size == 9


def test_invalid_value_names_file_and_field(tmp_path: Path) -> None:
    params = tmp_path / "bad.yaml"
    params.write_text("predict:\n  top_k: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml[\s\S]*predict\.top_k"):
        load_settings(params)


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    params = tmp_path / "typo.yaml"
    params.write_text("predict:\n  topk: 3\n")
    with pytest.raises(ConfigError, match=r"predict\.topk"):
        load_settings(params)


def test_missing_params_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_broken_yaml_is_an_error(tmp_path: Path) -> None:
    params = tmp_path / "broken.yaml"
    params.write_text("predict: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_settings(params)
