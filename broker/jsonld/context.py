"""Resolve ``@context`` values to term maps, without the network where possible.

A request's context (a URL from the ``Link`` header, or the ``@context`` of an
``application/ld+json`` body) is turned into a :class:`TermMap` once and cached by
its canonical JSON. The expensive part, JSON-LD context processing, is done by pyld
a single time per distinct context; after that every expansion and compaction of a
term is a dictionary lookup, memoised per term map.

Documents come, in order, from: the bundled NGSI-LD core context (any core context
URL of versions 1.3 to 1.9), contexts hosted by this broker, the offline preload map
(``RENKEI_CONTEXT_PRELOAD``), the cache of earlier fetches, and finally an HTTP fetch
bounded in time and size, under the outbound policy (:mod:`broker.outbound`), following
redirects only within the same host, and not at all with ``RENKEI_CONTEXT_FETCH=off``.
A preloaded URL is never fetched.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson
from pyld import jsonld
from pyld.context_resolver import ContextResolver as _PyldResolver

from broker.errors import BadRequestData, LdContextNotAvailable
from broker.outbound import OutboundPolicy, OutboundRefused, policy_transport
from schemas import BUNDLED_CONTEXTS, CORE_CONTEXT_FILE

CORE_CONTEXT_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
_CORE_URL_RE = re.compile(
    r"^https?://uri\.etsi\.org/ngsi-ld/v1/ngsi-ld-core-context(-v1\.\d+)?\.jsonld$"
)
# Remote contexts the core context itself refers to in scoped term definitions
# (``ngsildproof``). Proofs are not processed by this broker, so they resolve to an
# empty context instead of a network fetch.
_CORE_SCOPED_STUBS = frozenset({"https://w3id.org/security/data-integrity/v2"})

FETCH_MODES = ("any", "allowlist", "off")
#: Redirects followed for one context, all within its scheme, host and port.
MAX_REDIRECTS = 5

ContextValue = str | dict[str, Any] | list[Any]
JsonDoc = dict[str, Any]


def is_core_context_url(url: str) -> bool:
    return bool(_CORE_URL_RE.match(url))


def load_core_context() -> JsonDoc:
    doc: JsonDoc = orjson.loads(CORE_CONTEXT_FILE.read_bytes())
    return doc


def load_preload_map(path: Path) -> dict[str, JsonDoc]:
    """Read a preload file: ``{"https://...context.jsonld": "relative/file.jsonld"}``."""
    try:
        mapping = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"cannot read context preload file {path}: {exc}") from exc
    if not isinstance(mapping, dict):
        raise ValueError(f"context preload file {path} must hold a JSON object of URL -> file")
    docs: dict[str, JsonDoc] = {}
    for url, rel in mapping.items():
        file = (path.parent / str(rel)).resolve()
        try:
            doc = orjson.loads(file.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"context preload {url}: cannot read {file}: {exc}") from exc
        if not isinstance(doc, dict) or "@context" not in doc:
            raise ValueError(f"context preload {url}: {file} has no top-level @context")
        docs[str(url)] = doc
    return docs


def context_refs(ctx: Any, base: str | None = None) -> Iterator[str]:
    """Yield the absolute URLs a context value refers to (nested and scoped too)."""
    if isinstance(ctx, str):
        yield urljoin(base, ctx) if base else ctx
    elif isinstance(ctx, list):
        for item in ctx:
            yield from context_refs(item, base)
    elif isinstance(ctx, dict):
        imp = ctx.get("@import")
        if isinstance(imp, str):
            yield urljoin(base, imp) if base else imp
        for value in ctx.values():
            if isinstance(value, dict) and "@context" in value:
                yield from context_refs(value["@context"], base)


def single_url(ctx: Any) -> str | None:
    """The URL of a context given as one URL (or an array of exactly one URL)."""
    if isinstance(ctx, str):
        return ctx
    if isinstance(ctx, list) and len(ctx) == 1 and isinstance(ctx[0], str):
        return ctx[0]
    return None


def canonical_key(ctx: ContextValue | None) -> str:
    if ctx is None:
        return ""
    if isinstance(ctx, str):
        return ctx
    return orjson.dumps(ctx, option=orjson.OPT_SORT_KEYS).decode()


def check_context_value(ctx: Any) -> ContextValue:
    """Refuse @context values that are not a URL, an object or an array of those."""
    if isinstance(ctx, str):
        if not ctx:
            raise BadRequestData("@context must not be an empty string")
        return ctx
    if isinstance(ctx, dict):
        return ctx
    if isinstance(ctx, list):
        for item in ctx:
            if not isinstance(item, (str, dict)):
                raise BadRequestData("@context array items must be URLs or objects")
        return ctx
    raise BadRequestData("@context must be a URL, an object or an array")


class TermMap:
    """Expansion and compaction of terms under one processed context.

    ``context`` is the user's context as given (``None`` for the core context alone):
    it is what responses carry back in ``Link`` or ``@context``.
    """

    def __init__(
        self, resolver: ContextResolver, context: ContextValue | None, active: Any
    ) -> None:
        self.resolver = resolver
        self.context = context
        self._active = active
        self._exp: dict[str, str] = {}
        self._cmp: dict[str, str] = {}
        self._scoped: dict[str, TermMap] = {}
        #: For an inline context: the URL the broker hosts it under (ImplicitlyCreated),
        #: so application/json responses can name it in a Link header.
        self.implicit_url: str | None = None

    def with_implicit_url(self, url: str) -> TermMap:
        """This term map naming another ImplicitlyCreated URL (another tenant's), sharing
        its processed context and memoised terms."""
        view = copy.copy(self)
        view.implicit_url = url
        return view

    def expand(self, term: str) -> str:
        """Expand an attribute name or type name (vocabulary-relative) to an IRI."""
        iri = self._exp.get(term)
        if iri is None:
            expanded = self.resolver.processor._expand_iri(self._active, term, vocab=True)
            iri = term if expanded is None else str(expanded)
            self._exp[term] = iri
        return iri

    def compact(self, iri: str) -> str:
        """Compact an IRI to the shortest term or compact IRI the context allows."""
        term = self._cmp.get(iri)
        if term is None:
            term = str(self.resolver.processor._compact_iri(self._active, iri, vocab=True))
            self._cmp[iri] = term
        return term

    def scoped(self, term: str) -> TermMap:
        """The term map inside a term with a scoped context (type- or property-scoped)."""
        found = self._scoped.get(term)
        if found is not None:
            return found
        definition = self._active["mappings"].get(term)
        local = definition.get("@context") if definition else None
        if local is None:
            self._scoped[term] = self
            return self
        active = self.resolver.process_sync(self._active, local)
        found = TermMap(self.resolver, self.context, active)
        self._scoped[term] = found
        return found


class ContextResolver:
    """Owns the document sources and the cache of processed term maps."""

    def __init__(
        self,
        *,
        preload: dict[str, JsonDoc] | None = None,
        fetch_timeout: float = 5.0,
        max_bytes: int = 1_000_000,
        cache_size: int = 256,
        hosted_lookup: Callable[[str], JsonDoc | None] | None = None,
        on_fetched: Callable[[str, JsonDoc], Awaitable[None]] | None = None,
        base_url: str = "",
        policy: OutboundPolicy | None = None,
        fetch_mode: str = "any",
    ) -> None:
        #: Relative context URLs (``/ngsi-ld/v1/jsonldContexts/...``) resolve against this.
        self.base_url = base_url.rstrip("/")
        self.core_doc = load_core_context()
        self.preload: dict[str, JsonDoc] = {
            url: orjson.loads(path.read_bytes()) for url, path in BUNDLED_CONTEXTS.items()
        }
        self.preload.update(preload or {})
        self.fetched: dict[str, JsonDoc] = {}
        self.fetch_timeout = fetch_timeout
        self.max_bytes = max_bytes
        self.cache_size = cache_size
        self.hosted_lookup = hosted_lookup
        self.on_fetched = on_fetched
        #: The outbound policy remote contexts are fetched under (None: its defaults), and
        #: ``RENKEI_CONTEXT_FETCH``: any, allowlist (only what the policy allows by name
        #: or address) or off (no fetch: bundled, hosted and preloaded contexts only).
        self.policy = policy
        if fetch_mode not in FETCH_MODES:
            raise ValueError(f"context fetch mode must be one of {', '.join(FETCH_MODES)}")
        self.fetch_mode = fetch_mode
        self.processor = jsonld.JsonLdProcessor()
        self._maps: OrderedDict[str, TermMap] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[JsonDoc]] = {}
        self._pyld_cache: dict[str, Any] = {}
        self._options: dict[str, Any] = {
            "documentLoader": self._loader,
            "processingMode": "json-ld-1.1",
            "base": self.base_url + "/" if self.base_url else "",
        }
        self._options["contextResolver"] = _PyldResolver(self._pyld_cache, self._loader)
        self._initial = self.processor._get_initial_context(self._options)
        self._core_active = self.process_sync(self._initial, CORE_CONTEXT_URL)
        self.core = TermMap(self, None, self._core_active)
        self._client: httpx.AsyncClient | None = None

    # -- documents ---------------------------------------------------------------------------

    def known_document(self, url: str) -> JsonDoc | None:
        if is_core_context_url(url):
            return self.core_doc
        if self.hosted_lookup is not None:
            doc = self.hosted_lookup(url)
            if doc is not None:
                return doc
        if url in self.preload:
            return self.preload[url]
        if url in self.fetched:
            return self.fetched[url]
        if url in _CORE_SCOPED_STUBS:
            return {"@context": {}}
        return None

    def _loader(self, url: str, options: Any = None) -> dict[str, Any]:
        doc = self.known_document(url)
        if doc is None:
            raise jsonld.JsonLdError(
                f"context {url} was not prefetched",
                "jsonld.LoadDocumentError",
                code="loading remote context failed",
            )
        return {"contextUrl": None, "documentUrl": url, "document": doc}

    async def _fetch(self, url: str) -> JsonDoc:
        """GET a remote context under the outbound policy, the time and the size limits.

        Redirects are followed within the same scheme, host and port only. Errors name
        the URL and a category, never what the remote answered: the error goes back to
        the client, and a remote that answers is not necessarily one it may read.
        """
        if not url.startswith(("http://", "https://")):
            raise LdContextNotAvailable(f"cannot retrieve @context URL {url!r}: not an http(s) URL")
        if self.fetch_mode == "off":
            raise LdContextNotAvailable(
                f"cannot retrieve @context URL {url}: refused by policy "
                "(remote contexts are not fetched; only preloaded ones are available)"
            )
        if self._client is None:
            policy = self.policy or OutboundPolicy()
            if self.fetch_mode == "allowlist":
                policy = policy.allowlist_only()
            self._client = httpx.AsyncClient(
                transport=policy_transport(policy),
                follow_redirects=False,
                timeout=self.fetch_timeout,
                trust_env=False,
            )

        def unavailable(category: str) -> LdContextNotAvailable:
            return LdContextNotAvailable(f"cannot retrieve @context URL {url}: {category}")

        target = httpx.URL(url)
        try:
            async with asyncio.timeout(self.fetch_timeout):
                for _ in range(MAX_REDIRECTS + 1):
                    async with self._client.stream(
                        "GET", target, headers={"Accept": "application/ld+json, application/json"}
                    ) as resp:
                        if resp.is_redirect:
                            location = resp.headers.get("Location", "")
                            try:
                                nxt = target.join(location)
                            except httpx.InvalidURL:
                                raise unavailable(f"HTTP status {resp.status_code}") from None
                            same = (nxt.scheme, nxt.host, nxt.port) == (
                                target.scheme,
                                target.host,
                                target.port,
                            )
                            if not same:
                                raise unavailable(
                                    f"HTTP status {resp.status_code} "
                                    "(a redirect to another host is not followed)"
                                )
                            target = nxt
                            continue
                        if resp.status_code != 200:
                            raise unavailable(f"HTTP status {resp.status_code}")
                        chunks: list[bytes] = []
                        size = 0
                        async for chunk in resp.aiter_bytes():
                            size += len(chunk)
                            if size > self.max_bytes:
                                raise unavailable(f"too large (over {self.max_bytes} bytes)")
                            chunks.append(chunk)
                        break
                else:
                    raise unavailable("HTTP status 3xx (too many redirects)")
        except OutboundRefused:
            raise unavailable("refused by policy") from None
        except TimeoutError:
            raise unavailable("timeout") from None
        except httpx.TimeoutException:
            raise unavailable("timeout") from None
        except (httpx.HTTPError, OSError):
            raise unavailable("connection failed") from None
        try:
            doc = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            raise BadRequestData(
                f"cannot retrieve @context URL {url}: not JSON-LD (not valid JSON)"
            ) from None
        if not isinstance(doc, dict) or "@context" not in doc:
            raise BadRequestData(
                f"cannot retrieve @context URL {url}: not JSON-LD (no top-level @context member)"
            )
        return doc

    async def _ensure(self, url: str) -> JsonDoc:
        doc = self.known_document(url)
        if doc is not None:
            return doc
        pending = self._inflight.get(url)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[url] = pending
            try:
                doc = await self._fetch(url)
                self.fetched[url] = doc
                if self.on_fetched is not None:
                    await self.on_fetched(url, doc)
            except Exception as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved here: this caller re-raises it itself
                raise
            except BaseException:
                pending.cancel()
                raise
            else:
                pending.set_result(doc)
            finally:
                del self._inflight[url]
            return doc
        return await asyncio.shield(pending)

    async def prefetch(self, ctx: ContextValue) -> None:
        """Make every document ``ctx`` needs available locally, fetching what is missing."""
        seen: set[str] = set()
        todo = list(context_refs(ctx, self._options["base"] or None))
        while todo:
            url = todo.pop()
            if url in seen:
                continue
            seen.add(url)
            doc = await self._ensure(url)
            todo.extend(context_refs(doc.get("@context"), url))

    # -- processing --------------------------------------------------------------------------

    def process_sync(self, active: Any, local: Any) -> Any:
        try:
            return self.processor.process_context(active, local, self._options)
        except jsonld.JsonLdError as exc:
            code = getattr(exc, "code", None) or ""
            if "loading remote context" in str(code):
                raise LdContextNotAvailable(
                    f"@context could not be loaded: {exc.details or exc}"
                ) from exc
            raise BadRequestData(f"invalid @context: {code or exc}") from exc

    async def term_map(self, ctx: ContextValue | None) -> TermMap:
        """The term map of a request context; the core context is always applied last."""
        if ctx is None or (isinstance(ctx, str) and is_core_context_url(ctx)):
            return self.core
        key = canonical_key(ctx)
        found = self._maps.get(key)
        if found is not None:
            self._maps.move_to_end(key)
            return found
        ctx = check_context_value(ctx)
        await self.prefetch(ctx)
        local = [*ctx] if isinstance(ctx, list) else [ctx]
        active = self.process_sync(self._initial, [*local, CORE_CONTEXT_URL])
        tm = TermMap(self, ctx, active)
        self._maps[key] = tm
        if len(self._maps) > self.cache_size:
            self._maps.popitem(last=False)
        return tm

    def drop(self, url: str) -> None:
        """Drop a fetched document from memory (term maps already built from it stay)."""
        self.fetched.pop(url, None)
        self._pyld_cache.pop(url, None)

    def forget(self, url: str) -> None:
        """Drop a document and every processed context that may depend on it."""
        self.fetched.pop(url, None)
        self._pyld_cache.clear()
        self._maps.clear()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
