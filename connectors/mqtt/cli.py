"""``renkei iot-agent``: added to the ``renkei`` command by :func:`register`."""

from __future__ import annotations

import logging
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


def settings_from(
    mqtt_url: str | None,
    broker_url: str | None,
    port: int | None,
    host: str | None,
    mqtt_version: str | None = None,
    mqtt_ca_file: str | None = None,
    ngsi: str | None = None,
) -> AgentSettings:
    try:
        return get_settings(
            mqtt_url=mqtt_url,
            broker_url=broker_url,
            iota_port=port,
            iota_host=host,
            mqtt_version=mqtt_version,
            mqtt_ca_file=mqtt_ca_file,
            iota_ngsi=ngsi,
        )
    except ValueError as exc:
        typer.echo(f"設定エラー / invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc


def run(settings: AgentSettings) -> None:
    from connectors.mqtt.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
    ) -> None:
        """Run the MQTT IoT agent (FIWARE IoT Agent JSON). / IoT エージェントを起動します。"""
        run(settings_from(mqtt_url, broker_url, port, host, mqtt_version, mqtt_ca_file, ngsi))


def main() -> None:
    app = typer.Typer(add_completion=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
