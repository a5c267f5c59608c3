"""Sample data for ``renkei demo`` and the analyst notebooks, all in Komae City, Tokyo.

- ``komae.json``: a few facilities, a District and sensors (the demo's first entities).
- ``komae_gis.json``: AED locations, sensor devices and a day of water-level readings
  (one ``WaterLevelObserved`` entity per reading, linked to its device by ``refDevice``).
  ``sample_history()`` also gives each gauge the day as the history of its own
  ``waterLevel`` attribute (the temporal API's view of the same readings).
- ``komae_districts.geojson``: 町丁目-like district polygons in the e-Stat boundary
  attribute layout (``KEY_CODE``, ``S_NAME``, ...). Illustrative shapes, not survey data.
- ``komae_population.csv``: population per district in the standard 地域・年齢別人口
  column layout, keyed by ``地域コード`` = ``KEY_CODE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

SAMPLES_DIR = Path(__file__).parent
SAMPLES_FILE = SAMPLES_DIR / "komae.json"
GIS_SAMPLES_FILE = SAMPLES_DIR / "komae_gis.json"
DISTRICTS_FILE = SAMPLES_DIR / "komae_districts.geojson"
POPULATION_FILE = SAMPLES_DIR / "komae_population.csv"


def sample_entities() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = orjson.loads(SAMPLES_FILE.read_bytes())
    data.extend(orjson.loads(GIS_SAMPLES_FILE.read_bytes()))
    return data


def sample_history() -> list[dict[str, Any]]:
    """Temporal representations (``POST /temporal/entities`` bodies): per device, its
    readings as instances of ``waterLevel``, oldest first."""
    by_device: dict[str, list[dict[str, Any]]] = {}
    for ent in orjson.loads(GIS_SAMPLES_FILE.read_bytes()):
        if ent.get("type") == "WaterLevelObserved":
            device = ent["refDevice"]["object"]
            by_device.setdefault(device, []).append(ent["waterLevel"])
    return [
        {
            "id": device,
            "type": "Device",
            "waterLevel": sorted(readings, key=lambda r: str(r["observedAt"])),
        }
        for device, readings in sorted(by_device.items())
    ]
