"""The IoT agent: MQTT messages in, NGSI-LD batch writes out, commands both ways.

:class:`IoTAgent` owns the parts and their tasks: the :class:`Registry` of
provisioned devices, the :class:`~broker.transport.mqtt.MqttClient` (southbound), the :class:`Batcher`
(northbound), how it learns of commands (its context source registrations at the
broker, ``connectors.mqtt.registrations``, which also make the broker ask it for lazy
attributes; or a broker subscription per command), and a health watch of the broker. Everything but paho's network thread runs on one event
loop; a bad message is counted, logged with its topic and skipped, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from typing import Any

import orjson

from broker.shared import Message, MqttClient, parse_server
from connectors.client import BatchOutcome, BrokerClient, BrokerError
from connectors.mqtt import ngsiv2
from connectors.mqtt.lazy import LazyValues
from connectors.mqtt.mapping import (
    TIME_INSTANT,
    TIMESTAMP_KEYS,
    BadValue,
    convert,
    iso,
    lazy_attribute,
    measures,
    parse_time,
    static_attributes,
    time_instant,
)
from connectors.mqtt.metrics import Metrics
from connectors.mqtt.northbound import Ack, Batcher
from connectors.mqtt.push import CommandPusher
from connectors.mqtt.registrations import SourceRegistrations
from connectors.mqtt.registry import (
    DEFAULT_TYPE,
    MAX_NAMED_ENTITIES,
    Ambiguous,
    Registry,
    Resolved,
    Scope,
)
from connectors.mqtt.settings import AgentSettings
from connectors.mqtt.southbound import southbound

log = logging.getLogger("renkei.iota")

NOTIFY_PATH = "/notify"
#: The header the broker's notifications carry the agent's secret in (``receiverInfo``);
#: the broker answers it masked, as it does every value named like a token.
NOTIFY_HEADER = "X-Renkei-Notify-Token"
HEALTH_PERIOD = 2.0
SUBSCRIBE_RETRY = 2.0
#: Longest wait between two attempts to bring registrations or subscriptions in line.
SUBSCRIBE_RETRY_MAX = 60.0
SYNC_TIMEOUT = 5.0
STOP_FLUSH_TIMEOUT = 5.0
#: How long an HTTP measure request waits for its measures to be stored.
HTTP_STORE_TIMEOUT = 10.0

SubKey = tuple[str | None, str, str]  # (tenant, entity type, command)


class AgentBrokerClient(BrokerClient):
    """The broker client, plus removing the agent's own subscriptions."""

    async def unsubscribe(self, subscription_id: str) -> None:
        """Delete a subscription; one already gone counts as deleted."""
        resp = await self._request("DELETE", f"/ngsi-ld/v1/subscriptions/{subscription_id}")
        if resp.status_code not in (204, 404):
            raise self._fail(resp, "unsubscribe")

    async def update_subscription(self, subscription_id: str, patch: dict[str, Any]) -> None:
        resp = await self._request(
            "PATCH", f"/ngsi-ld/v1/subscriptions/{subscription_id}", json=patch
        )
        if resp.status_code != 204:
            raise self._fail(resp, "update subscription")


def notify_token(settings: AgentSettings, registry: Registry) -> str:
    """The secret the broker's requests to the agent must carry (notifications, and
    requests forwarded through its registrations): ``iota_notify_token``; else one
    derived from the agent's API key and public URL, so replicas sharing both (behind one
    Service) agree on it; else a random one kept in the provisioning file."""
    if settings.iota_notify_token is not None:
        return settings.iota_notify_token.get_secret_value()
    if settings.broker_api_key is not None:
        key = settings.broker_api_key.get_secret_value().encode()
        label = f"renkei-iota-notify|{settings.public_url}".encode()
        return hmac.new(key, label, hashlib.sha256).hexdigest()
    return registry.secret("notify")


class IoTAgent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.ngsi_v2 = settings.iota_ngsi == "v2"
        self.command_mode = settings.command_mode
        registering = self.command_mode == "registration"
        self.registry = Registry(settings.iota_db, ngsi_v2=self.ngsi_v2, lazy=registering)
        self.batcher = Batcher(
            self._write,
            self.metrics,
            window=settings.iota_window_ms / 1000,
            max_entities=settings.iota_window_entities,
            capacity=settings.iota_buffer,
        )
        self.link: MqttClient = southbound(
            parse_server(settings.mqtt_url),
            client_id=settings.client_id,
            version=settings.mqtt_version,
            share_group=settings.mqtt_share_group,
            receive_maximum=min(settings.iota_buffer, 65535),
            ca_file=settings.mqtt_ca_file,
        )
        self.broker_up = False
        self._clients: dict[str | None, AgentBrokerClient] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed: set[SubKey] = set()
        self._subscribe_wanted = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._last_log: dict[str, float] = {}
        #: (tenant, entity id) -> arrival time of its last measure (see ``_arrival``)
        self._last_arrival: dict[tuple[str | None, str], float] = {}
        #: entities whose static attributes were written since provisioning last changed
        self._static_sent: set[tuple[str | None, str]] = set()
        #: (tenant, apikey, device id) -> prefix of its command topic: ``/`` (the IoT Agent
        #: JSON default), or ``json/`` / none for a device publishing without the leading slash
        self._prefixes: dict[tuple[str | None, str, str], str] = {}
        #: (scope, device id) -> commands waiting for an HTTP device to poll them: name ->
        #: (value, the entity the command was written to)
        self._pending: dict[tuple[Scope, str], dict[str, tuple[Any, Resolved]]] = {}
        #: devices told about: their ``entityNameExp`` named more entities than are served
        self._named_full: set[tuple[Scope, str]] = set()
        self._pushes: set[asyncio.Task[None]] = set()
        self.pusher = CommandPusher(settings)
        #: Secret of the broker's requests to this agent (``NOTIFY_HEADER`` on
        #: notifications, ``registrations.SOURCE_HEADER`` on forwarded requests).
        self.notify_token = notify_token(settings, self.registry)
        #: The last values of the devices' lazy attributes (``source`` serves them), kept
        #: in the provisioning file so a restart keeps them.
        self.lazy = LazyValues(settings.iota_db)
        self.registrations = SourceRegistrations(
            settings.public_url, self.notify_token, self.client, enabled=registering
        )
        self._old_subscriptions_gone = False
        if not registering and any(d.lazy for d in self.registry.all_resolved()):
            log.warning(
                "devices with lazy attributes are provisioned, but commands go through"
                " subscriptions: their lazy attributes are not served (they are measures)"
            )
        self.metrics.gauge("mqtt_connected", lambda: float(self.link.connected))
        self.metrics.gauge("broker_up", lambda: float(self.broker_up and self.batcher.broker_ok))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.batcher.run(), name="iota-batcher"),
            asyncio.create_task(self._watch_broker(), name="iota-health"),
            asyncio.create_task(self._keep_commands(), name="iota-commands"),
        ]
        await self.link.start(self.handle)
        log.info(
            "IoT agent: MQTT %s -> broker %s, provisioning on %s, commands through %ss",
            self.link.server.display,
            self.settings.broker_url,
            self.settings.public_url,
            self.command_mode,
        )

    async def stop(self) -> None:
        await self.link.close()
        self.batcher.close()
        batcher, *others = self._tasks
        for task in others:
            task.cancel()
        try:
            # a broker that is down gets a short chance only: stopping must not hang
            async with asyncio.timeout(STOP_FLUSH_TIMEOUT if self.batcher.broker_ok else 0.5):
                await batcher
        except TimeoutError:
            log.warning("stopping with %d measures not written", self.batcher.buffered)
        for task in others:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for push in list(self._pushes):
            push.cancel()
        await self.pusher.aclose()
        for client in self._clients.values():
            await client.aclose()
        self.lazy.close()
        self.registry.close()

    @property
    def healthy(self) -> bool:
        return self.link.connected and self.broker_up and self.batcher.broker_ok

    def client(self, tenant: str | None) -> AgentBrokerClient:
        """The broker client of a tenant, with the agent's own credentials."""
        client = self._clients.get(tenant)
        if client is None:
            key, token = self.settings.broker_api_key, self.settings.broker_token
            client = AgentBrokerClient(
                self.settings.broker_url,
                tenant=tenant,
                retries=0,
                api_key=key.get_secret_value() if key is not None else None,
                token=token.get_secret_value() if token is not None else None,
            )
            self._clients[tenant] = client
        return client

    async def entity_types(self, tenant: str | None, ids: list[str]) -> dict[str, list[str]]:
        """The types of those of ``ids`` that exist at the broker (and the agent may read);
        ``BrokerError`` when the broker cannot tell."""
        found: dict[str, list[str]] = {}
        client = self.client(tenant)
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            async for ent in client.query(id=",".join(chunk), pick="id,type", local="true"):
                t = ent.get("type", [])
                found[str(ent.get("id"))] = [t] if isinstance(t, str) else list(t)
        return found

    async def _write(self, tenant: str | None, entities: list[dict[str, Any]]) -> Any:
        if not self.ngsi_v2:
            return await self.client(tenant).upsert_temporal(entities)
        outcome = BatchOutcome()
        for path, v2_entities in ngsiv2.requests(entities):
            done = await self.client(tenant).update_v2(v2_entities, service_path=path)
            outcome.success.extend(done.success)
            outcome.errors.extend(done.errors)
        return outcome

    async def _watch_broker(self) -> None:
        while True:
            up = await self.client(None).health()
            if up != self.broker_up:
                log.log(
                    logging.INFO if up else logging.WARNING,
                    "broker %s %s",
                    self.settings.broker_url,
                    "reachable" if up else "not reachable",
                )
            self.broker_up = up
            await asyncio.sleep(HEALTH_PERIOD if up else HEALTH_PERIOD / 4)

    # -- bad input ----------------------------------------------------------------------------

    def bad(self, reason: str, topic: str, detail: str) -> None:
        self.metrics.inc("bad_input_total", reason)
        now = time.monotonic()
        if now - self._last_log.get(reason, 0.0) >= 1.0:  # one line per reason per second
            self._last_log[reason] = now
            log.warning("bad input on %s (%s): %s", topic, reason, detail)

    # -- southbound messages ------------------------------------------------------------------

    def handle(self, batch: list[Message]) -> None:
        for item in batch:
            ack = self.link.acker(item)
            try:
                queued = self._handle_one(item, ack)
            except Exception as exc:  # a bug must cost one message, not the agent
                log.exception("cannot handle message on %s", item.topic)
                self.bad("internal_error", item.topic, repr(exc))
                queued = False
            if not queued and ack is not None:
                ack()

    def _device(
        self, apikey: str, device_id: str, topic: str, transport: str | None = None
    ) -> Resolved | None:
        try:
            device = self.registry.resolve(apikey, device_id)
            if device is not None:
                return device
            found = self.registry.group_for(apikey)
        except Ambiguous as exc:
            self.bad("ambiguous_device", topic, f"{exc}: not written to any of them")
            return None
        if found is None:
            self.bad("unknown_apikey", topic, f"no group has apikey {apikey!r}")
            return None
        scope, group = found
        allowed = group.autoprovision
        if allowed is None:
            allowed = self.settings.iota_autoprovision
        if not allowed:
            self.bad("unknown_device", topic, f"device {device_id!r} is not provisioned")
            return None
        device = self.registry.autoprovision(scope, apikey, device_id, transport)
        if device is None:
            self.bad("unknown_device", topic, f"device {device_id!r} has another apikey")
            return None
        log.info("device %s provisioned automatically (apikey %s)", device_id, apikey)
        self.commands_changed()
        return device

    def _handle_one(self, item: Message, ack: Ack | None) -> bool:
        """Queue what ``item`` carries; True if ``ack`` was handed to the batcher."""
        parsed = parse_topic(item.topic)
        if parsed is None:
            self.bad("invalid_topic", item.topic, "not an IoT Agent JSON topic")
            return False
        prefix, apikey, device_id, kind, single = parsed
        self.metrics.inc(
            "messages_received_total", "command_result" if kind == "cmdexe" else "measure"
        )
        device = self._device(apikey, device_id, item.topic)
        if device is None:
            return False
        self._prefixes[device.tenant, apikey, device_id] = (
            prefix if not prefix.startswith("/") else "/"
        )
        if single is not None:
            payload: Any = {single: self._single_value(item)}
        else:
            try:
                payload = orjson.loads(item.payload)
            except orjson.JSONDecodeError as exc:
                self.bad("invalid_json", item.topic, str(exc))
                return False
        if kind == "cmdexe":
            return self._command_result(device, payload, item.topic, item.arrival, ack)
        try:
            objects = list(measures(payload))
        except BadValue as exc:
            self.bad(exc.reason, item.topic, str(exc))
            return False
        return self._queue_measures(device, objects, item.arrival, ack, droppable=item.qos == 0)

    def _arrival(self, device: Resolved, arrival: float) -> float:
        """The arrival time of a device's measure, strictly after its previous one.

        ``observedAt`` has millisecond precision and the history keeps one instance per
        attribute and ``observedAt``: two measures of a device arriving within the same
        millisecond (a burst, or an array payload) get consecutive milliseconds, so
        neither replaces the other.
        """
        key = (device.tenant, device.entity_id)
        last = self._last_arrival.get(key, 0.0)
        stamp = max(round(arrival, 3), round(last + 0.001, 3))
        self._last_arrival[key] = stamp
        return stamp

    def _queue_measures(
        self,
        device: Resolved,
        objects: list[dict[str, Any]],
        arrival: float,
        ack: Ack | None,
        *,
        droppable: bool,
    ) -> bool:
        """Queue a device's measures, each as its own instances; True if ``ack`` was queued."""
        adds: list[tuple[str, str, dict[str, dict[str, Any]], int]] = []
        for obj in objects:
            has_time = any(k in obj and k not in device.mappings for k in TIMESTAMP_KEYS)
            at = arrival if has_time else self._arrival(device, arrival)
            lazy: list[tuple[str, float, dict[str, Any]]] = []
            if device.lazy and self.command_mode == "registration":
                obj, lazy = self._lazy_values(device, obj, at)
            measure = convert(device, obj, at)
            for problem in measure.problems:
                self.bad(problem.reason, device.device_id, str(problem))
            if measure.entity_id is not None and measure.entity_id != device.entity_id:
                self._named(device, measure.entity_id)
            if lazy:
                self.lazy.put(device.tenant, measure.entity_id or device.entity_id, lazy)
                self.metrics.inc("lazy_values_total", amount=len(lazy))
            parts = [(eid, etype, attrs, 0) for (eid, etype), attrs in measure.targets.items()]
            if measure.attrs:
                attrs = measure.attrs
                eid = measure.entity_id or device.entity_id
                if device.static and (device.tenant, eid) not in self._static_sent:
                    static = static_attributes(device)
                    if measure.allowed is not None:
                        static = {k: v for k, v in static.items() if k in measure.allowed}
                    attrs = {**static, **attrs}
                    self._static_sent.add((device.tenant, eid))
                parts.insert(0, (eid, device.entity_type, attrs, 1))
            elif parts:  # every value went to other entities: the measure counts there
                eid, etype, attrs, _ = parts[0]
                parts[0] = (eid, etype, attrs, 1)
            adds.extend(parts)
        if not adds:
            return False
        scope = device.scope_path
        for i, (eid, etype, attrs, count) in enumerate(adds):
            self.batcher.add(
                device.tenant,
                eid,
                etype,
                attrs,
                scope=scope,
                ack=ack if i == len(adds) - 1 else None,
                measures=count,
                droppable=droppable,
            )
        return True

    def _named(self, device: Resolved, entity_id: str) -> None:
        """A measure of ``device`` went to ``entity_id``, named by its ``entityNameExp``:
        once known, that entity's commands and lazy attributes are served like the
        device's own (registered at the broker, sent to the device)."""
        if not (device.lazy or device.commands):
            return
        learned = self.registry.note_entity(device, entity_id)
        if learned:
            self._subscribe_wanted.set()
        elif learned is None and (device.scope, device.device_id) not in self._named_full:
            self._named_full.add((device.scope, device.device_id))
            log.warning(
                "device %s: its entityNameExp named more than %d entities; the commands"
                " and lazy attributes of %s and further ones are not served",
                device.device_id,
                MAX_NAMED_ENTITIES,
                entity_id,
            )

    def _lazy_values(
        self, device: Resolved, obj: dict[str, Any], arrival: float
    ) -> tuple[dict[str, Any], list[tuple[str, float, dict[str, Any]]]]:
        """The lazy attributes a measure carries (served to the broker's reads, never
        written to it) as ``(name, observed, attribute)``, and the rest of the measure."""
        keys = [k for k in obj if k in device.lazy]
        if not keys:
            return obj, []
        observed = arrival
        for key in TIMESTAMP_KEYS:
            if key in obj and key not in device.mappings:
                with contextlib.suppress(BadValue):  # convert() reports it
                    observed = parse_time(obj[key])
                break
        stamp = iso(observed)
        values = []
        for key in keys:
            mapping = device.lazy[key]
            try:
                attr = lazy_attribute(mapping, obj[key], stamp)
            except BadValue as exc:
                self.bad(exc.reason, device.device_id, f"{key}: {exc}")
                continue
            values.append((mapping.name, observed, attr))
        return {k: v for k, v in obj.items() if k not in device.lazy}, values

    @staticmethod
    def _single_value(item: Message) -> Any:
        try:
            return orjson.loads(item.payload)
        except orjson.JSONDecodeError:
            return item.payload.decode("utf-8", errors="replace")

    def _command_result(
        self, device: Resolved, payload: Any, topic: str, arrival: float, ack: Ack | None
    ) -> bool:
        if not isinstance(payload, dict) or not payload:
            self.bad("invalid_payload", topic, "a command result must be a JSON object")
            return False
        # each result goes to the entity its command was written to
        targets: dict[str, tuple[Resolved, dict[str, dict[str, Any]]]] = {}
        stamp = iso(arrival)
        for name, result in payload.items():
            if name not in device.commands:
                self.bad("unknown_command", topic, f"{name!r} is not a command of the device")
                continue
            self.metrics.inc("command_results_total")
            target = self.registry.command_target(device, name)
            attrs = targets.setdefault(target.entity_id, (target, {}))[1]
            attrs[f"{name}_status"] = self._command_attr("commandStatus", "OK", stamp)
            attrs[f"{name}_info"] = self._command_attr(
                "commandResult", "" if result is None else result, stamp
            )
        if not targets:
            return False
        for i, (target, attrs) in enumerate(targets.values()):
            if device.timestamp:
                attrs[TIME_INSTANT] = time_instant(arrival)
            self.batcher.add(
                target.tenant,
                target.entity_id,
                target.entity_type,
                attrs,
                scope=target.scope_path,
                ack=ack if i == len(targets) - 1 else None,
                droppable=False,
            )
        return True

    # -- provisioning hooks -------------------------------------------------------------------

    def devices_added(self, devices: list[Resolved]) -> None:
        """Create each device's entity (static attributes); register its commands and
        lazy attributes (or subscribe to its commands)."""
        for device in devices:
            # No TimeInstant here even with ``timestamp``: it is the time of a measure.
            self.batcher.add(
                device.tenant,
                device.entity_id,
                device.entity_type,
                static_attributes(device),
                scope=device.scope_path,
                droppable=False,
                measures=0,
            )
            self._static_sent.add((device.tenant, device.entity_id))
        self.commands_changed()

    def commands_changed(self) -> None:
        """Provisioning changed: bring registrations or command subscriptions in line, in
        the background.

        Static attributes go with a device's next measure again, as they may have changed.
        """
        self._static_sent.clear()
        self._subscribe_wanted.set()

    async def sync_commands(self) -> None:
        """Bring registrations or command subscriptions in line now, waiting at most
        ``SYNC_TIMEOUT``.

        Provisioning routes call this before answering, so a device's commands and lazy
        attributes work (and a deleted device's stop) as soon as the request returns; if
        the broker is slow or down, the background task keeps trying.
        """
        try:
            async with asyncio.timeout(SYNC_TIMEOUT):
                if not await self._sync_commands():
                    self._subscribe_wanted.set()
        except TimeoutError:
            log.warning("commands not registered yet: the broker is slow or down")
            self._subscribe_wanted.set()

    def tenants(self) -> set[str | None]:
        """Every tenant a group or device is in, and the default one."""
        scopes = [s for s, _ in self.registry.groups] + [s for s, _ in self.registry.devices]
        return {None, *(s.tenant for s in scopes)}

    async def _sync_commands(self) -> bool:
        """Bring the broker in line with the provisioned commands and lazy attributes:
        registrations (and once, the removal of the command subscriptions an earlier run
        in subscription mode left), or subscriptions (and the removal of registrations an
        earlier run made). True if all was done."""
        async with self._sync_lock:
            devices = self.registry.all_entities()
            self.lazy.retain({(d.tenant, d.entity_id) for d in devices})
            done = await self.registrations.sync(devices, self.tenants())
            if self.command_mode == "subscription":
                return await self._sync_subscriptions() and done
            if not self._old_subscriptions_gone:
                self._old_subscriptions_gone = await self._remove_old_subscriptions()
            return done

    async def _remove_old_subscriptions(self) -> bool:
        """Delete the command subscriptions this agent would make in subscription mode
        (their ids are derived, so they are known without looking)."""
        for key in sorted(self._wanted_subscriptions(), key=str):
            try:
                await self.client(key[0]).unsubscribe(self.subscription_id(key))
            except BrokerError as exc:
                if exc.status is None or exc.status >= 500:
                    return False
        return True

    # -- commands -----------------------------------------------------------------------------

    def _wanted_subscriptions(self) -> set[SubKey]:
        wanted = {
            (d.tenant, d.entity_type, c) for d in self.registry.all_resolved() for c in d.commands
        }
        for (scope, _), group in self.registry.groups.items():
            for c in group.commands:
                wanted.add((scope.tenant, group.entity_type or DEFAULT_TYPE, c.name))
        return wanted

    def subscription_id(self, key: SubKey) -> str:
        """One id per (tenant, type, command, endpoint): creating it again is a no-op."""
        tenant, entity_type, command = key
        digest = hashlib.sha256(
            f"{tenant}|{entity_type}|{command}|{self.settings.public_url}".encode()
        ).hexdigest()[:24]
        return f"urn:ngsi-ld:Subscription:renkei-iota-{digest}"

    def _subscription(self, entity_type: str, command: str, sub_id: str) -> dict[str, Any]:
        return {
            "id": sub_id,
            "type": "Subscription",
            "description": f"IoT agent commands: {command} of {entity_type}",
            "entities": [{"type": entity_type}],
            "watchedAttributes": [command],
            "notificationTrigger": ["attributeUpdated", "attributeCreated"],
            "notification": {
                "attributes": [command],
                "format": "normalized",
                "endpoint": {
                    "uri": self.settings.public_url + NOTIFY_PATH,
                    "accept": "application/json",
                    "receiverInfo": [{"key": NOTIFY_HEADER, "value": self.notify_token}],
                },
            },
        }

    async def _sync_subscriptions(self) -> bool:
        """Create missing command subscriptions and delete unwanted ones; True if all done.

        A subscription serves every device of a (tenant, entity type) with the command,
        so it goes only when no device or group of that type has the command any more.
        Called under ``_sync_lock`` (``_sync_commands``).
        """
        wanted = self._wanted_subscriptions()
        done = True
        for key in sorted(wanted - self._subscribed, key=str):
            tenant, entity_type, command = key
            sub_id = self.subscription_id(key)
            sub = self._subscription(entity_type, command, sub_id)
            try:
                try:
                    await self.client(tenant).subscribe(sub)
                except BrokerError as exc:
                    if exc.status != 409:
                        raise
                    # made before (by this agent, maybe with another notification
                    # secret): bring its notification up to date
                    await self.client(tenant).update_subscription(
                        sub_id, {"notification": sub["notification"]}
                    )
            except BrokerError as exc:
                log.warning("cannot subscribe to command %s: %s", command, exc)
                done = False
                continue
            self._subscribed.add(key)
        for key in sorted(self._subscribed - wanted, key=str):
            tenant, entity_type, command = key
            try:
                await self.client(tenant).unsubscribe(self.subscription_id(key))
            except BrokerError as exc:
                log.warning("cannot remove the subscription to command %s: %s", command, exc)
                done = False
                continue
            log.info("command %s of %s no longer provisioned", command, entity_type)
            self._subscribed.discard(key)
        return done

    async def _keep_commands(self) -> None:
        """Make sure the broker sends the agent every provisioned command (and asks it
        for lazy attributes): after each provisioning change, and again after a failure,
        waiting longer each time up to ``SUBSCRIBE_RETRY_MAX``."""
        self._subscribe_wanted.set()
        delay = SUBSCRIBE_RETRY
        while True:
            await self._subscribe_wanted.wait()
            self._subscribe_wanted.clear()
            if await self._sync_commands():
                delay = SUBSCRIBE_RETRY
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, SUBSCRIBE_RETRY_MAX)
            self._subscribe_wanted.set()

    def notified(self, tenant: str | None, notification: Any) -> int:
        """A broker notification: send each updated command to its device.

        MQTT devices get it on their ``cmd`` topic; HTTP devices with an ``endpoint``
        get it pushed; other HTTP devices find it when they poll (``getCmd=1``).
        """
        data = notification.get("data") if isinstance(notification, dict) else None
        if not isinstance(data, list):
            log.warning("ignoring a notification without data")
            return 0
        sent = 0
        for ent in data:
            if not isinstance(ent, dict):
                continue
            device = self.registry.by_entity(tenant or "", str(ent.get("id")))
            if device is None:
                continue
            for name in device.commands:
                if name not in ent:
                    continue
                attr = ent[name]
                value = attr.get("value", attr.get("object")) if isinstance(attr, dict) else attr
                status = self._send_command(device, name, value)
                if status != "ERROR":
                    sent += 1
                self._command_status(device, {f"{name}_status": status})
        return sent

    def source_commands(self, device: Resolved, commands: dict[str, list[Any]]) -> list[str]:
        """Commands the broker forwarded (``connectors.mqtt.source``): each value sent to
        the device, each command's ``_status`` set; the names of those not sent."""
        failed = []
        for name, values in commands.items():
            statuses = [self._send_command(device, name, value) for value in values]
            status = "ERROR" if "ERROR" in statuses else statuses[-1]
            if status == "ERROR":
                failed.append(name)
            self._command_status(device, {f"{name}_status": status})
        return failed

    def _send_command(self, device: Resolved, name: str, value: Any) -> str:
        """Send one command: published on the device's ``cmd`` topic (MQTT), pushed to
        its ``endpoint`` or held for it to poll (HTTP). Its status: PENDING or ERROR.

        ``device`` is the entity the command was written to (the device's own, or one its
        ``entityNameExp`` named): the device's answer goes there."""
        self.registry.command_sent(device, name)
        if device.transport == "HTTP":
            status = self._http_command(device, name, value)
        elif not self._addressable(device):
            status = "ERROR"
        else:
            key = (device.tenant, device.apikey, device.device_id)
            prefix = self._prefixes.get(key, "/")
            topic = f"{prefix}{device.apikey}/{device.device_id}/cmd"
            if self.link.publish_nowait(topic, orjson.dumps({name: value})):
                status = "PENDING"
            else:
                log.warning("command %s for %s not published: MQTT down", name, topic)
                status = "ERROR"
        if status != "ERROR":
            self.metrics.inc("commands_sent_total")
        return status

    def _command_attr(self, v2_type: str, value: Any, stamp: str) -> dict[str, Any]:
        """A command's ``_status``/``_info`` attribute (v2 types as iotagent-node-lib's)."""
        attr: dict[str, Any] = {"type": "Property", "value": value, "observedAt": stamp}
        if self.ngsi_v2:
            attr[ngsiv2.V2_TYPE] = v2_type
        return attr

    def _addressable(self, device: Resolved) -> bool:
        """Whether the command topic of ``device`` reaches it alone: not when devices of
        other tenants share its apikey and id (they would read the same topic)."""
        try:
            if self.registry.tenant_for(device.apikey) == device.scope.service:
                return True
        except Ambiguous as exc:
            self.bad("ambiguous_device", device.device_id, f"{exc}: command not published")
            return False
        log.warning(
            "command for %s not published: its apikey's messages belong to another service",
            device.device_id,
        )
        return False

    def _command_status(self, device: Resolved, values: dict[str, Any]) -> None:
        stamp = iso(time.time())
        self.batcher.add(
            device.tenant,
            device.entity_id,
            device.entity_type,
            {
                name: self._command_attr(
                    "commandStatus" if name.endswith("_status") else "commandResult", value, stamp
                )
                for name, value in values.items()
            },
            scope=device.scope_path,
            droppable=False,
            measures=0,
        )

    # -- HTTP south (iotagent-json's /iot/json) -------------------------------------------------

    def _http_command(self, device: Resolved, name: str, value: Any) -> str:
        if device.endpoint is None:
            self._pending.setdefault((device.scope, device.device_id), {})[name] = (value, device)
            return "PENDING"
        task = asyncio.get_running_loop().create_task(
            self._push(device, device.endpoint, name, value), name=f"iota-push-{name}"
        )
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)
        return "PENDING"

    async def _push(self, device: Resolved, endpoint: str, name: str, value: Any) -> None:
        ok, answer = await self.pusher.push(endpoint, {name: value})
        if not ok:
            log.warning("command %s for %s not delivered: %s", name, device.device_id, answer)
        self.metrics.inc("command_results_total" if ok else "command_failures_total")
        self._command_status(
            device,
            {
                f"{name}_status": "OK" if ok else "ERROR",
                f"{name}_info": "" if answer is None else answer,
            },
        )

    def http_device(self, apikey: str, device_id: str) -> Resolved | None:
        """The device an HTTP request names (``k``, ``i``), provisioned automatically
        (as an HTTP device) if its group allows; None if unknown."""
        return self._device(apikey, device_id, f"/iot/json?k={apikey}", "HTTP")

    async def http_measures(self, device: Resolved, payload: Any) -> bool:
        """Queue the measures of an HTTP request; True once stored, False if still queued
        after ``HTTP_STORE_TIMEOUT`` (they are kept and written). Raises BadValue."""
        objects = list(measures(payload))
        done = asyncio.get_running_loop().create_future()

        def ack() -> None:
            if not done.done():
                done.set_result(None)

        self.metrics.inc("messages_received_total", "measure")
        if not self._queue_measures(device, objects, time.time(), ack, droppable=False):
            return True
        try:
            async with asyncio.timeout(HTTP_STORE_TIMEOUT):
                await done
        except TimeoutError:
            return False
        return True

    def http_command_result(self, device: Resolved, payload: Any) -> bool:
        self.metrics.inc("messages_received_total", "command_result")
        return self._command_result(device, payload, "/iot/json/commands", time.time(), None)

    def poll_commands(self, device: Resolved) -> dict[str, Any]:
        """The commands waiting for a polling device, handed over once (``DELIVERED``)."""
        waiting = self._pending.pop((device.scope, device.device_id), {})
        delivered: dict[str, tuple[Resolved, dict[str, Any]]] = {}
        for name, (_, target) in waiting.items():
            delivered.setdefault(target.entity_id, (target, {}))[1][f"{name}_status"] = "DELIVERED"
        for target, statuses in delivered.values():
            self._command_status(target, statuses)
        return {name: value for name, (value, _) in waiting.items()}


TopicParts = tuple[str, str, str, str, str | None]


def parse_topic(topic: str) -> TopicParts | None:
    """``(prefix, apikey, device id, kind, single attribute)`` of an IoT Agent JSON topic.

    ``/{apikey}/{device}/attrs``, ``/json/{apikey}/{device}/attrs``, the same without
    the leading slash (``json/{apikey}/{device}/attrs`` is what iotagent-json documents
    today), ``.../attrs/{attribute}`` for a single value and ``.../cmdexe``.
    """
    prefix = "/" if topic.startswith("/") else ""
    segments = topic[len(prefix) :].split("/")
    if segments[0] == "json" and len(segments) >= 4:
        prefix += "json/"
        segments = segments[1:]
    if len(segments) not in (3, 4) or segments[2] not in ("attrs", "cmdexe"):
        return None
    apikey, device_id, kind = segments[:3]
    if not apikey or not device_id:
        return None
    if len(segments) == 4:
        if kind != "attrs" or not segments[3]:
            return None
        return prefix, apikey, device_id, kind, segments[3]
    return prefix, apikey, device_id, kind, None


def scope_of(service: str | None, subservice: str | None) -> Scope:
    return Scope((service or "").strip().lower(), (subservice or "/").strip() or "/")
