# ruff: noqa: RUF001  (Japanese text: full-width brackets are intended)
"""``renkei import-csv``: a city-system CSV or a standard dataset into the broker.

Without ``--dataset`` or ``--mapping`` (or with ``--dataset auto``) the standard layout
is chosen from the file's header. Blank values in required (値必須) columns are warnings,
counted per column in the summary and listed one by one with ``--verbose``; ``--strict``
makes them errors.

Exit status: 0 when every row was written (or, with ``--dry-run``, would be); 1 when
rows had errors (they are listed, with line and column, and skipped; with ``--strict``
nothing is written); 2 for a file, layout or option that cannot be used (a header that
does not fit the layout included); 3 when the broker could not be reached or refused
the request.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from connectors.client import BrokerClient, BrokerError
from connectors.csv.detect import detect_layout
from connectors.csv.encoding import DecodeError
from connectors.csv.importer import (
    BATCH_SIZE,
    ImportPlan,
    ImportResult,
    plan_import,
    read_header,
    send,
)
from connectors.csv.layout import Layout, LayoutError, dataset_slugs, load_dataset, load_mapping

__all__ = ["import_csv", "register"]

DEFAULT_BROKER_URL = "http://127.0.0.1:1026"
SHOWN_ENTITIES = 3


def register(app: typer.Typer) -> None:
    """Add ``import-csv`` and ``migrate-vocabulary`` to the ``renkei`` application."""
    from connectors.csv.migrate import migrate_vocabulary  # it uses this module's defaults

    app.command("import-csv")(import_csv)
    app.command("migrate-vocabulary")(migrate_vocabulary)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


AUTO = "auto"


def _layout(
    dataset: str | None, mapping: Path | None, entity_type: str | None, header: list[str]
) -> Layout:
    if dataset is not None and mapping is not None:
        raise _fail(
            "--dataset か --mapping のどちらか一つを指定してください / give exactly one of "
            f"--dataset or --mapping (datasets: {AUTO}, {', '.join(dataset_slugs())})"
        )
    try:
        if mapping is not None:
            layout = load_mapping(mapping)
        elif dataset is None or dataset == AUTO:
            layout = _detect(header)
        else:
            layout = load_dataset(dataset)
    except LayoutError as exc:
        raise _fail("\n".join(exc.messages)) from exc
    if entity_type:
        layout = layout.with_type(entity_type)
    return layout


def _detect(header: list[str]) -> Layout:
    match = detect_layout(header)
    if match is None:
        raise _fail(
            "見出しがどの標準データセットにも合いません。--dataset か --mapping で指定してください"
            " / the header fits no standard dataset: give --dataset or --mapping "
            f"(datasets: {', '.join(dataset_slugs())})"
        )
    layout = match.layout
    title_ja = layout.title.get("ja", layout.name)
    title_en = layout.title.get("en", layout.name)
    typer.echo(
        f"見出しから {layout.name}（{title_ja}）として読み込みます / "
        f"reading as {layout.name} ({title_en}), chosen from the header",
        err=True,
    )
    return layout


def _report(plan: ImportPlan, verbose: bool) -> None:
    for problem in plan.problems:
        if problem.blank and problem.warning and not verbose:
            continue
        prefix = "警告 / warning: " if problem.warning else ""
        typer.echo(prefix + str(problem), err=True)
    counts = plan.blank_counts()
    if counts:
        typer.echo("必須項目が空の行 / rows with a blank required value:", err=True)
        for header, n in counts.items():
            typer.echo(f"  {header}: {n}行が空です / {header}: {n} rows blank", err=True)
        if not verbose and plan.warnings:
            typer.echo(
                "  （一行ずつは --verbose で表示します。--strict でエラーにします）"
                " / (--verbose lists them; --strict makes them errors)",
                err=True,
            )


def _preview(plan: ImportPlan) -> None:
    n = len(plan.entities)
    typer.echo(
        f"ドライラン: {n}件のエンティティを書き込みます（送信はしません） / "
        f"dry run: would write {n} entities (nothing sent)"
    )
    shown = plan.entities[:SHOWN_ENTITIES]
    if shown:
        typer.echo(f"最初の{len(shown)}件 / first {len(shown)}:")
        typer.echo(json.dumps(shown, ensure_ascii=False, indent=2))


async def _send(
    plan: ImportPlan,
    broker_url: str,
    tenant: str | None,
    context: str,
    batch_size: int,
    *,
    api_key: str | None = None,
    token: str | None = None,
) -> ImportResult:
    client = BrokerClient(
        broker_url, tenant=tenant, context=context, timeout=60.0, api_key=api_key, token=token
    )
    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn("送信中 / upserting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("upsert", total=len(plan.entities))
            return await send(
                client,
                plan,
                batch_size=batch_size,
                on_batch=lambda n: progress.advance(task, n),
            )
    finally:
        await client.aclose()


def import_csv(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV file")
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Standard dataset slug, e.g. evacuation-sites, or auto (chosen from the "
            "header; the default without --mapping)",
        ),
    ] = None,
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="Mapping file (YAML) for a non-standard CSV")
    ] = None,
    entity_type: Annotated[
        str | None, typer.Option("--type", help="Entity type instead of the layout's")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="NGSILD-Tenant")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show what would be written")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Blank required values are errors; nothing is written if any row has an error",
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="List every blank required value, row by row")
    ] = False,
    encoding: Annotated[
        str | None,
        typer.Option("--encoding", help="utf-8, utf-8-sig or cp932 (default: detected)"),
    ] = None,
    broker_url: Annotated[
        str, typer.Option("--broker-url", envvar="RENKEI_BROKER_URL", help="Broker base URL")
    ] = DEFAULT_BROKER_URL,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=1000, help="Entities per upsert")
    ] = BATCH_SIZE,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="RENKEI_API_KEY", help="API key of the hub (X-API-Key)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="RENKEI_TOKEN", help="Bearer token (OIDC access token)"),
    ] = None,
) -> None:
    """Import a CSV file as NGSI-LD entities. / CSVファイルをエンティティとして取り込みます。"""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise _fail(f"{file}: 読めません / cannot read: {exc}") from exc
    try:
        auto = mapping is None and dataset in (None, AUTO)
        header = read_header(data, encoding) if auto else []
        layout = _layout(dataset, mapping, entity_type, header)
        plan = plan_import(data, layout, encoding=encoding, strict=strict)
    except DecodeError as exc:
        raise _fail(f"{file}: {exc.ja} / {exc.en}") from exc
    if plan.refused is not None:
        raise _fail(f"{file}: {plan.refused.ja} / {plan.refused.en}")
    _report(plan, verbose)
    bad_rows = plan.rows_with_errors
    if plan.rows == 0 and plan.errors:
        raise _fail(f"{file}: 読み込めません / cannot be imported ({len(plan.errors)} errors)", 1)
    if bad_rows and strict:
        raise _fail(
            f"--strict: {bad_rows}行にエラーがあるため何も書き込みません / "
            f"{bad_rows} rows have errors: nothing written",
            1,
        )
    if dry_run:
        _preview(plan)
        if bad_rows:
            typer.echo(
                f"{bad_rows}行はエラーのため書き込まれません / {bad_rows} rows would be skipped"
            )
        raise typer.Exit(1 if bad_rows else 0)
    try:
        result = asyncio.run(
            _send(
                plan, broker_url, tenant, layout.context, batch_size, api_key=api_key, token=token
            )
        )
    except BrokerError as exc:
        raise _fail(f"ブローカーエラー / broker error: {exc}", 3) from exc
    for line, eid, detail in result.refused:
        typer.echo(
            f"{line}行目: ブローカーが拒否しました / line {line}: refused by the broker: "
            f"{eid}: {detail}",
            err=True,
        )
    typer.echo(
        f"{result.written}件を書き込みました（{plan.rows}行中、エラーで{bad_rows}行をスキップ） / "
        f"wrote {result.written} entities ({bad_rows} of {plan.rows} rows skipped for errors)"
    )
    if bad_rows or result.refused:
        raise typer.Exit(1)
