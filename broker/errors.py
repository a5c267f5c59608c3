"""NGSI-LD errors, rendered as ProblemDetails (RFC 7807) with the ETSI type URIs.

Every error the broker raises on purpose is one of these classes; each carries its
HTTP status and problem type as class attributes, so the handler table in
``broker.api.errors`` needs no per-error code::

    NgsiLdError
    ├── InvalidRequest            400  malformed request (JSON syntax, headers)
    ├── BadRequestData            400  well-formed request with invalid content
    │   └── PayloadTooLarge       413  body over the configured size limit
    ├── UnsupportedMediaType      415  Content-Type the operation does not take
    ├── NotAcceptable             406  no Accept-able representation
    ├── Unauthorized              401  credentials missing or invalid (WWW-Authenticate)
    ├── Forbidden                 403  valid credentials, operation not allowed
    ├── ResourceNotFound          404
    │   └── NonexistentTenant     404  the NGSILD-Tenant named does not exist
    ├── AlreadyExists             409
    ├── Conflict                  409  a registration overlapping what another one holds
    ├── OperationNotSupported     422  operation the specification rules out here
    │   └── NotImplementedYet     501  part of the API this hub does not offer (yet)
    ├── TooManyResults            403  limit above the configured maximum
    ├── LdContextNotAvailable     503  a remote @context could not be retrieved
    ├── LoopDetected              508  a forwarded request came back (its Via names us)
    └── InternalError             500

OperationNotSupported is 422 as the specification's error table says; a feature this
hub has not built answers 501 with the same problem type, so a client can tell "not
here" from "not allowed".

The specification's error table has no type for access control; Unauthorized and
Forbidden use the same base URI with their own names, and their details never name
another tenant or what it holds.
"""

from __future__ import annotations

from typing import Any, ClassVar

ERRORS_BASE = "https://uri.etsi.org/ngsi-ld/errors/"


class NgsiLdError(Exception):
    """Base of all NGSI-LD errors; ``problem()`` is the ProblemDetails body."""

    status: ClassVar[int] = 500
    type_name: ClassVar[str] = "InternalError"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}
        #: A title naming what was wrong (``Invalid query parameter: q``), when known.
        self.specific_title: str | None = None

    @property
    def type_uri(self) -> str:
        return ERRORS_BASE + self.type_name

    def problem(self) -> dict[str, Any]:
        title = self.specific_title or self.title
        body: dict[str, Any] = {"type": self.type_uri, "title": title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body


class InvalidRequest(NgsiLdError):
    status = 400
    type_name = "InvalidRequest"
    title = "Invalid request"


class BadRequestData(NgsiLdError):
    status = 400
    type_name = "BadRequestData"
    title = "Bad request data"


class PayloadTooLarge(BadRequestData):
    status = 413
    title = "Request payload too large"


class UnsupportedMediaType(NgsiLdError):
    status = 415
    type_name = "InvalidRequest"
    title = "Unsupported media type"


class NotAcceptable(NgsiLdError):
    status = 406
    type_name = "InvalidRequest"
    title = "Not acceptable"


class Unauthorized(NgsiLdError):
    """401: no credentials where some are needed, or credentials that do not verify.

    ``challenge`` is the ``WWW-Authenticate`` value (RFC 6750 for bearer tokens)."""

    status = 401
    type_name = "Unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str = "", challenge: str = 'Bearer realm="renkei"') -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = challenge


class Forbidden(NgsiLdError):
    status = 403
    type_name = "Forbidden"
    title = "Forbidden"


class ResourceNotFound(NgsiLdError):
    status = 404
    type_name = "ResourceNotFound"
    title = "Resource not found"


class NonexistentTenant(ResourceNotFound):
    type_name = "NonexistentTenant"
    title = "Tenant does not exist"


class AlreadyExists(NgsiLdError):
    status = 409
    type_name = "AlreadyExists"
    title = "Already exists"


class Conflict(NgsiLdError):
    status = 409
    type_name = "Conflict"
    title = "Conflict"


class OperationNotSupported(NgsiLdError):
    status = 422
    type_name = "OperationNotSupported"
    title = "Operation not supported"


class NotImplementedYet(OperationNotSupported):
    status = 501
    title = "Not implemented"


class TooManyResults(NgsiLdError):
    status = 403
    type_name = "TooManyResults"
    title = "Too many results"


class LdContextNotAvailable(NgsiLdError):
    status = 503
    type_name = "LdContextNotAvailable"
    title = "JSON-LD context not available"


class LoopDetected(NgsiLdError):
    status = 508
    type_name = "LoopDetected"
    title = "Loop detected"


class InternalError(NgsiLdError):
    pass


class StoreUnavailable(InternalError):
    """The store cannot answer now (timeouts, failover); clients should retry."""

    status = 503
    title = "Store unavailable"

    def __init__(self, detail: str = "", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(retry_after)
