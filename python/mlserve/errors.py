"""The one exception hierarchy of mlserve.

Raised by the C++ core (the bindings translate each core error code to exactly one of these
classes) and by Python code alike. Each class carries the HTTP status the server maps it to, so
the HTTP layer maps the base class once. Messages say what was wrong and what to do.
"""

from __future__ import annotations


class MlserveError(Exception):
    """Base class of every error mlserve raises on purpose."""

    #: HTTP status the server answers with.
    http_status: int = 500
    #: Stable code shared with the C++ core (``mlserve::ErrorCode``).
    code: str = "internal"


class InvalidInput(MlserveError, ValueError):
    """The caller sent something wrong: bad plan, bad shape/dtype, too many rows..."""

    http_status = 400
    code = "invalid_input"


class ModelNotFound(MlserveError, LookupError):
    """No model (or version) by that name is loaded or registered."""

    http_status = 404
    code = "model_not_found"


class DefinitionNotFound(MlserveError, LookupError):
    """No feature store entity, feature view or service by that name (or version)."""

    http_status = 404
    code = "definition_not_found"


class QueueFull(MlserveError):
    """The request queue is at ``max_queue_size``; retry later."""

    http_status = 429
    code = "queue_full"


class Overloaded(QueueFull):
    """Alias family for load-shedding refusals other than a full queue."""

    code = "overloaded"


class DeadlineExceeded(MlserveError, TimeoutError):
    """The request's timeout passed before it was executed; it was never run."""

    http_status = 504
    code = "deadline_exceeded"


class Unavailable(MlserveError):
    """The component cannot serve now: shutting down, no GPU, not built with CUDA..."""

    http_status = 503
    code = "unavailable"


class InternalError(MlserveError):
    """A bug or a backend failure; the message carries the backend's own message."""

    http_status = 500
    code = "internal"


#: Core error codes (``mlserve::ErrorCode`` in csrc/common/error.h, same order) to classes.
BY_CODE: tuple[type[MlserveError], ...] = (
    InvalidInput,
    ModelNotFound,
    QueueFull,
    DeadlineExceeded,
    Unavailable,
    InternalError,
)

__all__ = [
    "BY_CODE",
    "DeadlineExceeded",
    "DefinitionNotFound",
    "InternalError",
    "InvalidInput",
    "MlserveError",
    "ModelNotFound",
    "Overloaded",
    "QueueFull",
    "Unavailable",
]
