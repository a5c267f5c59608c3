"""``renkei migrate-vocabulary``: move entities imported with Renkei 1's @context to the default vocabulary.

Renkei 1 imported the standard datasets with ``renkei-v1.jsonld``, whose terms expand
under ``https://renkei.city/ns/`` (and a few under ``https://smartdatamodels.org/``),
so a client without a ``Link`` header could not find them by their short names. The
standard datasets now use the NGSI-LD default ``@vocab`` (``renkei-v2.jsonld`` only
spells those IRIs out). This command reads every entity of a standard type through the
old context, which gives the short names back, and writes it again through the new
one with a batch upsert that replaces the entity: each entity changes in one atomic
write, under the same id, and a run stopped half-way is finished by running it again.
Attribute history recorded under the old IRIs is not carried over.

Like every connector it talks to the hub's public HTTP API only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from connectors.client import BrokerClient, BrokerError
from connectors.csv.cli import DEFAULT_BROKER_URL
from schemas import CONTEXTS_DIR, RENKEI_CONTEXT_URL, RENKEI_V1_CONTEXT_URL

BATCH = 200


def standard_types() -> list[str]:
    """The entity types Renkei 1's context defined (the standard datasets)."""
    ctx = json.loads((CONTEXTS_DIR / "renkei-v1.jsonld").read_text(encoding="utf-8"))["@context"]
    return sorted(t for t in ctx if t[:1].isupper())


async def migrate(
    broker_url: str, tenant: str | None, types: list[str], *, dry_run: bool
) -> dict[str, tuple[int, list[tuple[str, dict[str, Any]]]]]:
    """Per type: how many entities were found under the old IRIs, and the write errors."""
    old = BrokerClient(broker_url, tenant=tenant, context=RENKEI_V1_CONTEXT_URL)
    new = BrokerClient(broker_url, tenant=tenant, context=RENKEI_CONTEXT_URL)
    report: dict[str, tuple[int, list[tuple[str, dict[str, Any]]]]] = {}
    try:
        for entity_type in types:
            # read all first: a migrated entity no longer matches the old type, so
            # reading page by page while writing would skip entities
            found = [e async for e in old.query(type=entity_type)]
            errors: list[tuple[str, dict[str, Any]]] = []
            if not dry_run:
                for i in range(0, len(found), BATCH):
                    outcome = await new.upsert(found[i : i + BATCH])
                    errors.extend(outcome.errors)
            report[entity_type] = (len(found), errors)
    finally:
        await old.aclose()
        await new.aclose()
    return report


def migrate_vocabulary(
    broker_url: Annotated[
        str, typer.Option("--broker-url", envvar="RENKEI_BROKER_URL", help="Broker base URL")
    ] = DEFAULT_BROKER_URL,
    tenant: Annotated[
        str | None, typer.Option(help="NGSILD-Tenant (default: the default tenant)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count only, write nothing / 件数のみ表示")
    ] = False,
) -> None:
    """Move standard-dataset entities from Renkei 1's vocabulary to the NGSI-LD default one.

    旧版 (renkei-v1.jsonld) で取り込んだ標準データセットのエンティティを、Link ヘッダーなしで
    検索できる NGSI-LD 既定の語彙に移します。
    """
    try:
        report = asyncio.run(migrate(broker_url, tenant, standard_types(), dry_run=dry_run))
    except BrokerError as exc:
        typer.echo(f"ハブに接続できません / hub error: {exc}", err=True)
        raise typer.Exit(1) from exc
    failed = 0
    for entity_type, (count, errors) in report.items():
        if not count:
            continue
        verb = "移行対象 / to migrate" if dry_run else "移行しました / migrated"
        typer.echo(f"{entity_type}: {count - len(errors)} {verb}")
        for entity_id, problem in errors:
            typer.echo(f"  {entity_id}: {problem}", err=True)
        failed += len(errors)
    if not any(count for count, _ in report.values()):
        typer.echo("旧語彙のエンティティはありません / nothing under the old vocabulary")
    if failed:
        raise typer.Exit(1)
