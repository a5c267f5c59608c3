"""``renkei iot-agent`` and ``renkei iot mosquitto-acl``: added to the ``renkei``
command by :func:`register`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from connectors.mqtt.settings import AgentSettings, get_settings

MqttUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--mqtt-url",
        help="MQTT broker, mqtt(s)://[user:password@]host[:port] "
        "[env RENKEI_MQTT_URL, default mqtt://127.0.0.1:1883]",
    ),
]
MqttVersionOpt = Annotated[
    str | None,
    typer.Option(
        "--mqtt-version",
        help="auto (MQTT 5, 3.1.1 if the broker refuses it), mqtt5.0 or mqtt3.1.1 "
        "[env RENKEI_MQTT_VERSION, default auto]",
    ),
]
MqttCaFileOpt = Annotated[
    str | None,
    typer.Option(
        "--mqtt-ca-file",
        help="CA certificates (PEM) trusted for mqtts:// [env RENKEI_MQTT_CA_FILE, "
        "default: the system CAs]",
    ),
]
BrokerUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--broker-url",
        help="NGSI-LD broker [env RENKEI_BROKER_URL, default http://127.0.0.1:1026]",
    ),
]
PortOpt = Annotated[
    int | None,
    typer.Option("--port", help="Provisioning API port [env RENKEI_IOTA_PORT, default 4041]"),
]
HostOpt = Annotated[
    str | None,
    typer.Option(
        "--host", help="Provisioning API address [env RENKEI_IOTA_HOST, default 127.0.0.1]"
    ),
]


NgsiOpt = Annotated[
    str | None,
    typer.Option(
        "--ngsi",
        help="エンティティの書き方: ld (NGSI-LD) または v2 (iotagent-json の "
        "IOTA_CB_NGSI_VERSION=v2 と同じ形で /v2 へ) / what to write: ld (NGSI-LD) or v2 "
        "(the NGSI v2 entities iotagent-json writes, through /v2) "
        "[env RENKEI_IOTA_NGSI, default ld]",
    ),
]
CommandModeOpt = Annotated[
    str | None,
    typer.Option(
        "--command-mode",
        help="コマンドと lazy 属性の受け取り方: registration (ブローカーにコンテキストソースとして"
        "登録、ブローカーでの admin 権限が必要)、subscription (コマンドごとのサブスクリプション、"
        "lazy 属性なし)、auto (--ngsi ld なら registration) / how commands and lazy attributes "
        "reach the agent: registration (registered at the broker as their context source; "
        "the agent's key needs admin there), subscription (a subscription per command, no "
        "lazy attributes), auto (registration with --ngsi ld) "
        "[env RENKEI_IOTA_COMMAND_MODE, default auto]",
    ),
]
AuthFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--auth-file",
        help="Access-control policy (YAML), the broker's [env RENKEI_AUTH_FILE]",
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-no-auth",
        help="Start without an auth file on a non-loopback address, on purpose",
    ),
]
BrokerKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--broker-api-key",
        help="The agent's API key at the broker (prefer the environment: options show in "
        "process lists) [env RENKEI_BROKER_API_KEY]",
    ),
]
BrokerTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--broker-token",
        help="The agent's bearer token at the broker [env RENKEI_BROKER_TOKEN]",
    ),
]


def settings_from(
    mqtt_url: str | None,
    broker_url: str | None,
    port: int | None,
    host: str | None,
    mqtt_version: str | None = None,
    mqtt_ca_file: str | None = None,
    **more: object,
) -> AgentSettings:
    try:
        return get_settings(
            mqtt_url=mqtt_url,
            broker_url=broker_url,
            iota_port=port,
            iota_host=host,
            mqtt_version=mqtt_version,
            mqtt_ca_file=mqtt_ca_file,
            **more,
        )
    except ValueError as exc:
        typer.echo(f"設定エラー / invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc


def run(settings: AgentSettings) -> None:
    from broker.shared import InsecureStartRefused, check_open_start
    from connectors.mqtt.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        notice = check_open_start(
            settings.iota_host,
            auth_file=settings.auth_file,
            insecure_no_auth=settings.insecure_no_auth,
        )
    except InsecureStartRefused as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if notice:
        logging.getLogger("renkei.iota").warning(notice)
    uvicorn.run(
        create_app(settings),
        host=settings.iota_host,
        port=settings.iota_port,
        log_level=settings.log_level,
        access_log=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``iot-agent`` command to ``app``."""

    @app.command("iot-agent")
    def iot_agent(
        mqtt_url: MqttUrlOpt = None,
        broker_url: BrokerUrlOpt = None,
        port: PortOpt = None,
        host: HostOpt = None,
        mqtt_version: MqttVersionOpt = None,
        mqtt_ca_file: MqttCaFileOpt = None,
        ngsi: NgsiOpt = None,
        command_mode: CommandModeOpt = None,
        auth_file: AuthFileOpt = None,
        insecure_no_auth: InsecureOpt = False,
        broker_api_key: BrokerKeyOpt = None,
        broker_token: BrokerTokenOpt = None,
    ) -> None:
        """Run the MQTT IoT agent (FIWARE IoT Agent JSON). / IoT エージェントを起動します。"""
        run(
            settings_from(
                mqtt_url,
                broker_url,
                port,
                host,
                mqtt_version,
                mqtt_ca_file,
                iota_ngsi=ngsi,
                iota_command_mode=command_mode,
                auth_file=auth_file,
                insecure_no_auth=insecure_no_auth or None,
                broker_api_key=broker_api_key,
                broker_token=broker_token,
            )
        )

    iot = typer.Typer(
        help="IoT agent tools. / IoT エージェントの補助コマンド。", no_args_is_help=True
    )
    app.add_typer(iot, name="iot")

    @iot.command("mosquitto-acl")
    def mosquitto_acl(
        password_file: Annotated[
            Path, typer.Option("--password-file", help="Mosquitto password_file to write")
        ],
        acl_file: Annotated[Path, typer.Option("--acl-file", help="Mosquitto acl_file to write")],
        iota_db: Annotated[
            Path | None,
            typer.Option(
                "--iota-db",
                help="The agent's provisioning file [env RENKEI_IOTA_DB, default ./renkei-iota.db]",
            ),
        ] = None,
        agent_user: Annotated[
            str, typer.Option("--agent-user", help="The agent's own Mosquitto login")
        ] = "renkei-iota",
        pin: Annotated[
            list[str] | None,
            typer.Option(
                "--pin",
                help="APIKEY=SERVICE: the service an apikey used by several belongs to "
                "(repeatable)",
            ),
        ] = None,
    ) -> None:
        """Write Mosquitto logins (one per apikey, pinned to its service) and their ACLs.
        / apikey ごとの Mosquitto ログインと ACL を書き出します。"""
        write_mosquitto_files(password_file, acl_file, iota_db, agent_user, pin or [])


def write_mosquitto_files(
    password_file: Path,
    acl_file: Path,
    iota_db: Path | None,
    agent_user: str,
    pins: list[str],
) -> None:
    from connectors.mqtt.mosquitto import (
        PinError,
        password_file_text,
        plan,
        read_password_file,
        render_acl,
        valid_user,
        write_private,
    )
    from connectors.mqtt.registry import Registry

    wanted: dict[str, str] = {}
    for item in pins:
        apikey, sep, service = item.partition("=")
        if not sep or not apikey:
            typer.echo(
                f"--pin: APIKEY=SERVICE で指定してください / expected APIKEY=SERVICE: {item}"
            )
            raise typer.Exit(2)
        wanted[apikey] = service.strip().lower()
    if not valid_user(agent_user):
        typer.echo("--agent-user: 空白や ':' は使えません / no spaces or ':'", err=True)
        raise typer.Exit(2)
    db = iota_db or Path(get_settings().iota_db)
    if not db.exists():
        typer.echo(f"{db} がありません / no provisioning file at {db}", err=True)
        raise typer.Exit(2)
    registry = Registry(db)
    try:
        try:
            made = plan(
                registry, read_password_file(password_file), pins=wanted, agent_user=agent_user
            )
        except PinError as exc:
            typer.echo(f"--pin: {exc}", err=True)
            raise typer.Exit(2) from exc
    finally:
        registry.close()
    write_private(password_file, password_file_text(made.hashes))
    write_private(acl_file, render_acl(agent_user, made.pinned))
    typer.echo(
        f"{password_file} と {acl_file} を書きました ({len(made.pinned)} 個の apikey) / wrote "
        f"{password_file} and {acl_file} ({len(made.pinned)} apikeys); "
        "Mosquitto に SIGHUP で再読み込みさせてください / send Mosquitto SIGHUP to reload them"
    )
    for apikey, services in sorted(made.ambiguous.items()):
        typer.echo(
            f"apikey {apikey}: 複数のサービス ({', '.join(services)}) で使われているため"
            f"ログインを作りません。--pin {apikey}=SERVICE で指定してください / used by "
            f"several services ({', '.join(services)}): no login until --pin {apikey}=SERVICE",
            err=True,
        )
    for apikey in made.unusable:
        typer.echo(
            f"apikey {apikey!r}: ログイン名にできません (空白や ':') / cannot be a login name "
            "(spaces or ':')",
            err=True,
        )
    if made.new:
        typer.echo(
            "\n新しいログイン (パスワードはここに一度だけ表示されます) / new logins (each "
            "password is shown once, here only):"
        )
        for user, pinned_to, password in made.new:
            where = "agent" if pinned_to is None else f"service {pinned_to or '(default)'}"
            typer.echo(f"  {user}\t{password}\t({where})")


def main() -> None:
    app = typer.Typer(add_completion=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
