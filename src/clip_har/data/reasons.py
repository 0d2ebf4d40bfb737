"""Validation's rejection reason codes and what each means (image codes: ImageProblem)."""

from __future__ import annotations

from clip_har.errors import ImageProblem

IMAGE_REASONS: dict[ImageProblem, str] = {
    ImageProblem.MISSING_FILE: "the file does not exist",
    ImageProblem.UNREADABLE: "the path exists but cannot be read",
    ImageProblem.EMPTY_FILE: "the file has 0 bytes",
    ImageProblem.NOT_AN_IMAGE: "not an image format any decoder recognises",
    ImageProblem.CORRUPT_DATA: "truncated or corrupt image data",
    ImageProblem.TOO_SMALL: "shorter side below the minimum",
    ImageProblem.TOO_LARGE: (
        "more pixels than the maximum (rejected from the header, never decoded)"
    ),
}
LABEL_REASONS: dict[str, str] = {
    "empty_label": "null or blank label in a labelled manifest",
    "unknown_label": "label not in the class list",
}
REASONS: dict[str, str] = {code.value: text for code, text in IMAGE_REASONS.items()} | LABEL_REASONS
"""Every reason code a rejected row can carry, in the order checks run."""
