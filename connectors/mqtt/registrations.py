"""The agent's context source registrations at the broker (NGSI-LD clauses 4.3.6, 5.2.9).

With ``iota_command_mode=registration`` the agent tells the broker, as iotagent-node-lib
does in NGSI-LD mode, that it is the context source of its devices' commands and lazy
attributes: the broker then forwards a client's write of a command
(``PATCH /entities/{id}/attrs``, ``/attrs/{name}``, a merge or a replace) and a read of a
lazy attribute (``GET /entities/{id}``, ``GET /entities``) to the agent's own NGSI-LD
endpoints (``connectors.mqtt.source``).

Each registration is ``exclusive``, as iotagent-node-lib makes them: those attributes of
those entities live at the agent only; the broker never stores them, and refuses
(409 Conflict, clause 4.3.6.2) to write them itself through an operation the
registration does not take. Its ``operations`` are ``retrieveOps`` for lazy attributes
and ``updateOps`` with ``mergeEntity`` for commands, as iotagent-node-lib's, and
``appendAttrs`` (``POST /entities/{id}/attrs``, which clients of the subscription-based
commands use to send one); its ``endpoint`` is the agent's
public URL and its ``contextSourceInfo`` a header carrying the agent's secret, which
the broker sends with every forwarded request (and answers masked).

iotagent-node-lib makes one registration per device. The agent makes one per tenant,
entity type and set of lazy attributes and commands, listing every entity that has them:
a query by type is then forwarded once, not once per device, and deleting a device takes
its entity out of the registration (deleting the registration with its last entity).
Registration ids are derived from that key and the public URL, so creating one again is
an update, and replicas behind one Service agree.

The agent remembers what it registered. On its first pass it reads back the
registrations of its public URL in every tenant it serves (an earlier run may have left
some), and in ``subscription`` mode it removes them all.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from connectors.client import BrokerClient, BrokerError
from connectors.mqtt.registry import Resolved

log = logging.getLogger("renkei.iota")

#: The header the broker's forwarded requests carry the agent's secret in.
SOURCE_HEADER = "X-Renkei-Source-Token"
ID_PREFIX = "urn:ngsi-ld:ContextSourceRegistration:renkei-iota-"
CSR_TYPE = "ContextSourceRegistration"
#: Entity ids looked up per request when freeing attributes the broker holds.
CHUNK = 100
#: Seconds between two warnings about the same registration.
WARN_EVERY = 60.0

Key = tuple[str | None, str, frozenset[str], frozenset[str]]  # tenant, type, lazy, commands
Held = dict[str, tuple[str | None, dict[str, Any]]]  # registration id -> (tenant, document)


def _problem_type(exc: BrokerError) -> str:
    problem = exc.problem if isinstance(exc.problem, dict) else {}
    return str(problem.get("type", "")).rsplit("/", 1)[-1]


def entity_ids(doc: dict[str, Any] | None) -> set[str]:
    """The entity ids a registration document names."""
    out: set[str] = set()
    for info in (doc or {}).get("information") or ():
        for ent in info.get("entities") or ():
            if isinstance(ent, dict) and isinstance(ent.get("id"), str):
                out.add(ent["id"])
    return out


def property_names(doc: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for info in doc.get("information") or ():
        names.extend(n for n in info.get("propertyNames") or () if n not in names)
    return names


def _narrowed(doc: dict[str, Any], keep: set[str]) -> list[dict[str, Any]]:
    """``doc``'s information with only the entities of ``keep``."""
    out = []
    for info in doc.get("information") or ():
        ents = [e for e in info.get("entities") or () if e.get("id") in keep]
        if ents:
            out.append({**info, "entities": ents})
    return out


class SourceRegistrations:
    """Keeps the agent's registrations at the broker in line with its devices."""

    def __init__(
        self,
        public_url: str,
        token: str,
        client: Callable[[str | None], BrokerClient],
        *,
        enabled: bool = True,
    ) -> None:
        """``enabled`` False (subscription mode): every registration of this agent's
        public URL is removed, none made."""
        self.public_url = public_url
        self.token = token
        self.client = client
        self.enabled = enabled
        #: registration id -> (tenant, document) as the broker has it, to our knowledge
        self.held: Held = {}
        self._adopted: set[str | None] = set()
        self._warned: dict[str, float] = {}

    # -- what should be registered ------------------------------------------------------------

    def registration_id(self, key: Key) -> str:
        tenant, entity_type, lazy, commands = key
        text = "|".join(
            [tenant or "", entity_type, ",".join(sorted(lazy)), ",".join(sorted(commands))]
        )
        digest = hashlib.sha256(f"{text}|{self.public_url}".encode()).hexdigest()[:24]
        return ID_PREFIX + digest

    def document(self, key: Key, ids: Iterable[str]) -> dict[str, Any]:
        _tenant, entity_type, lazy, commands = key
        operations = []
        if lazy:
            operations.append("retrieveOps")
        if commands:
            operations += ["updateOps", "mergeEntity", "appendAttrs"]
        return {
            "id": self.registration_id(key),
            "type": CSR_TYPE,
            "description": f"IoT agent: commands and lazy attributes of {entity_type} devices",
            "information": [
                {
                    "entities": [{"id": eid, "type": entity_type} for eid in sorted(ids)],
                    "propertyNames": sorted(lazy | commands),
                }
            ],
            "mode": "exclusive",
            "operations": operations,
            "endpoint": self.public_url,
            "contextSourceInfo": [{"key": SOURCE_HEADER, "value": self.token}],
        }

    def wanted(self, devices: Iterable[Resolved]) -> Held:
        """The registrations the devices call for, by id."""
        groups: dict[Key, set[str]] = {}
        if self.enabled:
            for d in devices:
                lazy = frozenset(m.name for m in d.lazy.values())
                if lazy or d.commands:
                    key = (d.tenant, d.entity_type, lazy, frozenset(d.commands))
                    groups.setdefault(key, set()).add(d.entity_id)
        return {
            self.registration_id(key): (key[0], self.document(key, ids))
            for key, ids in groups.items()
        }

    # -- bringing the broker in line ----------------------------------------------------------

    async def sync(self, devices: Iterable[Resolved], tenants: Iterable[str | None]) -> bool:
        """Create, narrow, update and delete registrations until the broker holds what the
        devices call for; True when all was done (else call again later)."""
        wanted = self.wanted(devices)
        done = await self._adopt({*tenants, *(t for t, _ in wanted.values())})
        # first take out what no registration should hold any more, so that nothing
        # registered twice (two exclusive registrations of one attribute) is ever asked for
        for reg_id, (tenant, doc) in sorted(self.held.items()):
            new = wanted.get(reg_id)
            keep = entity_ids(doc) & entity_ids(new[1] if new else None)
            if keep == entity_ids(doc):
                continue
            try:
                if keep:
                    info = _narrowed(doc, keep)
                    await self.client(tenant).update_registration(reg_id, {"information": info})
                    self.held[reg_id] = (tenant, {**doc, "information": info})
                else:
                    await self.client(tenant).delete_registration(reg_id)
                    del self.held[reg_id]
                    log.info("registration %s removed: no device has it any more", reg_id)
            except BrokerError as exc:
                self._warn(reg_id, f"cannot narrow or remove registration {reg_id}: {exc}")
                done = False
        for reg_id, (tenant, doc) in sorted(wanted.items()):
            if self.held.get(reg_id) == (tenant, doc):
                continue
            try:
                await self._put(tenant, doc)
            except BrokerError as exc:
                hint = ""
                if exc.status == 403:
                    hint = (
                        " (the agent's key at the broker needs the admin role in this tenant"
                        " to register; or set RENKEI_IOTA_COMMAND_MODE=subscription)"
                    )
                self._warn(reg_id, f"cannot register commands/lazy attributes: {exc}{hint}")
                done = False
                continue
            self.held[reg_id] = (tenant, doc)
        return done

    async def _adopt(self, tenants: Iterable[str | None]) -> bool:
        """Learn the registrations of this public URL an earlier run left in ``tenants``
        (once per tenant), so that those no device calls for are removed."""
        done = True
        for tenant in sorted(set(tenants) - self._adopted, key=lambda t: t or ""):
            try:
                found = await self.client(tenant).query_registrations(
                    q=f'endpoint=="{self.public_url}"'
                )
            except BrokerError as exc:
                if not self.enabled and exc.status is not None and exc.status < 500:
                    self._adopted.add(tenant)  # a broker without registrations: none to remove
                    continue
                self._warn(f"adopt {tenant}", f"cannot read the agent's registrations: {exc}")
                done = False
                continue
            for doc in found:
                reg_id = doc.get("id")
                if isinstance(reg_id, str) and reg_id.startswith(ID_PREFIX):
                    self.held.setdefault(reg_id, (tenant, doc))
            self._adopted.add(tenant)
        return done

    async def _put(self, tenant: str | None, doc: dict[str, Any]) -> None:
        """Create ``doc``, or update it when it exists; when the broker refuses because it
        holds some of the registered attributes itself (left from commands through
        subscriptions), remove them there and try once more."""
        client = self.client(tenant)
        for attempt in (1, 2):
            try:
                try:
                    await client.create_registration(doc)
                except BrokerError as exc:
                    if exc.status != 409 or _problem_type(exc) != "AlreadyExists":
                        raise
                    patch = {k: v for k, v in doc.items() if k not in ("id", "type")}
                    await client.update_registration(doc["id"], patch)
                return
            except BrokerError as exc:
                if attempt == 2 or exc.status != 409 or _problem_type(exc) != "Conflict":
                    raise
                if not await self._free(client, doc):
                    raise

    async def _free(self, client: BrokerClient, doc: dict[str, Any]) -> bool:
        """Delete at the broker the registered attributes it holds of the registered
        entities; True if there were any."""
        names = property_names(doc)
        ids = sorted(entity_ids(doc))
        freed = False
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            held = [
                ent
                async for ent in client.query(
                    id=",".join(chunk), attrs=",".join(names), local="true"
                )
            ]
            for ent in held:
                for name in names:
                    if name in ent:
                        await client.delete_attribute(str(ent["id"]), name, local="true")
                        log.info(
                            "attribute %s of %s removed at the broker: it is served by the"
                            " agent now",
                            name,
                            ent["id"],
                        )
                        freed = True
        return freed

    def _warn(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_EVERY) >= WARN_EVERY:
            self._warned[key] = now
            log.warning("%s", message)
