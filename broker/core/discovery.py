"""Type and attribute discovery (clause 5.7.5-5.7.10), compacted with the request context."""

from __future__ import annotations

import uuid
from typing import Any

from broker.errors import ResourceNotFound
from broker.jsonld.context import TermMap
from broker.model.store import Discovery
from broker.store.base import EntityStore


class DiscoveryService:
    def __init__(self, store: EntityStore) -> None:
        self.store = store

    async def _stats(self, tenant: str) -> Discovery:
        if tenant and not await self.store.tenant_exists(tenant):
            return Discovery(types={}, attributes={}, type_attributes={})
        return await self.store.discovery(tenant)

    async def types(self, tenant: str, tm: TermMap, *, details: bool) -> Any:
        stats = await self._stats(tenant)
        names = sorted(stats.types)
        if not details:
            return {
                "id": f"urn:ngsi-ld:EntityTypeList:{uuid.uuid4()}",
                "type": "EntityTypeList",
                "typeList": sorted(tm.compact(t) for t in names),
            }
        return [
            {
                "id": t,
                "type": "EntityType",
                "typeName": tm.compact(t),
                "attributeNames": sorted(
                    tm.compact(a) for (ty, a) in stats.type_attributes if ty == t
                ),
            }
            for t in names
        ]

    async def type_info(self, tenant: str, tm: TermMap, type_name: str) -> dict[str, Any]:
        stats = await self._stats(tenant)
        iri = tm.expand(type_name)
        if iri not in stats.types:
            raise ResourceNotFound(f"no entity of type {type_name}")
        return {
            "id": iri,
            "type": "EntityTypeInfo",
            "typeName": tm.compact(iri),
            "entityCount": stats.types[iri],
            "attributeDetails": [
                {
                    "id": attr,
                    "type": "Attribute",
                    "attributeName": tm.compact(attr),
                    "attributeTypes": sorted(kinds),
                }
                for (ty, attr), kinds in sorted(stats.type_attributes.items())
                if ty == iri
            ],
        }

    def _attribute(self, stats: Discovery, tm: TermMap, attr: str) -> dict[str, Any]:
        kinds: set[str] = set()
        types: set[str] = set()
        for (ty, a), ks in stats.type_attributes.items():
            if a == attr:
                kinds |= ks
                types.add(ty)
        return {
            "id": attr,
            "type": "Attribute",
            "attributeName": tm.compact(attr),
            "attributeCount": stats.attributes[attr],
            "attributeTypes": sorted(kinds),
            "typeNames": sorted(tm.compact(t) for t in types),
        }

    async def attributes(self, tenant: str, tm: TermMap, *, details: bool) -> Any:
        stats = await self._stats(tenant)
        names = sorted(stats.attributes)
        if not details:
            return {
                "id": f"urn:ngsi-ld:AttributeList:{uuid.uuid4()}",
                "type": "AttributeList",
                "attributeList": sorted(tm.compact(a) for a in names),
            }
        # the list form leaves out the optional counts; /attributes/{name} has them all
        return [
            {
                k: v
                for k, v in self._attribute(stats, tm, a).items()
                if k not in ("attributeCount", "attributeTypes")
            }
            for a in names
        ]

    async def attribute_info(self, tenant: str, tm: TermMap, name: str) -> dict[str, Any]:
        stats = await self._stats(tenant)
        iri = tm.expand(name)
        if iri not in stats.attributes:
            raise ResourceNotFound(f"no entity has an attribute {name}")
        return self._attribute(stats, tm, iri)
