"""Delivery of notifications (clause 5.11): background sends with retries and backoff,
coalescing of changes for a busy endpoint, throttling, and the delivery status
(``timesSent``, ``lastSuccess``, ``lastFailure`` ...) written to the store in batches.

A slow or dead endpoint never slows a write and never holds back other subscriptions.
Throttling is enforced with ``Store.claim_notification``, an atomic compare-and-set in the
store, so several broker processes agree.

When the process stops (``aclose``), the notifications not yet delivered (queued, or
between retries, or cut off while being sent) are handed to the store
(``Store.hand_over``), and whichever process sharing the store takes them
(``take_over``, every second) sends them: a stop loses no matched change, and one cut off
mid-send may reach its endpoint twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from broker.core.subscriptions.payload import MAX_COALESCED, Compiled
from broker.errors import NgsiLdError
from broker.jsonld.context import CORE_CONTEXT_URL
from broker.model.entity import iri_to_uri, now_iso
from broker.model.store import NotificationRecord, PendingNotification
from broker.notify.senders import DeliveryError, Endpoint, Senders
from broker.store.base import Store

log = logging.getLogger("renkei.subscriptions")

LINK_REL = "http://www.w3.org/ns/json-ld#context"


@dataclass
class _Delivery:
    sub: Compiled
    body: bytes
    headers: dict[str, str]
    endpoint: Endpoint


#: Notifications of one subscription on their way at once; changes made meanwhile queue
#: up and go out together, in one notification (``data`` holds them all), keeping order.
PER_SUBSCRIPTION_IN_FLIGHT = 1


@dataclass(eq=False)
class _Batch:
    """The changes one delivery task is sending: kept until delivered or given up, so
    that a stop hands over what was still on its way."""

    sub: Compiled
    data: list[dict[str, Any]]


def _add(status: dict[str, Any], rec: NotificationRecord) -> None:
    """``status`` with the outcomes of ``rec`` added."""
    status["timesSent"] = status.get("timesSent", 0) + rec.sent
    status["timesFailed"] = status.get("timesFailed", 0) + rec.failed
    for key, value in (
        ("lastNotification", rec.last_notification),
        ("lastSuccess", rec.last_success),
        ("lastFailure", rec.last_failure),
        ("lastSuccessCode", rec.last_success_code),
        ("lastFailureReason", rec.last_failure_reason),
    ):
        if value is not None:
            status[key] = value
    fails = rec.trailing_failures + (0 if rec.reset else status.get("failsCounter", 0))
    if fails:
        status["failsCounter"] = fails
    else:
        status.pop("failsCounter", None)


def _order(status: dict[str, Any]) -> tuple[int, str]:
    return int(status.get("timesSent", 0)), str(status.get("lastNotification", ""))


class Delivery:
    def __init__(
        self,
        store: Store,
        senders: Senders,
        *,
        max_attempts: int = 5,
        backoff: float = 0.5,
        backoff_cap: float = 30.0,
        concurrency: int = 64,
    ) -> None:
        self.store = store
        self.senders = senders
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        #: deliveries on their way, which ``aclose`` cancels and waits for
        self._tasks: set[asyncio.Task[None]] = set()
        #: per subscription: deliveries on their way, and changes waiting for one to end
        self._in_flight: dict[tuple[str, str], int] = {}
        self._queued: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._pending: dict[tuple[str, str], NotificationRecord] = {}
        #: changes on their way in each delivery task
        self._sending: set[_Batch] = set()
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        #: seconds delivery outcomes wait before they are written together
        self.status_interval = 0.2
        #: outcomes on their way to the store, and the status last shown (see ``status``)
        self._writing: list[dict[tuple[str, str], NotificationRecord]] = []
        self._shown: dict[tuple[str, str], dict[str, Any]] = {}
        #: per subscription: failures in a row here (NGSI v2 ``maxFailsLimit``)
        self._fails: dict[tuple[str, str], int] = {}
        #: turns a subscription inactive in the store (a v2 ``oneshot`` that fired, or
        #: one over its ``maxFailsLimit``); set by the subscription service
        self.deactivate: Callable[[Compiled, str], Awaitable[None]] | None = None

    def submit(self, sub: Compiled, data: list[dict[str, Any]]) -> None:
        """Send a notification of ``data``; when the subscription already has
        ``PER_SUBSCRIPTION_IN_FLIGHT`` on their way, ``data`` waits and goes out with the
        other waiting changes in one notification as soon as one of them is done (or in
        the one on its way, if that is still waiting for a connection). A
        slow or busy endpoint thus gets fewer, fuller notifications instead of an
        ever-growing queue, and no change is dropped or reordered within a batch."""
        key = (sub.tenant, sub.id)
        if self._in_flight.get(key, 0) >= PER_SUBSCRIPTION_IN_FLIGHT:
            self._queued.setdefault(key, []).extend(data)
            return
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        task = asyncio.create_task(self._deliver_then_queued(sub, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _job(self, sub: Compiled, data: list[dict[str, Any]]) -> _Delivery:
        if sub.v2 is not None:
            endpoint, body, v2_headers = sub.v2.message(sub.endpoint, data)
            return _Delivery(sub, body, v2_headers, endpoint)
        notification: dict[str, Any] = {
            "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
            "type": "Notification",
            "subscriptionId": sub.id,
            "notifiedAt": now_iso(),
            "data": data,
        }
        headers = {"Content-Type": sub.endpoint.accept}
        if sub.endpoint.accept == "application/ld+json":
            tm = sub.render_tm or sub.tm
            ctx = tm.context if tm.context is not None else CORE_CONTEXT_URL
            notification["@context"] = ctx
            notification["data"] = [{**item, "@context": ctx} for item in data]
        else:
            link = iri_to_uri(sub.context_url)
            headers["Link"] = f'<{link}>; rel="{LINK_REL}"; type="application/ld+json"'
        if sub.tenant:
            headers["NGSILD-Tenant"] = sub.tenant
        return _Delivery(sub, orjson.dumps(notification), headers, sub.endpoint)

    async def _deliver_then_queued(self, sub: Compiled, data: list[dict[str, Any]]) -> None:
        key = (sub.tenant, sub.id)
        batch = _Batch(sub, list(data))
        self._sending.add(batch)
        try:
            while True:
                await self._deliver(batch)
                batch.data = self._take_queued(key, sub.coalesce)
                if not batch.data:
                    return
        finally:
            if not self._closing:  # when closing, ``aclose`` hands over what is left
                self._sending.discard(batch)
            left = self._in_flight.get(key, 1) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

    def _take_queued(self, key: tuple[str, str], limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` of the changes waiting for this subscription, oldest first."""
        queued = self._queued.get(key)
        if not queued or limit <= 0:
            return []
        taken, rest = queued[:limit], queued[limit:]
        if rest:
            self._queued[key] = rest
        else:
            del self._queued[key]
        return taken

    async def _deliver(self, batch: _Batch) -> None:
        """Send ``batch.data`` (with changes queued meanwhile); ``batch.data`` is emptied
        once the notification is delivered, throttled away or given up."""
        sub = batch.sub
        key = (sub.tenant, sub.id)
        job: _Delivery | None = None
        endpoint = sub.endpoint
        if sub.coalesce == 1:
            # one entity per notification, whose endpoint may depend on it (v2 custom
            # notifications): built now, and nothing queued joins it
            job = self._job(sub, batch.data)
            endpoint = job.endpoint

        def build() -> tuple[bytes, dict[str, str]]:
            # Built when a connection is free: changes queued while this notification
            # waited for one go with it (a retry sends the same notification again).
            nonlocal job
            if job is None:
                batch.data.extend(self._take_queued(key, sub.coalesce - len(batch.data)))
                job = self._job(sub, batch.data)
            return job.body, job.headers

        async with self._slots:
            if not await self._claimed(sub):
                batch.data = []
                return
            delay = self.backoff
            for attempt in range(1, self.max_attempts + 1):
                try:
                    code = await self.senders.send_built(endpoint, build)
                except DeliveryError as exc:
                    await self._record(sub, success=False, reason=exc.reason)
                    if not exc.retryable or attempt == self.max_attempts:
                        batch.data = []
                        log.warning(
                            "notification for %s failed after %d attempt(s): %s",
                            sub.id,
                            attempt,
                            exc,
                        )
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_cap)
                else:
                    batch.data = []
                    await self._record(sub, success=True, code=code)
                    return

    async def _claimed(self, sub: Compiled) -> bool:
        """Whether this notification may go out now, claimed through the store so that
        every broker process agrees: ``throttling``, and a v2 ``oneshot`` subscription,
        which notifies once after it was (last) set ``oneshot`` and then turns inactive."""
        now = time.time()
        if sub.v2 is not None and sub.v2.status == "oneshot":
            armed = sub.v2.armed_at or 0.0
            if not await self.store.claim_notification(
                sub.tenant, sub.id, now=now, min_gap=max(now - armed, 0.0)
            ):
                return False  # it fired already
            await self._deactivate(sub, "oneshot")
            return True
        # throttled: another notification went out less than `throttling` ago
        return sub.throttling is None or await self.store.claim_notification(
            sub.tenant, sub.id, now=now, min_gap=sub.throttling
        )

    async def _deactivate(self, sub: Compiled, why: str) -> None:
        if self.deactivate is None:
            return
        try:
            await self.deactivate(sub, why)
        except NgsiLdError as exc:
            log.warning("cannot make subscription %s inactive (%s): %s", sub.id, why, exc.detail)

    async def _record(
        self,
        sub: Compiled,
        *,
        success: bool,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Note a delivery outcome; outcomes reach the store together, every ``status_interval``."""
        key = (sub.tenant, sub.id)
        rec = self._pending.get(key)
        if rec is None:
            rec = self._pending[key] = NotificationRecord(sub.tenant, sub.id)
        at = now_iso()
        rec.sent += 1
        rec.last_notification = at
        if success:
            rec.last_success = at
            if code is not None:
                rec.last_success_code = code
            rec.reset = True
            rec.trailing_failures = 0
            self._fails.pop(key, None)
        else:
            rec.failed += 1
            rec.last_failure = at
            rec.last_failure_reason = reason
            rec.trailing_failures += 1
            fails = self._fails[key] = self._fails.get(key, 0) + 1
            limit = sub.v2.max_fails if sub.v2 is not None else None
            if limit is not None and fails > limit:
                self._fails.pop(key, None)
                log.warning(
                    "subscription %s made inactive: %d failures in a row (maxFailsLimit %d)",
                    sub.id,
                    fails,
                    limit,
                )
                await self._deactivate(sub, "maxFailsLimit")
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())

    def status(self, tenant: str, sub_id: str, stored: dict[str, Any]) -> dict[str, Any]:
        """Stored status plus the outcomes not yet written (pending, or being written),
        so this process reads its own.

        A status read from the store just before a write of outcomes completed may come
        after that write has left ``_writing``: it would then show less than this
        process showed before. So the status shown never goes back: between what is
        computed now and what was shown last, the one with more notifications (then the
        later one) wins."""
        key = (tenant, sub_id)
        status = dict(stored)
        for rec in [w[key] for w in self._writing if key in w] + [self._pending.get(key)]:
            if rec is not None:
                _add(status, rec)
        shown = self._shown.get(key)
        if shown is not None and _order(shown) > _order(status):
            return dict(shown)
        self._shown[key] = status
        return dict(status)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.status_interval)
        await self.flush()

    async def flush(self) -> None:
        """Write the pending delivery outcomes to the store."""
        if not self._pending:
            return
        writing, self._pending = self._pending, {}
        self._writing.append(writing)
        try:
            await self.store.record_notifications(list(writing.values()))
        except NgsiLdError as exc:
            log.warning("cannot record notification status: %s", exc.detail)
        finally:
            self._writing.remove(writing)

    # -- periodic (timeInterval) --------------------------------------------------------------

    async def idle(self) -> None:
        """Wait until every notification on its way (retries included) has its outcome
        noted, as before a graceful stop; they are not cancelled."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop sending; hand the notifications not delivered to the store (see the
        module) and write the delivery status."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.hand_over()
        await self.flush()

    def unsent(self) -> list[PendingNotification]:
        """The changes not delivered, per subscription oldest first (those on their way
        before those queued behind them), in notifications of at most ``MAX_COALESCED``."""
        found = [((b.sub.tenant, b.sub.id), b.data) for b in self._sending if b.data]
        found.extend(self._queued.items())
        out: list[PendingNotification] = []
        for (tenant, sub_id), data in found:
            for start in range(0, len(data), MAX_COALESCED):
                out.append(PendingNotification(tenant, sub_id, data[start : start + MAX_COALESCED]))
        return out

    async def hand_over(self) -> None:
        """Give the store the notifications not delivered, for any process to send."""
        pending = self.unsent()
        self._sending.clear()
        self._queued.clear()
        if not pending:
            return
        try:
            await self.store.hand_over(pending)
        except NgsiLdError as exc:
            log.error("cannot hand over %d notification(s): %s", len(pending), exc.detail)
            return
        log.info("handed %d notification(s) not yet delivered over to the store", len(pending))
