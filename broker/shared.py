"""What the hub shares with its connectors: the one door from ``connectors/`` and
``opendata/`` into ``broker/`` (besides the public HTTP API).

The IoT agent is a second front door to the same data, so it must not have second
copies of what guards and reads it: its HTTP side goes through the broker's access
control and audit log, its push commands obey the same outbound policy, it speaks MQTT
through the one transport notifications use, and as a context source it evaluates
``q``, ``scopeQ`` and geo-queries with the broker's own query engine, which cannot then
disagree with the broker about a match. ``opendata`` renders the geometries the broker
accepts. These names are that contract; everything else in ``broker/`` may change
without notice to a connector, and ``tests/test_layers.py`` fails if ``connectors/`` or
``opendata/`` import any other broker module. Every name comes from a leaf (the
transport, the outbound policy, access control, the errors, the query language and the
model it parses into), so a connector never loads the broker's services or stores.

Why one module and not a package: a package of re-exporting submodules would give the
connectors several doors again, and the contract could no longer be read in one place.

Why loaded on first use (a module ``__getattr__``, as ``pydantic/__init__.py`` does):
the names span unrelated concerns, and each user needs a few. ``opendata`` takes only
the geometry types and the ``renkei`` command line (which registers every connector's
commands) only the outbound rules; importing all of it eagerly would load JWT with
cryptography, access control and the query engine into both, and the MQTT client into
``opendata`` (measured: 100 ms more on every ``renkei`` command, 250 ms on
``opendata``). Type checkers read the imports below; ``_HOMES`` says where each name
lives at run time; ``tests/broker/test_shared.py`` holds the two, and ``__all__``, equal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from broker.auth import Policy, Principal, default_expand
    from broker.auth.middleware import AUDITED, UNVERIFIED, AuditMiddleware, AuthState, auth_state
    from broker.auth.policy import Action
    from broker.auth.startup import InsecureStartRefused, check_open_start
    from broker.errors import (
        BadRequestData,
        Forbidden,
        InternalError,
        NgsiLdError,
        PayloadTooLarge,
        ResourceNotFound,
        Unauthorized,
    )
    from broker.model.geo import COORDINATE_GEOMETRY_TYPES, GEOMETRY_TYPES
    from broker.model.query import GeoQuery, Node, ScopeQuery
    from broker.outbound import (
        DEFAULT_DENY,
        OutboundPolicy,
        OutboundRefused,
        Rules,
        policy_transport,
    )
    from broker.query import parse_geo_query, parse_q, parse_scope_q, resolve_geo, resolve_q
    from broker.query.evaluate import matches_geo, matches_q, matches_scope
    from broker.query.patterns import check_pattern, search
    from broker.query.types import type_alternatives
    from broker.transport.mqtt import Message, MqttClient, MqttServer, Version, parse_server

__all__ = [
    "AUDITED",
    "COORDINATE_GEOMETRY_TYPES",
    "DEFAULT_DENY",
    "GEOMETRY_TYPES",
    "UNVERIFIED",
    "Action",
    "AuditMiddleware",
    "AuthState",
    "BadRequestData",
    "Forbidden",
    "GeoQuery",
    "InsecureStartRefused",
    "InternalError",
    "Message",
    "MqttClient",
    "MqttServer",
    "NgsiLdError",
    "Node",
    "OutboundPolicy",
    "OutboundRefused",
    "PayloadTooLarge",
    "Policy",
    "Principal",
    "ResourceNotFound",
    "Rules",
    "ScopeQuery",
    "Unauthorized",
    "Version",
    "auth_state",
    "check_open_start",
    "check_pattern",
    "default_expand",
    "matches_geo",
    "matches_q",
    "matches_scope",
    "parse_geo_query",
    "parse_q",
    "parse_scope_q",
    "parse_server",
    "policy_transport",
    "resolve_geo",
    "resolve_q",
    "search",
    "type_alternatives",
]

#: The module each name is loaded from on first use.
_HOMES: Final[dict[str, tuple[str, ...]]] = {
    "broker.auth": ("Policy", "Principal", "default_expand"),
    "broker.auth.middleware": (
        "AUDITED",
        "UNVERIFIED",
        "AuditMiddleware",
        "AuthState",
        "auth_state",
    ),
    "broker.auth.policy": ("Action",),
    "broker.auth.startup": ("InsecureStartRefused", "check_open_start"),
    "broker.errors": (
        "BadRequestData",
        "Forbidden",
        "InternalError",
        "NgsiLdError",
        "PayloadTooLarge",
        "ResourceNotFound",
        "Unauthorized",
    ),
    "broker.model.geo": ("COORDINATE_GEOMETRY_TYPES", "GEOMETRY_TYPES"),
    "broker.model.query": ("GeoQuery", "Node", "ScopeQuery"),
    "broker.outbound": (
        "DEFAULT_DENY",
        "OutboundPolicy",
        "OutboundRefused",
        "Rules",
        "policy_transport",
    ),
    "broker.query": ("parse_geo_query", "parse_q", "parse_scope_q", "resolve_geo", "resolve_q"),
    "broker.query.evaluate": ("matches_geo", "matches_q", "matches_scope"),
    "broker.query.patterns": ("check_pattern", "search"),
    "broker.query.types": ("type_alternatives",),
    "broker.transport.mqtt": ("Message", "MqttClient", "MqttServer", "Version", "parse_server"),
}
_HOME: Final = {name: module for module, names in _HOMES.items() for name in names}

if not TYPE_CHECKING:  # type checkers read the imports above instead

    def __getattr__(name: str) -> object:
        module = _HOME.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # the next lookup does not come here
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
