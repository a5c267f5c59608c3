"""District aggregates, entity frames, boundary files and layers (opendata.gis)."""

from __future__ import annotations

import io
import json
import math
import stat
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import matplotlib
import pandas as pd
import pytest
from shapely.geometry import Point, Polygon, box

from broker.samples import DISTRICTS_FILE, POPULATION_FILE
from opendata import gis

matplotlib.use("Agg")

ZONE_IX = "EPSG:6677"


def test_entities_become_typed_columns() -> None:
    entities: list[dict[str, Any]] = [
        {
            "id": "urn:ngsi-ld:Shelter:1",
            "type": "Shelter",
            "name": {"type": "LanguageProperty", "languageMap": {"ja": "第一小", "en": "No.1"}},
            "capacity": {"type": "Property", "value": 850, "unitCode": "IE"},
            "area": {"type": "Property", "value": 1200.5},
            "open": {"type": "Property", "value": True},
            "opened": {
                "type": "Property",
                "value": {"@type": "DateTime", "@value": "2026-04-01T09:00:00+09:00"},
            },
            "checked": {"type": "Property", "value": "2026-11-01T00:00:00Z"},
            "temperature": {
                "type": "Property",
                "value": 14.5,
                "observedAt": "2026-11-21T09:00:00Z",
            },
            "owner": {"type": "Relationship", "object": "urn:ngsi-ld:Org:city"},
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [139.578, 35.634]},
            },
        },
        {  # keyValues, with gaps and a second GeoProperty
            "id": "urn:ngsi-ld:Shelter:2",
            "type": "Shelter",
            "name": "第二小",
            "area": 900,
            "open": False,
            "checked": "2026-11-02T00:00:00+09:00",
            "entrance": {"type": "Point", "coordinates": [139.57, 35.63]},
        },
    ]
    gdf = gis.entities_to_geodataframe(entities)
    assert list(gdf["id"]) == ["urn:ngsi-ld:Shelter:1", "urn:ngsi-ld:Shelter:2"]
    assert list(gdf["name"]) == ["第一小", "第二小"]
    assert gdf["capacity"].dtype == "Int64"
    assert gdf["capacity"].isna().tolist() == [False, True]
    assert gdf["area"].dtype == "float64"
    assert gdf["open"].dtype == bool
    for col in ("opened", "checked", "temperature_observedAt"):
        assert isinstance(gdf[col].dtype, pd.DatetimeTZDtype), col
    assert gdf["checked"][1] == pd.Timestamp("2026-11-01T15:00:00Z")
    assert gdf["owner"][0] == "urn:ngsi-ld:Org:city"
    assert gdf.attrs["unitCode"] == {"capacity": "IE"}
    assert str(gdf.crs) == "EPSG:4326"
    assert gdf.geometry[0] == Point(139.578, 35.634)
    assert gdf.geometry[1] is None
    assert gdf["entrance"][1] == Point(139.57, 35.63)
    english = gis.entities_to_geodataframe(entities[:1], lang="en")
    assert english["name"][0] == "No.1"


@pytest.mark.parametrize(
    ("lon", "lat", "code", "epsg"),
    [
        (139.578, 35.634, None, 6677),  # Komae, Tokyo: IX
        (141.35, 43.06, None, 6680),  # Sapporo: XII
        (130.40, 33.59, None, 6670),  # Fukuoka: II
        (135.50, 34.69, None, 6674),  # Osaka: VI
        (132.46, 34.39, None, 6671),  # Hiroshima: III
        (127.68, 26.21, None, 6683),  # Naha: XV
        (140.47, 37.75, "072010", 6677),  # Fukushima City is IX by law, though east
        (140.47, 37.75, None, 6678),  # ... and X by geometry alone
        (142.19, 27.09, "134210", 6682),  # Ogasawara: XIV
    ],
)
def test_plane_rectangular_zone(lon: float, lat: float, code: str | None, epsg: int) -> None:
    assert gis.plane_rectangular_crs(lon, lat, code).to_epsg() == epsg


def _square(x: float, y: float, size: float = 1000.0) -> Polygon:
    return box(x, y, x + size, y + size)


@pytest.fixture
def two_districts() -> gpd.GeoDataFrame:
    """Two 1 km squares side by side near Komae, drawn in metres in zone IX."""
    return gpd.GeoDataFrame(
        {"code": ["A", "B"], "名前": ["甲町", "乙町"]},
        geometry=[_square(-36000, -40000), _square(-35000, -40000)],
        crs=ZONE_IX,
    ).to_crs("EPSG:4326")


def test_district_indicators(two_districts: gpd.GeoDataFrame) -> None:
    pts = [
        (-35900, -39900, 1.0),
        (-35500, -39500, 2.0),
        (-35200, -39100, 3.0),
        (-35000, -39500, 5.0),  # on the shared edge: belongs to A, the first
        (-34500, -39500, 4.0),  # B
        (-30000, -30000, 7.0),  # outside both
    ]
    facilities = gpd.GeoDataFrame(
        {"units": [p[2] for p in pts]},
        geometry=[Point(p[0], p[1]) for p in pts],
        crs=ZONE_IX,
    ).to_crs("EPSG:4326")
    population = pd.DataFrame({"地域コード": ["A", "B"], "総人口": [8000, 0]})
    out = gis.district_indicators(
        two_districts,
        facilities,
        key="code",
        prefix="aed",
        attribute="units",
        population=population,
    )
    assert out.attrs == {"measured_crs": ZONE_IX, "outside": 1}
    assert str(out.crs) == "EPSG:4326"
    assert out["area_km2"].round(6).tolist() == [1.0, 1.0]
    assert out["aed_count"].tolist() == [4, 1]
    assert out["aed_units_sum"].tolist() == [11.0, 4.0]
    assert out["aed_units_mean"].tolist() == [2.75, 4.0]
    assert out["population"].tolist() == [8000, 0]
    assert out["aed_per_1000"][0] == pytest.approx(0.5)
    assert pd.isna(out["aed_per_1000"][1])  # no residents: no rate, not infinity
    # centroid of A is (-35500, -39500): a facility stands there
    assert out["aed_nearest_m"][0] == pytest.approx(0.0, abs=0.01)
    # centroid of B is (-34500, -39500): also a facility
    assert out["aed_nearest_m"][1] == pytest.approx(0.0, abs=0.01)
    assert out["名前"].tolist() == ["甲町", "乙町"]


def test_nearest_distance_reaches_into_other_districts(
    two_districts: gpd.GeoDataFrame,
) -> None:
    facilities = gpd.GeoDataFrame(
        geometry=[Point(-35500, -39500 + 300), Point(-30000, -39500)], crs=ZONE_IX
    ).to_crs("EPSG:4326")
    out = gis.district_indicators(two_districts, facilities, key="code")
    assert out["facility_count"].tolist() == [1, 0]
    assert out["facility_nearest_m"][0] == pytest.approx(300.0, abs=0.05)
    assert out["facility_nearest_m"][1] == pytest.approx(math.hypot(1000, 300), abs=0.05)
    empty = gis.district_indicators(two_districts, facilities.iloc[0:0], key="code")
    assert empty["facility_count"].tolist() == [0, 0]
    assert empty["facility_nearest_m"].isna().all()


def test_read_shapefile_with_cp932_dbf_and_no_cpg(
    tmp_path: Path, two_districts: gpd.GeoDataFrame
) -> None:
    shp = tmp_path / "r2ka13219.shp"
    two_districts.to_crs("EPSG:6668").rename(columns={"名前": "S_NAME"}).assign(
        KEY_CODE=["13219001001", "13219002001"]
    ).to_file(shp, encoding="cp932")
    shp.with_suffix(".cpg").unlink(missing_ok=True)
    assert "甲町".encode("cp932") in shp.with_suffix(".dbf").read_bytes()
    got = gis.read_districts(shp, key="KEY_CODE")
    assert got["S_NAME"].tolist() == ["甲町", "乙町"]
    archive = tmp_path / "A002005212020DDSWC13219.zip"  # as e-Stat ships it
    with zipfile.ZipFile(archive, "w") as zf:
        for part in sorted(tmp_path.glob("r2ka13219.*")):
            zf.write(part, part.name)
    assert gis.read_districts(archive)["S_NAME"].tolist() == ["甲町", "乙町"]
    assert got["KEY_CODE"].tolist() == ["13219001001", "13219002001"]
    assert str(got.crs) == "EPSG:4326"
    assert got.geometry[0].normalize().equals_exact(two_districts.geometry[0].normalize(), 1e-7)


def test_read_districts_reprojects_and_checks_key(
    tmp_path: Path, two_districts: gpd.GeoDataFrame
) -> None:
    path = tmp_path / "districts.gpkg"
    two_districts.to_crs(ZONE_IX).to_file(path)
    got = gis.read_districts(path, key="code")
    assert str(got.crs) == "EPSG:4326"
    assert got.geometry[1].normalize().equals_exact(two_districts.geometry[1].normalize(), 1e-7)
    with pytest.raises(KeyError, match="no column 'KEY'"):
        gis.read_districts(path, key="KEY")
    dup = tmp_path / "dup.geojson"
    two_districts.assign(code=["A", "A"]).to_file(dup)
    with pytest.raises(ValueError, match="repeats"):
        gis.read_districts(dup, key="code")


def test_read_population_cp932_with_separators() -> None:
    raw = '地域コード,地域名,総人口\n001,甲町,"4,315 "\n002,乙町,\n'.encode("cp932")
    table = gis.read_population(raw)
    assert table["地域コード"].tolist() == ["001", "002"]
    assert table["総人口"].tolist()[0] == 4315
    assert pd.isna(table["総人口"][1])


def test_sample_layer_files(tmp_path: Path) -> None:
    districts = gis.read_districts(DISTRICTS_FILE, key="KEY_CODE")
    population = gis.read_population(POPULATION_FILE)
    facilities = gpd.GeoDataFrame(geometry=[districts.geometry[0].centroid], crs="EPSG:4326")
    layer = gis.district_indicators(
        districts, facilities, key="KEY_CODE", prefix="aed", population=population
    )
    assert layer["population"].sum() == population["総人口"].sum()

    fc = json.loads(gis.to_geojson_bytes(layer, id_column="KEY_CODE"))
    assert fc["type"] == "FeatureCollection"
    first = fc["features"][0]
    assert first["id"] == "13219001001"
    assert first["properties"]["S_NAME"] == "猪方一丁目"
    assert first["properties"]["aed_count"] == 1
    lon, lat = first["geometry"]["coordinates"][0][0]
    assert 139 < lon < 140
    assert 35 < lat < 36

    raw = gis.to_csv_bytes(layer)
    assert raw.startswith(b"\xef\xbb\xbf")
    table = pd.read_csv(io.BytesIO(raw), encoding="utf-8-sig", dtype={"KEY_CODE": str})
    assert table["KEY_CODE"][0] == "13219001001"
    assert {"経度_longitude", "緯度_latitude", "aed_per_1000"} <= set(table.columns)

    written = gis.write_layer(layer, tmp_path / "aed.geojson", id_column="KEY_CODE")
    # the hub serving the layer runs as another user: the file is readable by everyone
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    published = gis.publish_layer(
        layer, tmp_path / "layers", "aed-per-district", id_column="KEY_CODE"
    )
    assert stat.S_IMODE(Path(published).stat().st_mode) == 0o644
    back = gpd.read_file(written)
    assert len(back) == len(districts)
    assert set(gis.layer_resources(layer)) == {"geojson", "csv"}
    with pytest.raises(ValueError, match=r"\.geojson or \.csv"):
        gis.write_layer(layer, tmp_path / "aed.shp")


def test_japanese_labels_render_with_a_cjk_font(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    name = gis.use_japanese_font()
    assert "CJK" in name or "IPA" in name or "Gothic" in name
    fig, ax = plt.subplots()
    ax.set_title("狛江市 AED 設置数")  # a missing glyph would warn, and warnings fail
    fig.savefig(tmp_path / "title.png")
    plt.close(fig)
    assert (tmp_path / "title.png").stat().st_size > 0
