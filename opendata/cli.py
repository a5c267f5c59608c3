# ruff: noqa: RUF001  (Japanese text: full-width brackets are intended)
"""``renkei publish``: publish dataset definitions from the broker to a CKAN catalogue.

Exit status: 0 when every dataset was published (or is unchanged); 1 when any failed
(each is reported with CKAN's error text, the others are still published); 2 for
definitions or options that cannot be used.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated

import typer

from opendata.datasets import DatasetDefinition, DefinitionError, load_definitions
from opendata.publish import (
    Catalog,
    ChangeListener,
    DatasetReport,
    Publisher,
    PublishError,
    subscribe_changes,
    unsubscribe,
)

__all__ = ["parse_interval", "publish", "read_token", "register"]

DEFAULT_BROKER_URL = "http://127.0.0.1:1026"
DEFAULT_DIR = "datasets"

_STATUS = {
    "created": "作成",
    "updated": "更新",
    "unchanged": "変更なし",
    "failed": "失敗",
    "deleted": "削除",
    "rendered": "作成のみ（CKAN と比較なし）",
}


def register(app: typer.Typer) -> None:
    """Add the ``publish`` command to the ``renkei`` application."""
    app.command("publish")(publish)


def parse_interval(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if m is None:
        raise ValueError(f"not an interval: {text!r} (e.g. 30s, 15m, 1h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def read_token(token_file: Path | None) -> str | None:
    """The CKAN API token: ``RENKEI_CKAN_TOKEN``, else the file named by ``--ckan-token-file``
    or ``RENKEI_CKAN_TOKEN_FILE``."""
    token = os.environ.get("RENKEI_CKAN_TOKEN")
    if token:
        return token.strip()
    path = token_file or (
        Path(os.environ["RENKEI_CKAN_TOKEN_FILE"])
        if os.environ.get("RENKEI_CKAN_TOKEN_FILE")
        else None
    )
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise typer.BadParameter(
            f"APIトークンのファイルが読めません / cannot read the token file {path}: {exc.strerror}"
        ) from exc


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


def _show(report: DatasetReport) -> None:
    prefix = "[ドライラン / dry run] " if report.dry_run else ""
    status = f"{_STATUS.get(report.status, report.status)} / {report.status}"
    line = f"{prefix}{report.name}: {status}"
    if report.status != "failed":
        line += f" ({report.entities} entities)"
    typer.echo(line, err=report.status == "failed")
    if report.error:
        typer.echo(f"  エラー / error: {report.error}", err=True)
    if report.fields:
        typer.echo(f"  項目 / fields: {', '.join(report.fields)}")
    for key, action in report.resources.items():
        typer.echo(f"  {key}: {_STATUS.get(action, action)} / {action}")
    for name, action in report.layers.items():
        typer.echo(f"  OGC layer~{name}: {_STATUS.get(action, action)} / {action}")
    if report.datastore_rows is not None:
        typer.echo(f"  DataStore: {report.datastore_rows} 行 / rows")
    for note in report.notes:
        typer.echo(f"  注意 / note: {note}")
    if report.url and report.status != "failed" and not report.dry_run:
        typer.echo(f"  {report.url}")


def _watch(
    publisher: Publisher,
    defs: list[DatasetDefinition],
    interval: float,
    on_change: bool,
    listen: str,
    notify_url: str | None,
    broker: str,
) -> None:
    listener = None
    subscriptions: list[tuple[str | None, str]] = []
    if on_change:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise _fail(f"--listen: HOST:PORT です / must be HOST:PORT, not {listen!r}")
        listener = ChangeListener(host, int(port))
        listener.start()
        endpoint = notify_url or listener.url
        try:
            subscriptions = subscribe_changes(defs, broker, endpoint)
        except PublishError as exc:
            listener.close()
            raise _fail(f"サブスクリプションを作成できません / cannot subscribe: {exc}", 1) from exc
        typer.echo(
            f"変更を {endpoint} で受け取ります / notifications go to {endpoint} "
            f"({len(subscriptions)} subscriptions)"
        )
    typer.echo(
        f"{interval:g} 秒ごとにも確認します（Ctrl+C で終了） / also checking every {interval:g}s "
        "(Ctrl+C to stop)"
    )
    try:
        publisher.watch(
            defs, interval, on_report=_show, trigger=listener.event if listener else None
        )
    except KeyboardInterrupt:
        pass
    finally:
        if listener is not None:
            unsubscribe(broker, subscriptions)
            listener.close()


def _select(definitions: list[DatasetDefinition], names: list[str]) -> list[DatasetDefinition]:
    if not names:
        return definitions
    known = {d.name: d for d in definitions}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise _fail(
            f"データセット {unknown} の定義がありません / no definition named {unknown} "
            f"(known: {', '.join(sorted(known))})"
        )
    return [known[n] for n in names]


def publish(
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset", "-d", help="Publish only this dataset (repeatable) / 対象データセット"
        ),
    ] = None,
    definitions: Annotated[
        Path | None,
        typer.Option(
            "--definitions",
            help=f"Folder of dataset definitions (YAML) [env RENKEI_PUBLISH_DIR, default ./{DEFAULT_DIR}]",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Render and compare, change nothing / 何も変更しません"),
    ] = False,
    ckan_url: Annotated[
        str | None, typer.Option("--ckan-url", help="CKAN site URL [env RENKEI_CKAN_URL]")
    ] = None,
    ckan_token_file: Annotated[
        Path | None,
        typer.Option(
            "--ckan-token-file",
            help="File holding the CKAN API token [env RENKEI_CKAN_TOKEN_FILE; or RENKEI_CKAN_TOKEN]",
        ),
    ] = None,
    broker_url: Annotated[
        str | None,
        typer.Option(
            "--broker-url", help=f"Broker URL [env RENKEI_BROKER_URL, default {DEFAULT_BROKER_URL}]"
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="API key of the hub (X-API-Key) [env RENKEI_API_KEY]"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Bearer token for the hub (OIDC) [env RENKEI_TOKEN]"),
    ] = None,
    rate: Annotated[
        float, typer.Option("--rate", min=0, help="Most CKAN requests per second (0: no limit)")
    ] = 5.0,
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Retries on CKAN timeouts and 5xx")
    ] = 4,
    every: Annotated[
        str | None,
        typer.Option(
            "--every",
            help="Watch mode: check every interval (30s, 15m, 1h) and republish changed datasets",
        ),
    ] = None,
    on_change: Annotated[
        bool,
        typer.Option(
            "--on-change",
            help="Watch mode: subscribe to the broker and republish as soon as entities change",
        ),
    ] = False,
    listen: Annotated[
        str,
        typer.Option("--listen", help="With --on-change: HOST:PORT to receive notifications on"),
    ] = "127.0.0.1:0",
    notify_url: Annotated[
        str | None,
        typer.Option(
            "--notify-url",
            help="With --on-change: the URL the broker posts to (default http://LISTEN/notify)",
        ),
    ] = None,
    ogc_layers_dir: Annotated[
        Path | None,
        typer.Option(
            "--ogc-layers-dir",
            help="Also write district_indicators layers into the hub's OGC layers folder "
            "[env RENKEI_OGC_LAYERS_DIR] / 集計レイヤを /ogc にも公開",
        ),
    ] = None,
) -> None:
    """Publish open data to CKAN. / オープンデータを CKAN に公開します。"""
    # the broker clients made while publishing read the hub's credentials from these
    if api_key:
        os.environ["RENKEI_API_KEY"] = api_key
    if token:
        os.environ["RENKEI_TOKEN"] = token
    folder = definitions or Path(os.environ.get("RENKEI_PUBLISH_DIR") or DEFAULT_DIR)
    try:
        defs = _select(load_definitions(folder), dataset or [])
    except DefinitionError as exc:
        raise _fail("\n".join(exc.messages)) from exc
    interval = None
    if every is not None:
        try:
            interval = parse_interval(every)
        except ValueError as exc:
            raise _fail(f"--every: {exc}") from exc
        if interval <= 0:
            raise _fail("--every: 0より大きい間隔です / must be more than 0")
    elif on_change:
        interval = 3600.0  # a safety net beside the notifications
    url = ckan_url or os.environ.get("RENKEI_CKAN_URL")
    broker = broker_url or os.environ.get("RENKEI_BROKER_URL") or DEFAULT_BROKER_URL
    if url is None and not dry_run:
        raise _fail(
            "--ckan-url（または RENKEI_CKAN_URL）が必要です / --ckan-url (or RENKEI_CKAN_URL) is required"
        )
    try:
        token = read_token(ckan_token_file)
    except typer.BadParameter as exc:
        raise _fail(str(exc)) from exc
    if token is None and url is not None and not dry_run:
        raise _fail(
            "CKAN APIトークンがありません（RENKEI_CKAN_TOKEN か --ckan-token-file） / "
            "no CKAN API token (RENKEI_CKAN_TOKEN or --ckan-token-file)"
        )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    catalog = Catalog(url, token, rate=rate, retries=retries) if url is not None else None
    layers_dir = ogc_layers_dir or (
        Path(os.environ["RENKEI_OGC_LAYERS_DIR"])
        if os.environ.get("RENKEI_OGC_LAYERS_DIR")
        else None
    )
    if layers_dir is not None and layers_dir.exists() and not layers_dir.is_dir():
        raise _fail(f"--ogc-layers-dir: {layers_dir} はフォルダではありません / is not a folder")
    publisher = Publisher(catalog, broker, dry_run=dry_run, ogc_layers_dir=layers_dir)
    try:
        if interval is not None:
            _watch(publisher, defs, interval, on_change, listen, notify_url, broker)
            return
        reports = publisher.publish_all(defs)
    finally:
        if catalog is not None:
            catalog.close()
    for report in reports:
        _show(report)
    failed = [r.name for r in reports if not r.ok]
    statuses = ["created", "updated", "unchanged", "failed"]
    if any(r.status == "rendered" for r in reports):
        statuses.insert(0, "rendered")
    counts = {s: sum(r.status == s for r in reports) for s in statuses}
    typer.echo("合計 / total: " + ", ".join(f"{_STATUS[s]} {s} {n}" for s, n in counts.items()))
    if failed:
        raise typer.Exit(1)
