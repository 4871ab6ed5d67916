"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lamina.errors import (BackendError, BudgetExceededError, InvalidRequestError, LaminaError, ModelLoadError,
                           SandboxError, SpecError)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 429: "rate_limit_error", 500: "internal_error",
          502: "backend_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_lamina(exc: LaminaError) -> APIError:
    if isinstance(exc, (InvalidRequestError, SpecError)):
        return APIError(400, str(exc))
    if isinstance(exc, BudgetExceededError):
        return APIError(400, str(exc), code="budget_exceeded")
    if isinstance(exc, BackendError):
        return APIError(502, str(exc))
    if isinstance(exc, (ModelLoadError, SandboxError)):
        return APIError(500, str(exc))
    return APIError(400, str(exc))  # a plain LaminaError names what in the request it cannot serve


def from_exception(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, LaminaError):
        return from_lamina(exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}")


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if "input" in first and loc:
        message = f"{param}={first['input']!r}: {message}"
    elif not loc and first.get("type") in ("model_attributes_type", "dict_type"):
        message = "request body must be a JSON object"
    elif first.get("type") == "json_invalid":
        message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', message)}"
    return bad_request(message, param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(LaminaError)
    async def _lamina(_: Request, exc: LaminaError) -> JSONResponse:
        return from_lamina(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return APIError(exc.status_code, message).response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return from_exception(exc).response()
