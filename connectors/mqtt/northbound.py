"""Northbound: measures coalesced into one batched history write per short window.

Every measure lands in the current window as instances of its entity's attributes,
each with its own ``observedAt``: nothing is merged away. A window is written when it
is ``window`` seconds old or holds ``max_entities`` entities, as one
``/temporal/entityOperations/upsert`` per tenant (split so that no request carries
more than ``MAX_INSTANCES`` instances): the broker keeps every instance in the
attribute history and makes each attribute's newest instance by ``observedAt`` its
current value, so measures that arrive late or out of order (several agents, a
device's backlog) never overwrite a newer value. Attributes without ``observedAt``
(static attributes) keep only their last value of the window.

Nothing is acknowledged to the MQTT broker before the NGSI-LD broker accepted the
write: while it is down (or refuses the agent's credentials), the write is retried with backoff and new measures wait in
memory up to ``capacity``. Beyond that QoS 0 measures are dropped and counted; QoS 1
measures are bounded by the MQTT receive maximum instead, and stay unacknowledged
until written (the MQTT broker redelivers them if the agent dies meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.client import BatchOutcome, BrokerError
from connectors.mqtt.metrics import Metrics

log = logging.getLogger("renkei.iota")

Ack = Callable[[], None]
Writer = Callable[[str | None, list[dict[str, Any]]], Awaitable[BatchOutcome]]
Key = tuple[str | None, str]  # (tenant, entity id)

MAX_BACKOFF = 5.0
#: Client errors of a write that keep its measures for another try.
_KEPT = (401, 429)
#: Instances in one request at most: a window grown while the broker was down is sent
#: in several requests, in order, each well under the broker's body size limit.
MAX_INSTANCES = 5000


@dataclass
class _Entity:
    """One entity's share of a window: its attributes' instances, in arrival order."""

    type: str
    scope: str | None
    attrs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    measures: int = 0
    instances: int = 0


@dataclass
class _Window:
    entities: dict[Key, _Entity] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    measures: int = 0
    opened: float = 0.0


def _requests(entities: dict[Key, _Entity], keys: list[Key]) -> list[list[tuple[Key, Any]]]:
    """The temporal entities of ``keys``, cut into requests of at most MAX_INSTANCES
    instances; an entity with more is split across requests (in order)."""
    out: list[list[tuple[Key, Any]]] = [[]]
    room = MAX_INSTANCES
    for key in keys:
        if room == 0:
            out.append([])
            room = MAX_INSTANCES
        ent = entities[key]
        body: dict[str, Any] = {"id": key[1], "type": ent.type}
        if ent.scope is not None:
            body["scope"] = ent.scope
        for name, instances in ent.attrs.items():
            start = 0
            while start < len(instances):
                if room == 0:
                    out[-1].append((key, body))
                    out.append([])
                    room = MAX_INSTANCES
                    body = {"id": key[1], "type": ent.type}
                take = instances[start : start + room]
                body[name] = take
                start += len(take)
                room -= len(take)
        out[-1].append((key, body))
    return [req for req in out if req]


class Batcher:
    def __init__(
        self,
        write: Writer,
        metrics: Metrics,
        *,
        window: float = 0.05,
        max_entities: int = 500,
        capacity: int = 20_000,
    ) -> None:
        self._write = write
        self.metrics = metrics
        self.window = window
        self.max_entities = max_entities
        self.capacity = capacity
        self._current = _Window()
        self._in_flight = 0
        self._ready = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self.broker_ok = True
        self._last_drop_log = 0.0
        metrics.gauge("buffered_measures", lambda: self.buffered)

    @property
    def buffered(self) -> int:
        return self._current.measures + self._in_flight

    def add(
        self,
        tenant: str | None,
        entity_id: str,
        entity_type: str,
        attrs: dict[str, dict[str, Any]],
        *,
        scope: str | None = None,
        ack: Ack | None = None,
        measures: int = 1,
        droppable: bool = True,
    ) -> bool:
        """Queue attributes of one entity; False if dropped because the buffer is full."""
        if droppable and self.buffered >= self.capacity:
            self.metrics.inc("dropped_total", "buffer_full", measures)
            now = time.monotonic()
            if now - self._last_drop_log > 1.0:
                self._last_drop_log = now
                log.warning(
                    "buffer full (%d measures waiting for the broker): dropping QoS 0 measures",
                    self.buffered,
                )
            if ack is not None:
                ack()
            return False
        win = self._current
        if not win.entities:
            win.opened = time.monotonic()
        key = (tenant, entity_id)
        ent = win.entities.get(key)
        if ent is None:
            ent = win.entities[key] = _Entity(entity_type, scope)
            if len(win.entities) >= self.max_entities:
                self._full.set()
        elif scope is not None:
            ent.scope = scope
        for name, attr in attrs.items():
            instances = ent.attrs.get(name)
            if instances is None:
                ent.attrs[name] = [attr]
            elif "observedAt" in attr:
                instances.append(attr)
            else:  # no time of its own (a static attribute): the last value is enough
                ent.instances -= len(instances)
                ent.attrs[name] = [attr]
            ent.instances += 1
        ent.measures += measures
        win.measures += measures
        if ack is not None:
            win.acks.append(ack)
        self._ready.set()
        return True

    async def run(self) -> None:
        """Write windows until :meth:`close`; the last window is written before returning."""
        while True:
            await self._ready.wait()
            if not self._current.entities:
                self._ready.clear()
                if self._closing:
                    return
                continue
            delay = self._current.opened + self.window - time.monotonic()
            if delay > 0 and not self._closing:
                try:
                    async with asyncio.timeout(delay):
                        await self._full.wait()
                except TimeoutError:
                    pass
            win, self._current = self._current, _Window()
            self._full.clear()
            self._in_flight = win.measures
            try:
                await self._flush(win)
            finally:
                self._in_flight = 0

    async def _flush(self, win: _Window) -> None:
        by_tenant: dict[str | None, list[Key]] = {}
        for key in win.entities:
            by_tenant.setdefault(key[0], []).append(key)
        for tenant, keys in by_tenant.items():
            refused: dict[str, dict[str, Any]] = {}
            for request in _requests(win.entities, keys):
                outcome = await self._write_until_accepted(tenant, [b for _, b in request])
                if outcome is None:
                    refused.update({k[1]: {"title": "batch refused"} for k, _ in request})
                else:
                    refused.update({eid: problem for eid, problem in outcome.errors})
            for key in keys:
                count = win.entities[key].measures
                if key[1] in refused:
                    self.metrics.inc("entities_rejected_total")
                    self.metrics.inc("dropped_total", "rejected_by_broker", count)
                    problem = refused[key[1]]
                    log.warning(
                        "broker refused entity %s (tenant %s): %s",
                        key[1],
                        tenant or "-",
                        problem.get("detail") or problem.get("title") or problem,
                    )
                else:
                    self.metrics.inc("measures_stored_total", "", count)
        for ack in win.acks:
            ack()

    async def _write_until_accepted(
        self, tenant: str | None, entities: list[dict[str, Any]]
    ) -> BatchOutcome | None:
        delay = 0.25
        while True:
            try:
                outcome = await self._write(tenant, entities)
            except BrokerError as exc:
                # 401: the agent's credentials (RENKEI_BROKER_API_KEY) are not accepted, a
                # setting to fix, not a fault of these measures: kept and retried, like 429
                if exc.status is not None and 400 <= exc.status < 500 and exc.status not in _KEPT:
                    log.warning("broker refused a batch of %d entities: %s", len(entities), exc)
                    self.broker_ok = True
                    return None
                self.metrics.inc("broker_write_failures_total")
                if self.broker_ok:
                    log.warning("broker write failed, retrying with backoff: %s", exc)
                self.broker_ok = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            else:
                if not self.broker_ok:
                    log.info("broker writes succeed again")
                self.broker_ok = True
                self.metrics.inc("broker_writes_total")
                return outcome

    def close(self) -> None:
        """Ask :meth:`run` to write what is waiting and return."""
        self._closing = True
        self._ready.set()
        self._full.set()
