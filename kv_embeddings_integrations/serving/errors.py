"""What the serving engine refuses, and why, in its own terms: no protocol, no status.

The web layer gives each class its statuses and error shapes, OpenAI's and TEI's, in one table
(``HTTP_FORMS``).
"""

from __future__ import annotations


class ServingError(Exception):
    """A request the engine will not serve.

    Args:
        message: what went wrong and, where the client can act on it, what to do.
        param: the request field at fault (``input``, ``inputs``, ``model``, ...), if any.
        code: a stable machine-readable reason, if any (else the class's own).
    """

    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or type(self).code


class InvalidInput(ServingError):
    """A request that cannot be taken as it is: a bad value, an unknown name, a token id outside
    the vocabulary, an option this server's vectors do not allow."""


class EmptyInput(InvalidInput):
    """Nothing to embed: an empty batch, an empty text, an empty array of token ids (TEI's
    ``Empty``, apart from its other refusals)."""


class TooManyInputs(InvalidInput):
    """More inputs in one request than ``--max-client-batch-size``."""

    code = "too_many_inputs"


class InputTooLong(InvalidInput):
    """A text longer than the model's ``max_length`` in a request that asked not to truncate."""

    code = "input_too_long"


class Unsupported(ServingError):
    """What this model cannot do, whatever the request (sparse vectors without its LM head; a
    classifier's or a re-ranker's work)."""


class Overloaded(ServingError):
    """Too many requests admitted already; the client may retry.

    Args:
        message: what went wrong, with the limit.
        retry_after: seconds the client should wait before retrying.
    """

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
