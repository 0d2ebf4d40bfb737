"""The served model: loading, warm-up, leases, hot reload, alias following and draining.

A :class:`ServedModel` is one loaded bundle: ``settings.instances`` engine sessions behind a
:class:`~clip_har.inference.batcher.DynamicBatcher`, warmed up before anyone sees it. The
:class:`ModelManager` holds the current one. Every request takes a *lease* on it
(:meth:`ModelManager.use`), so a reload swaps the reference atomically while in-flight
requests finish on the model they started with; the old model is drained and closed once
its last lease ends. Loading and warm-up run in worker threads, so liveness answers while a
big model loads. See docs/serving.md ("Health, reload and shutdown").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import numpy as np
from PIL import Image
from pydantic import ValidationError

from clip_har.errors import (
    ApiError,
    BatcherClosedError,
    BatchInputError,
    BundleError,
    ClipHarError,
    DeadlineExceededError,
    EvaluationError,
    QueueFullError,
)
from clip_har.inference.batcher import BatchRecord, DynamicBatcher
from clip_har.inference.engines import EngineOptions
from clip_har.inference.formats import best_served_format
from clip_har.inference.predictor import Predictor
from clip_har.io import file_sha256, plural
from clip_har.models.bundle import MANIFEST, Manifest, open_bundle
from clip_har.models.prompts import PromptSet
from clip_har.serving.evaluation import ServedEvaluation, load_evaluation
from clip_har.serving.settings import ServeSettings

if TYPE_CHECKING:
    from clip_har.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

# what serving runs by default, best first: the fastest export that passed its parity gate
# (the order `registry register` uses for the format a registered version serves)
OPEN_VOCABULARY_CACHE = 32  # label sets whose text weights stay built
RETRY_AFTER_S = 5  # Retry-After of 503 not_ready / draining
SHORT_HASH = 12  # hex digits of the manifest hash that version a bundle with no registry


@dataclass(frozen=True)
class ModelInfo:
    """What is served: identity (name, version, alias, source), format, the manifest and
    the model's evaluation when it has one (loaded and swapped with it)."""

    name: str
    version: str
    alias: str | None
    source: str
    format: str
    classes: tuple[str, ...]
    image_size: tuple[int, int]
    open_vocabulary: bool
    manifest: dict[str, Any] = field(repr=False)
    metrics: dict[str, float]
    parity: dict[str, Any]
    loaded_at: str
    evaluation: ServedEvaluation | None = field(default=None, repr=False)

    def labels(self) -> dict[str, str]:
        """The metric labels of this model: ``{"model": name, "version": version}``."""
        return {"model": self.name, "version": self.version}


def _reason(exc: BaseException) -> str:
    """One line saying why a load failed (clip-har errors are already sentences)."""
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    return first if isinstance(exc, ClipHarError) else f"{type(exc).__name__}: {first}"


class ServedModel:
    """One loaded, warmed model: ``predictor`` (instance 0, for preprocessing and open
    vocabulary) and a batcher over every instance's engine."""

    def __init__(
        self,
        info: ModelInfo,
        predictors: Sequence[Predictor],
        settings: ServeSettings,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.info = info
        self.predictor = predictors[0]
        self.predictors = list(predictors)
        self.settings = settings
        labels = info.labels()
        on_batch: Callable[[BatchRecord], None] | None = None
        on_expired: Callable[[int], None] | None = None
        if metrics is not None:
            on_batch = lambda record: metrics.observe_batch(record, labels)  # noqa: E731
            on_expired = lambda n: metrics.observe_expired(n, labels)  # noqa: E731
        self.batcher = DynamicBatcher(
            [predictor.engine.predict for predictor in self.predictors],
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            on_batch=on_batch,
            on_expired=on_expired,
        )
        self._vocabulary: OrderedDict[tuple[tuple[str, ...], tuple[str, ...] | None], Predictor]
        self._vocabulary = OrderedDict()
        self._vocabulary_lock = threading.Lock()
        self._classify_slots = asyncio.Semaphore(len(self.predictors))
        self._leases = 0
        self._unleased = asyncio.Event()
        self._unleased.set()
        self._closed = False

    # --- requests ----------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Normalised pixels ``[N, 3, H, W]`` float32 of decoded images (blocking: call it
        from a worker thread)."""
        return self.predictor.preprocessor.batch(images)

    async def predict(self, pixels: np.ndarray, *, deadline: float) -> np.ndarray:
        """Class probabilities ``[N, C]`` through the batcher; batcher refusals become
        :class:`ApiError` (503 queue_full / draining, 504 timeout, 413 too_many_images)."""
        try:
            return await self.batcher.submit_many(pixels, deadline=deadline)
        except QueueFullError as exc:
            raise ApiError(
                503,
                "queue_full",
                "the server is at capacity (inference queue full); retry shortly",
                {"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
            ) from None
        except DeadlineExceededError:
            raise ApiError(
                504, "timeout", "the request waited past its deadline and was not run"
            ) from None
        except BatcherClosedError:
            raise _draining() from None
        except BatchInputError as exc:
            raise ApiError(413, "too_many_images", str(exc)) from None

    async def classify(
        self,
        pixels: np.ndarray,
        labels: Sequence[str],
        templates: Sequence[str] | None,
        *,
        deadline: float,
    ) -> np.ndarray:
        """Open vocabulary: probabilities ``[N, len(labels)]`` over ``labels``, with the
        bundle's prompt templates unless ``templates`` are given. Runs in a worker thread
        (not through the batcher), at most ``instances`` at a time."""
        if self.predictor.vocabulary is None:
            raise ApiError(
                400,
                "open_vocabulary_unavailable",
                f"model {self.info.name} ({self.info.format}) has no open vocabulary: it needs "
                "the torch format, or an ONNX format with a text-onnx export in the bundle",
            )
        key = (tuple(labels), tuple(templates) if templates else None)
        async with self._classify_slots:
            if time.monotonic() >= deadline:
                raise ApiError(504, "timeout", "the request waited past its deadline")
            if self._closed:
                raise _draining()
            predictor = await anyio.to_thread.run_sync(self._labelled, key)
            probs: np.ndarray = await anyio.to_thread.run_sync(predictor.engine.predict, pixels)
            return probs

    def _labelled(self, key: tuple[tuple[str, ...], tuple[str, ...] | None]) -> Predictor:
        """The predictor over a label set (least recently used ones are dropped)."""
        with self._vocabulary_lock:
            found = self._vocabulary.get(key)
            if found is not None:
                self._vocabulary.move_to_end(key)
                return found
        labels, templates = key
        try:
            prompts = PromptSet(name="request", templates=templates) if templates else None
        except ValidationError as exc:
            problem = exc.errors()[0].get("msg", "invalid") if exc.errors() else "invalid"
            raise ApiError(422, "invalid_templates", f"templates: {problem}") from None
        built = self.predictor.with_labels(list(labels), prompts)
        with self._vocabulary_lock:
            self._vocabulary[key] = built
            while len(self._vocabulary) > OPEN_VOCABULARY_CACHE:
                self._vocabulary.popitem(last=False)
        return built

    # --- life cycle ---------------------------------------------------------------
    def warm_up(self) -> None:
        """Run the whole request path once before readiness (blocking): preprocessing of a
        real photo-sized image (its kernels compile on first use), every instance at batch 1
        and at ``max_batch_size``, and the open vocabulary's text encoder when there is one,
        so the first requests do not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
        classes = len(self.info.classes)
        for size in dict.fromkeys((1, self.settings.max_batch_size)):
            pixels = self.preprocess([image] * size)
            for predictor in self.predictors:
                probs = predictor.engine.predict(pixels)
                if probs.shape != (size, classes):
                    raise ClipHarError(
                        f"warm-up: the engine answered shape {probs.shape}, expected "
                        f"{(size, classes)}"
                    )
        if self.predictor.vocabulary is not None:
            labels = tuple(self.info.classes[:2])
            self._labelled((labels, None)).engine.predict(self.preprocess([image]))

    def lease(self) -> None:
        self._leases += 1
        self._unleased.clear()

    def release(self) -> None:
        self._leases -= 1
        if self._leases == 0:
            self._unleased.set()

    async def retire(self, grace_s: float) -> None:
        """After the last lease ends: drain the batcher (up to ``grace_s``) and close."""
        await self._unleased.wait()
        await self.close(grace_s)

    async def close(self, grace_s: float = 0.0) -> None:
        """Drain queued work for up to ``grace_s`` seconds, then stop the batcher."""
        if self._closed:
            return
        self._closed = True
        if not await self.batcher.drain(grace_s):
            logger.warning(
                "model %s %s: queued work did not finish within %.1f s; failing the rest",
                self.info.name,
                self.info.version,
                grace_s,
            )
        await self.batcher.close()


def _draining() -> ApiError:
    return ApiError(
        503,
        "draining",
        "the server is shutting down or switching models; retry",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


@dataclass(frozen=True)
class _Resolved:
    """A source resolved to a folder, with its registry identity when it has one."""

    path: Path
    served_format: str | None
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    evaluation: Path | None = None  # the evaluation registered with the version


def _resolve(source: str, *, with_evaluation: bool = False) -> _Resolved:
    """The bundle folder of ``source`` (a folder or a models:/ URI), downloading a
    registered version on first use (and, ``with_evaluation``, its registered evaluation)."""
    from clip_har.config import load_settings
    from clip_har.registry.resolve import resolve_registered
    from clip_har.registry.store import is_model_uri, parse_ref

    if not is_model_uri(source):
        path = Path(source)
        if not path.exists():
            raise BundleError(f"{source}: no such bundle folder")
        return _Resolved(path, None)
    ref = parse_ref(source)
    resolved = resolve_registered(
        source, cache_dir=load_settings().cache_dir, with_evaluation=with_evaluation
    )
    # the cache keeps a version at .../<NAME>/<VERSION> (registry.resolve.cache_path)
    return _Resolved(
        resolved.path,
        resolved.served_format,
        ref.name,
        resolved.path.name,
        ref.alias,
        resolved.evaluation,
    )


def _evaluation(
    source: str, resolved: _Resolved, manifest: Manifest, settings: ServeSettings
) -> ServedEvaluation | None:
    """The evaluation served with ``source``: ``settings.evaluation`` for the configured
    source (one of another model raises :class:`EvaluationError`, so the load fails and a
    reload keeps the old model), else the one registered with a models:/ version (one that
    does not check out is left out, with a warning), else none."""
    if settings.evaluation is not None and source == settings.bundle:
        return load_evaluation(settings.evaluation, manifest, str(settings.evaluation))
    if resolved.evaluation is None:
        return None
    try:
        return load_evaluation(
            resolved.evaluation, manifest, f"{source} (registered version {resolved.version})"
        )
    except EvaluationError as exc:
        logger.warning("serving %s without its registered evaluation: %s", source, exc)
        return None


def current_alias_version(source: str) -> str | None:
    """The version a ``models:/NAME@ALIAS`` source points at now (``None`` for others)."""
    from clip_har.registry.store import (
        existing_registry_client,
        get_version,
        is_model_uri,
        parse_ref,
    )

    if not is_model_uri(source):
        return None
    ref = parse_ref(source)
    if ref.alias is None:
        return None
    return str(get_version(existing_registry_client(), ref).version)


def load_served_model(
    source: str, settings: ServeSettings, metrics: ServingMetrics | None = None
) -> ServedModel:
    """Resolve ``source``, build ``settings.instances`` engine sessions and warm every one
    (blocking; run it in a worker thread)."""
    explicit = settings.evaluation is not None and source == settings.bundle
    resolved = _resolve(source, with_evaluation=not explicit)
    bundle = open_bundle(resolved.path)
    evaluation = _evaluation(source, resolved, bundle.manifest, settings)
    if settings.format is not None:
        model_format = settings.format
    elif resolved.served_format is not None:
        model_format = resolved.served_format
    else:
        model_format = best_served_format(bundle)
    options = EngineOptions(threads=settings.threads, precision=settings.precision)
    predictors = [
        Predictor.from_bundle(resolved.path, model_format, engine_options=options)
        for _ in range(settings.instances)
    ]
    manifest = bundle.manifest
    info = ModelInfo(
        name=settings.model_name or resolved.name or manifest.name,
        version=resolved.version or file_sha256(resolved.path / MANIFEST)[:SHORT_HASH],
        alias=resolved.alias,
        source=source,
        format=model_format,
        classes=tuple(manifest.class_names),
        image_size=predictors[0].preprocessor.output_size,
        open_vocabulary=predictors[0].vocabulary is not None,
        manifest=manifest.model_dump(mode="json"),
        metrics=dict(manifest.metrics),
        parity={
            name: record.parity.model_dump(mode="json") if record.parity else None
            for name, record in manifest.exports.items()
        },
        loaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        evaluation=evaluation,
    )
    served = ServedModel(info, predictors, settings, metrics)
    started = time.perf_counter()
    served.warm_up()
    logger.info(
        "loaded %s version %s (%s, %s) from %s; warm-up took %.2f s",
        info.name,
        info.version,
        info.format,
        plural(len(predictors), "instance"),
        source,
        time.perf_counter() - started,
    )
    return served


class ModelManager:
    """Holds the served model; loads, swaps, follows an alias and drains it."""

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.draining = False
        self.failure: str | None = None  # why the last load failed, while none is served
        self._current: ServedModel | None = None
        self._source = settings.bundle
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._first_load = asyncio.Event()
        self._retiring: set[ServedModel] = set()  # swapped out, closed after their last lease
        if metrics is not None:
            metrics.set_queue_depth_source(self._queue_depth)

    # --- state --------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Loaded, warmed and not draining."""
        return self._current is not None and not self.draining

    @property
    def info(self) -> ModelInfo | None:
        return self._current.info if self._current is not None else None

    @property
    def status(self) -> str:
        """``ready``, ``loading``, ``failed: <why>`` or ``draining``."""
        if self.draining:
            return "draining"
        if self._current is not None:
            return "ready"
        if self.failure is not None:
            return f"failed: {self.failure}"
        return "loading"

    def _queue_depth(self) -> tuple[dict[str, str], int]:
        current = self._current
        if current is None:
            return {}, 0
        return current.info.labels(), current.batcher.depth

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[ServedModel]:
        """A lease on the current model for one request; a reload meanwhile leaves it alone."""
        model = self._current
        if model is None:
            why = "the model is loading" if self.failure is None else self.failure
            raise ApiError(
                503, "not_ready", f"no model is ready: {why}", {"Retry-After": str(RETRY_AFTER_S)}
            )
        model.lease()
        try:
            yield model
        finally:
            model.release()

    # --- loading ------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm the configured model in the background; follow its alias."""
        self._spawn(self._initial_load(), "clip-har-model-load")

    async def wait_first_load(self) -> str | None:
        """Wait for the first load to finish; its failure reason, or ``None`` on success."""
        await self._first_load.wait()
        return None if self._current is not None else self.failure

    async def _initial_load(self) -> None:
        try:
            if self._source is None:
                self.failure = "no bundle configured: pass --bundle or set CLIP_HAR_SERVE_BUNDLE"
                logger.error("cannot serve: %s", self.failure)
                return
            try:
                await self._load_and_swap(self._source)
            except ApiError as exc:
                self.failure = exc.message
                logger.error("cannot serve %s: %s", self._source, exc.message)
                return
            if self.settings.alias_poll_s > 0 and current_alias_target(self._source):
                self._spawn(self._follow_alias(self._source), "clip-har-alias-poll")
        finally:
            self._first_load.set()

    async def reload(self, source: str | None = None) -> tuple[ModelInfo, ModelInfo | None]:
        """Load and warm ``source`` (default: the current source again, re-resolving an
        alias), then swap it in. ``(new, previous)``; a failure keeps the old model and
        raises ApiError 422 ``reload_failed`` with the reason."""
        target = source or self._source
        if target is None:
            raise ApiError(422, "reload_failed", "no source given and none configured")
        if self.draining:
            raise _draining()
        return await self._load_and_swap(target)

    async def _load_and_swap(self, source: str) -> tuple[ModelInfo, ModelInfo | None]:
        async with self._reload_lock:
            try:
                fresh = await anyio.to_thread.run_sync(
                    load_served_model, source, self.settings, self.metrics
                )
                await fresh.batcher.start()
            except ApiError:
                raise
            except Exception as exc:
                reason = _reason(exc)
                logger.error("loading %s failed; the served model is unchanged: %s", source, reason)
                raise ApiError(422, "reload_failed", f"{source}: {reason}") from None
            if self.draining:  # shutdown began while loading: never serve it
                await fresh.close()
                raise _draining()
            previous = self._current
            self._current = fresh  # the swap: new requests lease the new model from here
            self._source = source
            self.failure = None
            if self.metrics is not None:
                self.metrics.set_model(fresh.info)
            if previous is not None:
                logger.info(
                    "now serving %s version %s (was %s version %s)",
                    fresh.info.name,
                    fresh.info.version,
                    previous.info.name,
                    previous.info.version,
                )
                self._spawn(self._retire(previous), "clip-har-retire")
            return fresh.info, previous.info if previous is not None else None

    async def _retire(self, model: ServedModel) -> None:
        self._retiring.add(model)
        try:
            await model.retire(self.settings.request_timeout_s)
        finally:
            self._retiring.discard(model)

    async def _follow_alias(self, source: str) -> None:
        """Reload whenever the alias of ``source`` points at another version."""
        while not self.draining:
            await asyncio.sleep(self.settings.alias_poll_s)
            if self.draining or self._source != source:
                return  # an explicit reload chose another source: stop following this one
            try:
                version = await anyio.to_thread.run_sync(current_alias_version, source)
            except Exception as exc:
                logger.warning("checking %s failed (still serving): %s", source, _reason(exc))
                continue
            info = self.info
            if version is None or info is None or version == info.version:
                continue
            logger.info(
                "%s now points at version %s (serving %s): reloading", source, version, info.version
            )
            try:
                await self._load_and_swap(source)
            except ApiError as exc:
                logger.error(
                    "following %s failed; still serving %s: %s", source, info.version, exc.message
                )

    # --- shutdown -----------------------------------------------------------------
    def begin_drain(self) -> None:
        """Readiness goes to 503 from now on (the requests already accepted still run)."""
        if not self.draining:
            logger.info("draining: readiness now answers 503")
        self.draining = True

    async def drain(self, grace_s: float) -> None:
        """Not ready any more; stop accepting and wait up to ``grace_s`` for queued work."""
        self.begin_drain()
        current = self._current
        if current is not None and not await current.batcher.drain(grace_s):
            logger.warning("queued work did not finish within the %.1f s grace", grace_s)

    async def close(self) -> None:
        """Stop background tasks and every model's batcher."""
        self.draining = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        current, self._current = self._current, None
        for model in [*self._retiring, *([current] if current is not None else [])]:
            await model.close()
        self._retiring.clear()

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def current_alias_target(source: str) -> bool:
    """Whether ``source`` is a ``models:/NAME@ALIAS`` reference (its target may move)."""
    from clip_har.registry.store import is_model_uri, parse_ref

    return is_model_uri(source) and parse_ref(source).alias is not None
