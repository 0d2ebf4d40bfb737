"""Settings: defaults, params file, environment and CLI overrides, clear errors."""

from pathlib import Path

import pytest

from clip_har.config import DEFAULT_MODEL, DEFAULT_SPLIT_RATIOS, load_settings, split_commas
from clip_har.errors import ConfigError
from clip_har.imaging import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from clip_har.inference.predictor import PredictOptions


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in (
        "CLIP_HAR_PARAMS",
        "CLIP_HAR_PREDICT__TOP_K",
        "CLIP_HAR_MODEL__SPEC",
        "CLIP_HAR_TRAIN__TRACKING",
        "CLIP_HAR_SPLIT__RATIOS",
    ):
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


def test_lists_are_yaml_lists_or_one_comma_joined_word(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = load_settings()
    assert defaults.split.ratios == list(DEFAULT_SPLIT_RATIOS)
    assert defaults.train.tracking == ["mlflow"]
    assert "onnx" in defaults.export.formats
    (tmp_path / "params.yaml").write_text(
        "split:\n  ratios: [0.8, 0.1, 0.1]\ntrain:\n  tracking: [mlflow, wandb]\n"
        "export:\n  formats:\n    - onnx\n    - onnx-int8\n"
    )
    settings = load_settings()
    assert settings.split.ratios == [0.8, 0.1, 0.1]
    assert settings.train.tracking == ["mlflow", "wandb"]
    assert settings.export.formats == ["onnx", "onnx-int8"]
    # one word on the command line or in the environment: comma-joined or a YAML flow list
    monkeypatch.setenv("CLIP_HAR_TRAIN__TRACKING", "wandb, none")
    monkeypatch.setenv("CLIP_HAR_SPLIT__RATIOS", "[0.6, 0.2, 0.2]")
    settings = load_settings(overrides={"export": {"formats": "torchscript,onnx"}})
    assert settings.train.tracking == ["wandb", "none"]
    assert settings.split.ratios == [0.6, 0.2, 0.2]
    assert settings.export.formats == ["torchscript", "onnx"]
    assert split_commas(" a, b,,c ,") == ["a", "b", "c"]


def test_bad_list_values_name_the_field(tmp_path: Path) -> None:
    params = tmp_path / "bad.yaml"
    params.write_text("split:\n  ratios: [0.5, 0.3]\n")
    with pytest.raises(ConfigError, match=r"split\.ratios: .*three non-negative numbers"):
        load_settings(params)
    params.write_text("train:\n  tracking: {mlflow: 1}\n")
    with pytest.raises(ConfigError, match=r"train\.tracking: Input should be a valid list"):
        load_settings(params)


def test_image_guard_defaults_are_the_loaders(tmp_path: Path) -> None:
    data = load_settings().data
    assert (data.min_image_side, data.max_image_pixels) == (DEFAULT_MIN_SIDE, DEFAULT_MAX_PIXELS)
    options = PredictOptions.from_settings(
        load_settings(overrides={"data": {"min_image_side": 8}}), batch_size=3
    )
    assert (options.min_side, options.max_pixels, options.batch_size) == (8, DEFAULT_MAX_PIXELS, 3)
    assert PredictOptions().min_side == DEFAULT_MIN_SIDE


def test_invalid_value_names_file_and_field(tmp_path: Path) -> None:
    params = tmp_path / "bad.yaml"
    params.write_text("predict:\n  top_k: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml[\s\S]*predict\.top_k"):
        load_settings(params)


def test_each_invalid_setting_is_one_listed_problem(tmp_path: Path) -> None:
    params = tmp_path / "bad.yaml"
    params.write_text("predict:\n  top_k: 0\n  batch_size: many\n")
    with pytest.raises(ConfigError) as info:
        load_settings(params)
    problems = info.value.problems
    assert sorted(problem.split(":")[0] for problem in problems) == [
        "predict.batch_size",
        "predict.top_k",
    ]
    assert any("(got 0)" in p for p in problems) and any("(got 'many')" in p for p in problems)
    assert ConfigError("no settings involved").problems == []


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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"- predict\n- train\n", "must be a mapping of sections"),
        (b"42\n", "not a YAML int"),
        (b"predict:\n  top_k: \xff\n", "not UTF-8"),
        (b"predict: [top_k\n", "cannot parse"),
    ],
)
def test_unusable_params_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    params = tmp_path / "odd.yaml"
    params.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(params)
    assert "odd.yaml" in str(info.value)


def test_params_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_settings(tmp_path)
