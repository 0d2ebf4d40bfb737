"""Model references (``models:/NAME/VERSION``, ``NAME@ALIAS``) and registered model names."""

from __future__ import annotations

import pytest

from clip_har.errors import UsageError
from clip_har.registry.store import ModelRef, check_name, is_model_uri, parse_ref


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("har/3", ModelRef("har", version=3)),
        ("models:/har/12", ModelRef("har", version=12)),
        ("models:/clip-har@production", ModelRef("clip-har", alias="production")),
        ("my.model_v2@staging", ModelRef("my.model_v2", alias="staging")),
    ],
)
def test_references_parse_with_or_without_the_scheme(text: str, ref: ModelRef) -> None:
    assert parse_ref(text) == ref
    assert parse_ref(ref.uri) == ref and is_model_uri(ref.uri)


@pytest.mark.parametrize("text", ["har", "har/0", "har/v1", "har@1", "har/1@x", "", "models:/"])
def test_anything_else_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="models:/NAME/VERSION"):
        parse_ref(text)


@pytest.mark.parametrize("name", ["no spaces", "-dash", "a/b", "x@y", ""])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="invalid registered model name"):
        check_name(name)
    assert check_name("clip-har.v2_ok") == "clip-har.v2_ok"
