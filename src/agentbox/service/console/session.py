"""The console's sign-in: the token in an HttpOnly cookie, accepted by the API only when CSRF-safe.

The browser keeps the token in ``agentbox_token`` (HttpOnly: no script reads it; SameSite=Strict: no other
site's page makes the browser send it). That alone would let a cross-site *form post* slip through older
browsers and sibling subdomains, so the API accepts the cookie only together with proof that the request
came from the console's own scripts:

- HTTP: the ``X-Agentbox-CSRF`` header equal to the ``agentbox_csrf`` cookie (double submit). A page of
  another origin can neither read that cookie nor send a custom header without a CORS preflight, which
  the service never grants. A plain form post carries no header and is refused.
- WebSocket (a browser cannot add headers to it): the ``Origin`` header equal to the service's own origin.

An ``Authorization`` header, when present, wins: API clients never depend on cookies.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import cookie_parser
from starlette.types import Scope

from agentbox.service.errors import ApiError

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "TOKEN_COOKIE",
    "cookie_token",
    "new_csrf",
    "same_origin",
]

TOKEN_COOKIE = "agentbox_token"
CSRF_COOKIE = "agentbox_csrf"
CSRF_HEADER = "x-agentbox-csrf"
#: The hidden field of the console's own forms (sign-in, sign-out) carrying the CSRF cookie's value.
CSRF_FIELD = "csrf"


def new_csrf() -> str:
    """A fresh double-submit value."""
    return secrets.token_urlsafe(24)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k == name), None)


def same_origin(headers: Iterable[tuple[bytes, bytes]], scheme: str) -> bool:
    """Whether the ``Origin`` header names the host the request was sent to."""
    headers = list(headers)
    origin, host = _header(headers, b"origin"), _header(headers, b"host")
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    expected = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return parts.scheme == expected and parts.netloc == host


def cookie_token(scope: Scope) -> str | None:
    """The console token of a request that carries the cookie in a CSRF-safe way; None without the cookie.

    A cookie without its CSRF proof is refused (403) rather than ignored, so the console's scripts learn
    why, and a forged request never runs as the signed-in user."""
    raw = scope["headers"]
    cookies = cookie_parser(_header(raw, b"cookie") or "")
    token = cookies.get(TOKEN_COOKIE)
    if not token:
        return None
    if scope["type"] == "websocket":
        if not same_origin(raw, str(scope.get("scheme", "ws"))):
            raise ApiError("forbidden", "a console WebSocket must come from the console's own origin")
        return token
    expected = cookies.get(CSRF_COOKIE, "")
    sent = _header(raw, CSRF_HEADER.encode()) or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(
            "forbidden", f"the console's cookie is accepted only with the {CSRF_HEADER} header (CSRF protection)"
        )
    return token
