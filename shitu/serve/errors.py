"""Every failure a client can see is one JSON object ``{"error": "..."}``; tracebacks stay in the log."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shitu.errors import IndexBusy, ShituError
from shitu.progress import printable

LOG = logging.getLogger("shitu.serve")


class ApiError(Exception):
    """A refusal with its HTTP status, raised anywhere in the service."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": printable(message)}, status_code=status, headers=headers)


def status_of(exc: ShituError) -> int:
    """409 when another process is writing (worth a retry), else 400: the request itself was wrong."""
    return 409 if isinstance(exc, IndexBusy) else 400


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of problems as one line: ``topk: Input should be a valid integer``."""
    parts = []
    for problem in exc.errors():
        where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI):
    """Map each kind of failure to its status; the catch-all lives in ``CatchAll`` below."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, headers)

    @app.exception_handler(ShituError)
    async def shitu_error(request: Request, exc: ShituError):
        return error_response(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return error_response(400, validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))



class CatchAll:
    """ASGI middleware: a bug anywhere below becomes a logged traceback and a bare 500 JSON answer.

    It sits outside FastAPI's own handlers, so only what none of them handled reaches it, and it logs
    once (Starlette's outermost layer would re-raise to the server and log a second time)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            LOG.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                body = json.dumps({"error": "internal server error; the server log has the details"}).encode()
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
