"""Provisioning errors, rendered as the IoT Agent's ``{"name": ..., "message": ...}``.

::

    AgentError (500 INTERNAL_ERROR)
     ├── BadRequest (400 BAD_REQUEST)
     │    └── WrongSyntax (400 WRONG_SYNTAX)
     ├── Unauthorized (401 UNAUTHORIZED, with WWW-Authenticate)
     ├── AccessForbidden (403 ACCESS_FORBIDDEN)
     ├── DeviceNotFound (404 DEVICE_NOT_FOUND)
     ├── GroupNotFound (404 DEVICE_GROUP_NOT_FOUND)
     ├── DuplicateDevice (409 DUPLICATE_DEVICE_ID)
     ├── DuplicateGroup (409 DUPLICATE_GROUP)
     ├── PayloadTooLarge (413 PAYLOAD_TOO_LARGE)
     ├── NotImplementedYet (501 NOT_IMPLEMENTED)
     └── BrokerUnavailable (503 BROKER_UNAVAILABLE)

Clients of iotagent-node-lib (Node-RED flows, provisioning scripts) match on ``name``.
Access refusals say nothing of other tenants: the same message whatever the reason.
"""

from __future__ import annotations


class AgentError(Exception):
    status = 500
    name = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        #: Headers of the answer (``WWW-Authenticate`` of a 401).
        self.headers: dict[str, str] = {}


class BadRequest(AgentError):
    status = 400
    name = "BAD_REQUEST"


class WrongSyntax(BadRequest):
    name = "WRONG_SYNTAX"


class Unauthorized(AgentError):
    """Credentials missing where needed, or not valid; ``challenge`` is the
    ``WWW-Authenticate`` value (RFC 6750), as the broker answers it."""

    status = 401
    name = "UNAUTHORIZED"

    def __init__(self, message: str, challenge: str = 'Bearer realm="renkei"') -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = challenge


class AccessForbidden(AgentError):
    status = 403
    name = "ACCESS_FORBIDDEN"


class DeviceNotFound(AgentError):
    status = 404
    name = "DEVICE_NOT_FOUND"


class GroupNotFound(AgentError):
    status = 404
    name = "DEVICE_GROUP_NOT_FOUND"


class DuplicateDevice(AgentError):
    status = 409
    name = "DUPLICATE_DEVICE_ID"


class DuplicateGroup(AgentError):
    status = 409
    name = "DUPLICATE_GROUP"


class PayloadTooLarge(AgentError):
    status = 413
    name = "PAYLOAD_TOO_LARGE"


class NotImplementedYet(AgentError):
    status = 501
    name = "NOT_IMPLEMENTED"


class BrokerUnavailable(AgentError):
    """The broker could not answer a question provisioning depends on."""

    status = 503
    name = "BROKER_UNAVAILABLE"
