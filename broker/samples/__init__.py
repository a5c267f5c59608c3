"""Sample entities for ``renkei demo``: a few facilities and sensors in Komae City, Tokyo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

SAMPLES_FILE = Path(__file__).with_name("komae.json")


def sample_entities() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = orjson.loads(SAMPLES_FILE.read_bytes())
    return data
