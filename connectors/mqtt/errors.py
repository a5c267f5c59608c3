"""Provisioning errors, rendered as the IoT Agent's ``{"name": ..., "message": ...}``.

::

    AgentError (500 INTERNAL_ERROR)
     ├── BadRequest (400 BAD_REQUEST)
     │    └── WrongSyntax (400 WRONG_SYNTAX)
     ├── DeviceNotFound (404 DEVICE_NOT_FOUND)
     ├── GroupNotFound (404 DEVICE_GROUP_NOT_FOUND)
     ├── DuplicateDevice (409 DUPLICATE_DEVICE_ID)
     ├── DuplicateGroup (409 DUPLICATE_GROUP)
     ├── PayloadTooLarge (413 PAYLOAD_TOO_LARGE)
     └── NotImplementedYet (501 NOT_IMPLEMENTED)

Clients of iotagent-node-lib (Node-RED flows, provisioning scripts) match on ``name``.
"""

from __future__ import annotations


class AgentError(Exception):
    status = 500
    name = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(AgentError):
    status = 400
    name = "BAD_REQUEST"


class WrongSyntax(BadRequest):
    name = "WRONG_SYNTAX"


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
