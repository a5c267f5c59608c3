"""A real Mosquitto for tests, and a paho subscriber to watch what reaches it.

``mosquitto(tmp_path)`` writes a config file, starts ``/usr/sbin/mosquitto`` on a free
127.0.0.1 port, waits until it accepts connections and stops it afterwards. With
``users={"name": "password"}`` the listener takes only those users (password file
built with ``mosquitto_passwd``); with ``password_file``/``acl_file`` it reads those
files (``reload()`` sends SIGHUP after they change). With ``tls=(certfile, keyfile)`` the listener speaks
MQTT over TLS only (``mqtts://``). ``amqtt_broker(tmp_path)`` starts an amqtt broker, which speaks MQTT 3.1.1
only. The Debian packages come from
``scripts/system-deps.sh test`` (run by ``make test``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "mosquitto_passwd"
_MISSING = (
    "Mosquitto is not installed ({path} not found). Install the test system packages "
    "with `make test` or `scripts/system-deps.sh test` (as root, or with sudo)."
)


def mosquitto_passwd() -> str | None:
    """Path of the ``mosquitto_passwd`` tool, or None if it is not installed."""
    return shutil.which(MOSQUITTO_PASSWD) or (
        "/usr/bin/mosquitto_passwd" if os.path.exists("/usr/bin/mosquitto_passwd") else None
    )


@dataclass
class MqttBroker:
    """A Mosquitto process; ``stop()`` and ``start()`` again keep the same port."""

    workdir: Path
    users: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: server certificate and key (PEM) for a TLS listener
    tls: tuple[Path, Path] | None = None
    #: a password file and an ACL file written elsewhere (``renkei iot mosquitto-acl``)
    password_file: Path | None = None
    acl_file: Path | None = None

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def endpoint(self, topic: str, user: str | None = None, password: str | None = None) -> str:
        """An endpoint URI for a topic on this broker, with optional userinfo."""
        auth = ""
        if user is not None:
            auth = user if password is None else f"{user}:{password}"
            auth += "@"
        return f"{self.scheme}://{auth}{self.host}:{self.port}/{topic}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        closed = bool(self.users) or self.password_file is not None
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if closed else 'true'}",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # Mosquitto started as root otherwise switches to the "mosquitto" user,
            # which cannot read files under root-only folders such as /root or /tmp/xyz.
            lines.append("user root")
        if self.users:
            lines.append(f"password_file {self._write_passwords()}")
        elif self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.tls:
            certfile, keyfile = self.tls
            lines += [f"certfile {certfile}", f"keyfile {keyfile}"]
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def _write_passwords(self) -> Path:
        tool = mosquitto_passwd()
        if tool is None:
            raise RuntimeError(_MISSING.format(path=MOSQUITTO_PASSWD))
        path = self.workdir / "passwords"
        path.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            args = [tool, "-b", *(["-c"] if i == 0 else []), str(path), user, password]
            subprocess.run(args, check=True, capture_output=True, timeout=10)
        path.chmod(0o600)
        return path

    def start(self, timeout: float = 10.0) -> None:
        if not os.path.exists(MOSQUITTO):
            raise RuntimeError(_MISSING.format(path=MOSQUITTO))
        config = self._write_config()
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                log = self.log_file.read_text() if self.log_file.exists() else ""
                self.process = None
                raise RuntimeError(f"mosquitto exited at start: {err.decode()}{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not accept connections on port {self.port}")

    def reload(self) -> None:
        """Have Mosquitto read its password and ACL files again (SIGHUP)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def mosquitto(
    tmp_path: Path,
    users: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
    *,
    password_file: Path | None = None,
    acl_file: Path | None = None,
) -> Iterator[MqttBroker]:
    """A running Mosquitto on 127.0.0.1 (anonymous unless ``users`` or a
    ``password_file`` is given)."""
    broker = MqttBroker(
        tmp_path / "mosquitto",
        users=dict(users or {}),
        tls=tls,
        password_file=password_file,
        acl_file=acl_file,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    properties: Properties | None


class Subscriber:
    """Messages on one topic, collected by a paho client running in its own thread."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()

    def on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.qos, props))
            self._cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[Received]:
        """The first ``count`` messages; fails if fewer arrive within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"{len(self.messages)} of {count} MQTT messages received")
            return list(self.messages)


@contextmanager
def subscribe(
    broker: MqttBroker,
    topic: str,
    *,
    qos: int = 2,
    user: str | None = None,
    password: str | None = None,
    mqtt5: bool = False,
) -> Iterator[Subscriber]:
    """Subscribe to ``topic`` on ``broker``; yields once the subscription is active."""
    sub = Subscriber()
    ready = threading.Event()
    problems: list[str] = []
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"test-subscriber-{uuid.uuid4().hex[:12]}",
        protocol=MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311,
    )
    if user is not None:
        client.username_pw_set(user, password)

    def on_connect(
        c: Client, userdata: Any, flags: ConnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        if rc.is_failure:
            problems.append(f"subscriber connection refused: {rc}")
            ready.set()
        else:
            c.subscribe(topic, qos)

    def on_subscribe(
        c: Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Properties | None
    ) -> None:
        if any(rc.is_failure for rc in rcs):
            problems.append(f"subscription refused: {rcs}")
        ready.set()

    def on_disconnect(
        c: Client, userdata: Any, flags: DisconnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        ready.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = sub.on_message
    client.on_disconnect = on_disconnect
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not ready.wait(5):
            raise TimeoutError(f"could not subscribe to {topic} on {broker.url}")
        if problems:
            raise RuntimeError("; ".join(problems))
        yield sub
    finally:
        client.disconnect()
        client.loop_stop()


@contextmanager
def amqtt_broker(tmp_path: Path) -> Iterator[MqttBroker]:
    """A running amqtt broker (PyPI), which speaks MQTT 3.1.1 only and refuses MQTT 5.

    Mosquitto cannot be limited to 3.1.1; amqtt answers an MQTT 5 CONNECT with
    "unacceptable protocol version", as older brokers and many gateways do.
    """
    workdir = tmp_path / "amqtt"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "amqtt.yaml"
    config.write_text(
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
    with (workdir / "amqtt.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"amqtt exited: {(workdir / 'amqtt.log').read_text()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("amqtt did not accept connections") from None
                    time.sleep(0.05)
            yield MqttBroker(workdir, port=port)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
