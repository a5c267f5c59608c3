"""Query parameters: allowed sets per operation, and the representation parameters.

Unknown parameters and malformed ``options``/``format`` are 400 InvalidRequest and are
checked before anything is looked up, as the specification's common behaviours say.
"""

from __future__ import annotations

from starlette.requests import Request

from broker.api.common import csv_param
from broker.core.model import View
from broker.core.projection import Tree, parse_projection
from broker.errors import BadRequestData, InvalidRequest, TooManyResults
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

REPRESENTATION = frozenset(
    {
        "attrs",
        "pick",
        "omit",
        "options",
        "format",
        "lang",
        "geometryProperty",
        "join",
        "joinLevel",
        "containedBy",
        "datasetId",
        "local",
        "via",
        "entityMap",
    }
)
QUERY = REPRESENTATION | {
    "id",
    "type",
    "idPattern",
    "q",
    "georel",
    "geometry",
    "coordinates",
    "geoproperty",
    "csf",
    "scopeQ",
    "orderBy",
    "limit",
    "offset",
    "count",
    "expandValues",
}
NONE: frozenset[str] = frozenset({"local"})
WRITE = frozenset({"options", "local"})
DELETE_ATTR = frozenset({"datasetId", "deleteAll", "local"})
PURGE = frozenset({"type", "id", "idPattern", "q", "scopeQ", "local", "keep", "drop"})
CONTEXTS = frozenset({"details", "kind", "reload"})


def int_param(value: str | None, name: str, default: int) -> int:
    return default if value is None else count_param(value, name)


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


def check_params(request: Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s): {', '.join(unknown)}")


def bool_param(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return False
    if value not in ("true", "false"):
        raise BadRequestData(f"{name} must be true or false")
    return value == "true"


def options_of(request: Request) -> set[str]:
    raw = request.query_params.get("options")
    opts = set(csv_param(raw))
    if raw is not None and not opts:
        raise InvalidRequest("options must not be empty")
    unknown = opts - _OPTIONS
    if unknown:
        raise InvalidRequest(f"unknown options value(s): {', '.join(sorted(unknown))}")
    return opts


def _expand_tree(tree: Tree, tm: TermMap) -> Tree:
    return {
        (k if k in _ENTITY_MEMBERS else tm.expand(k)): (
            _expand_tree(v, tm) if v is not None else None
        )
        for k, v in tree.items()
    }


TEMPORAL_FORMATS = frozenset({"temporalValues", "aggregatedValues"})


def view_of(request: Request, tm: TermMap, *, temporal: bool = False) -> View:
    """The View of a request; ``temporal`` also allows the temporal representations in
    ``format`` (the caller reads them: see ``temporal_format``)."""
    params = request.query_params
    opts = options_of(request)
    formats = {_FORMATS[o] for o in opts if o in _FORMATS}
    fmt = params.get("format")
    if fmt is not None:
        if temporal and fmt in TEMPORAL_FORMATS:
            formats = set()
        elif fmt not in _FORMATS:
            raise InvalidRequest(f"unknown format {fmt!r}")
        else:
            formats = {_FORMATS[fmt]}
    if len(formats) > 1:
        raise InvalidRequest("options asks for more than one representation format")
    view = View(tm, format=formats.pop() if formats else "normalized", sys_attrs="sysAttrs" in opts)  # type: ignore[arg-type]
    attrs = params.get("attrs")
    pick = params.get("pick")
    omit = params.get("omit")
    if attrs is not None and (pick is not None or omit is not None):
        raise BadRequestData("attrs cannot be combined with pick or omit")
    if pick is not None and omit is not None:
        pick_tree = parse_projection(pick, "pick")
        omit_tree = parse_projection(omit, "omit")
        both = set(pick_tree) & set(omit_tree)
        raise BadRequestData(
            f"{', '.join(sorted(both))} both picked and omitted"
            if both
            else "pick and omit cannot be used together"
        )
    if attrs is not None:
        names = csv_param(attrs)
        if not names:
            raise BadRequestData("attrs must name at least one attribute")
        view.attrs = {tm.expand(check_name(a)) for a in names}
    if pick is not None:
        view.pick = _expand_tree(parse_projection(pick, "pick"), tm)
    if omit is not None:
        view.omit = _expand_tree(parse_projection(omit, "omit"), tm)
    lang = params.get("lang")
    if lang is not None:
        if not lang.strip():
            raise BadRequestData("lang must not be empty")
        view.lang = lang
    join = params.get("join")
    if join is not None:
        if join not in ("inline", "flat", "@none"):
            raise BadRequestData("join must be inline, flat or @none")
        view.join = None if join == "@none" else join
    geometry = params.get("geometryProperty")
    if geometry is not None:
        view.geometry_property = tm.expand(check_name(geometry, "geometryProperty"))
    datasets = params.get("datasetId")
    if datasets is not None:
        names = csv_param(datasets)
        if not names:
            raise BadRequestData("datasetId must name at least one dataset (or @none)")
        view.dataset_ids = {None if d == "@none" else d for d in names}
    level = params.get("joinLevel")
    if level is not None:
        view.join_level = count_param(level, "joinLevel", 1)
    return view


def temporal_format(request: Request) -> str:
    """normalized, temporalValues or aggregatedValues: ``format`` wins over ``options``."""
    fmt = request.query_params.get("format")
    if fmt in TEMPORAL_FORMATS:
        return fmt
    opts = options_of(request)
    for name in ("aggregatedValues", "temporalValues"):
        if name in opts:
            return name
    return "normalized"
