"""Entity maps (ETSI GS CIM 009 v1.8.1/v1.9.1: data type clause 5.2.39, operations
clause 5.14, pagination clause 5.5.9.3, HTTP binding Table 6.4.3.2-1/-2): which
context sources (registrations) hold which entities of a distributed query.

An entity map is a document::

    {"id": "urn:ngsi-ld:EntityMap:…", "type": "EntityMap", "expiresAt": "…Z",
     "entityMap": {"<entity id>": ["<registration id>" | "@none", …]},
     "linkedMaps": {"<registration id>": "<the source's own entity map>"}}

``@none`` stands for this hub ("The key '@none' shall be used to refer to an Entity that
is held locally", clause 5.2.39). The query that creates a map fixes the set of
entities later pages are taken from (clause 5.5.9.3); ``broker.core.distributed`` does
the querying, this module keeps the maps.

Maps are kept where registrations are (``RegistrationStore``, kind ``entityMap``), per
tenant, so every store backend and every replica of the hub sees them. They are
bounded: a map holds at most ``max_entries`` entities, a tenant at most ``max_maps``
maps (creating one more drops the one expiring first), and a map lives at most
``max_lifetime`` seconds whatever the client asks for ("The actual expiresAt time of the
EntityMap shall be set by the Context Broker", Table 6.4.3.2-1). An expired map is gone:
reading it deletes it, and :meth:`EntityMapService.purge_expired` (run in the
background) deletes the others.

A map belongs to the principal that created it (when access control is on): another
principal neither sees it through ``/entityMaps`` nor pages with it, as another
tenant's data answers as missing.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from broker.auth.access import current as current_access
from broker.core.periodic import Purger
from broker.errors import BadRequestData, ResourceNotFound
from broker.model.entity import check_datetime, check_entity_id, id_segment
from broker.model.history import Duration
from broker.store.base import RegistrationKind, Store

log = logging.getLogger("renkei.entitymaps")

#: Where the maps live in the store (``RegistrationStore`` kind).
KIND: RegistrationKind = "entityMap"
#: The entity map member naming this hub (clause 5.2.39).
LOCAL = "@none"
#: Path of the entity map resources (Table 6.2-1).
BASE = "/ngsi-ld/v1/entityMaps"
#: Members a client may not set (output-only, clause 5.14.2.4: "ignored").
OUTPUT_ONLY = frozenset({"id", "type", "entityMap", "linkedMaps"})
_OWNER = "_owner"


def location(map_id: str) -> str:
    """The resource URI of a map, as the ``NGSILD-EntityMap`` header gives it."""
    return f"{BASE}/{id_segment(map_id)}"


def map_id_of(reference: str) -> str:
    """The map id a ``NGSILD-EntityMap`` request header names: the resource URI this hub
    gives (relative or absolute, ``…/entityMaps/<id>``) or the bare id. BadRequestData
    when that is no URI."""
    ref = reference.strip()
    marker = "/entityMaps/"
    if marker in ref:
        ref = unquote(ref.split(marker, 1)[1].split("?", 1)[0])
    return check_entity_id(ref, "entity map id")


def lifetime_of(text: str | None) -> float | None:
    """Seconds of an ``entityMapLifetime`` (ISO 8601 duration; a month is 30 days)."""
    if text is None:
        return None
    d = Duration.parse(text)
    return d.months * 30 * 86_400 + d.us / 1_000_000


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _epoch(text: Any) -> float:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0  # unreadable: expired


def expired(doc: dict[str, Any], now: float | None = None) -> bool:
    return _epoch(doc.get("expiresAt")) <= (time.time() if now is None else now)


def _owner() -> str | None:
    access = current_access()
    return None if access is None else access.principal.name


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A map as clause 5.2.39 shows it (without what the hub keeps for itself)."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


class EntityMapService:
    """Entity maps of a hub's tenants (see the module docstring).

    Maps can be large (thousands of entity ids), so the service does not read a
    tenant's maps to bound them: it keeps an index of their ids and expiry times, read
    from the store once per tenant and kept up to date with what this process does.
    The background job deletes what the index says has expired and rereads the store
    every ``rescan`` runs, so maps other replicas made are bounded and purged too."""

    def __init__(
        self,
        store: Store,
        *,
        lifetime: float = 600.0,
        max_lifetime: float = 86_400.0,
        max_entries: int = 10_000,
        max_maps: int = 1000,
        rescan: int = 60,
    ) -> None:
        self.store = store
        self.lifetime = lifetime
        self.max_lifetime = max_lifetime
        self.max_entries = max_entries
        self.max_maps = max_maps
        self.rescan = rescan
        self._purger = Purger(
            self.purge_expired, what="entity maps", task_name="renkei-entitymaps", wait_first=True
        )
        #: tenant -> map id -> expiry (epoch seconds), for the tenants read so far
        self._index: dict[str, dict[str, float]] = {}
        self._runs = 0

    def _expiry(self, lifetime: float | None) -> float:
        wanted = self.lifetime if lifetime is None else lifetime
        return time.time() + max(1.0, min(wanted, self.max_lifetime))

    async def _known(self, tenant: str, *, reread: bool = False) -> dict[str, float]:
        """The index of a tenant's maps (read from the store the first time)."""
        index = self._index.get(tenant)
        if index is None or reread:
            docs = await self.store.list_registrations(tenant, KIND)
            index = {d["id"]: _epoch(d.get("expiresAt")) for d in docs}
            self._index[tenant] = index
        return index

    async def _drop(self, tenant: str, map_id: str) -> None:
        await self.store.delete_registration(tenant, KIND, map_id)
        self._index.get(tenant, {}).pop(map_id, None)

    async def create(
        self,
        tenant: str,
        entries: dict[str, list[str]],
        linked: dict[str, str],
        *,
        lifetime: float | None = None,
    ) -> dict[str, Any]:
        """Store a new map of ``entries`` (entity id -> holders, ``@none`` for this
        hub) and return it; the expired maps of the tenant, then those expiring first,
        make room."""
        index = await self._known(tenant)
        now = time.time()
        for map_id in [m for m, at in index.items() if at <= now]:
            await self._drop(tenant, map_id)
        while len(index) >= self.max_maps:
            await self._drop(tenant, min(index, key=index.__getitem__))
        at = self._expiry(lifetime)
        doc: dict[str, Any] = {
            "id": f"urn:ngsi-ld:EntityMap:{uuid.uuid4().hex}",
            "type": "EntityMap",
            "expiresAt": _iso(at),
            "entityMap": dict(list(entries.items())[: self.max_entries]),
            "linkedMaps": linked,
            _OWNER: _owner(),
        }
        await self.store.put_registration(tenant, KIND, doc, create=True)
        index[doc["id"]] = at
        return doc

    async def find(self, tenant: str, map_id: str) -> dict[str, Any] | None:
        """The live map, or None: unknown, expired (then deleted) or another
        principal's."""
        doc = await self.store.get_registration(tenant, KIND, map_id)
        if doc is None:
            self._index.get(tenant, {}).pop(map_id, None)
            return None
        if expired(doc):
            await self._drop(tenant, map_id)
            return None
        if doc.get(_OWNER) != _owner():
            return None
        if tenant in self._index:  # another replica's map, or its new expiry
            self._index[tenant][map_id] = _epoch(doc.get("expiresAt"))
        return doc

    async def get(self, tenant: str, map_id: str) -> dict[str, Any]:
        """Retrieve EntityMap (clause 5.14.1.4): BadRequestData for an id that is no
        URI, ResourceNotFound for one this hub does not know."""
        check_entity_id(map_id, "entity map id")
        doc = await self.find(tenant, map_id)
        if doc is None:
            raise ResourceNotFound(f"entity map {map_id} not found")
        return doc

    async def save(self, tenant: str, doc: dict[str, Any]) -> None:
        """Store a map changed while paging (entities that no longer fit removed)."""
        with contextlib.suppress(ResourceNotFound):  # deleted meanwhile: stays deleted
            await self.store.put_registration(tenant, KIND, doc, create=False)

    async def update(self, tenant: str, map_id: str, fragment: Any) -> None:
        """Update EntityMap (clause 5.14.2.4): the members given replace the map's;
        output-only ones are ignored. ``expiresAt`` is the one a client may set (a
        DateTime, at most ``max_lifetime`` from now)."""
        doc = await self.get(tenant, map_id)
        if not isinstance(fragment, dict):
            raise BadRequestData("an entity map fragment is a JSON object")
        unknown = sorted(k for k in fragment if k not in OUTPUT_ONLY | {"expiresAt", "@context"})
        if unknown:
            raise BadRequestData(f"entity maps have no member(s) {', '.join(unknown)}")
        if "expiresAt" in fragment:
            text = check_datetime(fragment["expiresAt"], "expiresAt")
            at = min(_epoch(text), time.time() + self.max_lifetime)
            doc["expiresAt"] = _iso(at)
            if tenant in self._index:
                self._index[tenant][map_id] = at
        await self.save(tenant, doc)

    async def delete(self, tenant: str, map_id: str) -> None:
        """Delete EntityMap (clause 5.14.3.4)."""
        await self.get(tenant, map_id)
        await self._drop(tenant, map_id)

    async def purge_expired(self) -> int:
        """Delete the expired maps this process knows of (rereading every tenant's
        from the store every ``rescan`` runs); how many there were."""
        reread = self._runs % self.rescan == 0
        self._runs += 1
        tenants = set(self._index)
        if reread:
            tenants |= set(await self.store.tenants()) | {""}
        gone = 0
        now = time.time()
        for tenant in sorted(tenants):
            index = await self._known(tenant, reread=reread)
            for map_id in [m for m, at in index.items() if at <= now]:
                await self._drop(tenant, map_id)
                gone += 1
        return gone

    def start_purge(self, interval: float) -> None:
        """Run :meth:`purge_expired` every ``interval`` seconds (0: never)."""
        self._purger.start(interval)

    async def aclose(self) -> None:
        await self._purger.aclose()
