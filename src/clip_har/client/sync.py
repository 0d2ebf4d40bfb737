""":class:`HARClient`: the blocking Python client of ``clip-har serve``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import httpx

from clip_har.client import calls
from clip_har.client.errors import HARAPIError
from clip_har.client.transport import ClientBase, transport_errors

P = ParamSpec("P")
T = TypeVar("T")


def _method(call: Callable[P, calls.Call[T]]) -> Callable[Concatenate[HARClient, P], T]:
    """The :class:`HARClient` method that sends ``call`` (one of :mod:`clip_har.client.calls`)."""

    def method(self: HARClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(call(*args, **kwargs))

    return calls.client_method(method, call, "HARClient")


def _planned(plan: Callable[P, calls.Plan[T]]) -> Callable[Concatenate[HARClient, P], T]:
    """The :class:`HARClient` method that runs ``plan`` (several calls)."""

    def method(self: HARClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._drive(plan(*args, **kwargs))

    return calls.client_method(method, plan, "HARClient")


class HARClient(ClientBase):
    """Client of a clip-har server at ``url``.

    ``api_key`` defaults to ``$CLIP_HAR_API_KEY`` (sent as ``Authorization: Bearer``).
    Connection failures and 503 answers are retried ``retries`` times with exponential
    ``backoff`` (503: after its ``Retry-After``); API errors raise a
    :class:`~clip_har.client.HARAPIError` subclass. ``http`` injects the ``httpx.Client``
    to use (e.g. Starlette's ``TestClient`` over ``create_app(settings)``); the caller keeps
    owning it and its timeout. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        http: httpx.Client | Any | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff)
        self._owns_http = http is None
        # Any: Starlette's TestClient subclasses httpx2's Client when httpx2 is installed
        self._http = cast(httpx.Client, http) if http is not None else httpx.Client(timeout=timeout)

    def __enter__(self) -> HARClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (an injected ``http`` client stays open: it is the caller's)."""
        if self._owns_http:
            self._http.close()

    def _run(self, call: calls.Call[T]) -> T:
        """Send ``call``, retrying as :class:`RetryPolicy` allows, and read its answer."""
        request = self._request_args(call, self._new_request_id())
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | Exception = self._http.request(**request)
            except transport_errors() as exc:  # of httpx, or httpx2 (Starlette's TestClient)
                outcome = exc
            step = self._next_step(call, outcome, attempt)
            if not isinstance(step, float):
                return call.read(step)
            time.sleep(step)
            attempt += 1

    def _drive(self, plan: calls.Plan[T]) -> T:
        """Run each call ``plan`` yields and send its answer back (an API error is thrown
        into it: the plan handles it or lets it out) until it returns its result."""
        try:
            call = next(plan)
            while True:
                try:
                    answer = self._run(call)
                except HARAPIError as exc:
                    call = plan.throw(exc)
                else:
                    call = plan.send(answer)
        except StopIteration as done:
            result: T = done.value
            return result

    # the API: each method's parameters and docstring are those of its call in calls.py
    predict = _method(calls.predict)
    predict_batch = _planned(calls.predict_batch)
    classify = _method(calls.classify)
    feedback = _method(calls.feedback)
    feedback_stats = _method(calls.feedback_stats)
    labels = _method(calls.labels)
    model_info = _method(calls.model_info)
    model_report = _method(calls.model_report)
    health = _method(calls.health)
    prediction_stats = _method(calls.prediction_stats)
