"""The console's routes: sign-in and sign-out, the pages, and the static assets."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from agentbox import __version__
from agentbox.service.auth import digest
from agentbox.service.console.session import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    TOKEN_COOKIE,
    new_csrf,
    same_origin,
)
from agentbox.service.store import TokenRow

__all__ = ["console_routes"]

HERE = Path(__file__).parent
#: Longest sign-in form body read (a token is ~50 bytes).
_MAX_FORM = 4096
# What the pages may load and talk to: only the service itself (no CDN, no inline script, no framing).
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_templates = Jinja2Templates(directory=str(HERE / "templates"))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _csrf(request: Request) -> str:
    return request.cookies.get(CSRF_COOKIE) or new_csrf()


def _page(request: Request, name: str, who: TokenRow | None, status: int = 200, **context: Any) -> Response:
    csrf = _csrf(request)
    response = _templates.TemplateResponse(
        request, name, {"who": who, "csrf": csrf, "csrf_header": CSRF_HEADER, "version": __version__, **context},
        status_code=status,
    )
    if request.cookies.get(CSRF_COOKIE) != csrf:
        # Readable by the console's scripts (they echo it in the header), never sent cross-site.
        response.set_cookie(CSRF_COOKIE, csrf, httponly=False, samesite="strict", secure=_secure(request), path="/")
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


async def _signed_in(request: Request) -> TokenRow | None:
    """The live token of the console cookie, or None."""
    token = request.cookies.get(TOKEN_COOKIE)
    if not token:
        return None
    store = request.app.state.service.store
    row: TokenRow | None = await store.run(store.token_by_digest, digest(token))
    return row


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def _form_is_ours(request: Request, form: dict[str, str]) -> bool:
    """A console form post: the CSRF field equals the cookie, and the Origin (when sent) is ours."""
    expected = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return False
    headers = request.scope["headers"]
    has_origin = any(k == b"origin" for k, _ in headers)
    return not has_origin or same_origin(headers, request.url.scheme)


def _to_signin(request: Request) -> Response:
    target = request.url.path
    return RedirectResponse(f"/signin?next={target}" if target != "/" else "/signin", status_code=303)


def _next(value: str | None) -> str:
    """Where to go after sign-in: a path of this console only (never an open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or urlsplit(value).netloc:
        return "/"
    return value


async def signin_form(request: Request) -> Response:
    """The sign-in page."""
    return _page(request, "signin.html", None, next=_next(request.query_params.get("next")))


async def signin(request: Request) -> Response:
    """Check the token and keep it in the HttpOnly cookie."""
    form = await _form(request)
    next_path = _next(form.get("next"))
    if not _form_is_ours(request, form):
        return _page(request, "signin.html", None, status=403, next=next_path,
                     error="This sign-in form expired or came from another site; please try again.")
    token = form.get("token", "").strip()
    store = request.app.state.service.store
    row = await store.run(store.token_by_digest, digest(token)) if token else None
    if row is None:
        return _page(request, "signin.html", None, status=401, next=next_path,
                     error="Unknown or revoked token.")
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/")
    return response


async def signout(request: Request) -> Response:
    """Forget the cookie (a form post with the CSRF field: no other site can sign the user out)."""
    form = await _form(request)
    if not _form_is_ours(request, form):
        return Response("sign-out refused: missing CSRF field", status_code=403, media_type="text/plain")
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/", samesite="strict")
    return response


def _view(template: str, *, admin: bool = False) -> Any:
    async def page(request: Request) -> Response:
        who = await _signed_in(request)
        if who is None:
            return _to_signin(request)
        if admin and not who.admin:
            return _page(request, "forbidden.html", who, status=403)
        return _page(request, template, who, sandbox_id=request.path_params.get("id"))

    page.__doc__ = f"The {template} page."
    return page


def console_routes() -> list[BaseRoute]:
    """Every console route, for a ``Mount("/")`` behind the API routes."""
    return [
        Route("/", _view("list.html"), methods=["GET"]),
        Route("/new", _view("new.html"), methods=["GET"]),
        Route("/sandboxes/{id}", _view("sandbox.html"), methods=["GET"]),
        Route("/admin", _view("admin.html", admin=True), methods=["GET"]),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
