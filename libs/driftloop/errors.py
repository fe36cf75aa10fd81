"""The one exception tree of driftloop. Every error a user can meet derives from DriftloopError.

Each class carries the HTTP status a service answers with (``status_code``) and a stable machine-readable
``code``; one exception handler in the service base (``driftloop.runtime.service``) turns any of them into
``{"detail": error.detail, "code": error.code}`` with that status, and the HTTP client (``driftloop.clients.http``)
turns such an answer back into the same class. A subclass may refine ``code`` per instance (``error.code``).
A service's own errors subclass the class whose status they answer with (e.g. ``AliasConflict(ConflictError)``).

    DriftloopError (500 internal_error)
    ├── ConfigError (400 invalid_config)
    ├── BadRequest (400 bad_request)
    ├── AuthenticationRequired (401 unauthenticated)
    ├── PermissionDenied (403 forbidden)
    ├── NotFoundError (404 not_found)
    ├── ConflictError (409 conflict)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── InvalidRequest (422 invalid_request)
    ├── ValidationFailed (422, its reason as code; detail {"reason", "field", "message"})
    ├── SchemaError (422 invalid_schema)
    │   └── WireFormatError (422, its reason as code)
    ├── ServiceUnavailable (503 unavailable)
    │   └── OnlineStoreUnavailable (503 online_store_unavailable)
    ├── StackError (500 stack_error)
    └── ServiceError (any status that no class above names)
"""

from __future__ import annotations

from typing import Any, ClassVar


class DriftloopError(Exception):
    """Base class of every driftloop error."""

    status_code: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code

    @property
    def detail(self) -> Any:
        """What an HTTP answer's ``detail`` holds: the message (a subclass may give a structured detail)."""
        return str(self)


class ConfigError(DriftloopError):
    """A settings or pipeline file is wrong. The message names the key (and line) and how to fix it."""

    status_code = 400
    default_code = "invalid_config"


class BadRequest(DriftloopError):
    """A request is well-formed but asks for something that cannot be done as asked; the message says why."""

    status_code = 400
    default_code = "bad_request"


class AuthenticationRequired(DriftloopError):
    """No token, or an unknown one."""

    status_code = 401
    default_code = "unauthenticated"


class PermissionDenied(DriftloopError):
    """A known token whose scope does not allow the call."""

    status_code = 403
    default_code = "forbidden"


class NotFoundError(DriftloopError):
    """A stream, model, dataset version, run or event does not exist."""

    status_code = 404
    default_code = "not_found"


class ConflictError(DriftloopError):
    """The request conflicts with the current state (an alias moved meanwhile, an id reused with other content)."""

    status_code = 409
    default_code = "conflict"


class PayloadTooLarge(DriftloopError):
    """A request body is larger than the route accepts."""

    status_code = 413
    default_code = "payload_too_large"


class InvalidRequest(DriftloopError):
    """A request's body, parameters or headers are malformed for the route (not JSON, unknown keys, a bad header);
    the message says which and what is expected."""

    status_code = 422
    default_code = "invalid_request"


class SchemaError(DriftloopError):
    """An Avro schema is invalid, unknown, or incompatible with an earlier version."""

    status_code = 422
    default_code = "invalid_schema"


class WireFormatError(SchemaError):
    """Bytes are not in the Confluent wire format (magic byte, schema id, Avro body).

    ``reason`` is a short machine-readable code (e.g. ``bad_magic_byte``) used for dead letters.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, code=reason)
        self.reason = reason


class ValidationFailed(DriftloopError):
    """A record or request broke the stream's schema, a data-quality rule or a model's signature."""

    status_code = 422
    default_code = "validation_failed"

    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(message, code=reason)
        self.reason = reason
        self.field = field

    @property
    def detail(self) -> dict[str, Any]:
        return {"reason": self.reason, "field": self.field, "message": str(self)}


class ServiceUnavailable(DriftloopError):
    """A dependency (online store, model, broker) is not available now; retrying later may work."""

    status_code = 503
    default_code = "unavailable"


class OnlineStoreUnavailable(ServiceUnavailable):
    """The online store (its server, or the features service in front of it) does not answer; the message says
    where it was looked for."""

    default_code = "online_store_unavailable"


class StackError(DriftloopError):
    """The embedded stack could not start, or a component is not healthy."""

    default_code = "stack_error"


class ServiceError(DriftloopError):
    """An error status that no other class names: the client's catch-all for such an answer, and how a service
    answers one (e.g. 501 for a feature a replica was built without)."""

    def __init__(self, message: str, *, status_code: int, code: str | None = None) -> None:
        super().__init__(message, code=code or f"http_{status_code}")
        self.http_status = status_code


# The client's mapping of an error answer back to the tree (``driftloop.clients.http``).
ERROR_BY_STATUS: dict[int, type[DriftloopError]] = {
    400: BadRequest,
    401: AuthenticationRequired,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLarge,
    503: ServiceUnavailable,
}


def http_status_of(error: DriftloopError) -> int:
    """The HTTP status a service answers ``error`` with."""
    return error.http_status if isinstance(error, ServiceError) else error.status_code
