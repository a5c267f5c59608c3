"""Data files shipped with Renkei: JSON-LD contexts and dataset definitions."""

from __future__ import annotations

from pathlib import Path

SCHEMAS_DIR = Path(__file__).resolve().parent
CONTEXTS_DIR = SCHEMAS_DIR / "contexts"
CORE_CONTEXT_FILE = CONTEXTS_DIR / "ngsi-ld-core-context-v1.9.jsonld"
RENKEI_CONTEXT_URL = "https://renkei.city/ns/renkei-v1.jsonld"
#: Contexts shipped with Renkei, served without network under their URL.
BUNDLED_CONTEXTS = {RENKEI_CONTEXT_URL: CONTEXTS_DIR / "renkei-v1.jsonld"}
DATASETS_DIR = SCHEMAS_DIR / "datasets"
