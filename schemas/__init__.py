"""Data files shipped with Renkei: JSON-LD contexts and dataset definitions."""

from __future__ import annotations

from pathlib import Path

SCHEMAS_DIR = Path(__file__).resolve().parent
CONTEXTS_DIR = SCHEMAS_DIR / "contexts"
CORE_CONTEXT_FILE = CONTEXTS_DIR / "ngsi-ld-core-context-v1.9.jsonld"
#: The standard datasets' context: every term is the NGSI-LD default ``@vocab`` IRI
#: (``https://uri.etsi.org/ngsi-ld/default-context/AEDLocation``), so a client that
#: sends no ``Link`` header (and NGSI v2) reads the same names; the context only spells
#: the full IRIs out for clients that want them.
RENKEI_CONTEXT_URL = "https://renkei.city/ns/renkei-v2.jsonld"
#: Renkei 1's context (types and attributes under ``https://renkei.city/ns/``): kept so
#: old clients still resolve it and ``renkei migrate-vocabulary`` can read old stores.
RENKEI_V1_CONTEXT_URL = "https://renkei.city/ns/renkei-v1.jsonld"
#: Contexts shipped with Renkei, served without network under their URL.
BUNDLED_CONTEXTS = {
    RENKEI_CONTEXT_URL: CONTEXTS_DIR / "renkei-v2.jsonld",
    RENKEI_V1_CONTEXT_URL: CONTEXTS_DIR / "renkei-v1.jsonld",
}
DATASETS_DIR = SCHEMAS_DIR / "datasets"
