"""Broker settings: one pydantic-settings class, built at start-up by ``get_settings``.

Every field can be set from the environment with the ``RENKEI_`` prefix
(``RENKEI_STORE``, ``RENKEI_PORT``, ``RENKEI_CONTEXT_PRELOAD`` ...). The CLI passes its
options as overrides, so a flag wins over the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from broker.outbound import DEFAULT_DENY, Rules

#: A list setting given in the environment as comma-separated items or a JSON array.
ListSetting = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RENKEI_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(1026, ge=1, le=65535)
    store: str = "sqlite:///./renkei.db"
    #: JSON file mapping @context URLs to local files (paths relative to the file).
    context_preload: Path | None = None
    #: Base URL this broker is reached at; used in hosted @context URLs.
    public_url: str | None = None

    # Remote @context retrieval.
    context_fetch_timeout: float = Field(5.0, gt=0)
    context_max_bytes: int = Field(1_000_000, gt=0)
    context_cache_size: int = Field(256, gt=0)
    #: any: fetch remote contexts (subject to the outbound policy); allowlist: only from
    #: hosts RENKEI_OUTBOUND_ALLOW names; off: never (bundled and preloaded contexts
    #: only, for networks without internet access such as LGWAN).
    context_fetch: Literal["any", "allowlist", "off"] = "any"
    #: Fetched remote contexts kept (in the store and in memory), at most: the least
    #: recently used are dropped beyond either bound.
    context_cache_max: int = Field(500, gt=0)
    context_cache_max_bytes: int = Field(20_000_000, gt=0)

    # Outbound policy for requests made on a user's behalf (remote @context,
    # notifications): IP addresses, networks, host names, .domains or "self".
    #: When set, only these destinations.
    outbound_allow: ListSetting = Field(default_factory=list)
    #: Never these destinations (when set, replaces the default list).
    outbound_deny: ListSetting = Field(default_factory=lambda: list(DEFAULT_DENY))

    # Request bounds.
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_json_depth: int = Field(32, gt=0)
    max_attributes: int = Field(1000, gt=0)

    # Process.
    #: Allocations between young-generation garbage collections in ``renkei serve``
    #: (Python's default is 700; 0 keeps it). Request payloads are mostly acyclic dicts
    #: freed by reference counting, so frequent collections only re-scan live entities in
    #: flight: at the default they cost a third of the batch upsert time (bench/README.md).
    gc_threshold: int = Field(10_000, ge=0)

    # Query bounds.
    #: GET /entities without type, attrs, q, scopeQ or a geo-query answers every entity of
    #: the tenant, paged, as Orion-LD does, instead of 400 (clause 5.7.2): for clients
    #: written for Orion-LD, which list or clear a broker that way.
    allow_unfiltered_queries: bool = False
    default_limit: int = Field(20, gt=0)
    max_limit: int = Field(1000, gt=0)
    max_batch: int = Field(1000, gt=0)

    # Attribute history (temporal API).
    #: Instances one temporal response holds at most; more gives 206 and Content-Range.
    temporal_max_instances: int = Field(10_000, gt=0)
    #: Days of history kept, by entity type or "tenant/type" (short names are expanded with
    #: the core context; "*" for any); 0 keeps no history for that type. JSON in the
    #: environment: RENKEI_HISTORY_RETENTION='{"AirQualityObserved": 400, "Building": 0}'.
    history_retention: dict[str, float] = Field(default_factory=dict)
    #: Seconds between runs of the retention job (0: never).
    history_expiry_interval: float = Field(3600.0, ge=0)
    #: Seconds between purges of expired transient entities (expiresAt); 0: never.
    #: Reads leave expired entities out at once; the purge frees their storage.
    entity_purge_interval: float = Field(60.0, ge=0)

    # Notifications.
    notification_timeout: float = Field(10.0, gt=0)
    notification_attempts: int = Field(5, ge=1)

    # Federation (context source registrations, distributed operations).
    #: Name this hub gives itself in the Via header of the requests it forwards; a
    #: request that comes back with it is a loop (508). Default: the public URL's
    #: host and port when set (shared by the replicas of one hub), else a name made up
    #: once and kept in the store (the same after a restart, and for every replica
    #: sharing the store).
    hub_id: str | None = None
    #: Seconds to wait for a context source, unless its registration's
    #: management.timeout says otherwise.
    federation_timeout: float = Field(5.0, gt=0)
    #: Seconds a context source that failed is left alone, unless its registration's
    #: management.cooldown says otherwise (0: asked again at once).
    federation_cooldown: float = Field(0.0, ge=0)
    #: The hub's own credentials for context sources: endpoint URL prefix -> headers
    #: sent with every request forwarded to an endpoint it starts (JSON in the
    #: environment: RENKEI_FEDERATION_HEADERS='{"https://chofu.example/": {"X-API-Key":
    #: "..."}}'). A registration's contextSourceInfo adds to (and wins over) them.
    federation_headers: dict[str, dict[str, str]] = Field(default_factory=dict)
    #: Entity maps of distributed queries (clause 5.2.39): seconds a map lives unless
    #: the query asks otherwise (entityMapLifetime), the most any may live (a PATCH of
    #: expiresAt included), entities one map holds at most, and maps one tenant keeps
    #: at most (one more drops the one expiring first). Expired maps are purged every
    #: entity_purge_interval seconds.
    entity_map_lifetime: float = Field(600.0, gt=0)
    entity_map_max_lifetime: float = Field(86_400.0, gt=0)
    entity_map_max_entries: int = Field(10_000, gt=0)
    entity_map_max_count: int = Field(1000, gt=0)

    # OGC API - Features (/ogc) and the map viewer (/viewer).
    #: Entity type -> attribute whose date-time value is a feature's time (JSON in the
    #: environment: RENKEI_OGC_TIME_PROPERTIES='{"WeatherObserved": "dateObserved"}');
    #: other types are matched by the observedAt of their attributes.
    ogc_time_properties: dict[str, str] = Field(default_factory=dict)
    #: Folder of *.geojson files, each served as one more collection (layer~{stem}).
    ogc_layers_dir: Path | None = None
    #: Seconds a computed collection extent is reused (writes through this process
    #: refresh it at once; this bounds staleness from other replicas).
    ogc_cache_ttl: float = Field(60.0, ge=0)
    #: Features in an /items page when the client sends no ``limit`` (the API definition
    #: at /ogc/api declares the same number).
    ogc_default_limit: int = Field(100, gt=0)
    #: Language of LanguageProperty values in /ogc when the client sends no ``lang``; the
    #: other languages follow as ``{name}_{tag}`` properties (``name_en``).
    ogc_language: str = Field("ja", min_length=1)
    #: Raster tile URL template of the viewer's basemap ({z}/{x}/{y}); none: a plain one.
    viewer_tiles_url: str | None = None
    viewer_tiles_attribution: str = ""

    # HTTP hygiene (broker/api/hygiene.py).
    #: Host names (and ``*.example.jp`` wildcards) requests may be addressed to; empty:
    #: any (a warning is logged when listening on a non-loopback address).
    allowed_hosts: ListSetting = Field(default_factory=list)
    #: Origins of browser apps allowed to call the API (CORS), with credentials; ``*``:
    #: any origin, without credentials. Empty: no cross-origin access.
    cors_origins: ListSetting = Field(default_factory=list)

    # Access control (broker.auth, docs in README "Access control").
    #: The auth file (YAML); none: access control is off (loopback only, see startup).
    auth_file: Path | None = None
    #: Audit log (JSON lines) of every accepted write and every refused request.
    audit_log: Path | None = None
    #: Start without an auth file on a non-loopback address, on purpose.
    insecure_no_auth: bool = False

    log_level: str = "info"
    #: "text", or "json": one JSON object per line (time, level, logger, message,
    #: request_id, tenant, principal) for log collectors
    log_format: Literal["text", "json"] = "text"
    #: Seconds from SIGTERM to exit, at most: requests in flight finish (new ones are
    #: refused), then the store and notification status are flushed. Below Kubernetes'
    #: default terminationGracePeriodSeconds (30).
    shutdown_timeout: float = Field(25.0, gt=0)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = [o if o == "*" else o.removesuffix("/") for o in value]
        for origin in origins:
            if origin != "*" and (
                not origin.startswith(("http://", "https://")) or origin.count("/") != 2
            ):
                raise ValueError(
                    f"CORS origins are scheme://host[:port] with no path or '*' (got {origin!r})"
                )
        return origins

    @field_validator("store")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "mongodb://", "mongodb+srv://")):
            raise ValueError(f"store must be sqlite:///PATH or mongodb://HOST (got {value!r})")
        return value

    @field_validator(
        "outbound_allow", "outbound_deny", "allowed_hosts", "cors_origins", mode="before"
    )
    @classmethod
    def _rule_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import orjson

                return orjson.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("outbound_allow", "outbound_deny")
    @classmethod
    def _valid_rules(cls, value: list[str]) -> list[str]:
        Rules.parse(value)  # raises ValueError naming a rule it cannot read
        return value

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def get_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with explicit (non-None) overrides on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
