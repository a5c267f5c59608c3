"""Geo-queries (clause 4.10) from HTTP parameters or from a JSON ``geoQ`` member.

Both forms end in the same validated :class:`~broker.model.query.GeoQuery`, so the
backends never see raw parameters. The geometry is checked as strictly as a stored
GeoProperty (``broker.model.geo.validate_geometry``): a query with a broken polygon
is refused up front rather than answered differently by each backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from broker.errors import BadRequestData
from broker.model.entity import check_name
from broker.model.geo import COORDINATE_GEOMETRY_TYPES, validate_geometry
from broker.model.query import GEORELS, GeoQuery

#: Geometries a geo-query may use, by lower-case name (no GeometryCollection: it has no coordinates).
_BY_LOWER = {g.lower(): g for g in COORDINATE_GEOMETRY_TYPES}
_DISTANCE_RE = re.compile(r"(maxDistance|minDistance)==(\S+)")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


def parse_georel(text: str) -> tuple[str, float | None, float | None]:
    """``near;maxDistance==1000`` -> ``("near", 1000.0, None)``.

    ``near`` needs ``maxDistance`` or ``minDistance`` (or both, each once), in
    metres, a number of zero or more; the other relations take no modifier.
    """
    rel, *modifiers = [part.strip() for part in text.split(";")]
    if rel not in GEORELS:
        raise BadRequestData(f"invalid georel {text!r}: expected one of {', '.join(GEORELS)}")
    distances: dict[str, float] = {}
    for modifier in modifiers:
        match = _DISTANCE_RE.fullmatch(modifier)
        if rel != "near" or match is None:
            raise BadRequestData(
                f"invalid georel {text!r}: only near takes maxDistance==N or minDistance==N"
            )
        name, raw = match.groups()
        if name in distances:
            raise BadRequestData(f"invalid georel {text!r}: {name} given twice")
        if not _NUMBER_RE.fullmatch(raw) or raw.startswith("-"):
            raise BadRequestData(f"invalid georel {text!r}: {name} must be a number of metres >= 0")
        value = float(raw)
        if value == float("inf"):
            raise BadRequestData(f"invalid georel {text!r}: {name} is too large")
        distances[name] = value
    if rel == "near" and not distances:
        raise BadRequestData(
            f"invalid georel {text!r}: near needs maxDistance==N or minDistance==N"
        )
    return rel, distances.get("maxDistance"), distances.get("minDistance")


def _geometry(kind: Any, coordinates: Any) -> dict[str, Any]:
    if not isinstance(kind, str) or kind.lower() not in _BY_LOWER:
        raise BadRequestData(
            f"invalid geometry {kind!r}: expected one of {', '.join(COORDINATE_GEOMETRY_TYPES)}"
        )
    if isinstance(coordinates, str):
        try:
            coordinates = json.loads(coordinates)
        except ValueError as exc:
            raise BadRequestData(
                f"coordinates must be a JSON array such as [139.76,35.68]: {exc}"
            ) from exc
    if not isinstance(coordinates, list):
        raise BadRequestData("coordinates must be a JSON array such as [139.76,35.68]")
    return validate_geometry(
        {"type": _BY_LOWER[kind.lower()], "coordinates": coordinates}, "geometry"
    )


def _build(georel: str, kind: Any, coordinates: Any, geoproperty: str | None) -> GeoQuery:
    rel, max_distance, min_distance = parse_georel(georel)
    geometry = _geometry(kind, coordinates)
    prop = "location" if geoproperty is None else check_name(geoproperty, "geoproperty")
    return GeoQuery(rel, geometry, prop, max_distance, min_distance)


def parse_geo_query(
    georel: str | None,
    geometry: str | None,
    coordinates: str | None,
    geoproperty: str | None = None,
) -> GeoQuery | None:
    """The geo-query of the ``georel``/``geometry``/``coordinates``/``geoproperty`` parameters.

    None when none of them is given; when only some are, the error names the missing
    ones (``geoproperty`` alone counts as a partial query: it would silently do nothing).
    ``coordinates`` is the JSON text of the coordinates array.
    """
    given = {"georel": georel, "geometry": geometry, "coordinates": coordinates}
    if all(v is None for v in given.values()):
        if geoproperty is not None:
            raise BadRequestData(
                "geoproperty needs a geo-query: missing georel, geometry, coordinates"
            )
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise BadRequestData(f"incomplete geo-query: missing {', '.join(missing)}")
    assert georel is not None
    return _build(georel, geometry, coordinates, geoproperty)


def geo_query_from_json(obj: Any) -> GeoQuery | None:
    """The geo-query of a JSON ``geoQ`` member (``POST /entityOperations/query``).

    ``{"georel": "near;maxDistance==10", "geometry": "Point", "coordinates": [lon, lat],
    "geoproperty": "location"}``; ``coordinates`` may also be JSON text. None for None.
    """
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise BadRequestData("geoQ must be a JSON object")
    missing = [k for k in ("georel", "geometry", "coordinates") if obj.get(k) is None]
    if missing:
        raise BadRequestData(f"incomplete geoQ: missing {', '.join(missing)}")
    georel, geoproperty = obj["georel"], obj.get("geoproperty")
    if not isinstance(georel, str):
        raise BadRequestData("geoQ georel must be a string")
    if geoproperty is not None and not isinstance(geoproperty, str):
        raise BadRequestData("geoQ geoproperty must be a string")
    return _build(georel, obj["geometry"], obj["coordinates"], geoproperty)


def resolve_geo(geo: GeoQuery, expand: Callable[[str], str]) -> GeoQuery:
    """The same geo-query with ``geoproperty`` expanded to the attribute IRI."""
    return replace(geo, geoproperty=expand(geo.geoproperty))
