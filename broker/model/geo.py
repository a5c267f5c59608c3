"""GeoJSON geometry validation for GeoProperty values (RFC 7946, as MongoDB would take it)."""

from __future__ import annotations

from typing import Any, Final

from shapely.geometry import shape
from shapely.validation import explain_validity

from broker.errors import BadRequestData

#: GeoJSON geometry types given by coordinates (RFC 7946 section 3.1), in the RFC's order.
COORDINATE_GEOMETRY_TYPES: Final = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
)
#: Every GeoJSON geometry type: those given by coordinates, and GeometryCollection.
GEOMETRY_TYPES: Final = frozenset({*COORDINATE_GEOMETRY_TYPES, "GeometryCollection"})


def looks_like_geometry(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") in GEOMETRY_TYPES
        and ("coordinates" in value or "geometries" in value)
    )


def _position(pos: Any, where: str) -> None:
    if not isinstance(pos, list) or not 2 <= len(pos) <= 3:
        raise BadRequestData(f"{where}: a position must be [longitude, latitude(, altitude)]")
    for n in pos:
        if isinstance(n, bool) or not isinstance(n, (int, float)):
            raise BadRequestData(f"{where}: coordinates must be numbers")
    lon, lat = pos[0], pos[1]
    if not -180 <= lon <= 180 or not -90 <= lat <= 90:
        raise BadRequestData(f"{where}: position {pos} is outside longitude/latitude range")


def _positions(coords: Any, where: str, minimum: int) -> None:
    if not isinstance(coords, list) or len(coords) < minimum:
        raise BadRequestData(f"{where}: needs at least {minimum} positions")
    for pos in coords:
        _position(pos, where)


def _rings(rings: Any, where: str) -> None:
    if not isinstance(rings, list) or not rings:
        raise BadRequestData(f"{where}: a polygon needs at least one linear ring")
    for ring in rings:
        _positions(ring, where, 4)
        if ring[0] != ring[-1]:
            raise BadRequestData(
                f"{where}: linear ring is not closed (first and last positions differ)"
            )


def validate_geometry(value: Any, name: str = "GeoProperty") -> dict[str, Any]:
    """Check a GeoJSON geometry strictly and return it; raise BadRequestData if invalid."""
    where = f"{name} value"
    if not isinstance(value, dict) or value.get("type") not in GEOMETRY_TYPES:
        raise BadRequestData(
            f"{where} must be a GeoJSON geometry ({', '.join(sorted(GEOMETRY_TYPES))})"
        )
    kind = value["type"]
    if kind == "GeometryCollection":
        geoms = value.get("geometries")
        if not isinstance(geoms, list):
            raise BadRequestData(f"{where}: GeometryCollection needs 'geometries'")
        for g in geoms:
            validate_geometry(g, name)
        return value
    coords = value.get("coordinates")
    if kind == "Point":
        _position(coords, where)
    elif kind == "MultiPoint":
        _positions(coords, where, 1)
    elif kind == "LineString":
        _positions(coords, where, 2)
    elif kind == "MultiLineString":
        if not isinstance(coords, list) or not coords:
            raise BadRequestData(f"{where}: MultiLineString needs line strings")
        for line in coords:
            _positions(line, where, 2)
    elif kind == "Polygon":
        _rings(coords, where)
    else:  # MultiPolygon
        if not isinstance(coords, list) or not coords:
            raise BadRequestData(f"{where}: MultiPolygon needs polygons")
        for poly in coords:
            _rings(poly, where)
    if kind in ("Polygon", "MultiPolygon"):
        geom = shape(value)
        if not geom.is_valid:
            raise BadRequestData(f"{where}: invalid {kind}: {explain_validity(geom)}")
    return value
