"""A Python client of the hub for civic-tech developers and analysts.

``Client`` (blocking) and ``AsyncClient`` (asyncio) speak NGSI-LD over httpx. They
take the query parameters of NGSI-LD by name, read every page of a result without the
caller counting offsets, and turn a result into a ``geopandas.GeoDataFrame``::

    from opendata.client import Client

    with Client("http://127.0.0.1:1026") as hub:
        aeds = hub.to_geodataframe("AEDLocation")
        near = list(hub.query("AEDLocation", near=(139.578, 35.634), max_distance=500))

``AsyncClient`` is the connectors' ``BrokerClient`` (batched writes with retries) with
the same reading methods as ``Client``; both share one paging rule,
``connectors.client.Pager``.

History comes from the temporal API: ``Client.temporal(entity_id, ...)`` reads an
entity's temporal evolution (following the hub's 206 pages), ``temporal_series`` turns
one attribute of it into a ``pandas.Series`` indexed by time, and
``aggregated_series`` does the same for ``options=aggregatedValues`` answers::

    body = hub.temporal(GAUGE, attrs="waterLevel", options="aggregatedValues",
                        aggrMethods="avg", aggrPeriodDuration="PT1H")
    hourly = aggregated_series(body, "waterLevel", "avg")

Geo-queries take either NGSI-LD's own ``georel``/``geometry``/``coordinates`` strings
or the shortcuts ``near=(lon, lat)`` with ``max_distance`` (metres), and
``within=``/``intersects=`` with a shapely geometry or a GeoJSON mapping.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from connectors.client import BrokerClient, BrokerError, Pager, credentials, request_headers

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd

__all__ = [
    "AsyncClient",
    "BrokerError",
    "Client",
    "aggregated_series",
    "query_params",
    "subscription_body",
    "temporal_series",
]

DEFAULT_URL = "http://127.0.0.1:1026"
ENTITIES = "/ngsi-ld/v1/entities"
SUBSCRIPTIONS = "/ngsi-ld/v1/subscriptions"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
TEMPORAL = "/ngsi-ld/v1/temporal/entities"
_CONTENT_RANGE = re.compile(r"^date-time (\S+?Z)-(\S+?Z)/(\S+)$")
_PAIR_MEMBERS = ("values", "objects", "languageMaps", "jsons", "vocabs", "valueLists")


def _instances_of(body: Mapping[str, Any], attr: str) -> list[dict[str, Any]]:
    raw = body.get(attr, [])
    return [raw] if isinstance(raw, dict) else list(raw)


def temporal_series(
    body: Mapping[str, Any], attr: str, *, dataset_id: str | None = None
) -> pd.Series:
    """One attribute of a temporal representation (normalized or ``temporalValues``)
    as a Series of values indexed by time (tz-aware UTC), oldest first; the instances
    of ``dataset_id`` (default: those without one)."""
    import pandas as pd

    times: list[str] = []
    values: list[Any] = []
    for item in _instances_of(body, attr):
        if item.get("datasetId") != dataset_id:
            continue
        member = next((m for m in _PAIR_MEMBERS if m in item), None)
        if member is not None:  # temporalValues: [[value, time], ...]
            for value, at in item[member]:
                values.append(value)
                times.append(at)
        else:
            at = item.get("observedAt", item.get("createdAt"))
            if at is None:
                continue
            values.append(item.get("value", item.get("object")))
            times.append(at)
    index = pd.DatetimeIndex(pd.to_datetime(times, utc=True), name="time")
    return pd.Series(values, index=index, name=attr).sort_index()


def aggregated_series(body: Mapping[str, Any], attr: str, method: str) -> pd.Series:
    """One aggregate of an ``aggregatedValues`` answer as a Series indexed by the start
    of each period (tz-aware UTC); the period ends are in ``series.attrs["end"]``."""
    import pandas as pd

    triples = body.get(attr, {}).get(method, [])
    index = pd.DatetimeIndex(pd.to_datetime([t[1] for t in triples], utc=True), name="start")
    series = pd.Series([t[0] for t in triples], index=index, name=f"{attr}.{method}")
    series.attrs["end"] = list(pd.to_datetime([t[2] for t in triples], utc=True))
    return series


class TemporalPages:
    """Reads a temporal answer page by page: the hub answers 206 with ``Content-Range``
    when the range holds more instances than it returns at once; the rest is asked for
    from the end of that range (instances already read are recognised by instanceId)."""

    def __init__(self, entity_id: str, params: Mapping[str, Any]) -> None:
        self.entity_id = entity_id
        self.body: dict[str, Any] | None = None
        self._next: dict[str, Any] | None = query_params(**params)

    def next_params(self) -> dict[str, Any] | None:
        return self._next

    def feed(self, resp: httpx.Response) -> None:
        request, self._next = self._next, None
        if resp.status_code == 404 and self.body is None:
            return
        if resp.status_code not in (200, 206):
            raise BrokerClient._fail(resp, f"temporal evolution of {self.entity_id}")
        page: dict[str, Any] = resp.json()
        if self.body is None:
            self.body = page
        elif not _merge_pages(self.body, page):
            return
        if resp.status_code == 206 and request is not None:
            self._next = _next_page(request, resp.headers.get("Content-Range"))


def _next_page(params: dict[str, Any], content_range: str | None) -> dict[str, Any] | None:
    """The request for the rest of a 206 temporal answer read oldest first, or None."""
    match = _CONTENT_RANGE.match(content_range or "")
    if match is None or params.get("lastN"):
        return None
    end = match.group(2)
    if params.get("timerel") == "between":
        return {**params, "timeAt": end}
    return {**params, "timerel": "after", "timeAt": end}


def _merge_pages(into: dict[str, Any], page: Mapping[str, Any]) -> int:
    """Add a page's instances not seen yet (by instanceId), or its aggregation periods
    (aggregatedValues: whole periods, never split across pages); returns how many were
    new."""
    added = 0
    for key, value in page.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            for method, series in value.items():
                have = into[key].setdefault(method, [])
                if not isinstance(series, list) or not isinstance(have, list):
                    continue
                starts = {p[1] for p in have if isinstance(p, list) and len(p) == 3}
                new = [p for p in series if isinstance(p, list) and len(p) == 3]
                fresh = [p for p in new if p[1] not in starts]
                have.extend(fresh)
                added += len(fresh)
            continue
        if key in ("id", "type", "scope", "@context") or not isinstance(value, list):
            into.setdefault(key, value)
            continue
        have = into.setdefault(key, [])
        seen = {i.get("instanceId") for i in have if isinstance(i, dict)}
        for inst in value:
            if not isinstance(inst, dict) or inst.get("instanceId") not in seen:
                have.append(inst)
                added += 1
    return added


def _geometry_mapping(geom: Any) -> dict[str, Any]:
    if isinstance(geom, Mapping):
        return dict(geom)
    mapping = getattr(geom, "__geo_interface__", None)
    if mapping is None:
        raise TypeError(f"not a geometry: {geom!r} (give a shapely geometry or GeoJSON)")
    return dict(mapping)


def _coordinates(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def query_params(
    entity_type: str | Sequence[str] | None = None,
    *,
    q: str | None = None,
    attrs: str | Sequence[str] | None = None,
    ids: str | Sequence[str] | None = None,
    id_pattern: str | None = None,
    georel: str | None = None,
    geometry: str | None = None,
    coordinates: Any = None,
    geoproperty: str | None = None,
    near: tuple[float, float] | None = None,
    max_distance: float | None = None,
    within: Any = None,
    intersects: Any = None,
    options: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """NGSI-LD query parameters from Python values.

    Lists become comma-separated values, coordinates become JSON; ``near=(lon, lat)``
    with ``max_distance`` (metres) is ``georel=near;maxDistance==…`` around a point, and
    ``within``/``intersects`` take a shapely geometry or a GeoJSON mapping. Parameters
    not named here (``scopeQ``, ``orderBy``, ``lang``, ...) pass through unchanged.
    """

    def csv(value: str | Sequence[str] | None) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return ",".join(value)

    params: dict[str, Any] = {
        "type": csv(entity_type),
        "q": q,
        "attrs": csv(attrs),
        "id": csv(ids),
        "idPattern": id_pattern,
        "geoproperty": geoproperty,
        "options": options,
    }
    shortcuts = [s for s in (near, within, intersects) if s is not None]
    if len(shortcuts) > 1 or (shortcuts and georel is not None):
        raise ValueError("give one geo-query: georel, near, within or intersects")
    if near is not None:
        georel = "near" if max_distance is None else f"near;maxDistance=={max_distance:g}"
        geometry, coordinates = "Point", list(near)
    elif max_distance is not None:
        raise ValueError("max_distance goes with near=(lon, lat)")
    for rel, shape in (("within", within), ("intersects", intersects)):
        if shape is not None:
            mapping = _geometry_mapping(shape)
            georel, geometry, coordinates = rel, mapping["type"], mapping["coordinates"]
    if georel is not None:
        if geometry is None or coordinates is None:
            raise ValueError("a geo-query needs georel, geometry and coordinates")
        params.update(georel=georel, geometry=geometry, coordinates=_coordinates(coordinates))
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def subscription_body(
    entity_type: str | Sequence[str],
    endpoint: str,
    *,
    watched_attributes: Sequence[str] | None = None,
    q: str | None = None,
    attrs: Sequence[str] | None = None,
    throttling: int | None = None,
    description: str | None = None,
    accept: str = "application/json",
    format: str | None = None,
    within: Any = None,
) -> dict[str, Any]:
    """An NGSI-LD Subscription: notify ``endpoint`` (http(s):// or mqtt(s)://) of changes."""
    types = [entity_type] if isinstance(entity_type, str) else list(entity_type)
    notification: dict[str, Any] = {"endpoint": {"uri": endpoint, "accept": accept}}
    if attrs:
        notification["attributes"] = list(attrs)
    if format:
        notification["format"] = format
    body: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": t} for t in types],
        "notification": notification,
    }
    if watched_attributes:
        body["watchedAttributes"] = list(watched_attributes)
    if q:
        body["q"] = q
    if throttling:
        body["throttling"] = throttling
    if description:
        body["description"] = description
    if within is not None:
        mapping = _geometry_mapping(within)
        body["geoQ"] = {
            "georel": "within",
            "geometry": mapping["type"],
            "coordinates": mapping["coordinates"],
        }
    return body


def _frame(
    entities: Iterable[dict[str, Any]], geometry_property: str, lang: str | None
) -> gpd.GeoDataFrame:
    from opendata.gis import entities_to_geodataframe

    return entities_to_geodataframe(entities, geometry=geometry_property, lang=lang)


class Client:
    """Blocking client of a Renkei hub (or any NGSI-LD broker).

    ``tenant`` goes in ``NGSILD-Tenant``; ``context`` is the URL of a user @context
    sent in the ``Link`` header so short attribute names resolve as the data's
    publisher meant. Connection failures are retried ``retries`` times by httpx.
    Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        tenant: str | None = None,
        context: str | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        page_size: int = 500,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tenant = tenant
        self.context = context
        #: ``X-API-Key`` or bearer token (else RENKEI_API_KEY / RENKEI_TOKEN)
        self.auth = credentials(api_key, token)
        self.page_size = page_size
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport or httpx.HTTPTransport(retries=retries),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _headers(self, *, body: bool = False) -> dict[str, str]:
        return request_headers(self.tenant, self.context, body=body, auth=self.auth)

    def _request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        content = orjson.dumps(json) if json is not None else None
        try:
            return self._http.request(
                method,
                path,
                content=content,
                params=dict(params) if params else None,
                headers=self._headers(body=content is not None),
            )
        except httpx.TransportError as exc:
            raise BrokerError(f"broker at {self.base_url} not reachable: {exc!r}") from exc

    def health(self) -> bool:
        """True when the hub answers its health check."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def query(
        self,
        entity_type: str | Sequence[str] | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        **params: Any,
    ) -> Iterator[dict[str, Any]]:
        """Every entity matching the query (see ``query_params``), read page by page.

        Pages are fetched lazily as the iterator is consumed; ``limit`` caps the total.
        """
        pager = Pager(
            query_params(entity_type, **params), page_size=page_size or self.page_size, limit=limit
        )
        while (page_params := pager.next_params()) is not None:
            resp = self._request("GET", ENTITIES, params=page_params)
            if resp.status_code != 200:
                raise BrokerClient._fail(resp, "query")
            yield from pager.feed(resp.json(), resp.headers.get("NGSILD-Results-Count"))

    def count(self, entity_type: str | Sequence[str] | None = None, **params: Any) -> int:
        """How many entities match, without reading them."""
        resp = self._request(
            "GET",
            ENTITIES,
            params={**query_params(entity_type, **params), "limit": 0, "count": "true"},
        )
        if resp.status_code != 200:
            raise BrokerClient._fail(resp, "count")
        return int(resp.headers["NGSILD-Results-Count"])

    def get_entity(self, entity_id: str, **params: Any) -> dict[str, Any] | None:
        """One entity by id (``attrs``, ``options``, ... as for queries), or ``None``."""
        resp = self._request("GET", f"{ENTITIES}/{entity_id}", params=query_params(**params))
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise BrokerClient._fail(resp, f"retrieve {entity_id}")
        entity: dict[str, Any] = resp.json()
        return entity

    def temporal(self, entity_id: str, **params: Any) -> dict[str, Any] | None:
        """An entity's temporal evolution (``timerel``, ``timeAt``, ``endTimeAt``,
        ``attrs``, ``lastN``, ``options``, ``aggrMethods``, ... as the temporal API takes
        them), or ``None`` when it has no history. Partial (206) answers read oldest
        first are followed until the whole range is in."""
        pages = TemporalPages(entity_id, params)
        while (request := pages.next_params()) is not None:
            resp = self._request("GET", f"{TEMPORAL}/{entity_id}", params=request)
            pages.feed(resp)
        return pages.body

    def to_geodataframe(
        self,
        entity_type: str | Sequence[str] | None = None,
        *,
        geometry_property: str = "location",
        lang: str | None = "ja",
        **params: Any,
    ) -> gpd.GeoDataFrame:
        """The query's entities as a GeoDataFrame (EPSG:4326), typed columns per attribute.

        See ``opendata.gis.entities_to_geodataframe`` for how attributes become columns.
        """
        return _frame(self.query(entity_type, **params), geometry_property, lang)

    def upsert(self, entities: Sequence[dict[str, Any]]) -> list[str]:
        """Create or replace entities in one batch; returns the ids written.

        Raises ``BrokerError`` when any entity was refused (its ``problem`` lists them).
        """
        if not entities:
            return []
        resp = self._request("POST", UPSERT, json=entities)
        if resp.status_code in (200, 201, 204):
            return [e["id"] for e in entities]
        if resp.status_code == 207:
            body = resp.json()
            raise BrokerError(
                f"upsert: {len(body.get('errors', []))} entities refused",
                status=207,
                problem=body,
            )
        raise BrokerClient._fail(resp, "upsert")

    def subscribe_to(self, entity_type: str | Sequence[str], endpoint: str, **options: Any) -> str:
        """Create a subscription from keywords (see ``subscription_body``); returns its id."""
        return self.subscribe(subscription_body(entity_type, endpoint, **options))

    def subscribe(self, subscription: dict[str, Any]) -> str:
        """Create a subscription from an NGSI-LD Subscription body; returns its id."""
        resp = self._request("POST", SUBSCRIPTIONS, json=subscription)
        if resp.status_code != 201:
            raise BrokerClient._fail(resp, "subscribe")
        return str(resp.headers["location"].rsplit("/", 1)[1])

    def unsubscribe(self, subscription_id: str) -> None:
        """Delete a subscription."""
        resp = self._request("DELETE", f"{SUBSCRIPTIONS}/{subscription_id}")
        if resp.status_code != 204:
            raise BrokerClient._fail(resp, f"delete subscription {subscription_id}")


class AsyncClient(BrokerClient):
    """Asynchronous client: the connectors' ``BrokerClient`` plus the analysts' reads.

    Writes (``upsert``, ``merge``) are batched and retried with backoff as for the
    connectors; reads mirror ``Client``. Use ``async with`` or ``await aclose()``.
    """

    def __init__(
        self, base_url: str = DEFAULT_URL, *, page_size: int = 500, **options: Any
    ) -> None:
        super().__init__(base_url, **options)
        self.page_size = page_size

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def entities(
        self,
        entity_type: str | Sequence[str] | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        **params: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every entity matching the query (see ``query_params``), read page by page."""
        pager = Pager(
            query_params(entity_type, **params), page_size=page_size or self.page_size, limit=limit
        )
        async for ent in self.paged(pager):
            yield ent

    async def count(self, entity_type: str | Sequence[str] | None = None, **params: Any) -> int:
        """How many entities match, without reading them."""
        resp = await self._request(
            "GET",
            ENTITIES,
            params={**query_params(entity_type, **params), "limit": 0, "count": "true"},
        )
        if resp.status_code != 200:
            raise self._fail(resp, "count")
        return int(resp.headers["NGSILD-Results-Count"])

    async def to_geodataframe(
        self,
        entity_type: str | Sequence[str] | None = None,
        *,
        geometry_property: str = "location",
        lang: str | None = "ja",
        **params: Any,
    ) -> gpd.GeoDataFrame:
        """The query's entities as a GeoDataFrame (EPSG:4326); see ``Client.to_geodataframe``."""
        found = [e async for e in self.entities(entity_type, **params)]
        return _frame(found, geometry_property, lang)

    async def temporal(self, entity_id: str, **params: Any) -> dict[str, Any] | None:
        """An entity's temporal evolution; see ``Client.temporal``."""
        pages = TemporalPages(entity_id, params)
        while (request := pages.next_params()) is not None:
            resp = await self._request("GET", f"{TEMPORAL}/{entity_id}", params=request)
            pages.feed(resp)
        return pages.body

    async def subscribe_to(
        self, entity_type: str | Sequence[str], endpoint: str, **options: Any
    ) -> str:
        """Create a subscription from keywords (see ``subscription_body``); returns its id."""
        return await self.subscribe(subscription_body(entity_type, endpoint, **options))

    async def unsubscribe(self, subscription_id: str) -> None:
        """Delete a subscription."""
        resp = await self._request("DELETE", f"{SUBSCRIPTIONS}/{subscription_id}")
        if resp.status_code != 204:
            raise self._fail(resp, f"delete subscription {subscription_id}")
