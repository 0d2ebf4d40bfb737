"""The friendly REST API: /v1/predict, /v1/predict/batch, /v1/classify, /v1/labels, /v1/model,
/v1/model/report.

Each prediction route takes multipart/form-data (file uploads) or JSON (base64 images); the
route reads the content type itself, and ``openapi_extra`` documents both bodies. Every
prediction is logged durably in the prediction store before the answer.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from clip_har.errors import ApiError
from clip_har.serving.auth import require_api_key
from clip_har.serving.images import (
    decode_base64,
    decode_each,
    decode_image,
    looks_like_url,
    urls_not_supported,
)
from clip_har.serving.schemas import (
    ERROR_RESPONSES,
    BatchFailure,
    BatchItemFailure,
    BatchPrediction,
    BatchResponse,
    ClassifyForm,
    ClassifyRequest,
    LabelProbability,
    LabelsResponse,
    ModelRef,
    ModelResponse,
    PredictBatchForm,
    PredictBatchRequest,
    PredictForm,
    PredictionResponse,
    PredictRequest,
    RegistryRef,
    ServedModelInfo,
    error_responses,
)
from clip_har.serving.settings import ServeSettings
from clip_har.serving.state import Services, services
from clip_har.serving.store import PredictionRecord

if TYPE_CHECKING:
    from clip_har.serving.models import ModelInfo, ServedModel

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_api_key)])

JSON = "application/json"
MULTIPART = "multipart/form-data"
URL_FIELDS = frozenset({"url", "urls", "image_url", "image_urls", "uri", "image_uri"})
"""Request fields that name an image by address: refused (the server never fetches)."""
MAX_TEMPLATE_LENGTH = 300
_INLINE_JSON_BYTES = 64 * 1024  # larger JSON bodies are parsed off the event loop
_TopK = Query(None, ge=1, description="How many labels to return (a body top_k wins).")
M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- request bodies


def _body_doc(json_model: type[BaseModel], form_model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting the JSON and the multipart body of one route."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": json_model.model_json_schema()},
                MULTIPART: {"schema": form_model.model_json_schema()},
            },
        }
    }


def _content_kind(request: Request) -> Literal["json", "multipart"]:
    """Which body the request carries; 415 for anything else."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == JSON or (media.startswith("application/") and media.endswith("+json")):
        return "json"
    if media == MULTIPART:
        return "multipart"
    raise ApiError(
        415,
        "unsupported_media_type",
        f"unsupported content type {media or '(none)'!r}: send {MULTIPART} (file upload) "
        f"or {JSON} (base64)",
    )


async def _json_body(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``: 400 ``invalid_json``, 400 ``urls_not_supported``, 422."""
    raw = await request.body()
    try:
        data = (
            await anyio.to_thread.run_sync(json.loads, raw)
            if len(raw) > _INLINE_JSON_BYTES
            else json.loads(raw)
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the JSON body must be an object")
    _refuse_url_fields(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def _refuse_url_fields(fields: Any) -> None:
    for name in fields:
        if str(name).lower() in URL_FIELDS:
            raise urls_not_supported(str(name))


@dataclass(frozen=True)
class Upload:
    """One image of a request: its bytes and, for a file upload, its name."""

    data: bytes
    filename: str | None = None


async def _form_files(form: FormData, field: str) -> list[Upload]:
    """The uploaded files of ``field``; 422 ``invalid_request`` for a text value."""
    uploads = []
    for value in form.getlist(field):
        if not isinstance(value, UploadFile):
            if looks_like_url(value):
                raise urls_not_supported(field)
            raise ApiError(422, "invalid_request", f"'{field}' must be a file upload, not text")
        uploads.append(Upload(await value.read(), value.filename))
    return uploads


def _form_text(form: FormData, field: str) -> list[str]:
    values = []
    for value in form.getlist(field):
        if isinstance(value, UploadFile):
            raise ApiError(422, "invalid_request", f"'{field}' must be text, not a file")
        values.append(value)
    return values


def _form_top_k(form: FormData) -> int | None:
    values = _form_text(form, "top_k")
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(422, "invalid_request", "'top_k' given more than once")
    try:
        top_k = int(values[0])
    except ValueError as exc:
        raise ApiError(
            422, "invalid_request", f"'top_k' must be an integer, got {values[0]!r}"
        ) from exc
    if top_k < 1:
        raise ApiError(422, "invalid_request", f"'top_k' must be at least 1, got {top_k}")
    return top_k


def _one_file(uploads: list[Upload], field: str) -> Upload:
    if not uploads:
        raise ApiError(
            422, "invalid_request", f"missing the image: upload it as form field '{field}'"
        )
    if len(uploads) > 1:
        raise ApiError(
            422,
            "invalid_request",
            f"one image per request here ({len(uploads)} given); use /v1/predict/batch",
        )
    return uploads[0]


def _check_batch_size(count: int, settings: ServeSettings) -> None:
    if count > settings.max_batch_images:
        raise ApiError(
            413,
            "too_many_images",
            f"{count} images in one batch; the limit is {settings.max_batch_images}",
        )


def checked_labels(labels: Sequence[str], settings: ServeSettings) -> list[str]:
    """Stripped labels: 1..max_labels, each 1..max_label_length characters, no duplicates
    (ignoring case); 422 ``invalid_request`` otherwise."""
    cleaned = [label.strip() for label in labels]
    if not cleaned:
        raise ApiError(422, "invalid_request", "'labels' is empty: give at least one label")
    if len(cleaned) > settings.max_labels:
        raise ApiError(
            422,
            "invalid_request",
            f"{len(cleaned)} labels; the limit is {settings.max_labels}",
        )
    seen: set[str] = set()
    for label in cleaned:
        if not label:
            raise ApiError(422, "invalid_request", "labels must not be empty")
        if len(label) > settings.max_label_length:
            raise ApiError(
                422,
                "invalid_request",
                f"label {label[:40]!r}... has {len(label)} characters; "
                f"the limit is {settings.max_label_length}",
            )
        if label.casefold() in seen:
            raise ApiError(422, "invalid_request", f"duplicate label {label!r}")
        seen.add(label.casefold())
    return cleaned


def checked_templates(templates: Sequence[str] | None, settings: ServeSettings) -> list[str] | None:
    """Prompt templates: at most max_templates, each with exactly one ``{}`` and no other
    brace; 422 ``invalid_request`` otherwise. ``None`` or empty: the model's own."""
    if not templates:
        return None
    if len(templates) > settings.max_templates:
        raise ApiError(
            422,
            "invalid_request",
            f"{len(templates)} templates; the limit is {settings.max_templates}",
        )
    cleaned = []
    for template in templates:
        text = template.strip()
        if len(text) > MAX_TEMPLATE_LENGTH:
            raise ApiError(
                422,
                "invalid_request",
                f"a template has {len(text)} characters; the limit is {MAX_TEMPLATE_LENGTH}",
            )
        rest = text.replace("{}", "", 1)
        if "{}" not in text or "{" in rest or "}" in rest:
            raise ApiError(
                422,
                "invalid_request",
                f"template {text[:60]!r} must contain exactly one '{{}}' (where the label goes) "
                "and no other brace",
            )
        cleaned.append(text)
    return cleaned


def _resolve_top_k(given: int | None, n_classes: int, settings: ServeSettings) -> int:
    """The top_k of a request: ``given`` (1..n_classes, else 422) or the default."""
    if given is None:
        return max(1, min(settings.default_top_k, n_classes))
    if not 1 <= given <= n_classes:
        raise ApiError(
            422,
            "invalid_request",
            f"top_k must be between 1 and {n_classes} (the number of labels), got {given}",
        )
    return given


# --------------------------------------------------------------------------- predicting


@dataclass(frozen=True)
class Ranked:
    """One answered image: the top-k labels with their probabilities, best first."""

    top_k: list[tuple[str, float]]

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def confidence(self) -> float:
        return self.top_k[0][1]


def rank(probs: np.ndarray, classes: Sequence[str], k: int) -> list[Ranked]:
    """The top ``k`` of every row of ``probs`` ``[N, C]``."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        Ranked([(classes[int(j)], float(row[j])) for j in idx])
        for row, idx in zip(probs, order, strict=True)
    ]


def model_ref(info: ModelInfo) -> ModelRef:
    return ModelRef(name=info.name, version=info.version, format=info.format)


def _preprocess_pixels(model: ServedModel, images: Sequence[Image.Image]) -> np.ndarray:
    pixels: np.ndarray = model.preprocess(images)
    return pixels


async def _predict(
    svc: Services,
    images: Sequence[Image.Image],
    *,
    top_k: int | None,
    deadline: float,
    labels: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> tuple[ModelInfo, list[Ranked]]:
    """Preprocess (off the event loop) and predict ``images`` as one submission."""
    async with svc.models.use() as model:
        info = model.info
        classes = list(labels) if labels is not None else list(info.classes)
        k = _resolve_top_k(top_k, len(classes), svc.settings)
        pixels = await anyio.to_thread.run_sync(_preprocess_pixels, model, images)
        if labels is None:
            probs = await model.predict(pixels, deadline=deadline)
        else:
            probs = await model.classify(pixels, labels, templates, deadline=deadline)
    return info, rank(np.asarray(probs), classes, k)


async def _log(
    svc: Services,
    route: str,
    info: ModelInfo,
    ranked: Sequence[Ranked],
    datas: Sequence[bytes],
    started: float,
    *,
    open_vocabulary: bool = False,
) -> list[str]:
    """Log the predictions durably (and the images when ``store_images`` is set) and count
    them; their prediction ids."""
    hashes: list[str | None] = [None] * len(datas)
    if svc.settings.store_images is not None:

        def store_all() -> list[str | None]:
            return [svc.store.store_image(data) for data in datas]

        hashes = await anyio.to_thread.run_sync(store_all)
    latency_ms = (time.monotonic() - started) * 1000.0
    now = datetime.now(timezone.utc)
    records = [
        PredictionRecord(
            id=uuid.uuid4().hex,
            created_at=now,
            model_name=info.name,
            model_version=info.version,
            route=route,
            label=item.label,
            confidence=item.confidence,
            top_k=item.top_k,
            latency_ms=latency_ms,
            image_sha256=sha,
        )
        for item, sha in zip(ranked, hashes, strict=True)
    ]
    if records:
        await svc.store.log_predictions(records)
        svc.metrics.observe_predictions(
            info.labels(),
            [item.label for item in ranked],
            [item.confidence for item in ranked],
            open_vocabulary=open_vocabulary,
        )
    return [record.id for record in records]


def _top_k_json(item: Ranked) -> list[LabelProbability]:
    return [LabelProbability(label=label, probability=p) for label, p in item.top_k]


def _since_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


async def _decode_one(data: bytes, settings: ServeSettings) -> Image.Image:
    return await anyio.to_thread.run_sync(decode_image, data, settings)


# --------------------------------------------------------------------------- routes


@router.post(
    "/predict",
    response_model=PredictionResponse,
    summary="Predict the action in one image",
    responses=ERROR_RESPONSES,
    openapi_extra=_body_doc(PredictRequest, PredictForm),
)
async def predict(
    request: Request,
    top_k: int | None = _TopK,
    svc: Services = Depends(services),
) -> PredictionResponse:
    """One image: multipart field ``file`` (+ ``top_k``) or JSON ``{"image_base64", "top_k"}``."""
    started = time.monotonic()
    deadline = started + svc.settings.request_timeout_s
    if _content_kind(request) == "json":
        body = await _json_body(request, PredictRequest)
        upload = Upload(decode_base64(body.image_base64))
        given = body.top_k
    else:
        async with request.form() as form:
            _refuse_url_fields(form.keys())
            upload = _one_file(await _form_files(form, "file"), "file")
            given = _form_top_k(form)
    image = await _decode_one(upload.data, svc.settings)
    info, ranked = await _predict(
        svc, [image], top_k=given if given is not None else top_k, deadline=deadline
    )
    (prediction_id,) = await _log(svc, "v1/predict", info, ranked, [upload.data], started)
    item = ranked[0]
    return PredictionResponse(
        prediction_id=prediction_id,
        label=item.label,
        confidence=item.confidence,
        top_k=_top_k_json(item),
        model=model_ref(info),
        latency_ms=_since_ms(started),
    )


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    response_model_exclude_none=True,
    summary="Predict the actions in several images",
    responses=ERROR_RESPONSES,
    openapi_extra=_body_doc(PredictBatchRequest, PredictBatchForm),
)
async def predict_batch(
    request: Request,
    top_k: int | None = _TopK,
    svc: Services = Depends(services),
) -> BatchResponse:
    """Up to ``max_batch_images`` images (multipart ``files`` repeated, or JSON
    ``{"images_base64": [...]}``); a bad image gets its own error and the others are
    predicted together."""
    started = time.monotonic()
    settings = svc.settings
    deadline = started + settings.request_timeout_s
    uploads: list[Upload | ApiError] = []
    if _content_kind(request) == "json":
        body = await _json_body(request, PredictBatchRequest)
        _check_batch_size(len(body.images_base64), settings)
        for text in body.images_base64:
            try:
                uploads.append(Upload(decode_base64(text, "images_base64")))
            except ApiError as exc:
                if exc.code == "urls_not_supported":
                    raise
                uploads.append(exc)
        given = body.top_k
    else:
        async with request.form() as form:
            _refuse_url_fields(form.keys())
            files = await _form_files(form, "files")
            if not files:
                raise ApiError(
                    422, "invalid_request", "missing the images: upload them as form field 'files'"
                )
            _check_batch_size(len(files), settings)
            uploads.extend(files)
            given = _form_top_k(form)

    good = [u for u in uploads if isinstance(u, Upload)]
    decoded = iter(await anyio.to_thread.run_sync(decode_each, [u.data for u in good], settings))
    outcomes: list[Image.Image | ApiError] = []
    for upload in uploads:
        if isinstance(upload, ApiError):
            outcomes.append(upload)
        else:
            result = next(decoded)
            if result.image is not None:
                outcomes.append(result.image)
            elif result.error is not None:
                outcomes.append(result.error)
    images = [o for o in outcomes if isinstance(o, Image.Image)]
    model: ModelInfo
    ranked: list[Ranked] = []
    if images:
        model, ranked = await _predict(
            svc, images, top_k=given if given is not None else top_k, deadline=deadline
        )
    else:
        model = _current_info(svc)
    datas = [
        u.data
        for u, o in zip(uploads, outcomes, strict=True)
        if isinstance(u, Upload) and isinstance(o, Image.Image)
    ]
    ids = iter(await _log(svc, "v1/predict/batch", model, ranked, datas, started))
    answers = iter(ranked)
    items: list[BatchPrediction | BatchFailure] = []
    for index, (upload, outcome) in enumerate(zip(uploads, outcomes, strict=True)):
        filename = upload.filename if isinstance(upload, Upload) else None
        if isinstance(outcome, ApiError):
            error = BatchItemFailure(code=outcome.code, message=outcome.message)
            items.append(BatchFailure(index=index, filename=filename, error=error))
            continue
        item = next(answers)
        items.append(
            BatchPrediction(
                index=index,
                filename=filename,
                prediction_id=next(ids),
                label=item.label,
                confidence=item.confidence,
                top_k=_top_k_json(item),
            )
        )
    return BatchResponse(predictions=items, model=model_ref(model), latency_ms=_since_ms(started))


@router.post(
    "/classify",
    response_model=PredictionResponse,
    summary="Open vocabulary: score one image against your own labels",
    responses=ERROR_RESPONSES,
    openapi_extra=_body_doc(ClassifyRequest, ClassifyForm),
)
async def classify(
    request: Request,
    top_k: int | None = _TopK,
    svc: Services = Depends(services),
) -> PredictionResponse:
    """One image and candidate ``labels`` (multipart: ``file``, ``labels`` comma-separated or
    repeated, ``templates`` repeated; or JSON ``{"image_base64", "labels", "templates"}``)."""
    started = time.monotonic()
    settings = svc.settings
    deadline = started + settings.request_timeout_s
    if _content_kind(request) == "json":
        body = await _json_body(request, ClassifyRequest)
        labels = checked_labels(body.labels, settings)
        templates = checked_templates(body.templates, settings)
        upload = Upload(decode_base64(body.image_base64))
        given = body.top_k
    else:
        async with request.form() as form:
            _refuse_url_fields(form.keys())
            raw_labels = [part for value in _form_text(form, "labels") for part in value.split(",")]
            if not raw_labels:
                raise ApiError(422, "invalid_request", "missing 'labels' (comma-separated)")
            labels = checked_labels(raw_labels, settings)
            templates = checked_templates(_form_text(form, "templates"), settings)
            upload = _one_file(await _form_files(form, "file"), "file")
            given = _form_top_k(form)
    image = await _decode_one(upload.data, settings)
    info, ranked = await _predict(
        svc,
        [image],
        top_k=given if given is not None else top_k,
        deadline=deadline,
        labels=labels,
        templates=templates,
    )
    (prediction_id,) = await _log(
        svc, "v1/classify", info, ranked, [upload.data], started, open_vocabulary=True
    )
    item = ranked[0]
    return PredictionResponse(
        prediction_id=prediction_id,
        label=item.label,
        confidence=item.confidence,
        top_k=_top_k_json(item),
        model=model_ref(info),
        latency_ms=_since_ms(started),
    )


def _current_info(svc: Services) -> ModelInfo:
    """The loaded model's info; 503 ``not_ready`` before one is loaded."""
    info = svc.models.info
    if info is None:
        raise ApiError(503, "not_ready", "no model is loaded yet", {"Retry-After": "5"})
    return info


@router.get(
    "/labels",
    response_model=LabelsResponse,
    summary="The served model's class labels",
    responses=error_responses(401, 503),
)
async def labels(svc: Services = Depends(services)) -> LabelsResponse:
    info = _current_info(svc)
    return LabelsResponse(labels=list(info.classes), model=model_ref(info))


@router.get(
    "/model",
    response_model=ModelResponse,
    summary="The served model: manifest, registry version/alias, metrics, format, parity",
    responses=error_responses(401, 503),
)
async def model_info(svc: Services = Depends(services)) -> ModelResponse:
    info = _current_info(svc)
    registry = None
    if info.source.startswith("models:/"):
        registry = RegistryRef(
            uri=info.source, name=info.name, version=info.version, alias=info.alias
        )
    return ModelResponse(
        **ServedModelInfo.of(info).model_dump(), registry=registry, ready=svc.models.ready
    )


@router.get(
    "/model/report",
    # no response_class: FastAPI would then document the JSON errors as text/html too
    summary="The served model's evaluation report (self-contained HTML)",
    responses={
        200: {"content": {"text/html": {}}, "description": "The report of `clip-har evaluate`"},
        **error_responses(401, 404, 503),
    },
)
async def model_report(svc: Services = Depends(services)) -> HTMLResponse:
    """The HTML report of the evaluation served with the model; 404 ``no_evaluation`` when
    the model has no evaluation, or its evaluation folder has no report."""
    info = _current_info(svc)
    evaluation = info.evaluation
    if evaluation is None or evaluation.report_html is None:
        why = "has no evaluation" if evaluation is None else "has an evaluation without a report"
        raise ApiError(
            404,
            "no_evaluation",
            f"model {info.name} version {info.version} {why}: serve it with "
            "--evaluation DIR (a `clip-har evaluate` output of it), or register it with one",
        )
    return HTMLResponse(evaluation.report_html)
