"""Access control as an HTTP app holds it: the broker and the IoT agent alike.

Both apps read the same auth file (``RENKEI_AUTH_FILE``) and write the same audit log
(``RENKEI_AUDIT_LOG``). ``auth_state`` builds what an app holds for them
(``app.state.auth``; None without an auth file), ``AuthState.watch`` reloads the policy
and reopens the log on SIGHUP, and ``AuditMiddleware`` writes the audit line of every
refused request (401, 403) and every accepted change before the answer leaves.

Each app's access dependency decides who a request is let in as and leaves it in the
request's state under ``AUDITED`` (``broker.auth.access.Access`` in the broker, the
agent's ``Grant``); the middleware records what it finds there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.auth.access import CURRENT
from broker.auth.audit import AuditLog, open_audit_log
from broker.auth.config import PolicyHolder, install_sighup_reload
from broker.auth.credentials import Authenticator
from broker.auth.policy import Principal

#: The key, in the request's state, of what the request was let in as.
AUDITED = "renkei_access"
#: The principal of a request whose credentials did not verify.
UNVERIFIED = Principal(name="-", via="invalid")


@dataclass
class AuthState:
    """What an app holds when access control is on (``app.state.auth``)."""

    holder: PolicyHolder
    authenticator: Authenticator
    audit: AuditLog | None = None

    def watch(self) -> Callable[[], None] | None:
        """Reload the policy and reopen the audit log on SIGHUP; the function that stops
        that. Signals reach the main thread only: an app served from another thread (a
        test client's) reloads through ``holder.reload()`` instead, and gets None."""
        if threading.current_thread() is not threading.main_thread():
            return None
        reopen = [self.audit.reopen] if self.audit is not None else []
        return install_sighup_reload(self.holder, *reopen)

    async def aclose(self) -> None:
        await self.authenticator.aclose()
        if self.audit is not None:
            self.audit.close()


def auth_state(auth_file: Path | None, audit_log: Path | None) -> AuthState | None:
    """Access control under ``auth_file``, recorded in ``audit_log``: None without an
    auth file (whether an app may then serve at all, ``broker.auth.startup`` decides)."""
    if auth_file is None:
        return None
    holder = PolicyHolder(auth_file)
    return AuthState(
        holder=holder, authenticator=Authenticator(holder), audit=open_audit_log(audit_log)
    )


class Audited(Protocol):
    """What an access dependency leaves under ``AUDITED``, and the audit line records."""

    principal: Principal
    tenant: str
    #: names the operation in the audit line (``POST /iot/devices``)
    operation: str
    #: ids of the entities the request changed
    written: list[str]

    @property
    def changes(self) -> bool:
        """Whether the request asks for a change (recorded when it is accepted)."""


class AuditMiddleware:
    """Records the audit line of a request when its answer starts (before the client
    has it). The access in force (``broker.auth.access.CURRENT``) is the request's own:
    none until the app's dependency sets it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = CURRENT.set(None)

        async def audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                _record(scope, int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, audited)
        finally:
            CURRENT.reset(token)


def _record(scope: Scope, status: int) -> None:
    app: Any = scope.get("app")
    auth: AuthState | None = getattr(getattr(app, "state", None), "auth", None)
    if auth is None or auth.audit is None:
        return
    entry: Audited | None = scope.get("state", {}).get(AUDITED)
    if entry is None:
        return
    refused = status in (401, 403)
    if not refused and (not entry.changes or status >= 400):
        return
    client = scope.get("client")
    auth.audit.record(
        principal=entry.principal,
        tenant=entry.tenant,
        operation=entry.operation,
        status=status,
        entity_ids=list(dict.fromkeys(entry.written)),
        reason="refused" if refused else None,
        client=client[0] if client else None,
    )
