"""GIS for analysts: the hub's entities as GeoDataFrames, district indicators, layers.

The usual path, from a notebook or a publishing job::

    from opendata.client import Client
    from opendata import gis

    with Client("http://127.0.0.1:1026") as hub:
        aeds = gis.load_entities(hub, "AEDLocation")
    districts = gis.read_districts("r2ka13219.shp", key="KEY_CODE")   # e-Stat, CP932 DBF
    population = gis.read_population("population.csv")                # 地域コード, 総人口
    layer = gis.district_indicators(
        districts, aeds, key="KEY_CODE", prefix="aed", population=population
    )
    gis.write_layer(layer, "aed_per_district.geojson")

``district_indicators`` measures in the JGD2011 plane rectangular zone of the area and
returns EPSG:4326; ``layer_resources`` gives the GeoJSON and CSV bytes to publish as
CKAN resources, and ``publish_layer`` puts the layer where ``/ogc`` serves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opendata.gis.aggregate import (
    assign_districts,
    district_indicators,
    nearest_distance,
    per_capita,
    projected_crs,
)
from opendata.gis.crs import plane_rectangular_crs, zone_for
from opendata.gis.districts import read_districts, read_population
from opendata.gis.fonts import use_japanese_font
from opendata.gis.frames import entities_to_geodataframe
from opendata.gis.output import (
    layer_resources,
    publish_layer,
    to_csv_bytes,
    to_feature_collection,
    to_geojson_bytes,
    write_layer,
)

if TYPE_CHECKING:
    import geopandas as gpd

    from opendata.client import Client

__all__ = [
    "assign_districts",
    "district_indicators",
    "entities_to_geodataframe",
    "layer_resources",
    "load_entities",
    "nearest_distance",
    "per_capita",
    "plane_rectangular_crs",
    "projected_crs",
    "publish_layer",
    "read_districts",
    "read_population",
    "to_csv_bytes",
    "to_feature_collection",
    "to_geojson_bytes",
    "use_japanese_font",
    "write_layer",
    "zone_for",
]


def load_entities(
    hub: Client | str,
    entity_type: str | Sequence[str],
    *,
    geometry_property: str = "location",
    lang: str | None = "ja",
    **params: Any,
) -> gpd.GeoDataFrame:
    """Entities of a type as a GeoDataFrame, read through the hub's NGSI-LD API.

    ``hub`` is a ``Client`` or the hub's base URL; further keywords are query
    parameters (``q``, ``near``/``max_distance``, ``within``, ``attrs``, ...).
    """
    from opendata.client import Client

    if isinstance(hub, str):
        with Client(hub) as client:
            return client.to_geodataframe(
                entity_type, geometry_property=geometry_property, lang=lang, **params
            )
    return hub.to_geodataframe(
        entity_type, geometry_property=geometry_property, lang=lang, **params
    )
