"""Typed routes on plain Starlette: pydantic-validated bodies and queries, JSON answers, an OpenAPI schema.

Why not FastAPI: importing it costs ~0.27 s on the 2-core machines sandboxes run on, nearly the whole
0.3 s budget from exec to ready line. What the server needs from it is small and lives here: validate the
body (or query) of a route with a wire model from :mod:`agentbox.protocol`, turn a validation failure into
a 4xx ``{code, message}`` that names the bad field, serialise the answer, and describe all of it as
OpenAPI 3.1 (built only when ``/openapi.json`` is first asked for).

This is the one validation layer: what the wire types of :mod:`agentbox.protocol` refuse never reaches a
service, and every refusal becomes a :class:`~agentbox.errors.BadRequestError` here (422 naming the field,
400 for a body that is not JSON, 413 for a body over the size limit, 405 with ``Allow`` for a method a
declared path does not have).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentbox.errors import BadRequestError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Endpoint", "TypedRouter", "json_response", "request_error"]

Handler = Callable[..., Awaitable[Any]]

#: Largest JSON request body: bigger payloads belong on the streamed raw endpoints.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """A JSON response for a wire model (pydantic-core serialises it; no stdlib json round trip)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def request_error(exc: ValidationError, where: str) -> BadRequestError:
    """A 4xx error saying which field of the request was wrong and why."""
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return BadRequestError(f"request {where} is not valid JSON: {errors[0]['msg']}", code="bad_request")
    parts = []
    for e in errors[:10]:
        loc = ".".join(str(p) for p in e["loc"]) or where
        # The offending input may be megabytes, or unprintable: name the field, quote at most a little.
        parts.append(f"{loc}: {e['msg']}"[:300])
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return BadRequestError(f"invalid request {where}: {'; '.join(parts)}{more}", code="validation_error")


@dataclasses.dataclass
class Endpoint:
    """One route: how to parse its input and what it answers."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: Any = None
    query: type[BaseModel] | None = None
    response: Any = None
    content_type: str | tuple[str, ...] = "application/json"
    raw_body: bool = False
    _adapter: TypeAdapter[Any] | None = dataclasses.field(default=None, repr=False)

    def body_adapter(self) -> TypeAdapter[Any]:
        """The validator of the body, built on first use: startup time is precious."""
        if self._adapter is None:
            self._adapter = TypeAdapter(self.body)
        return self._adapter

    def warm_up(self) -> None:
        """Build now what this endpoint's first request would build: its body's validator and its
        answer's serializer (pydantic builds both on first use, see ``defer_build`` in the protocol)."""
        if self.body is not None:
            self.body_adapter()
        for model in (self.body, self.query, self.response):
            if isinstance(model, type) and issubclass(model, BaseModel) and not model.__pydantic_complete__:
                model.model_rebuild()


def _body_error(adapter: TypeAdapter[Any], raw: bytes, exc: ValidationError) -> BadRequestError:
    """The error for a body that failed validation, naming the field even for a lone surrogate.

    JSON may spell a lone surrogate ("\\ud800"), which pydantic's parser rejects as invalid JSON without
    saying where. The stdlib parser accepts it, so on that error path only the body is parsed again to
    let the wire types say which field holds it.
    """
    if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return request_error(exc, "body")
        try:
            adapter.validate_python(data)
        except ValidationError as second:
            return request_error(second, "body")
    return request_error(exc, "body")


def body_too_large(limit: int) -> BadRequestError:
    """The 413 error for a JSON body over ``limit`` bytes."""
    return BadRequestError(
        f"request body is larger than {limit} bytes; send large files with PUT /files/upload and read them "
        "with GET /files/download (raw bytes, streamed)",
        code="payload_too_large",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class TypedRouter:
    """Collects typed endpoints, then serves them as Starlette routes and as an OpenAPI document."""

    def __init__(self, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.endpoints: list[Endpoint] = []
        self.max_body_bytes = max_body_bytes

    def route(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: type[BaseModel] | None = None,
        response: Any = None,
        content_type: str | tuple[str, ...] = "application/json",
        raw_body: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Register ``handler(request, [body=...], [query=...])``; its docstring's first line is the summary.

        ``body`` is a wire type (model or discriminated union) parsed from the JSON body; ``query`` a model
        filled from the query string; ``response`` the wire type answered (None: the handler returns a
        Starlette Response itself, described by ``content_type``: one media type, or every one it may
        answer with).
        """

        def register(handler: Handler) -> Handler:
            summary = (handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else path
            self.endpoints.append(
                Endpoint(
                    method=method,
                    path=path,
                    handler=handler,
                    summary=summary,
                    body=body,
                    query=query,
                    response=response,
                    content_type=content_type,
                    raw_body=raw_body,
                )
            )
            return handler

        return register

    def routes(self) -> list[Route]:
        """One Starlette route per path, dispatching on the method.

        One route per path (not per endpoint) so that a method the path lacks is a 405 whose ``Allow``
        lists every method it has; Starlette would otherwise answer from the first route that matched
        the path. HEAD is not added for GET: the API declares no HEAD, so it is a 405 too.
        """
        by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
        for ep in self.endpoints:
            by_path.setdefault(ep.path, {})[ep.method] = self._endpoint(ep)
        routes = []
        for path, handlers in by_path.items():
            route = Route(path, _dispatcher(handlers), methods=list(handlers), name=path)
            route.methods = set(handlers)
            routes.append(route)
        return routes

    def _endpoint(self, ep: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        query, handler, limit = ep.query, ep.handler, self.max_body_bytes

        async def endpoint(request: Request) -> Response:
            kwargs: dict[str, Any] = {}
            if ep.body is not None:
                adapter = ep.body_adapter()
                raw = await read_body(request, limit)
                try:
                    kwargs["body"] = adapter.validate_json(raw or b"{}")
                except ValidationError as exc:
                    raise _body_error(adapter, raw, exc) from None
            if query is not None:
                try:
                    kwargs["query"] = query.model_validate(dict(request.query_params), context={"query": True})
                except ValidationError as exc:
                    raise request_error(exc, "query") from None
            result = await handler(request, **kwargs)
            return result if isinstance(result, Response) else json_response(result)

        return endpoint

    def warm_up(self, *paths: str) -> None:
        """Build ahead of time what the first request to each of ``paths`` (every method) would."""
        for ep in self.endpoints:
            if ep.path in paths:
                ep.warm_up()

    def openapi(self, *, title: str, version: str, error_model: type[BaseModel]) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every endpoint."""
        components: dict[str, Any] = {}

        def schema_of(tp: Any) -> dict[str, Any]:
            schema = TypeAdapter(tp).json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            name = schema.get("title")
            if isinstance(tp, type) and issubclass(tp, BaseModel) and name:
                components[name] = schema
                return {"$ref": f"#/components/schemas/{name}"}
            return schema

        error_ref = schema_of(error_model)
        paths: dict[str, Any] = {}
        for ep in self.endpoints:
            op: dict[str, Any] = {"summary": ep.summary, "operationId": ep.handler.__name__}
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", ep.path)
            ]
            if ep.query is not None:
                # From the model's own schema, so each parameter keeps its constraints (minimum, pattern...).
                properties = ep.query.model_json_schema()["properties"]
                for name, field in ep.query.model_fields.items():
                    schema = {k: v for k, v in properties[name].items() if k not in ("title", "description")}
                    params.append(
                        {
                            "name": name,
                            "in": "query",
                            "required": field.is_required(),
                            "description": field.description or "",
                            "schema": schema,
                        }
                    )
            if params:
                op["parameters"] = params
            if ep.body is not None:
                body_schema = schema_of(ep.body)
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
            elif ep.raw_body:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                }
            ok = {"schema": schema_of(ep.response)} if ep.response is not None else {}
            types = (ep.content_type,) if isinstance(ep.content_type, str) else ep.content_type
            op["responses"] = {
                "200": {"description": "OK", "content": {t: ok for t in types}},
                "default": {"description": "Error", "content": {"application/json": {"schema": error_ref}}},
            }
            if ep.path != "/alive":
                op["security"] = [{"SessionApiKey": []}]
            paths.setdefault(ep.path, {})[ep.method.lower()] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version},
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {"SessionApiKey": {"type": "apiKey", "in": "header", "name": "X-Session-API-Key"}},
            },
        }


def _dispatcher(
    handlers: dict[str, Callable[[Request], Awaitable[Response]]],
) -> Callable[[Request], Awaitable[Response]]:
    async def dispatch(request: Request) -> Response:
        # Starlette answered 405 already for any method not in ``handlers``.
        return await handlers[request.method](request)

    return dispatch
