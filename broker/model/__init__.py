"""The domain model: the values every layer of the broker shares.

Entities and their attribute values and checks (``entity``), GeoJSON geometries
(``geo``), attribute history rows and policies (``history``), the query AST
(``query``) and the values the services hand the stores (``store``). The leaf of the
package graph: it imports no other broker package but ``broker.errors``.
"""
