"""ONNX Runtime engines: exported image models, the exported text encoder, and zero-shot
heads for new labels, all without PyTorch (numpy, onnxruntime and tokenizers only).

See docs/inference.md#onnx-runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clip_har.devices import parse_device
from clip_har.errors import ClipHarError
from clip_har.inference.signature import IMAGE_INPUT, IMAGE_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUT
from clip_har.io import noun_form
from clip_har.lru import BatchLru
from clip_har.models.prompts import PromptSet, validate_class_names


def execution_providers(device: str, requested: Sequence[str] | None = None) -> list[Any]:
    """ONNX Runtime providers for ``device`` (or exactly ``requested``), checked against
    the installed build so a missing one is named instead of silently ignored."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [name for name in requested if name not in available]
        if missing:
            raise ClipHarError(
                f"ONNX Runtime {noun_form(len(missing), 'provider')} {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not in this onnxruntime "
                f"build (available: {', '.join(available)}); CUDA and TensorRT need "
                "onnxruntime-gpu on a CUDA machine"
            )
        return list(requested)
    parsed = parse_device(device)
    if not parsed.is_cuda:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise ClipHarError(
            f"device '{device}' needs onnxruntime-gpu (available providers: {', '.join(available)})"
        )
    return [("CUDAExecutionProvider", {"device_id": parsed.cuda_index}), "CPUExecutionProvider"]


def open_session(
    path: Path, *, threads: int | None = None, device: str = "cpu", providers: Sequence[str] = ()
) -> Any:
    """An ``InferenceSession`` with full graph optimisation and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            str(path), options, providers=execution_providers(device, providers)
        )
    except ClipHarError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise ClipHarError(f"{path}: ONNX Runtime cannot load this model: {exc}") from None


def _check_names(session: Any, path: Path, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    have_in = [i.name for i in session.get_inputs()]
    have_out = [o.name for o in session.get_outputs()]
    if sorted(have_in) != sorted(inputs) or not set(outputs) <= set(have_out):
        raise ClipHarError(
            f"{path}: inputs {have_in} / outputs {have_out} do not follow the bundle contract "
            f"(inputs {list(inputs)}, outputs {list(outputs)})"
        )


class OnnxEngine:
    """An exported image model (any ONNX format: fp32, optimised, int8, fp16)."""

    def __init__(
        self,
        path: Path,
        format: str = "onnx",
        *,
        threads: int | None = None,
        device: str = "cpu",
        providers: Sequence[str] = (),
    ) -> None:
        self.format = format
        self.path = path
        self.session = open_session(path, threads=threads, device=device, providers=providers)
        _check_names(self.session, path, [IMAGE_INPUT], IMAGE_OUTPUTS)

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [N, C], embeddings [N, D])`` as float32."""
        feed = {IMAGE_INPUT: np.ascontiguousarray(pixels, dtype=np.float32)}
        probs, embeddings = self.session.run(list(IMAGE_OUTPUTS), feed)
        return probs.astype(np.float32, copy=False), embeddings.astype(np.float32, copy=False)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.run(pixels)[0]


class OnnxTextEncoder:
    """The exported text encoder plus its tokenizer: texts -> normalised embeddings, with an
    LRU cache so repeated labels and templates are encoded once."""

    def __init__(
        self,
        model: Path,
        tokenizer_file: Path,
        *,
        max_length: int,
        pad_id: int,
        pad_to_max_length: bool = False,
        threads: int | None = None,
        max_entries: int = 8192,
    ) -> None:
        from tokenizers import Tokenizer

        self.session = open_session(model, threads=threads)
        _check_names(self.session, model, TEXT_INPUTS, [TEXT_OUTPUT])
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ClipHarError(f"{tokenizer_file}: cannot load the tokenizer: {exc}") from None
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.no_padding()
        self.max_length = max_length
        self.pad_id = pad_id
        self.pad_to_max_length = pad_to_max_length
        self._cache: BatchLru[np.ndarray] = BatchLru(max_entries)

    def _encode(self, texts: list[str]) -> np.ndarray:
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]
        width = self.max_length if self.pad_to_max_length else max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            attention[row, : len(tokens)] = 1
        (embeddings,) = self.session.run(
            [TEXT_OUTPUT], dict(zip(TEXT_INPUTS, (input_ids, attention), strict=True))
        )
        return np.asarray(embeddings, dtype=np.float32)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised embeddings ``[M, D]``; only texts not in the cache are encoded."""
        rows, _ = self._cache.lookup(texts, self._encode)
        return np.stack(rows)


def class_text_weights(
    encoder: OnnxTextEncoder, labels: Sequence[str], prompts: PromptSet
) -> np.ndarray:
    """Per label: the mean of its normalised template embeddings, renormalised ``[C, D]``
    (the same recipe as the torch zero-shot head)."""
    names = validate_class_names(list(labels))
    texts = [text for name in names for text in prompts.texts(name)]
    embeddings = encoder.encode_text(texts).reshape(len(names), len(prompts.templates), -1)
    mean = embeddings.mean(axis=1)
    normalised: np.ndarray = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    return normalised


class OnnxZeroShotEngine:
    """New labels over an exported image model: ``softmax(scale * embeddings @ weights.T)``."""

    def __init__(self, image: OnnxEngine, weights: np.ndarray, logit_scale: float) -> None:
        self.format = image.format
        self.image = image
        self.weights = weights.astype(np.float32)
        self.logit_scale = np.float32(logit_scale)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        _, embeddings = self.image.run(pixels)
        logits = self.logit_scale * embeddings @ self.weights.T
        logits -= logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        probs: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
        return probs
