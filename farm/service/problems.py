"""Errors as RFC 9457 problem details: ``{"type", "title", "status", "detail"}`` with the same
one-line message the CLI prints, and a 4xx for anything a client can cause (a 500 is a bug)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from farm.errors import ConflictError, FarmError, InfrastructureError, InputError, NotFound, QuotaExceeded

log = logging.getLogger("farm.service")
PROBLEM = "application/problem+json"
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          406: "Not Acceptable", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
          415: "Unsupported Media Type", 416: "Range Not Satisfiable", 422: "Unprocessable Content",
          429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str


def problem(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status,
            "detail": " ".join(str(detail).split())[:500]}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


class HTTPProblem(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def status_of(exc: FarmError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, QuotaExceeded):
        return 429
    if isinstance(exc, InfrastructureError):
        return 503
    if isinstance(exc, InputError):
        return 400
    return 400


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPProblem)
    async def _problem(_request: Request, exc: HTTPProblem):
        return problem(exc.status, exc.detail, exc.headers)

    @app.exception_handler(FarmError)
    async def _farm_error(_request: Request, exc: FarmError):
        return problem(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header"))
        return problem(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method the path takes (Starlette names only one route's)
            headers["Allow"] = ", ".join(allowed_methods(app, request))
        return problem(exc.status_code, str(exc.detail), headers or None)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception):  # a bug: logged, answered in one line
        log.exception("internal error")
        return problem(500, f"internal error: {type(exc).__name__}")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def responses(*codes: int) -> dict:
    """OpenAPI entries for the problem answers a route can give."""
    return {code: {"model": Problem, "description": TITLES.get(code, "Error"), "content": {PROBLEM: {}}}
            for code in codes}
