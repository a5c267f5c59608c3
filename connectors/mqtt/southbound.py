"""Southbound: the agent's MQTT connection, a :class:`broker.transport.mqtt.MqttClient`.

The client subscribes to the IoT Agent JSON topics (``/+/+/attrs``, ``/json/+/+/attrs``,
single attributes and command results), with or without the leading slash. With MQTT 5 the subscriptions are shared
(``$share/<group>/...``), so several agents split the messages; an MQTT 3.1.1 broker
gets plain subscriptions (one agent). In ``auto`` mode the agent speaks MQTT 5 and
falls back to 3.1.1 when the broker refuses the protocol version, or leaves its first
MQTT 5 CONNECT unanswered for ``CONNACK_TIMEOUT``.

Messages are acknowledged by hand: a QoS 1 message is acknowledged only once its
measure is stored, and the MQTT 5 receive maximum bounds how many wait
unacknowledged. The session is persistent (stable client id, no clean start), so what
was never acknowledged is delivered again after a reconnection. The transport
reconnects by itself, with a backoff from 1 s up to 30 s; a connection that cannot be
made (broker unreachable, TLS certificate not trusted, login refused) is logged as an
error once per distinct cause and kept in ``last_error``, which ``/health`` shows.
"""

from __future__ import annotations

import logging

from broker.shared import MqttClient, MqttServer, Version

log = logging.getLogger("renkei.iota")

TOPICS = (
    "/+/+/attrs",
    "/+/+/attrs/+",
    "/+/+/cmdexe",
    "/json/+/+/attrs",
    "/json/+/+/attrs/+",
    "/json/+/+/cmdexe",
    # the same without the leading slash: ``json/{apikey}/{device}/attrs`` is the form
    # iotagent-json documents today (no topic matches filters of both kinds)
    "+/+/attrs",
    "+/+/attrs/+",
    "+/+/cmdexe",
    "json/+/+/attrs",
    "json/+/+/attrs/+",
    "json/+/+/cmdexe",
)
KEEPALIVE = 30
CONNACK_TIMEOUT = 5.0
SESSION_EXPIRY = 3600


def southbound(
    server: MqttServer,
    *,
    client_id: str,
    version: Version = "auto",
    share_group: str = "renkei",
    receive_maximum: int = 1000,
    ca_file: str | None = None,
) -> MqttClient:
    """The agent's MQTT connection, subscribed to the device topics once started."""
    link = MqttClient(
        server,
        client_id=client_id,
        version=version,
        ca_file=ca_file,
        keepalive=KEEPALIVE,
        connect_timeout=CONNACK_TIMEOUT,
        persistent=True,
        session_expiry=SESSION_EXPIRY,
        manual_ack=True,
        receive_maximum=receive_maximum,
        logger=log,
    )
    link.subscribe(TOPICS, qos=1, share_group=share_group)
    return link
