"""API keys: read once at app creation, compared in constant time, never logged.

A key travels as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. With no API key
configured the API is open; admin routes need an admin key and are off (403
``admin_disabled``) when none is configured. An admin key also opens every API route.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from clip_har.errors import ApiError
from clip_har.serving.errors import request_id
from clip_har.serving.settings import ServeSettings

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: KEY`")


def _digest(key: bytes) -> bytes:
    # comparing fixed-size digests hides the keys' lengths as well as their contents
    return hashlib.sha256(key).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys (as SHA-256 digests) and which routes they guard."""

    api: tuple[bytes, ...]
    admin: tuple[bytes, ...]
    protect_health: bool = False
    protect_metrics: bool = False

    @classmethod
    def from_keys(
        cls,
        api: list[str],
        admin: list[str],
        *,
        protect_health: bool = False,
        protect_metrics: bool = False,
    ) -> ApiKeys:
        return cls(
            api=tuple(_digest(key.encode()) for key in api),
            admin=tuple(_digest(key.encode()) for key in admin),
            protect_health=protect_health,
            protect_metrics=protect_metrics,
        )

    @property
    def api_open(self) -> bool:
        """No API key configured: the API routes need none."""
        return not self.api

    def is_api_key(self, given: bytes) -> bool:
        """``given`` is an API key or an admin key (every key is compared)."""
        return _matches(given, self.api + self.admin)

    def is_admin_key(self, given: bytes) -> bool:
        """``given`` is an admin key (every admin key is compared)."""
        return _matches(given, self.admin)


def _matches(given: bytes, digests: tuple[bytes, ...]) -> bool:
    """Constant-time membership: every digest is compared, whatever matched before."""
    probe = _digest(given)
    found = False
    for digest in digests:
        found |= hmac.compare_digest(probe, digest)
    return found


def load_keys(settings: ServeSettings) -> ApiKeys:
    """The keys of ``settings`` (environment and key files), read now; ``create_app`` stores
    the result at ``app.state.api_keys``."""
    keys = ApiKeys.from_keys(
        settings.keys(admin=False),
        settings.keys(admin=True),
        protect_health=settings.protect_health,
        protect_metrics=settings.protect_metrics,
    )
    logger.info(
        "API keys: %d api, %d admin%s%s",
        len(keys.api),
        len(keys.admin),
        "; health protected" if keys.protect_health else "",
        "; metrics protected" if keys.protect_metrics else "",
    )
    return keys


def keys_for(request: Request) -> ApiKeys:
    """The keys of the app serving ``request`` (loaded from its settings on first use when
    the app factory did not store them)."""
    state = request.app.state
    keys: ApiKeys | None = getattr(state, "api_keys", None)
    if keys is None:
        keys = load_keys(state.services.settings)
        state.api_keys = keys
    return keys


def _given_key(bearer: HTTPAuthorizationCredentials | None, header_key: str | None) -> bytes | None:
    value = bearer.credentials if bearer is not None else header_key
    if not value:
        return None
    # header values arrive as latin-1 text: back to their raw bytes
    return value.strip().encode("latin-1", errors="replace")


def _unauthorized(request: Request, given: bytes | None) -> ApiError:
    reason = "missing API key" if given is None else "invalid API key"
    logger.info("request %s: %s on %s", request_id(request), reason, request.url.path)
    return ApiError(
        401,
        "unauthorized",
        f"{reason}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
        {"WWW-Authenticate": "Bearer"},
    )


def _check_api_key(request: Request, given: bytes | None) -> None:
    keys = keys_for(request)
    if keys.api_open:
        return
    if given is None or not keys.is_api_key(given):
        raise _unauthorized(request, given)


async def require_api_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    header_key: str | None = Security(_api_key_header),
) -> None:
    """Dependency of the /v1 and /v2 routes: a valid API (or admin) key, when keys are set."""
    _check_api_key(request, _given_key(bearer, header_key))


async def require_admin_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    header_key: str | None = Security(_api_key_header),
) -> None:
    """Dependency of the admin routes: an admin key (403 ``admin_disabled`` when no admin key
    is configured, 401 when missing or unknown, 403 ``forbidden`` for a plain API key)."""
    keys = keys_for(request)
    if not keys.admin:
        raise ApiError(
            403,
            "admin_disabled",
            "admin routes are disabled: no admin key is configured "
            "(set CLIP_HAR_SERVE_ADMIN_API_KEYS or CLIP_HAR_SERVE_ADMIN_API_KEYS_FILE)",
        )
    given = _given_key(bearer, header_key)
    if given is not None and keys.is_admin_key(given):
        return
    if given is not None and keys.api and _matches(given, keys.api):
        logger.info("request %s: API key on admin route %s", request_id(request), request.url.path)
        raise ApiError(403, "forbidden", "this route needs an admin key, not an API key")
    raise _unauthorized(request, given)


async def require_health_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    header_key: str | None = Security(_api_key_header),
) -> None:
    """Dependency of the health routes: open unless ``protect_health`` (then an API key)."""
    if keys_for(request).protect_health:
        _check_api_key(request, _given_key(bearer, header_key))


async def require_metrics_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    header_key: str | None = Security(_api_key_header),
) -> None:
    """Dependency of /metrics: open unless ``protect_metrics`` (then an API key)."""
    if keys_for(request).protect_metrics:
        _check_api_key(request, _given_key(bearer, header_key))
