"""Each API call as data: the HTTP request to send and how to read its answer. The sync and
the async client run the same :class:`Call` objects, so both speak exactly the same API.

Each public function here is one client method: its parameters and docstring are those of
``HARClient.<name>`` and ``AsyncHARClient.<name>`` (:func:`client_method` copies them). Most
return one :class:`Call`; a method that needs several requests (``predict_batch``) is a
:data:`Plan`: a generator that yields each call and gets its answer (or its API error,
thrown in) back, which both clients drive the same way."""

from __future__ import annotations

import base64
import inspect
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from clip_har.client.errors import HARResponseError, PayloadTooLargeError, api_error
from clip_har.client.inputs import ImageInput, encode_image
from clip_har.client.models import (
    BatchFailure,
    BatchItemFailure,
    BatchPrediction,
    BatchResponse,
    FeedbackResponse,
    FeedbackStatsResponse,
    HealthStatus,
    LabelsResponse,
    ModelResponse,
    PredictionResponse,
    PredictionStatsResponse,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})

Files = list[tuple[str, tuple[str, bytes, str]]]

DEFAULT_BATCH_IMAGES = 32
"""Images per batch request at first: the server's default ``max_batch_images``."""
REFUSED_WHOLE = frozenset({"too_many_images", "payload_too_large"})
"""Error codes of a batch refused as a whole for its size: resent in smaller requests."""
_STATED_LIMIT = re.compile(r"the limit is (\d+)")  # in the server's too_many_images message


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request (``path`` below the server URL) and the reader of its answer.

    ``read`` gets every response with a status under 500 and any 503 the retries did not
    absorb; ``retry_unavailable`` is False where a 503 is an answer (readiness)."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    files: Files | None = None
    data: dict[str, Any] | None = None
    retry_unavailable: bool = True

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice does no harm (a reset connection may be retried)."""
        return self.method in IDEMPOTENT


Plan: TypeAlias = Generator[Call[Any], Any, T]
"""Several calls: the generator yields each :class:`Call`, gets back what it reads (an
:class:`~clip_har.client.HARAPIError` is thrown in instead) and returns the result."""


def parsed(model: type[M], *, ok: int = 200) -> Callable[[httpx.Response], M]:
    """A reader: ``model`` from a ``ok`` answer; any other status raises its API error."""

    def read(response: httpx.Response) -> M:
        if response.status_code != ok:
            raise api_error(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise HARResponseError(
                f"{response.request.url}: the answer is not a {model.__name__} "
                f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']}); "
                "is this a clip-har server?"
            ) from None

    return read


def _top_k(top_k: int | None) -> dict[str, Any]:
    return {} if top_k is None else {"top_k": str(top_k)}


def client_method(method: F, call: Callable[..., Call[Any] | Plan[Any]], owner: str) -> F:
    """``method`` (``self`` then the parameters of ``call``) named, documented and signed as
    ``call`` returning what its :class:`Call` (or :data:`Plan`) reads, so ``help()`` shows
    the client's API."""
    signature = inspect.signature(call)
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__name__ = call.__name__
    method.__qualname__ = f"{owner}.{call.__name__}"
    method.__doc__ = call.__doc__
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()],
        return_annotation=re.sub(r"^(?:Call|Plan)\[(.*)\]$", r"\1", signature.return_annotation),
    )
    return method


def predict(image: ImageInput, *, top_k: int | None = 5) -> Call[PredictionResponse]:
    """The predicted action of ``image`` (a path, bytes or a PIL image) and its top-k;
    ``top_k=None``: the server's default (``POST /v1/predict``)."""
    return Call(
        "POST",
        "/v1/predict",
        parsed(PredictionResponse),
        files=[("file", encode_image(image))],
        data=_top_k(top_k),
    )


def batch_call(files: Sequence[tuple[str, bytes, str]], top_k: int | None) -> Call[BatchResponse]:
    """One ``POST /v1/predict/batch`` of encoded images (a repeated ``files`` field)."""
    return Call(
        "POST",
        "/v1/predict/batch",
        parsed(BatchResponse),
        files=[("files", file) for file in files],
        data=_top_k(top_k),
    )


def predict_batch(
    images: Sequence[ImageInput],
    *,
    top_k: int | None = 5,
    progress: Callable[[int, int], None] | None = None,
) -> Plan[BatchResponse]:
    """Predictions of several images, in order, each a
    :class:`~clip_har.client.BatchPrediction` or, for an image the server cannot use, a
    :class:`~clip_har.client.BatchFailure` (the others still run).

    Sent in requests of up to 32 images (``POST /v1/predict/batch``); a request the server
    refuses whole (413 ``too_many_images`` over its ``max_batch_images``, or
    ``payload_too_large``) is resent in smaller ones, down to one image, whose refusal is
    then that image's failure. ``latency_ms`` is the requests' total; ``model`` is that of
    the last answer. Raises the refusal when not one image was taken. ``progress(done,
    total)`` is called after each answer, with the number of images answered so far."""
    if isinstance(images, (str, bytes)) or not images:
        raise TypeError("images must be a non-empty sequence of images")
    files = [encode_image(image, index) for index, image in enumerate(images)]
    most = per_request = DEFAULT_BATCH_IMAGES  # most: within the server's image count limit
    items: list[BatchPrediction | BatchFailure] = []
    answer: BatchResponse | None = None
    refusal: PayloadTooLargeError | None = None
    latency_ms = 0.0
    start = 0
    while start < len(files):
        chunk = files[start : start + per_request]
        try:
            answer = yield batch_call(chunk, top_k)
        except PayloadTooLargeError as exc:
            if exc.code not in REFUSED_WHOLE:
                raise
            if len(chunk) > 1:
                per_request = _fewer_images(len(chunk), exc)
                if exc.code == "too_many_images":
                    most = per_request
                continue
            refusal = exc
            failure = BatchItemFailure(code=exc.code, message=exc.message)
            items.append(BatchFailure(index=start, filename=chunk[0][0], error=failure))
            start += 1
            per_request = most  # the image too big alone is out: full requests again
            if progress is not None:
                progress(start, len(files))
            continue
        assert answer is not None
        latency_ms += answer.latency_ms
        items += [
            item.model_copy(update={"index": start + item.index}) for item in answer.predictions
        ]
        start += len(chunk)
        if progress is not None:
            progress(start, len(files))
    if answer is None:
        assert refusal is not None
        raise refusal
    return BatchResponse(predictions=items, model=answer.model, latency_ms=latency_ms)


def _fewer_images(sent: int, refusal: PayloadTooLargeError) -> int:
    """Images per request after ``sent`` were refused whole: the server's limit where its
    ``too_many_images`` message states it, else half as many."""
    stated = _STATED_LIMIT.search(refusal.message)
    if refusal.code == "too_many_images" and stated and 0 < int(stated[1]) < sent:
        return int(stated[1])
    return max(1, sent // 2)


def classify(
    image: ImageInput,
    labels: Sequence[str],
    *,
    templates: Sequence[str] | None = None,
    top_k: int | None = None,
) -> Call[PredictionResponse]:
    """Open vocabulary: score ``image`` against your own ``labels`` (``templates`` with
    one ``{}`` each; default: the model's prompts). Sent as JSON (``POST /v1/classify``),
    so a label may hold any character, commas too."""
    if isinstance(labels, str):
        raise TypeError("labels must be a sequence of strings, not one string")
    _, data, _ = encode_image(image)
    body: dict[str, Any] = {
        "image_base64": base64.b64encode(data).decode("ascii"),
        "labels": list(labels),
    }
    if templates:
        body["templates"] = list(templates)
    if top_k is not None:
        body["top_k"] = top_k
    return Call("POST", "/v1/classify", parsed(PredictionResponse), json=body)


def feedback(
    prediction_id: str,
    *,
    correct: bool,
    label: str | None = None,
    comment: str | None = None,
) -> Call[FeedbackResponse]:
    """Say whether prediction ``prediction_id`` was right (``label``: the right one,
    needed when it was not); ``POST /v1/feedback``, answered 201 once stored."""
    body: dict[str, Any] = {"prediction_id": prediction_id, "correct": correct}
    if label is not None:
        body["label"] = label
    if comment is not None:
        body["comment"] = comment
    return Call("POST", "/v1/feedback", parsed(FeedbackResponse, ok=201), json=body)


def feedback_stats() -> Call[FeedbackStatsResponse]:
    """Feedback counts and accuracy: overall, by predicted label, by model version."""
    return Call("GET", "/v1/feedback/stats", parsed(FeedbackStatsResponse))


def labels() -> Call[LabelsResponse]:
    """The served model's class labels."""
    return Call("GET", "/v1/labels", parsed(LabelsResponse))


def model_info() -> Call[ModelResponse]:
    """The served model: manifest, version, alias, format, metrics and parity."""
    return Call("GET", "/v1/model", parsed(ModelResponse))


def model_report() -> Call[str]:
    """The HTML report of the served model's evaluation; raises
    :class:`~clip_har.client.NotFoundError` (code ``no_evaluation``) when it has none."""

    def read(response: httpx.Response) -> str:
        if response.status_code != 200:
            raise api_error(response)
        return response.text

    return Call("GET", "/v1/model/report", read)


def prediction_stats(
    hours: float = 24, bucket_minutes: int = 60, *, model_version: str | None = None
) -> Call[PredictionStatsResponse]:
    """Predictions of the last ``hours`` hours, overall and per ``bucket_minutes``."""
    params: dict[str, Any] = {"hours": hours, "bucket_minutes": bucket_minutes}
    if model_version is not None:
        params["model_version"] = model_version
    return Call("GET", "/v1/stats/predictions", parsed(PredictionStatsResponse), params=params)


def health() -> Call[HealthStatus]:
    """Readiness; a server that is not ready is an answer, not an error (``GET /readyz``:
    its 503 is never retried). A server that cannot be reached raises
    :class:`~clip_har.client.HARConnectionError`."""

    def read(response: httpx.Response) -> HealthStatus:
        if response.status_code not in (200, 503):
            raise api_error(response)
        try:
            body = response.json()
            return HealthStatus(
                ready=response.status_code == 200 and bool(body.get("ready")),
                status=str(body.get("status", "unknown")),
                model=body.get("model"),
                version=body.get("version"),
            )
        except (ValueError, AttributeError, ValidationError):
            if response.status_code == 503:  # a proxy's 503 page: no server behind it
                raise api_error(response) from None
            raise HARResponseError(
                f"{response.request.url}: the readiness answer is not JSON; "
                "is this a clip-har server?"
            ) from None

    return Call("GET", "/readyz", read, retry_unavailable=False)
