"""ContextRegistry (clause 5.13): hosted contexts, their tenants, the implicit context of
an inline @context, and what survives a restart (a real SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.api.deps import Hub
from broker.app import build_hub, close_hub
from broker.core.contexts import HOSTED, IMPLICIT
from broker.errors import BadRequestData, InvalidRequest, ResourceNotFound
from broker.jsonld.context import CORE_CONTEXT_URL
from tests.broker.core.conftest import CONTEXT, NS
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def test_a_hosted_context_is_served_and_resolves_its_terms(hub: Hub) -> None:
    rec = await hub.contexts.add_hosted({"@context": CONTEXT})
    assert rec.kind == HOSTED
    assert hub.contexts.get(rec.id).document == {"@context": CONTEXT}
    tm = await hub.term_map(rec.url)
    assert tm.expand("避難所") == f"{NS}避難所"
    assert rec.id in [r.id for r in hub.contexts.list(HOSTED)]


async def test_hosted_contexts_belong_to_their_tenant(hub: Hub) -> None:
    rec = await hub.contexts.add_hosted({"@context": CONTEXT}, tenant="komae")
    assert hub.contexts.get(rec.id, tenant="komae").id == rec.id
    with pytest.raises(ResourceNotFound):
        hub.contexts.get(rec.id, tenant="chofu")
    assert rec.id not in [r.id for r in hub.contexts.list(tenant="chofu")]


async def test_what_is_not_a_context_is_refused(hub: Hub) -> None:
    with pytest.raises(InvalidRequest):
        await hub.contexts.add_hosted({"避難所": f"{NS}避難所"})  # no @context member
    with pytest.raises(BadRequestData):
        hub.contexts.list(kind="一時的")


async def test_the_core_context_is_listed_and_cannot_be_deleted(hub: Hub) -> None:
    assert CORE_CONTEXT_URL in [r.url for r in hub.contexts.list()]
    with pytest.raises(BadRequestData):
        await hub.contexts.delete(CORE_CONTEXT_URL)


async def test_an_inline_context_gets_one_implicit_url(hub: Hub) -> None:
    tm = await hub.term_map(CONTEXT)
    url = await hub.contexts.implicit(tm)
    assert url == await hub.contexts.implicit(tm)  # the same context, the same URL
    assert url in [r.url for r in hub.contexts.list(IMPLICIT)]
    assert await hub.contexts.implicit(await hub.term_map(None)) == CORE_CONTEXT_URL


async def test_hosted_contexts_survive_a_restart_and_deletion_is_final(tmp_path: Path) -> None:
    hub = await build_hub(make_settings(tmp_path))
    rec = await hub.contexts.add_hosted({"@context": CONTEXT})
    gone = await hub.contexts.add_hosted({"@context": {"地区": f"{NS}地区"}})
    await hub.contexts.delete(gone.id)
    await close_hub(hub)
    hub = await build_hub(make_settings(tmp_path))
    try:
        assert hub.contexts.get(rec.id).document == {"@context": CONTEXT}
        with pytest.raises(ResourceNotFound):
            hub.contexts.get(gone.id)
    finally:
        await close_hub(hub)
