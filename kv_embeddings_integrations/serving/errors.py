"""Errors in two shapes: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` and, on
text-embeddings-inference's routes, TEI's ``{"error": "...", "error_type": "..."}``, each with its
own HTTP status."""

from __future__ import annotations

from typing import Any

# TEI's ErrorType -> HTTP status (router/src/http/server.rs, `impl From<&ErrorType> for StatusCode`).
# TEI serialises the variant names as they are (no serde rename): "Validation", not "validation".
TEI_STATUS = {"Unhealthy": 503, "Backend": 424, "Overloaded": 429, "Validation": 422, "Tokenizer": 422, "Empty": 400}


class APIError(Exception):
    """An error response: what the client did wrong (or why the server cannot serve it now).

    Args:
        status: HTTP status code (OpenAI's shape).
        message: what went wrong and, where the client can act on it, what to do.
        type: OpenAI's error ``type`` (``invalid_request_error``, ``authentication_error``, ...).
        param: the request field at fault (``input``, ``model``, ...), if any.
        code: a stable machine-readable code, if any.
        headers: extra response headers (``Retry-After`` for 429).
        tei_type: TEI's ``error_type`` (a key of :data:`TEI_STATUS`), sent with TEI's status for
            it. None: the one ``status`` implies (429 ``Overloaded``; 5xx ``Backend``, status kept;
            401 ``Unauthorized``, TEI's bare 401 given a body; else ``Validation``, 422).
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
        """TEI's error body (sent with :attr:`tei_status`)."""
        return {"error": self.message, "error_type": self.tei_type}


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
