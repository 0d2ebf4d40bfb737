"""The error family: one module holds every error class, all under ``ClipHarError``."""

from __future__ import annotations

import ast
import builtins
import inspect
from pathlib import Path

import clip_har
from clip_har import errors
from clip_har.errors import (
    ClipHarError,
    ImageLoadError,
    ImageProblem,
    PreprocessingConfigError,
)

SRC = Path(clip_har.__file__).parent


def _exception_names(namespace: dict[str, object]) -> set[str]:
    return {
        name
        for name, value in namespace.items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }


ERROR_NAMES = _exception_names(vars(errors))
BUILTIN_EXCEPTIONS = _exception_names(vars(builtins))


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


# where an exception class may live outside errors.py, and why
OWN_FAMILIES = {
    # the Python client's public exceptions, one per server error code (NotFoundError,
    # DeadlineExceededError, ...): a family of its own under ClipHarError, whose names would
    # clash with the server-side classes of errors.py
    "client/errors.py",
}
NOT_ERRORS = {
    "cli/supervise.py: Stopped",  # a signal turned into control flow, not an error
    "cli/supervise.py: ServiceError",  # carries the supervisor's service handle and log tail
}


def test_no_error_class_is_defined_outside_errors_py() -> None:
    strays = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        if str(path.relative_to(SRC)) in OWN_FAMILIES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {_base_name(base) for base in node.bases}
            if bases & (BUILTIN_EXCEPTIONS | ERROR_NAMES) or node.name.endswith("Error"):
                place = f"{path.relative_to(SRC)}: {node.name}"
                if place not in NOT_ERRORS:
                    strays.append(place)
    assert not strays, f"move these into clip_har/errors.py: {strays}"


def test_every_error_is_a_clip_har_error() -> None:
    classes = [getattr(errors, name) for name in ERROR_NAMES]
    assert len(classes) > 10
    assert all(issubclass(cls, ClipHarError) for cls in classes), classes


def test_image_load_error_carries_its_code() -> None:
    error = ImageLoadError(ImageProblem.TOO_SMALL, "too small (8x8)", "a.jpg")
    assert error.code is ImageProblem.TOO_SMALL and error.code.value == "too_small"
    assert str(error) == "cannot load image a.jpg: too small (8x8)"


def test_preprocessing_config_error_names_file_and_field() -> None:
    error = PreprocessingConfigError("image_std", "must be non-zero").at(Path("m/pre.json"))
    assert isinstance(error, ClipHarError) and isinstance(error, ValueError)
    assert (error.field, error.source) == ("image_std", str(Path("m/pre.json")))
    assert str(Path("m/pre.json")) in str(error) and "'image_std'" in str(error)
