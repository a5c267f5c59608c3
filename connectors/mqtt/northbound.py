"""Northbound: measures coalesced into one batch upsert per short window.

Every measure lands in the current window as attributes of its entity fragment; a
device's later measure replaces an attribute only if its ``observedAt`` is not older,
so the order of a device's measures survives coalescing. A window is written when it
is ``window`` seconds old or holds ``max_entities`` entities, one upsert per tenant.
Windows are written one after the other, so a device's measures never overtake each
other across windows either.

Nothing is acknowledged to the MQTT broker before the NGSI-LD broker accepted the
write: while it is down, the write is retried with backoff and new measures wait in
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


@dataclass
class _Window:
    entities: dict[Key, dict[str, Any]] = field(default_factory=dict)
    stamps: dict[tuple[Key, str], float] = field(default_factory=dict)
    counts: dict[Key, int] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    measures: int = 0
    opened: float = 0.0


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
        observed: float,
        *,
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
        frag = win.entities.get(key)
        if frag is None:
            frag = win.entities[key] = {"id": entity_id, "type": entity_type}
            if len(win.entities) >= self.max_entities:
                self._full.set()
        for name, attr in attrs.items():
            slot = (key, name)
            if win.stamps.get(slot, float("-inf")) <= observed:
                frag[name] = attr
                win.stamps[slot] = observed
        win.counts[key] = win.counts.get(key, 0) + measures
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
            outcome = await self._write_until_accepted(tenant, [win.entities[k] for k in keys])
            if outcome is None:
                refused = {k[1]: {"title": "batch refused"} for k in keys}
            else:
                refused = {eid: problem for eid, problem in outcome.errors}
            for key in keys:
                count = win.counts[key]
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
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
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
