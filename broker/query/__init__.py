"""Query language and geo-query parsing into the backend-neutral AST of ``broker.model.query``.

The services parse request parameters here (``parse_q``, ``parse_scope_q``,
``parse_geo_query``), resolve terms against the request's ``@context``
(``resolve_q``, ``resolve_geo``) and hand the nodes to a store in ``EntityQuery``.
``broker.query.evaluate`` is the reference semantics every backend must reproduce.
"""

from broker.query.geo import geo_query_from_json, parse_geo_query, resolve_geo
from broker.query.qlang import attribute_names, expand_q_values, format_q, parse_q, resolve_q
from broker.query.scopeq import format_scope_q, parse_scope_q, scope_matches

__all__ = [
    "attribute_names",
    "expand_q_values",
    "format_q",
    "format_scope_q",
    "geo_query_from_json",
    "parse_geo_query",
    "parse_q",
    "parse_scope_q",
    "resolve_geo",
    "resolve_q",
    "scope_matches",
]
