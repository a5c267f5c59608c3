"""Query parameters: one declaration each, the groups operations share, and their parsing.

Every parameter is declared once here as an ``Annotated`` alias with its description, so
``/openapi.json`` lists what each operation takes. All are read as text: the broker
checks them itself and answers malformed values with 400 ProblemDetails (never the
framework's 422), in the order the specification's common behaviours test. The
parameters an operation declares are also the ones it accepts: any other is 400
InvalidRequest (``check_params``), checked before anything is looked up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Query
from fastapi.dependencies.utils import get_flat_params
from fastapi.params import Query as QueryInfo
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request

from broker.api.common import csv_param
from broker.api.solver import CompiledRoute
from broker.core.model import View
from broker.core.projection import Tree, parse_projection
from broker.errors import BadRequestData, InvalidRequest, NgsiLdError, TooManyResults
from broker.jsonld.context import TermMap
from broker.model.entity import check_name
from broker.model.query import count_param
from broker.settings import Settings

_FORMATS = {
    "normalized": "normalized",
    "concise": "concise",
    "keyValues": "keyValues",
    "simplified": "keyValues",
}
_OPTIONS = {
    *_FORMATS,
    "sysAttrs",
    "noOverwrite",
    "replace",
    "update",
    "temporalValues",
    "aggregatedValues",
    "count",
}
_ENTITY_MEMBERS = {"id", "type", "scope"}


def _text(name: str, description: str) -> Any:
    return Query(alias=name, description=description)


# -- one declaration per parameter (clause 6.3 common behaviours, 6.4.3.2 query entities) ------

EntityIds = Annotated[
    str | None, _text("id", "Comma-separated entity ids (URIs) to select (clause 6.4.3.2).")
]
EntityTypes = Annotated[
    str | None,
    _text(
        "type",
        "Entity type selection: names or IRIs joined by `,` (or), `|` (or), `;` (and), "
        "with parentheses (clause 4.17).",
    ),
]
IdPattern = Annotated[
    str | None, _text("idPattern", "Regular expression the entity id must match (clause 4.9).")
]
Q = Annotated[str | None, _text("q", "NGSI-LD query language expression (clause 4.9).")]
ScopeQ = Annotated[str | None, _text("scopeQ", "Scope query (clause 4.19).")]
Georel = Annotated[
    str | None,
    _text("georel", "Geo-relationship: near;maxDistance==m, within, contains, ... (clause 4.10)."),
]
Geometry = Annotated[
    str | None, _text("geometry", "GeoJSON geometry type of the reference shape (clause 4.10).")
]
Coordinates = Annotated[
    str | None,
    _text("coordinates", "JSON array of the reference shape's coordinates (clause 4.10)."),
]
Geoproperty = Annotated[
    str | None,
    _text("geoproperty", "GeoProperty the geo-query applies to; default location (clause 4.10)."),
]
GeoQ = Annotated[
    str | None,
    _text(
        "geoQ",
        "The whole geo-query as one JSON object (georel, geometry, coordinates, geoproperty), "
        "an alternative to the four separate parameters; some client libraries send it.",
    ),
]
Csf = Annotated[
    str | None,
    _text(
        "csf",
        "Context source filter (clause 4.9): a q-language expression on the context "
        "source registrations' own properties; only the sources it matches are asked.",
    ),
]
OrderBy = Annotated[
    str | None,
    _text("orderBy", "Sort keys: id, type, createdAt, modifiedAt or attribute paths, ;asc/;desc."),
]
Limit = Annotated[
    str | None, _text("limit", "Page size: a non-negative integer up to the server's maximum.")
]
Offset = Annotated[str | None, _text("offset", "Number of results to skip (clause 5.5.9).")]
Count = Annotated[
    str | None,
    _text("count", "true: return the total in the NGSILD-Results-Count header (clause 6.3.13)."),
]
ExpandValues = Annotated[
    str | None,
    _text(
        "expandValues",
        "Attribute names whose values compared in q are terms to expand with the @context "
        "(a VocabProperty holds IRIs).",
    ),
]
JsonKeys = Annotated[
    str | None,
    _text(
        "jsonKeys",
        "Attribute names whose compound values' keys are plain JSON, not terms. This hub "
        "never expands the keys of compound values, so it only checks the names.",
    ),
]
Attrs = Annotated[
    str | None, _text("attrs", "Comma-separated attribute names to return (clause 4.21).")
]
Pick = Annotated[
    str | None, _text("pick", "Projection: entity members and attributes to keep (clause 4.21).")
]
Omit = Annotated[
    str | None, _text("omit", "Projection: entity members and attributes to drop (clause 4.21).")
]
Options = Annotated[
    str | None,
    _text(
        "options",
        "Comma-separated: normalized, concise, keyValues, simplified, sysAttrs, noOverwrite, "
        "replace, update, temporalValues, aggregatedValues, count (clause 6.3.6).",
    ),
]
Format = Annotated[
    str | None,
    _text("format", "Representation: normalized, concise, keyValues or simplified (6.3.6)."),
]
Lang = Annotated[
    str | None, _text("lang", "Language tag(s) for LanguageProperty values (clause 4.15).")
]
GeometryProperty = Annotated[
    str | None,
    _text("geometryProperty", "GeoProperty used as the geometry of GeoJSON output (4.5.16)."),
]
Join = Annotated[
    str | None, _text("join", "Linked entity retrieval: inline, flat or @none (clause 4.5.23).")
]
JoinLevel = Annotated[
    str | None, _text("joinLevel", "Depth of linked entity retrieval, a positive integer.")
]
ContainedBy = Annotated[
    str | None, _text("containedBy", "Entity ids already visited by a join (accepted).")
]
DatasetId = Annotated[
    str | None,
    _text("datasetId", "Comma-separated datasetIds to return; @none for the default instance."),
]
Local = Annotated[
    str | None,
    _text("local", "true: answer from this broker only (it has no remote sources to ask)."),
]
Via = Annotated[
    str | None, _text("via", "Brokers a distributed request already passed (accepted).")
]
EntityMap = Annotated[
    str | None,
    _text(
        "entityMap",
        "true: answer with the location of the entity map used (NGSILD-EntityMap header), "
        "creating one if the request names none (Table 6.4.3.2-1).",
    ),
]
EntityMapLifetime = Annotated[
    str | None,
    _text(
        "entityMapLifetime",
        "ISO 8601 duration the entity map should live; the hub may shorten it.",
    ),
]
DeleteAll = Annotated[
    str | None, _text("deleteAll", "true: delete every instance of the attribute (6.7.3.2).")
]
Keep = Annotated[
    str | None, _text("keep", "Purge: attributes to keep, deleting the others (clause 6.4.3.3).")
]
Drop = Annotated[
    str | None, _text("drop", "Purge: attributes to delete, keeping the entities (6.4.3.3).")
]
Details = Annotated[
    str | None, _text("details", "true: detailed descriptions instead of names or URLs.")
]
ContextKind = Annotated[
    str | None, _text("kind", "Context kind to list: Hosted, Cached or ImplicitlyCreated (5.13).")
]
Reload = Annotated[
    str | None, _text("reload", "true: reload a cached context instead of deleting it (5.13).")
]


# -- groups several operations share ------------------------------------------------------------


class Group(BaseModel):
    """Query parameters several operations share, each field one declared parameter.

    Groups combine by inheritance, so each parameter is still declared once. A route
    takes a group through :func:`group`.
    """

    model_config = ConfigDict(extra="ignore")


class Representation(Group):
    """How entities are represented (clauses 6.3.6, 4.21): retrieve, query, temporal."""

    attrs: Attrs = None
    pick: Pick = None
    omit: Omit = None
    options: Options = None
    format: Format = None
    lang: Lang = None
    geometry_property: GeometryProperty = None
    join: Join = None
    join_level: JoinLevel = None
    contained_by: ContainedBy = None
    dataset_id: DatasetId = None
    local: Local = None
    via: Via = None
    entity_map: EntityMap = None
    entity_map_lifetime: EntityMapLifetime = None


class Selection(Group):
    """Which entities a query selects (clause 6.4.3.2): ids, types, q, geo- and scope
    queries, ordering and paging. Purge builds one from its own, fewer, parameters."""

    id: EntityIds = None
    type: EntityTypes = None
    id_pattern: IdPattern = None
    q: Q = None
    georel: Georel = None
    geometry: Geometry = None
    coordinates: Coordinates = None
    geoproperty: Geoproperty = None
    geo_q: GeoQ = None
    csf: Csf = None
    scope_q: ScopeQ = None
    order_by: OrderBy = None
    limit: Limit = None
    offset: Offset = None
    count: Count = None
    expand_values: ExpandValues = None
    json_keys: JsonKeys = None


class EntityQueryParams(Selection, Representation):
    """``GET /entities`` (clause 6.4.3.2): a selection and a representation."""


class RetrieveParams(Representation):
    """``GET /entities/{entityId}`` (clause 6.5.3.1): a representation, and ``type``."""

    type: EntityTypes = None


G = TypeVar("G", bound=Group)


def group(model: type[G]) -> Any:
    """``Depends`` on a group of query parameters, read in one step.

    The framework resolves each declared parameter (and each field of a parameter
    model) with type introspection on every request, which for the twenty-odd
    parameters of a query costs more than a cached retrieve itself. Every group
    parameter is plain text that the broker checks itself, so the group is read
    straight from the query string; ``DeclaredRoute`` puts its fields in the
    description and ``check_params`` accepts them, as for any declared parameter.
    """
    names = [(name, info.alias or name) for name, info in model.model_fields.items()]
    defaults = {name: info.get_default() for name, info in model.model_fields.items()}
    fresh = model.model_construct()

    async def read(request: Request) -> G:
        query = request.query_params
        values: dict[str, Any] = {name: query[alias] for name, alias in names if alias in query}
        if not values:
            # most requests give none: a copy of the defaults (``model_construct`` would
            # compute every field's default again)
            return fresh.model_copy()
        return model.model_construct(set(values), **{**defaults, **values})

    read.__name__ = f"{model.__name__}_group"
    setattr(read, GROUP_ATTR, model)
    return Depends(read)


GROUP_ATTR = "ngsi_ld_query_group"


def group_parameters(model: type[Group]) -> list[dict[str, Any]]:
    """The OpenAPI parameter objects of a group's fields."""
    return [
        {
            "name": info.alias or name,
            "in": "query",
            "required": False,
            "description": info.description or "",
            "schema": {"type": "string"},
        }
        for name, info in model.model_fields.items()
    ]


def _groups(dependant: Any) -> list[type[Group]]:
    found: list[type[Group]] = []
    stack = [dependant]
    while stack:
        dep = stack.pop()
        model = getattr(dep.call, GROUP_ATTR, None)
        if model is not None and model not in found:
            found.append(model)
        stack.extend(dep.dependencies)
    return found


class DeclaredRoute(CompiledRoute):
    """A route whose query-parameter groups (:func:`group`) appear in its description."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        add_parameters(
            self, [p for model in _groups(self.dependant) for p in group_parameters(model)]
        )


def add_parameters(route: APIRoute, parameters: list[dict[str, Any]]) -> None:
    """Add OpenAPI parameter objects to ``route``'s description, each once (a route
    rebuilt from another's settings already has them)."""
    existing = list((route.openapi_extra or {}).get("parameters", []))
    seen = {(p.get("name"), p.get("in")) for p in existing}
    new = [p for p in parameters if (p.get("name"), p.get("in")) not in seen]
    if new:
        route.openapi_extra = {**(route.openapi_extra or {}), "parameters": [*existing, *new]}


def declared_names(dependant: Any) -> frozenset[str]:
    """The query parameters an operation declares: its own and its groups' fields."""
    names = {f.alias for f in get_flat_params(dependant) if isinstance(f.field_info, QueryInfo)}
    for model in _groups(dependant):
        names.update(info.alias or name for name, info in model.model_fields.items())
    return frozenset(names)


def check_params(request: Request) -> None:
    """400 InvalidRequest for a query parameter the operation does not declare."""
    route = request.scope.get("route")
    allowed: frozenset[str] | None = getattr(route, "_ngsi_ld_params", None)
    if allowed is None:
        dependant = getattr(route, "dependant", None)
        allowed = declared_names(dependant) if dependant is not None else frozenset()
        if route is not None:
            route._ngsi_ld_params = allowed  # computed once per route
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s): {', '.join(unknown)}")


@contextmanager
def parameter(*names: str) -> Iterator[None]:
    """A 400 raised while reading the query parameter(s) ``names`` says so in its title.

    Clause 5.7.2 wants an invalid query answered with BadRequestData; the title
    (``Invalid query parameter: q``) tells the client which parameter, the detail why.
    """
    try:
        yield
    except NgsiLdError as exc:
        if exc.status == 400 and exc.specific_title is None:
            exc.specific_title = f"Invalid query parameter: {', '.join(names)}"
        raise


def bool_param(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value not in ("true", "false"):
        with parameter(name):
            raise BadRequestData(f"{name} must be true or false")
    return value == "true"


def options_of(raw: str | None) -> set[str]:
    opts = set(csv_param(raw))
    with parameter("options"):
        if raw is not None and not opts:
            raise InvalidRequest("options must not be empty")
        unknown = opts - _OPTIONS
        if unknown:
            raise InvalidRequest(f"unknown options value(s): {', '.join(sorted(unknown))}")
    return opts


def int_param(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    with parameter(name):
        return count_param(value, name)


def paging(
    limit: str | None, offset: str | None, settings: Settings, *, bounded: bool = True
) -> tuple[int, int]:
    """``limit`` and ``offset`` of a listing; a limit over the maximum is TooManyResults."""
    if bounded and limit is not None and limit.isascii() and limit.isdigit() and len(limit) > 10:
        raise TooManyResults(f"limit {limit[:40]} is above the maximum of {settings.max_limit}")
    limit_n = int_param(limit, "limit", settings.default_limit)
    if bounded and limit_n > settings.max_limit:
        raise TooManyResults(f"limit {limit_n} is above the maximum of {settings.max_limit}")
    return limit_n, int_param(offset, "offset", 0)


def _expand_tree(tree: Tree, tm: TermMap) -> Tree:
    return {
        (k if k in _ENTITY_MEMBERS else tm.expand(k)): (
            _expand_tree(v, tm) if v is not None else None
        )
        for k, v in tree.items()
    }


TEMPORAL_FORMATS = frozenset({"temporalValues", "aggregatedValues"})


def view_of(rep: Representation, tm: TermMap, *, temporal: bool = False) -> View:
    """The View of a request; ``temporal`` also allows the temporal representations in
    ``format`` (the caller reads them: see ``temporal_format``)."""
    opts = options_of(rep.options)
    formats = {_FORMATS[o] for o in opts if o in _FORMATS}
    fmt = rep.format
    if fmt is not None:
        # clause 6.3.6: format, when present, wins over a format named in options
        if temporal and fmt in TEMPORAL_FORMATS:
            formats = set()
        elif fmt not in _FORMATS:
            with parameter("format"):
                raise InvalidRequest(f"unknown format {fmt!r}")
        else:
            formats = {_FORMATS[fmt]}
    if len(formats) > 1:
        with parameter("options"):
            raise InvalidRequest("options asks for more than one representation format")
    view = View(tm, format=formats.pop() if formats else "normalized", sys_attrs="sysAttrs" in opts)  # type: ignore[arg-type]
    attrs, pick, omit = rep.attrs, rep.pick, rep.omit
    if attrs is not None and (pick is not None or omit is not None):
        with parameter("attrs", "pick", "omit"):
            raise BadRequestData("attrs cannot be combined with pick or omit")
    if pick is not None and omit is not None:
        with parameter("pick", "omit"):
            pick_tree = parse_projection(pick, "pick")
            omit_tree = parse_projection(omit, "omit")
            both = set(pick_tree) & set(omit_tree)
            raise BadRequestData(
                f"{', '.join(sorted(both))} both picked and omitted"
                if both
                else "pick and omit cannot be used together"
            )
    if attrs is not None:
        with parameter("attrs"):
            names = csv_param(attrs)
            if not names:
                raise BadRequestData("attrs must name at least one attribute")
            view.attrs = {tm.expand(check_name(a)) for a in names}
    if pick is not None:
        with parameter("pick"):
            view.pick = _expand_tree(parse_projection(pick, "pick"), tm)
    if omit is not None:
        with parameter("omit"):
            view.omit = _expand_tree(parse_projection(omit, "omit"), tm)
    lang = rep.lang
    if lang is not None:
        if not lang.strip():
            with parameter("lang"):
                raise BadRequestData("lang must not be empty")
        view.lang = lang
    join = rep.join
    if join is not None:
        if join not in ("inline", "flat", "@none"):
            with parameter("join"):
                raise BadRequestData("join must be inline, flat or @none")
        view.join = None if join == "@none" else join
    geometry = rep.geometry_property
    if geometry is not None:
        with parameter("geometryProperty"):
            view.geometry_property = tm.expand(check_name(geometry, "geometryProperty"))
    datasets = rep.dataset_id
    if datasets is not None:
        names = csv_param(datasets)
        if not names:
            with parameter("datasetId"):
                raise BadRequestData("datasetId must name at least one dataset (or @none)")
        view.dataset_ids = {None if d == "@none" else d for d in names}
    level = rep.join_level
    if level is not None:
        with parameter("joinLevel"):
            view.join_level = count_param(level, "joinLevel", 1)
    return view


def temporal_format(fmt: str | None, options: str | None) -> str:
    """normalized, temporalValues or aggregatedValues: ``format`` wins over ``options``."""
    if fmt in TEMPORAL_FORMATS:
        return fmt
    opts = options_of(options)
    for name in ("aggregatedValues", "temporalValues"):
        if name in opts:
            return name
    return "normalized"


# -- bodies and answers in the description ------------------------------------------------------


def json_body(
    description: str, *, array: bool = False, merge_patch: bool = False
) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body.

    The broker reads bodies itself (``Hub.payload``): size and nesting bounds while
    streaming, 415 for other media types before the body is read, and its own 400
    ProblemDetails for what is malformed. So the body is declared here for the
    description rather than parsed by the framework.
    """
    schema: dict[str, Any] = (
        {"type": "array", "items": {"type": "object"}} if array else {"type": "object"}
    )
    kinds = ["application/json", "application/ld+json"]
    if merge_patch:
        kinds.append("application/merge-patch+json")
    return {
        "requestBody": {
            "required": True,
            "description": description
            + " application/json takes its @context from the Link header;"
            " application/ld+json carries @context in the body (clause 6.3.5).",
            "content": {kind: {"schema": schema} for kind in kinds},
        }
    }


def answers(*kinds: str, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """``responses`` listing the media types an operation offers through ``Accept``
    (clause 6.3.4): the first is the default, anything else is 406."""
    return {status: {"content": {kind: {"schema": {}} for kind in kinds}}}


# -- path parameters ----------------------------------------------------------------------------

EntityIdPath = Annotated[str, Path(description="Entity id (a URI, clause 4.5.2).")]
AttrPath = Annotated[str, Path(description="Attribute name (or its IRI).")]


class AttrConvertor(StringConvertor):
    """``{attr:attr}`` in a route: an attribute name, or its full IRI even with the
    ``/`` its path holds (``https://example.org/prop``, or ``https%3A%2F%2F…`` which
    the server decodes to the same), so that ``/attrs/{attrId}`` addresses the
    attribute by either (clauses 6.7, 5.5.7). An entity id may hold ``/attrs/`` too:
    a name without a scheme is still one path segment, so ``…/attrs`` after such an
    id does not look like an attribute."""

    regex = r"[^/]+|[A-Za-z][A-Za-z0-9+.\-]*:/[^?#]*"

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("attr", AttrConvertor())
InstancePath = Annotated[str, Path(description="instanceId of an attribute instance (a URI).")]
SubscriptionIdPath = Annotated[str, Path(description="Subscription id (a URI).")]
TypePath = Annotated[str, Path(description="Entity type name (or its IRI).")]
ContextIdPath = Annotated[str, Path(description="Local id or URL of a @context (clause 5.13).")]
