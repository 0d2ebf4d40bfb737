""":class:`AsyncHARClient`: the asyncio (and trio) Python client of ``clip-har serve``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import httpx

from clip_har.client import calls
from clip_har.client.errors import HARAPIError
from clip_har.client.transport import ClientBase, transport_errors

P = ParamSpec("P")
T = TypeVar("T")


def _method(
    call: Callable[P, calls.Call[T]],
) -> Callable[Concatenate[AsyncHARClient, P], Coroutine[Any, Any, T]]:
    """The :class:`AsyncHARClient` method that sends ``call`` (one of
    :mod:`clip_har.client.calls`)."""

    async def method(self: AsyncHARClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(call(*args, **kwargs))

    return calls.client_method(method, call, "AsyncHARClient")


def _planned(
    plan: Callable[P, calls.Plan[T]],
) -> Callable[Concatenate[AsyncHARClient, P], Coroutine[Any, Any, T]]:
    """The :class:`AsyncHARClient` method that runs ``plan`` (several calls)."""

    async def method(self: AsyncHARClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._drive(plan(*args, **kwargs))

    return calls.client_method(method, plan, "AsyncHARClient")


class AsyncHARClient(ClientBase):
    """Async client of a clip-har server at ``url``: the methods of
    :class:`~clip_har.client.HARClient`, awaited.

    Its options are those of ``HARClient`` (key, timeout, retries, backoff), except that
    ``http`` injects the ``httpx.AsyncClient`` to use (e.g. one over
    ``httpx.ASGITransport(app)``); the caller keeps owning it and its timeout. Use it as an
    async context manager, or await :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff)
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> AsyncHARClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections (an injected ``http`` client stays open: it is the caller's)."""
        if self._owns_http:
            await self._http.aclose()

    aclose = close  # the httpx spelling

    async def _run(self, call: calls.Call[T]) -> T:
        """Send ``call``, retrying as :class:`RetryPolicy` allows, and read its answer."""
        request = self._request_args(call, self._new_request_id())
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | Exception = await self._http.request(**request)
            except transport_errors() as exc:  # of httpx, or httpx2 (Starlette's TestClient)
                outcome = exc
            step = self._next_step(call, outcome, attempt)
            if not isinstance(step, float):
                return call.read(step)
            await anyio.sleep(step)
            attempt += 1

    async def _drive(self, plan: calls.Plan[T]) -> T:
        """Run each call ``plan`` yields and send its answer back (an API error is thrown
        into it: the plan handles it or lets it out) until it returns its result."""
        try:
            call = next(plan)
            while True:
                try:
                    answer = await self._run(call)
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
