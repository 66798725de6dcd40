"""One error shape for every route: `{"error": {"message", "type", "param", "code"}}` (OpenAI's), with the status
that fits (4xx for client mistakes, 503 + Retry-After when a queue is full, 504 on a timeout).

The legacy `POST /predict` keeps FastAPI's `{"detail": ...}` (the README documents it).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from luban.errors import LubanError

LEGACY = ("/predict",)

# exceptions a predictor raises on inputs it cannot use (besides LubanError): answered 422, never 500
INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeError, AttributeError)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> ApiError:
    return ApiError(status, message, "invalid_request_error", param, code)


def overloaded(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(503, message, "overloaded", None, "queue_full", {"Retry-After": str(max(1, retry_after))})


def client_error(e: BaseException, param: str | None = None) -> ApiError:
    """A predictor's refusal of an input (a LubanError or one of INPUT_ERRORS) as the 422 the client gets."""
    if isinstance(e, LubanError):
        return ApiError(422, str(e), "invalid_request_error", param, "invalid_input")
    return ApiError(422, f"the model could not use this input ({type(e).__name__}: {e})", "invalid_request_error",
                    param, "invalid_input")


def _legacy(request: Request) -> bool:
    return request.url.path in LEGACY


def _openai(request: Request) -> bool:
    return request.url.path.rstrip("/") in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")


async def api_error_handler(request: Request, exc: ApiError):
    if _legacy(request):
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)
    return exc.response()


async def validation_error_handler(request: Request, exc: RequestValidationError):
    """A body that does not match the schema: 400 on the OpenAI routes (as OpenAI answers), 422 elsewhere."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        message, param = "the request body is not valid JSON", None
    else:
        message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    if _legacy(request):
        return JSONResponse({"detail": message}, status_code=422)
    return ApiError(400 if _openai(request) else 422, message, "invalid_request_error", param,
                    first.get("type")).response()


async def http_error_handler(request: Request, exc: StarletteHTTPException):
    """404 for unknown routes, 405 for a wrong method, ... in the same JSON shape."""
    if _legacy(request):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    kind = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}
    return ApiError(exc.status_code, str(exc.detail), kind.get(exc.status_code, "invalid_request_error"),
                    headers=dict(exc.headers or {})).response()


def install(app) -> None:
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
