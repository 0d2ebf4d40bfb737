"""The Predictor: preprocessing + engine + labels + top-k. Everything that predicts uses it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clip_har.config import DataSettings, PredictSettings, Settings
from clip_har.errors import ClipHarError, ConfigError, ImageProblem
from clip_har.imaging import ImageConfig, ImageLoadError, Preprocessor, load_image
from clip_har.inference.engines import Engine, EngineOptions, create_engine
from clip_har.inference.formats import REFERENCE_FORMAT, TEXT_FORMAT, get_format
from clip_har.inference.inputs import CollectedInputs, InputProblem
from clip_har.models.bundle import Bundle, open_bundle
from clip_har.models.prompts import PromptSet, load_prompt_set

if TYPE_CHECKING:  # torch-backed: imported where used, so ONNX serving loads no torch
    from clip_har.inference.torch_engine import TorchEngine
    from clip_har.models.backbone import Backbone


@dataclass(frozen=True)
class Prediction:
    """The best label, its probability, the ``top_k`` (label, probability) pairs and the
    probabilities of every class."""

    label: str
    score: float
    top_k: list[tuple[str, float]]
    probabilities: np.ndarray = field(repr=False, compare=False)  # float32 [C], class order


@dataclass(frozen=True)
class FileResult:
    """Outcome for one input file: a prediction, or why it failed (``code`` classifies the
    failure, ``error`` says it in words)."""

    path: Path
    prediction: Prediction | None = None
    error: str | None = None
    code: ImageProblem | None = None

    @classmethod
    def for_problem(cls, problem: InputProblem) -> FileResult:
        """The failed result of an input that gives no image (its ``path`` is the input)."""
        return cls(Path(problem.input), error=problem.reason, code=problem.code)


@dataclass(frozen=True)
class PredictOptions:
    """How many labels to return, batch size, and the guards applied to every image.

    The defaults are those of the ``predict`` and ``data`` settings sections."""

    top_k: int = PredictSettings().top_k
    batch_size: int = PredictSettings().batch_size
    min_side: int = DataSettings().min_image_side
    max_pixels: int = DataSettings().max_image_pixels

    def __post_init__(self) -> None:
        if min(self.top_k, self.batch_size, self.min_side, self.max_pixels) < 1:
            raise ConfigError(f"all prediction options must be at least 1: {self}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> PredictOptions:
        """Options from the ``predict`` and ``data`` (image guards) sections; ``overrides``
        that are not ``None`` win. ``predict`` and ``evaluate`` both build theirs here, so
        they accept and reject the same images."""
        values: dict[str, Any] = {
            "top_k": settings.predict.top_k,
            "batch_size": settings.predict.batch_size,
            "min_side": settings.data.min_image_side,
            "max_pixels": settings.data.max_image_pixels,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class OpenVocabulary:
    """Builds zero-shot engines for arbitrary labels, caching text embeddings (LRU)."""

    def __init__(
        self, backbone: Backbone, prompts: PromptSet, engine_options: EngineOptions | None = None
    ) -> None:
        from clip_har.models.classifier import TextEmbeddingCache

        self.backbone = backbone
        self.prompts = prompts
        self.cache = TextEmbeddingCache(backbone)
        self.engine_options = engine_options or EngineOptions()  # device and precision

    def engine_for(self, labels: Sequence[str], prompts: PromptSet | None = None) -> TorchEngine:
        from clip_har.inference.torch_engine import TorchEngine
        from clip_har.models.classifier import build_zero_shot_classifier

        classifier = build_zero_shot_classifier(
            self.backbone, labels, prompts or self.prompts, self.cache
        )
        options = self.engine_options
        return TorchEngine(classifier, self.backbone, options.device, options.precision)


class OnnxOpenVocabulary:
    """Open vocabulary without PyTorch: the exported text encoder scores new labels against
    the embeddings output of an exported image model."""

    def __init__(self, image: Engine, bundle: Bundle, options: EngineOptions) -> None:
        from clip_har.inference.onnx_engine import OnnxEngine, OnnxTextEncoder

        if not isinstance(image, OnnxEngine):
            raise ClipHarError(f"the '{image.format}' engine has no ONNX embeddings output")
        path, record = bundle.export_file(TEXT_FORMAT, force=options.force)
        details = record.details
        tokenizer = bundle.export_companion(record, "tokenizer")
        self.image = image
        self.prompts = bundle.manifest.prompts
        self.logit_scale = float(details["logit_scale"])
        self.encoder = OnnxTextEncoder(
            path,
            tokenizer,
            max_length=int(details["max_length"]),
            pad_id=int(details["pad_id"]),
            pad_to_max_length=bool(details["pad_to_max_length"]),
            threads=options.threads,
        )

    def engine_for(self, labels: Sequence[str], prompts: PromptSet | None = None) -> Engine:
        from clip_har.inference.onnx_engine import (
            OnnxEngine,
            OnnxZeroShotEngine,
            class_text_weights,
        )

        assert isinstance(self.image, OnnxEngine)
        weights = class_text_weights(self.encoder, labels, prompts or self.prompts)
        return OnnxZeroShotEngine(self.image, weights, self.logit_scale)


Vocabulary = OpenVocabulary | OnnxOpenVocabulary


class Predictor:
    """Predict action labels for images, files or folders."""

    def __init__(
        self,
        engine: Engine,
        image_config: ImageConfig,
        class_names: Sequence[str],
        *,
        options: PredictOptions | None = None,
        vocabulary: Vocabulary | None = None,
        model_label: str = "unknown model",
    ) -> None:
        self.engine = engine
        self.image_config = image_config
        self.preprocessor = Preprocessor(image_config)
        self.class_names = list(class_names)
        self.options = options or PredictOptions()
        self.vocabulary = vocabulary
        self.model_label = model_label

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_bundle(
        cls,
        directory: str | Path,
        format: str = "torch",
        options: PredictOptions | None = None,
        engine_options: EngineOptions | None = None,
    ) -> Predictor:
        """Load a bundle with the engine for ``format``. Open-vocabulary labels work with
        the torch engine, and with ONNX engines when the bundle has a text-onnx export."""
        bundle = open_bundle(directory)
        engine_options = engine_options or EngineOptions()
        engine = create_engine(bundle, format, engine_options)
        vocabulary: Vocabulary | None = None
        if format == REFERENCE_FORMAT:
            from clip_har.inference.torch_engine import TorchEngine  # loaded by the engine

            if isinstance(engine, TorchEngine) and engine.backbone is not None:
                vocabulary = OpenVocabulary(
                    engine.backbone, bundle.manifest.prompts, engine_options
                )
        elif (
            format != REFERENCE_FORMAT
            and get_format(format).runtime == get_format(TEXT_FORMAT).runtime
            and TEXT_FORMAT in bundle.manifest.exports
        ):
            vocabulary = OnnxOpenVocabulary(engine, bundle, engine_options)
        info = bundle.manifest.backbone
        return cls(
            engine,
            bundle.manifest.preprocessing,
            bundle.class_names,
            options=options,
            vocabulary=vocabulary,
            model_label=f"{bundle.manifest.name} ({info.spec}"
            + (", RANDOM WEIGHTS)" if info.random_weights else ")"),
        )

    @classmethod
    def from_model(
        cls,
        spec: str,
        labels: Sequence[str],
        prompts: PromptSet | str = "actions",
        *,
        revision: str | None = None,
        cache_dir: Path | None = None,
        options: PredictOptions | None = None,
        engine_options: EngineOptions | None = None,
    ) -> Predictor:
        """Zero-shot over ``labels`` straight from a backbone, no bundle needed (the torch
        format: ``engine_options`` gives its device, precision and threads)."""
        from clip_har.models.backbone import load_backbone

        engine_options = engine_options or EngineOptions()
        if engine_options.threads is not None:
            import torch

            torch.set_num_threads(engine_options.threads)
        backbone = load_backbone(spec, revision=revision, cache_dir=cache_dir)
        prompt_set = prompts if isinstance(prompts, PromptSet) else load_prompt_set(prompts)
        vocabulary = OpenVocabulary(backbone, prompt_set, engine_options)
        return cls(
            vocabulary.engine_for(labels),
            backbone.image_config,
            labels,
            options=options,
            vocabulary=vocabulary,
            model_label=backbone.label,
        )

    def with_labels(self, labels: Sequence[str], prompts: PromptSet | None = None) -> Predictor:
        """Open vocabulary: the same model over new labels, built at run time."""
        if self.vocabulary is None:
            raise ClipHarError(
                f"open-vocabulary labels need the torch engine, or an ONNX engine with a "
                f"'{TEXT_FORMAT}' export in the bundle; this predictor uses the "
                f"'{self.engine.format}' engine"
            )
        return Predictor(
            self.vocabulary.engine_for(labels, prompts),
            self.image_config,
            labels,
            options=self.options,
            vocabulary=self.vocabulary,
            model_label=self.model_label,
        )

    # --- prediction -------------------------------------------------------------
    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        """Predictions for an already preprocessed batch ``[N, 3, H, W]``."""
        probs = self.engine.predict(pixels)
        return [self._rank(row) for row in probs]

    def predict_images(self, images: Sequence[Image.Image]) -> list[Prediction]:
        """Predictions for decoded PIL images (any mode)."""
        results: list[Prediction] = []
        for start in range(0, len(images), self.options.batch_size):
            batch = self.preprocessor.batch(images[start : start + self.options.batch_size])
            results.extend(self.predict_pixels(batch))
        return results

    def predict_inputs(self, inputs: CollectedInputs) -> Iterator[FileResult]:
        """Yield one result per entry of ``inputs``, in order: a prediction or the reason for
        each image, and a failed result for each input that gave no image."""
        predictions = self.predict_files(inputs.paths)
        for entry in inputs.entries:
            if isinstance(entry, InputProblem):
                yield FileResult.for_problem(entry)
            else:
                yield next(predictions)

    def predict_files(self, paths: Iterable[Path]) -> Iterator[FileResult]:
        """Yield one result per path, in order; unreadable files yield their reason.

        Decoding and preprocessing run in a small thread pool (Pillow and the kernels
        release the GIL), straight into one reused batch buffer.
        """
        path_list = list(paths)
        size = self.options.batch_size
        buffer = np.empty((size, 3, *self.preprocessor.output_size), dtype=np.float32)
        workers = min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            for start in range(0, len(path_list), size):
                chunk = path_list[start : start + size]
                errors = list(pool.map(self._load_into, chunk, buffer))
                good = [i for i, failure in enumerate(errors) if failure is None]
                pixels = buffer[: len(chunk)] if len(good) == len(chunk) else buffer[good]
                predictions = iter(self.predict_pixels(pixels) if good else [])
                for path, failure in zip(chunk, errors, strict=True):
                    if failure is None:
                        yield FileResult(path, prediction=next(predictions))
                    else:
                        yield FileResult(path, error=failure.reason, code=failure.code)

    def _load_into(self, path: Path, out: np.ndarray) -> ImageLoadError | None:
        """Preprocess ``path`` into ``out``; return the error if the file cannot be used."""
        try:
            image = load_image(
                path, min_side=self.options.min_side, max_pixels=self.options.max_pixels
            )
            self.preprocessor.into(image, out)
        except ImageLoadError as exc:
            return exc
        return None

    def _rank(self, probs: np.ndarray) -> Prediction:
        k = min(self.options.top_k, len(self.class_names))
        order = np.argsort(-probs, kind="stable")[:k]
        ranked = [(self.class_names[i], float(probs[i])) for i in order]
        return Prediction(label=ranked[0][0], score=ranked[0][1], top_k=ranked, probabilities=probs)
