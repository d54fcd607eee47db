"""Errors in the OpenAI shape (``{"error": {message, type, param, code}}``).

A 500 says only that something failed: its exception (class, message, traceback) goes to the
server log, since it can name paths and internals that are no business of the client's.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import schemas as s

log = logging.getLogger(__name__)


INTERNAL_ERROR = "internal error; the server log has the details"


class APIError(Exception):
    """An error answered in the OpenAI shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = (
            status,
            message,
            type_,
            param,
            code,
            headers,
        )

    @classmethod
    def internal(cls) -> APIError:
        """The one 500 answer (log the exception before raising or sending it)."""
        return cls(500, INTERNAL_ERROR, "server_error")

    def response(self) -> JSONResponse:
        return JSONResponse(
            s.error_body(self.message, self.type, self.param, self.code), self.status, headers=self.headers
        )


TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}  # pydantic's names for union members


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first invalid field as (message, param).

    e.g. ("max_tokens: Input should be a valid integer", "max_tokens")
    """
    # a value error (a string of the right type holding a lone surrogate) says more than the type
    # mismatches of the other members of its union, so it comes first
    errors = sorted(exc.errors(), key=lambda e: str(e.get("type", "")).endswith("_type"))
    if errors[0].get("type") == "json_invalid":
        return (
            f"the request body is not valid JSON: {errors[0].get('ctx', {}).get('error', errors[0].get('msg'))}",
            None,
        )

    def param(err: dict) -> str:
        # drop "body" and the union member tags pydantic inserts, such as "str" or "list[int]"
        parts = [str(p) for p in err.get("loc", ()) if p != "body"]
        return ".".join(p for p in parts if p not in TYPE_TAGS and "[" not in p and "-" not in p)

    first = param(errors[0])
    if not first:
        return "the request body must be a JSON object (with Content-Type: application/json)", None
    messages = list(dict.fromkeys(e.get("msg", "") for e in errors if param(e) == first))  # a union: every option
    return f"{first}: {' or '.join(messages[:4])}", first


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's (404, 405, validation, crash), leaves in the OpenAI shape."""

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return APIError(
            exc.status_code,
            f"{exc.detail}: {request.method} {request.url.path}",
            code=code,
            headers=getattr(exc, "headers", None),
        ).response()

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return APIError.internal().response()
