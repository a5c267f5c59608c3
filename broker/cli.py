"""The ``renkei`` command: ``serve`` runs the broker, ``demo`` runs it with sample data."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
import uvicorn

from broker import logs, shutdown
from broker.notify.senders import redact_uri
from broker.runtime import tune_gc
from broker.settings import Settings, get_settings

app = typer.Typer(
    help="Renkei regional data-linkage hub / 連携 エリアデータ連携基盤",
    no_args_is_help=True,
    add_completion=False,
)

HostOpt = Annotated[
    str | None, typer.Option("--host", help="Listen address [env RENKEI_HOST, default 127.0.0.1]")
]
PortOpt = Annotated[
    int | None, typer.Option("--port", help="Listen port [env RENKEI_PORT, default 1026]")
]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Store URL [env RENKEI_STORE, default sqlite:///./renkei.db]"),
]
PreloadOpt = Annotated[
    Path | None,
    typer.Option(
        "--context-preload",
        help="JSON file mapping @context URLs to local files [env RENKEI_CONTEXT_PRELOAD]",
    ),
]

FetchOpt = Annotated[
    str | None,
    typer.Option(
        "--context-fetch",
        help="Remote @context fetching: any, allowlist (RENKEI_OUTBOUND_ALLOW hosts only) "
        "or off (preloaded contexts only, for LGWAN) [env RENKEI_CONTEXT_FETCH, default any]",
    ),
]
AuthFileOpt = Annotated[
    Path | None,
    typer.Option("--auth-file", help="Access-control policy (YAML) [env RENKEI_AUTH_FILE]"),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-no-auth",
        help="Start without an auth file on a non-loopback address, on purpose",
    ),
]


def _settings(
    host: str | None,
    port: int | None,
    store: str | None,
    preload: Path | None,
    context_fetch: str | None = None,
    **more: Any,
) -> Settings:
    try:
        return get_settings(
            host=host,
            port=port,
            store=store,
            context_preload=preload,
            context_fetch=context_fetch,
            **more,
        )
    except ValueError as exc:
        typer.echo(f"設定エラー / invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc


def _run(settings: Settings) -> None:
    from broker.app import create_app
    from broker.auth.startup import InsecureStartRefused, check_open_start

    logs.configure(settings.log_level, settings.log_format)
    _refuse_newer_store(settings.store)
    try:
        notice = check_open_start(
            settings.host,
            auth_file=settings.auth_file,
            insecure_no_auth=settings.insecure_no_auth,
        )
    except InsecureStartRefused as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if notice:  # logged, so that it is a JSON line too with RENKEI_LOG_FORMAT=json
        logging.getLogger("renkei").warning(notice)
    asgi = create_app(settings)
    tune_gc(settings.gc_threshold)
    config = uvicorn.Config(
        asgi,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # logs.configure has set up every logger
        access_log=False,
        timeout_graceful_shutdown=shutdown.drain_seconds(settings.shutdown_timeout),
    )
    shutdown.BoundedServer(config, settings.shutdown_timeout).run()


def _refuse_newer_store(store: str) -> None:
    """Stop with the message alone, before serving, on a store a newer release wrote."""
    if not store.startswith("sqlite:"):
        return
    from broker.store.sqlite import SqliteStore
    from broker.store.sqlschema import refusal

    message = refusal(SqliteStore.from_url(store).path)
    if message is not None:
        typer.echo(message, err=True)
        raise typer.Exit(2)


@app.command()
def serve(
    host: HostOpt = None,
    port: PortOpt = None,
    store: StoreOpt = None,
    context_preload: PreloadOpt = None,
    context_fetch: FetchOpt = None,
    auth_file: AuthFileOpt = None,
    insecure_no_auth: InsecureOpt = False,
) -> None:
    """Run the NGSI-LD broker. / NGSI-LD ブローカーを起動します。"""
    _run(
        _settings(
            host,
            port,
            store,
            context_preload,
            context_fetch,
            auth_file=auth_file,
            insecure_no_auth=insecure_no_auth or None,
        )
    )


async def load_samples(settings: Settings) -> int:
    """Upsert the sample entities into the store (idempotent); returns how many."""
    from broker.app import build_hub, close_hub
    from broker.samples import sample_entities, sample_history

    hub = await build_hub(settings)
    try:
        tm = hub.resolver.core
        mutations = []
        for body in sample_entities():
            ent = hub.entities.new_entity(body, tm)
            # attributes the samples do not name (history brought up to date) stay
            mutations.append((ent["id"], lambda cur, e=ent: {**(cur or {}), **e}))
        results = await hub.entities.store.write("", mutations)
        for r in results:
            if r.error is not None:
                raise r.error
        for body in sample_history():  # the same instants again replace, not add
            await hub.temporal.upsert("", body, tm)
        return len(results)
    finally:
        await close_hub(hub)


MOSQUITTO = Path("/usr/sbin/mosquitto")


def _die_with_parent() -> None:
    """In a demo child: have Linux end it when the demo process ends, however it ends."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _mqtt_address(url: str) -> tuple[str, int, bool]:
    """Host, port and whether TLS is used, from an ``mqtt://`` or ``mqtts://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        typer.echo(
            f"--mqtt-url: mqtt://host:port または mqtts://host:port で指定してください / "
            f"expected mqtt://host:port or mqtts://host:port, not {redact_uri(url)}",
            err=True,
        )
        raise typer.Exit(2)
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        typer.echo(f"--mqtt-url: ポート番号が不正です / invalid port: {exc}", err=True)
        raise typer.Exit(2) from exc
    return parts.hostname, port, tls


def _start_mosquitto(port: int, workdir: Path, logins: bool) -> subprocess.Popen[bytes]:
    """The demo's Mosquitto; with ``logins``, only the logins and ACL of ``workdir``."""
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1"]
    if logins:
        lines += [
            "allow_anonymous false",
            f"password_file {workdir / 'passwd'}",
            f"acl_file {workdir / 'acl'}",
        ]
    else:
        lines.append("allow_anonymous true")
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    return subprocess.Popen(
        [str(MOSQUITTO), "-c", str(conf)],
        preexec_fn=_die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


#: The demo's device group: apikey ``demo`` in the ``komae`` service.
DEMO_APIKEY = "demo"
DEMO_SERVICE = "komae"


def _provision_demo(workdir: Path, logins: bool) -> dict[str, str]:
    """Provision the demo's group in the agent's file before the agent starts; with
    ``logins``, also write Mosquitto logins and ACLs for it (``renkei iot
    mosquitto-acl``'s own plan) and return the new passwords by user."""
    from connectors.mqtt.mosquitto import (
        AGENT_USER,
        password_file_text,
        plan,
        render_acl,
        write_private,
    )
    from connectors.mqtt.registry import Registry, Scope

    registry = Registry(workdir / "iota.db")
    try:
        registry.add_groups(
            Scope(DEMO_SERVICE, "/"), [{"apikey": DEMO_APIKEY, "entity_type": "WeatherObserved"}]
        )
        if not logins:
            return {}
        made = plan(registry, {})
    finally:
        registry.close()
    write_private(workdir / "passwd", password_file_text(made.hashes))
    write_private(workdir / "acl", render_acl(AGENT_USER, made.pinned))
    return {user: password for user, _, password in made.new}


def _start_iot_demo(
    settings: Settings, workdir: Path, mqtt_url: str, agent_port: int
) -> tuple[list[subprocess.Popen[bytes]], str | None] | None:
    """Beside the demo broker: the IoT agent on ``agent_port``, reading the MQTT broker at
    ``mqtt_url``: the one already listening there, else a Mosquitto of its own (a local
    address only), where each login may use only its own topics. Says which one it uses;
    returns the children and the demo device's Mosquitto password (None with a broker
    already there); ``None`` when neither is possible."""
    host, port, tls = _mqtt_address(mqtt_url)
    shown = redact_uri(mqtt_url)
    children: list[subprocess.Popen[bytes]] = []
    device_password = None
    agent_url = mqtt_url
    if _port_open(host, port):
        _provision_demo(workdir, logins=False)
        typer.echo(
            f"MQTT: {shown} で動いている既存の MQTT ブローカー (Mosquitto など) を使います / "
            f"using the MQTT broker already listening at {shown}"
        )
    elif host in ("127.0.0.1", "localhost") and not tls and MOSQUITTO.exists():
        from connectors.mqtt.mosquitto import AGENT_USER

        passwords = _provision_demo(workdir, logins=True)
        device_password = passwords[DEMO_APIKEY]
        agent_url = f"mqtt://{AGENT_USER}:{passwords[AGENT_USER]}@127.0.0.1:{port}"
        children.append(_start_mosquitto(port, workdir, logins=True))
        typer.echo(
            f"MQTT: Mosquitto を 127.0.0.1:{port} で起動しました (デモの終了とともに停止します) / "
            f"started Mosquitto on 127.0.0.1:{port} (it stops with the demo)"
        )
    else:
        why = (
            f"{shown} に接続できず、Mosquitto ({MOSQUITTO}) もありません / nothing listens at "
            f"{shown} and Mosquitto ({MOSQUITTO}) is not installed"
            if not MOSQUITTO.exists()
            else f"{shown} に接続できません (Mosquitto を起動するのはローカルの mqtt:// だけです) / "
            f"nothing listens at {shown} (a Mosquitto is started only for a local mqtt:// URL)"
        )
        typer.echo(f"IoT エージェントは起動しません / the IoT agent is not started: {why}")
        return None
    # Started here, on the main thread before the server runs: forking with a
    # preexec_fn is only safe while no other thread exists. The agent waits for the
    # broker by itself.
    env = {
        **os.environ,
        "RENKEI_BROKER_URL": f"http://{settings.host}:{settings.port}",
        "RENKEI_IOTA_DB": str(workdir / "iota.db"),
        "RENKEI_IOTA_PORT": str(agent_port),
        "RENKEI_MQTT_URL": agent_url,
    }
    children.append(
        subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "iot-agent"],
            env=env,
            preexec_fn=_die_with_parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    return children, device_password


@app.command()
def demo(
    host: HostOpt = None,
    port: PortOpt = None,
    store: StoreOpt = None,
    context_preload: PreloadOpt = None,
    iot_agent: Annotated[
        bool,
        typer.Option(
            "--iot-agent/--no-iot-agent",
            help="Run the IoT agent (and Mosquitto when none listens) beside the broker",
        ),
    ] = True,
    mqtt_url: Annotated[
        str,
        typer.Option(
            "--mqtt-url",
            help="MQTT broker of the IoT agent: one listening there is used, else Mosquitto "
            "is started on that local port",
        ),
    ] = "mqtt://127.0.0.1:1883",
    iot_agent_port: Annotated[
        int, typer.Option("--iot-agent-port", help="IoT agent provisioning API port")
    ] = 4041,
) -> None:
    """Load sample data (Komae City) and run the broker. / サンプルデータを読み込んで起動します。"""
    settings = _settings(host, port, store, context_preload)
    if iot_agent:
        _mqtt_address(mqtt_url)  # a bad URL is refused before anything starts
    count = asyncio.run(load_samples(settings))
    root = f"http://{settings.host}:{settings.port}"
    base = f"{root}/ngsi-ld/v1"
    typer.echo(
        f"""
Renkei: {count} 件のサンプルエンティティを読み込みました / loaded {count} sample entities ({redact_uri(settings.store)})

地図 / map:              {root}/viewer
OGC API - Features:      {root}/ogc   (QGIS: docs/gis.md)

試してみましょう / Try:
  curl '{base}/entities?type=EvacuationSite'
  curl '{base}/entities/urn:ngsi-ld:AirQualityObserved:komae-station-01?options=keyValues'
  curl -H 'Accept: application/geo+json' '{base}/entities?type=EvacuationSite'
  curl '{base}/entities/urn:ngsi-ld:EvacuationSite:132195-0001?lang=ja&options=concise'
  curl '{base}/entities?type=EvacuationSite&georel=near;maxDistance==1000&geometry=Point&coordinates=[139.578,35.634]'
  curl '{base}/temporal/entities/urn:ngsi-ld:Device:komae-tamagawa-wl-01?attrs=waterLevel&options=temporalValues'
  curl '{base}/temporal/entities/urn:ngsi-ld:Device:komae-tamagawa-wl-01?attrs=waterLevel&options=aggregatedValues&aggrMethods=avg,max&aggrPeriodDuration=PT6H'
  curl -X POST '{base}/entities' -H 'Content-Type: application/json' \\
       -d '{{"id":"urn:ngsi-ld:Bench:1","type":"Bench","seats":{{"type":"Property","value":3}}}}'
"""
    )
    children: list[subprocess.Popen[bytes]] | None = None
    with tempfile.TemporaryDirectory(prefix="renkei-demo-") as tmp:
        started = None
        if not iot_agent:
            typer.echo(
                "IoT エージェントは起動しません (--no-iot-agent) / the IoT agent is not started"
            )
        else:
            started = _start_iot_demo(settings, Path(tmp), mqtt_url, iot_agent_port)
        if started is not None:
            children, device_password = started
            mqtt_host, mqtt_port, _ = _mqtt_address(mqtt_url)
            login = ""
            if device_password is not None:
                login = f" -u {DEMO_APIKEY} -P '{device_password}'"
                typer.echo(
                    f"""デモのセンサーの MQTT ログイン (起動のたびに作り直し、ここにだけ表示します) / the demo sensor's MQTT login (made anew at each start, shown here only):
  user {DEMO_APIKEY}  password {device_password}
  (apikey '{DEMO_APIKEY}' のトピックにだけ送信できます / it may publish on the topics of apikey '{DEMO_APIKEY}' only)"""
                )
            typer.echo(
                f"""IoT エージェント (MQTT {mqtt_host}:{mqtt_port}、API :{iot_agent_port}) も起動しました / the IoT agent runs too:
  mosquitto_pub -h {mqtt_host} -p {mqtt_port}{login} -t /{DEMO_APIKEY}/sensor01/attrs -m '{{"temperature": 21.5, "location": "35.634,139.578"}}'
  curl -H 'NGSILD-Tenant: {DEMO_SERVICE}' '{base}/entities/urn:ngsi-ld:WeatherObserved:sensor01?options=keyValues'
  (mosquitto_pub: apt-get install mosquitto-clients)
"""
            )
        typer.echo("停止するには Ctrl+C / press Ctrl+C to stop\n")
        try:
            _run(settings)
        finally:
            for child in reversed(children or []):
                child.terminate()
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.kill()


@app.command()
def backup(
    store: Annotated[str, typer.Option("--store", help="Store URL (sqlite:///PATH)")],
    out: Annotated[Path, typer.Option("--out", help="Backup file to write")],
) -> None:
    """Copy a SQLite store, also while it serves writes. / 稼働中でも保存先をバックアップします。"""
    from broker.store.sqlbackup import BackupError
    from broker.store.sqlbackup import backup as take

    path = _sqlite_path(store, "backup")
    try:
        take(Path(path), out)
    except BackupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"バックアップしました / backed up {path} -> {out}")


@app.command()
def restore(
    store: Annotated[str, typer.Option("--store", help="Store URL (sqlite:///PATH)")],
    from_: Annotated[Path, typer.Option("--from", help="Backup file (renkei backup)")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing store / 既存の保存先を置き換える")
    ] = False,
) -> None:
    """Put a backup in place of a SQLite store (the server stopped). / バックアップから復元します。"""
    from broker.store.sqlbackup import BackupError
    from broker.store.sqlbackup import restore as put_back

    path = _sqlite_path(store, "restore")
    try:
        put_back(Path(path), from_, force=force)
    except BackupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"復元しました / restored {from_} -> {path}")


def _sqlite_path(store: str, command: str) -> str:
    if store.startswith(("mongodb://", "mongodb+srv://")):
        typer.echo(
            f"MongoDB は renkei {command} ではなく mongodump / mongorestore で扱います "
            f"(docs/mongodb.md) / for MongoDB use mongodump and mongorestore instead of "
            f"renkei {command}: see docs/mongodb.md ({redact_uri(store)})",
            err=True,
        )
        raise typer.Exit(2)
    from broker.store.sqlite import SqliteStore

    try:
        return SqliteStore.from_url(store).path
    except ValueError as exc:
        typer.echo(f"設定エラー / invalid store URL: {exc}", err=True)
        raise typer.Exit(2) from exc


def _register_connectors() -> None:
    """Connector commands (import-csv, iot-agent) live with their packages."""
    from connectors.csv.cli import register as register_csv
    from connectors.mqtt.cli import register as register_mqtt

    register_csv(app)
    register_mqtt(app)
    from opendata.cli import register as register_publish

    register_publish(app)


_register_connectors()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
