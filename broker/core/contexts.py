"""The broker's JSON-LD context registry (``/jsonldContexts``, clause 5.13).

Kinds, as the specification names them:
* ``Hosted``: added by a client; served at ``{base}/ngsi-ld/v1/jsonldContexts/{id}``.
* ``Cached``: a remote context fetched for a request (or preloaded from files).
* ``ImplicitlyCreated``: an inline ``@context`` object/array a request carried; it
  gets a URL so that ``application/json`` responses can point at it in ``Link``.

Hosted and ImplicitlyCreated contexts belong to the tenant whose request made them:
they are listed, served and deleted only within it (another tenant gets 404). Their id
carries the tenant as a tag (a digest of its name; none for the default tenant), so the
store needs no tenant of its own for them. Cached (fetched or preloaded) contexts are
copies of public documents, shared by all tenants.

Records live in the store so hosted contexts and the fetch cache survive restarts;
an in-memory map answers the resolver's synchronous look-ups. The contexts fetched for
requests are bounded in number and bytes (``RENKEI_CONTEXT_CACHE_MAX``,
``RENKEI_CONTEXT_CACHE_MAX_BYTES``): beyond either, the least recently used are dropped
and fetched again when next needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import OrderedDict
from typing import Any

import orjson

from broker.errors import BadRequestData, InvalidRequest, NgsiLdError, ResourceNotFound
from broker.jsonld.context import (
    CORE_CONTEXT_URL,
    ContextResolver,
    ContextValue,
    JsonDoc,
    TermMap,
    canonical_key,
    check_context_value,
    context_refs,
    is_core_context_url,
)
from broker.model.entity import now_iso
from broker.model.store import ContextRecord
from broker.store.base import ContextStore

log = logging.getLogger("renkei.contexts")

HOSTED = "Hosted"
CACHED = "Cached"
IMPLICIT = "ImplicitlyCreated"
KINDS = (HOSTED, CACHED, IMPLICIT)
PATH = "/ngsi-ld/v1/jsonldContexts/"
TAG_LENGTH = 16


class ContextRegistry:
    def __init__(
        self,
        store: ContextStore,
        base_url: str,
        *,
        max_cached: int = 500,
        max_cached_bytes: int = 20_000_000,
    ) -> None:
        self.store = store
        self.max_cached = max_cached
        self.max_cached_bytes = max_cached_bytes
        #: fetched (remote) Cached records by id, least recently used first: their sizes
        self._fetched: OrderedDict[str, int] = OrderedDict()
        self.base_url = base_url.rstrip("/")
        self.records: dict[str, ContextRecord] = {}
        self._by_url: dict[str, ContextRecord] = {}
        self.resolver: ContextResolver | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url_for(self, context_id: str) -> str:
        return f"{self.base_url}{PATH}{context_id}"

    def attach(self, resolver: ContextResolver) -> None:
        self.resolver = resolver
        resolver.hosted_lookup = self.lookup
        resolver.on_fetched = self._on_fetched

    async def load(self) -> None:
        records = await self.store.list_contexts()
        for rec in records:
            self._remember(rec)
            if rec.kind == CACHED and self.resolver is not None:
                self.resolver.fetched.setdefault(rec.url, rec.document)
        cached = [r for r in records if r.kind == CACHED]
        for rec in sorted(cached, key=lambda r: r.last_usage or r.created_at):
            self._fetched[rec.id] = _size(rec.document)
        await self._bound()

    async def _bound(self) -> None:
        """Drop the least recently used fetched contexts beyond the count and byte bounds
        (never the most recent: it is the one a request is waiting for)."""
        total = sum(self._fetched.values())
        while len(self._fetched) > 1 and (
            len(self._fetched) > self.max_cached or total > self.max_cached_bytes
        ):
            cid, size = self._fetched.popitem(last=False)
            total -= size
            rec = self.records.pop(cid, None)
            if rec is None:
                continue
            self._by_url.pop(rec.url, None)
            if self.resolver is not None:
                self.resolver.drop(rec.url)
            await self.store.delete_context(cid)

    def _remember(self, rec: ContextRecord) -> None:
        self.records[rec.id] = rec
        self._by_url[rec.url] = rec

    def lookup(self, url: str) -> JsonDoc | None:
        """Hosted and implicitly created contexts, by URL (or by path on any host)."""
        rec = self._by_url.get(url)
        if rec is None and PATH in url:
            rec = self.records.get(url.rsplit(PATH, 1)[1])
        if rec is not None and rec.kind != CACHED:
            return rec.document
        return None

    async def _on_fetched(self, url: str, doc: JsonDoc) -> None:
        rec = self._by_url.get(url)
        if rec is None:
            rec = ContextRecord(
                id=str(uuid.uuid4()), url=url, kind=CACHED, document=doc, created_at=now_iso()
            )
        else:
            rec.document = doc
        self._remember(rec)
        await self.store.put_context(rec)
        self._fetched[rec.id] = _size(doc)
        self._fetched.move_to_end(rec.id)
        await self._bound()

    async def add_hosted(self, body: Any, tenant: str = "") -> ContextRecord:
        """Host a context a client posted; URLs it names are fetched and cached in the background."""
        if not isinstance(body, dict) or "@context" not in body:
            raise InvalidRequest("a context to host must be a JSON object with an @context member")
        ctx = body["@context"]
        try:
            check_context_value(ctx)
        except BadRequestData as exc:
            raise InvalidRequest(str(exc)) from exc
        cid = _tagged(tenant, str(uuid.uuid4()))
        rec = ContextRecord(
            id=cid,
            url=self.url_for(cid),
            kind=HOSTED,
            document={"@context": ctx},
            created_at=now_iso(),
        )
        await self.store.put_context(rec)
        self._remember(rec)
        if self.resolver is not None and any(True for _ in context_refs(ctx)):
            task = asyncio.create_task(self._cache_refs(ctx))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return rec

    async def _cache_refs(self, ctx: ContextValue) -> None:
        assert self.resolver is not None
        try:
            await self.resolver.prefetch(ctx)
        except NgsiLdError as exc:
            log.warning(
                "hosted context refers to a context that could not be cached: %s", exc.detail
            )

    async def implicit(self, tm: TermMap, tenant: str = "") -> str:
        """URL of the ImplicitlyCreated context of ``tenant`` for an inline request context."""
        ctx: ContextValue | None = tm.context
        if ctx is None:
            return CORE_CONTEXT_URL
        if isinstance(ctx, str):
            return ctx
        cid = _tagged(tenant, hashlib.sha256(canonical_key(ctx).encode()).hexdigest()[:32])
        if cid not in self.records:
            rec = ContextRecord(
                id=cid,
                url=self.url_for(cid),
                kind=IMPLICIT,
                document={"@context": ctx},
                created_at=now_iso(),
            )
            await self.store.put_context(rec)
            self._remember(rec)
        return self.records[cid].url

    def touch(self, url: str) -> None:
        rec = self._known_record(url)
        if rec is not None:
            rec.hits += 1
            rec.last_usage = now_iso()
            if rec.id in self._fetched:
                self._fetched.move_to_end(rec.id)

    def _known_record(self, url: str) -> ContextRecord | None:
        """A Cached record for a context the broker has locally (bundled core, preloaded).

        Such contexts are listed like fetched ones once a request has used them; the
        core context always is.
        """
        rec = self._by_url.get(url)
        if rec is None and self.resolver is not None:
            if is_core_context_url(url):
                doc = self.resolver.core_doc
            elif url in self.resolver.preload:
                doc = self.resolver.preload[url]
            else:
                return None
            cid = "local-" + hashlib.sha256(url.encode()).hexdigest()[:16]
            rec = ContextRecord(id=cid, url=url, kind=CACHED, document=doc, created_at=now_iso())
            self._remember(rec)
        return rec

    def get(self, context_id: str, tenant: str = "") -> ContextRecord:
        rec = self.records.get(context_id) or self._known_record(context_id)
        if rec is None or not self._visible(rec, tenant):
            raise ResourceNotFound(f"no JSON-LD context {context_id}")
        return rec

    @staticmethod
    def _visible(rec: ContextRecord, tenant: str) -> bool:
        return rec.kind == CACHED or _tag_of(rec.id) == _tag(tenant)

    def list(self, kind: str | None = None, tenant: str = "") -> list[ContextRecord]:
        if kind is not None and kind not in KINDS:
            raise BadRequestData(f"kind must be one of {', '.join(KINDS)}")
        self._known_record(CORE_CONTEXT_URL)  # the core context is always listed
        return [
            r
            for r in self.records.values()
            if (kind is None or r.kind == kind) and self._visible(r, tenant)
        ]

    async def delete(self, context_id: str, *, reload: bool = False, tenant: str = "") -> None:
        if is_core_context_url(context_id):
            if not reload:
                raise BadRequestData(
                    "the NGSI-LD core context cannot be deleted (reload=true reloads it)"
                )
            return  # bundled with the broker: reloading it is reading the same file
        if reload and context_id not in self.records and context_id not in self._by_url:
            raise BadRequestData(f"no Cached context {context_id} to reload")
        rec = self.get(context_id, tenant)
        if reload:
            if rec.kind != CACHED:
                raise BadRequestData("reload applies to Cached contexts only")
            assert self.resolver is not None
            self.resolver.forget(rec.url)
            await self.resolver.prefetch(rec.url)
            return
        await self.store.delete_context(rec.id)
        self._fetched.pop(rec.id, None)
        self.records.pop(rec.id, None)
        self._by_url.pop(rec.url, None)
        if self.resolver is not None:
            self.resolver.forget(rec.url)

    @staticmethod
    def details(rec: ContextRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "URL": rec.url,
            "localId": f"urn:ngsi-ld:jsonldContext:{rec.id}",
            "kind": rec.kind,
            "createdAt": rec.created_at,
        }
        if rec.kind != HOSTED:
            out["numberOfHits"] = rec.hits
            if rec.last_usage:
                out["lastUsage"] = rec.last_usage
        return out


def _size(doc: JsonDoc) -> int:
    return len(orjson.dumps(doc))


def _tag(tenant: str) -> str:
    """The tag of a tenant in context ids: "" for the default tenant."""
    if not tenant:
        return ""
    return hashlib.sha256(f"tenant:{tenant}".encode()).hexdigest()[:TAG_LENGTH]


def _tagged(tenant: str, local_id: str) -> str:
    tag = _tag(tenant)
    return f"{tag}.{local_id}" if tag else local_id


def _tag_of(context_id: str) -> str:
    tag, dot, _ = context_id.partition(".")
    if dot and len(tag) == TAG_LENGTH and all(c in "0123456789abcdef" for c in tag):
        return tag
    return ""
