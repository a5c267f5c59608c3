"""The routes of a collection of stored documents: create, query, retrieve, update and
delete.

``/subscriptions`` (clauses 6.10 and 6.11), ``/csourceSubscriptions`` (the same clauses
applied to registrations) and ``/csourceRegistrations`` (clauses 6.8 and 6.9) take the
same parameters, go through the same dependencies (the app's ``authorize`` classifies
each by its path) and answer with the same status codes and media types. ``declare``
writes their routes once; a ``Collection`` says what differs: the service that stores
the documents, how a document is shown, and what an operation does besides storing
(subscriptions are mirrored to the context sources registered for them). A collection
queried by parameters of its own (registrations) declares its query route itself.
"""

# No ``from __future__ import annotations`` here: the routes are defined inside
# ``declare`` and the framework reads their annotations, which name ``declare``'s
# arguments, from the function objects rather than from this module's globals.

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from broker.api import params as P
from broker.api.common import JSON, LD_JSON, Payload, negotiate, respond
from broker.api.deps import Hub, HubDep, TenantDep
from broker.jsonld.context import ContextValue, TermMap
from broker.model.entity import id_segment

ANSWERS = P.answers(JSON, LD_JSON)


class Documents(Protocol):
    """What a collection's service offers its routes."""

    async def create(
        self, tenant: str, body: dict[str, Any], context: ContextValue | None
    ) -> str: ...

    async def get(self, tenant: str, doc_id: str) -> dict[str, Any]: ...

    async def update(
        self, tenant: str, doc_id: str, patch: dict[str, Any], context: ContextValue | None
    ) -> None: ...

    async def delete(self, tenant: str, doc_id: str) -> None: ...


class Listed(Documents, Protocol):
    """A service whose documents are listed whole and shown one by one."""

    async def all(self, tenant: str) -> list[dict[str, Any]]: ...

    async def render(
        self, tenant: str, doc: dict[str, Any], tm: TermMap, *, sys_attrs: bool = False
    ) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Operation:
    """A request to one of a collection's operations, past the shared dependencies."""

    request: Request
    hub: Hub
    tenant: str
    #: the ``local`` parameter as given (only subscriptions read it)
    local: str | None


async def operation(
    request: Request, hub: HubDep, tenant: TenantDep, local: P.Local = None
) -> Operation:
    """The dependency every operation of a collection has: after the tenant, the query
    parameters are checked (400 for one the operation does not declare)."""
    P.check_params(request)
    return Operation(request, hub, tenant, local)


OperationDep = Annotated[Operation, Depends(operation)]


async def subscription_id(sub_id: P.SubscriptionIdPath) -> str:
    """The id path parameter of both kinds of subscription."""
    return sub_id


@dataclass(frozen=True)
class Texts:
    """What the description says of each operation (its summary cites the clause) and of
    the bodies it takes."""

    create: str
    query: str
    retrieve: str
    update: str
    delete: str
    body: str
    patch: str


@dataclass(frozen=True)
class Names:
    """The route names (the description's operation ids are made from them)."""

    create: str
    query: str
    retrieve: str
    update: str
    delete: str


class Collection:
    """What one collection's operations do besides storing, with its service."""

    def __init__(self, path: str, service: Callable[[Hub], Documents]) -> None:
        #: the collection's path under ``/ngsi-ld/v1``, such as ``/subscriptions``
        self.path = path
        self.service = service

    async def created(
        self, op: Operation, doc_id: str, payload: Payload, tm: TermMap
    ) -> dict[str, str]:
        """Headers to add to a 201 Created answer, after the document is stored."""
        return {}

    def check_id(self, doc_id: str) -> None:
        """Checks of an update's document id, before its body is read."""

    async def changed(self, op: Operation, doc_id: str, patch: Payload | None) -> dict[str, str]:
        """Headers to add to the 204 of an update (``patch``) or a delete (None), after
        the store has it."""
        return {}

    async def show(
        self, op: Operation, doc: dict[str, Any], tm: TermMap, options: str | None
    ) -> Any:
        """A stored document as the client sees it, with the system attributes if the
        ``options`` parameter asks for them."""
        raise NotImplementedError


class ListedCollection(Collection):
    """A collection listed whole: its query route, declared with the others, takes
    paging, ``count`` and ``options``. As it stands it stores and shows documents and
    does nothing more (``/csourceSubscriptions``)."""

    def __init__(self, path: str, service: Callable[[Hub], Listed]) -> None:
        super().__init__(path, service)
        self.listed = service

    async def show(
        self, op: Operation, doc: dict[str, Any], tm: TermMap, options: str | None
    ) -> Any:
        sys_attrs = "sysAttrs" in P.options_of(options)
        return await self.listed(op.hub).render(op.tenant, doc, tm, sys_attrs=sys_attrs)

    def page_links(self, op: Operation, limit: int, offset: int, total: int) -> list[str]:
        """``Link`` values of a page of the listing."""
        return []


def declare(
    router: APIRouter,
    collection: Collection,
    *,
    doc_id: Callable[..., Any],
    texts: Texts,
    names: Names,
) -> None:
    """Declare the collection's routes on ``router``. ``doc_id`` is the dependency that
    declares the document id path parameter (its name and description are the
    collection's). A ``ListedCollection`` gets its query route here too."""
    path = collection.path
    (name,) = inspect.signature(doc_id).parameters
    item = f"{path}/{{{name}:path}}"
    DocId = Annotated[str, Depends(doc_id)]

    @router.post(
        path,
        status_code=201,
        name=names.create,
        summary=texts.create,
        openapi_extra=P.json_body(texts.body),
    )
    async def create(op: OperationDep) -> Response:
        payload, tm = await op.hub.payload(op.request)
        created = await collection.service(op.hub).create(op.tenant, payload.body, payload.context)
        headers = {"Location": f"{router.prefix}{path}/{id_segment(created)}"}
        headers.update(await collection.created(op, created, payload, tm))
        return Response(status_code=201, headers=headers)

    if isinstance(collection, ListedCollection):
        listed = collection

        @router.get(path, name=names.query, summary=texts.query, responses=ANSWERS)
        async def query(
            op: OperationDep,
            limit: P.Limit = None,
            offset: P.Offset = None,
            count: P.Count = None,
            options: P.Options = None,
        ) -> Response:
            kind = negotiate(op.request, (JSON, LD_JSON))
            tm = await op.hub.link_term_map(op.request)
            limit_n, offset_n = P.paging(limit, offset, op.hub.settings)
            sys_attrs = "sysAttrs" in P.options_of(options)
            service = listed.listed(op.hub)
            docs = await service.all(op.tenant)
            page = [
                await service.render(op.tenant, d, tm, sys_attrs=sys_attrs)
                for d in docs[offset_n : offset_n + limit_n]
            ]
            headers = {"NGSILD-Results-Count": str(len(docs))} if count == "true" else {}
            response = respond(page, tm=tm, kind=kind, headers=headers)
            for link in listed.page_links(op, limit_n, offset_n, len(docs)):
                response.headers.append("Link", link)
            return response

    @router.get(item, name=names.retrieve, summary=texts.retrieve, responses=ANSWERS)
    async def retrieve(key: DocId, op: OperationDep, options: P.Options = None) -> Response:
        kind = negotiate(op.request, (JSON, LD_JSON))
        tm = await op.hub.link_term_map(op.request)
        doc = await collection.service(op.hub).get(op.tenant, key)
        return respond(await collection.show(op, doc, tm, options), tm=tm, kind=kind)

    @router.patch(
        item,
        status_code=204,
        name=names.update,
        summary=texts.update,
        openapi_extra=P.json_body(texts.patch, merge_patch=True),
    )
    async def update(key: DocId, op: OperationDep) -> Response:
        collection.check_id(key)
        payload, _tm = await op.hub.payload(op.request, allow_merge_patch=True)
        await collection.service(op.hub).update(op.tenant, key, payload.body, payload.context)
        return Response(status_code=204, headers=await collection.changed(op, key, payload))

    @router.delete(item, status_code=204, name=names.delete, summary=texts.delete)
    async def delete(key: DocId, op: OperationDep) -> Response:
        await collection.service(op.hub).delete(op.tenant, key)
        return Response(status_code=204, headers=await collection.changed(op, key, None))
