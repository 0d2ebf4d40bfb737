"""The tensor names of every exported model, defined once for the exporters and the engines.

See docs/inference.md#the-signature.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_INPUT = "pixels"
IMAGE_OUTPUTS = ("probabilities", "embeddings")
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "text_embeddings"


@dataclass(frozen=True)
class Signature:
    """The input and output tensor names of an exported model."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


IMAGE_SIGNATURE = Signature((IMAGE_INPUT,), IMAGE_OUTPUTS)
TEXT_SIGNATURE = Signature(TEXT_INPUTS, (TEXT_OUTPUT,))
