"""Errors on the wire, in two shapes: OpenAI's ``{"error": {"message", "type", "param", "code"}}``
and, on text-embeddings-inference's routes, TEI's ``{"error": "...", "error_type": "..."}``, each
with its own HTTP status; and the one table that gives the engine's refusals theirs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import EmptyInput, InputTooLong, InvalidInput, Overloaded, ServingError, TooManyInputs, Unsupported

# TEI's ErrorType -> HTTP status (router/src/http/server.rs, `impl From<&ErrorType> for StatusCode`).
# TEI serialises the variant names as they are (no serde rename): "Validation", not "validation".
TEI_STATUS = {"Unhealthy": 503, "Backend": 424, "Overloaded": 429, "Validation": 422, "Tokenizer": 422, "Empty": 400}

# Each engine refusal's OpenAI status and error type, and TEI's error_type (its status from
# TEI_STATUS); the nearest class listed wins, so a subclass answers as its parent unless listed.
HTTP_FORMS: dict[type[ServingError], tuple[int, str, str]] = {
    ServingError: (400, "invalid_request_error", "Validation"),
    InvalidInput: (400, "invalid_request_error", "Validation"),
    EmptyInput: (400, "invalid_request_error", "Empty"),
    TooManyInputs: (413, "invalid_request_error", "Validation"),
    InputTooLong: (400, "invalid_request_error", "Validation"),
    Unsupported: (400, "invalid_request_error", "Backend"),  # TEI: a Backend error (424), OpenAI has none
    Overloaded: (429, "rate_limit_error", "Overloaded"),
}


class APIError(Exception):
    """An error response: what the client did wrong (or why the server cannot serve it now).

    Args:
        status: HTTP status code (OpenAI's shape).
        message: what went wrong and, where the client can act on it, what to do.
        type: OpenAI's error ``type`` (``invalid_request_error``, ``authentication_error``, ...).
        param: the request field at fault (``input``, ``model``, ...), if any.
        code: a stable machine-readable code, if any.
        headers: extra response headers (``Retry-After`` for 429).
        tei_type: TEI's ``error_type`` (a key of
            ``TEI_STATUS``), sent with TEI's status for it. None: the one ``status`` implies (429
            ``Overloaded``; 5xx ``Backend``, status kept; 401 ``Unauthorized``, TEI's bare 401 given
            a body; else ``Validation``, 422).
        tei_status: the status on TEI's routes, if not the one above (for the refusals TEI's
            HTTP framework answers itself: a body over the limit is 413 there, bad JSON 400).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        tei_type: str | None = None,
        tei_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        implied_type, implied_status = (tei_type, TEI_STATUS[tei_type]) if tei_type else _tei_error_of(status)
        self.tei_type = implied_type
        self.tei_status = tei_status or implied_status

    def body(self) -> dict[str, Any]:
        """OpenAI's error body."""
        return error_body(self.message, self.type, self.param, self.code)

    def tei_body(self) -> dict[str, Any]:
        """TEI's error body (sent with ``tei_status``)."""
        return {"error": self.message, "error_type": self.tei_type}


def as_api_error(error: ServingError) -> APIError:
    """``error`` as the server answers it (see ``HTTP_FORMS``)."""
    status, kind, tei_type = next(HTTP_FORMS[c] for c in type(error).__mro__ if c in HTTP_FORMS)
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Overloaded) else None
    return APIError(
        status, error.message, type=kind, param=error.param, code=error.code, headers=headers, tei_type=tei_type
    )


def _tei_error_of(status: int) -> tuple[str, int]:
    """TEI's ``error_type`` and status for an error this server gives ``status`` in OpenAI's shape."""
    if status == 429:
        return "Overloaded", 429
    if status >= 500:
        return "Backend", status  # an unexpected failure stays a 5xx (TEI's 424 is a model's failure)
    if status == 401:
        return "Unauthorized", 401  # TEI answers a bad key with a bare 401, no ErrorType: this names it
    return "Validation", TEI_STATUS["Validation"]  # TEI's 422 for what it cannot accept


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def first_problem(problems: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[str], str]:
    """The first of pydantic's ``errors()``, as the messages name it: its type, where it is (the
    parts of its ``loc``, FastAPI's ``body`` left out) and its message (pydantic's
    ``Value error,`` prefix left out)."""
    first = problems[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    return first.get("type"), location, str(first.get("msg", "invalid value")).removeprefix("Value error, ")


def invalid_request(problems: Sequence[Mapping[str, Any]]) -> APIError:
    """The first problem of a request that did not parse or validate (its ``errors()``), as one
    clear message: a 400 (OpenAI's shape), on TEI's routes a 422 ``Validation`` (axum's status for
    a body that does not fit TEI's types; a body that is not JSON at all is its 400)."""
    if not problems:
        return APIError(400, "invalid request body")
    kind, location, message = first_problem(problems)
    if kind == "json_invalid":
        detail = problems[0].get("msg", "")
        return APIError(400, f"the request body is not valid JSON ({detail}); send a JSON object", tei_status=400)
    if kind == "missing":
        message = f"'{'.'.join(location) if location else 'body'}' is required"
    elif kind in ("model_attributes_type", "dict_type") and not location:
        message = "the request body must be a JSON object, sent with 'Content-Type: application/json'"
    elif location and not message.startswith("'"):
        message = f"'{'.'.join(location)}': {message}"
    return APIError(400, message, param=location[0] if location else None)
