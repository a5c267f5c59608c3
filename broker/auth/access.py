"""The access in force for the request being served, as a context variable.

The API's one dependency (``broker.api.auth.authorize``) authenticates a request and
sets ``CURRENT`` to an ``Access`` for it; the store guard (``broker.core.guard``)
reads it on every store call, so every door into the data, whichever service it goes
through, is filtered and checked the same way. Outside a request (start-up, the
retention job, notification delivery) nothing is set and nothing is filtered.
``Access`` also collects what the audit log records about the request.
"""

from __future__ import annotations

from collections.abc import Collection
from contextvars import ContextVar
from dataclasses import dataclass, field

from broker.auth.policy import Action, Policy, Principal


@dataclass(slots=True)
class Access:
    """Who asks, under which policy, for what operation (``operation`` names it in the
    audit log); ``written`` gathers the ids of the entities the request changed."""

    policy: Policy
    principal: Principal
    tenant: str
    action: Action
    operation: str
    written: list[str] = field(default_factory=list)
    #: Set when the request was refused (401/403) and already recorded.
    recorded: bool = False

    @property
    def changes(self) -> bool:
        """Whether the audit log records the request when it is accepted: every
        operation but a read (``broker.auth.middleware``)."""
        return self.action != "read"

    def can(self, action: Action, tenant: str, types: str | Collection[str] | None = None) -> bool:
        return self.policy.can(self.principal, action, tenant, types)

    def allowed(self, action: Action, tenant: str) -> frozenset[str] | None:
        return self.policy.allowed_types(self.principal, action, tenant)

    def sees(self, tenant: str) -> bool:
        return self.policy.sees_tenant(self.principal, tenant)


CURRENT: ContextVar[Access | None] = ContextVar("renkei_access", default=None)


def current() -> Access | None:
    return CURRENT.get()
