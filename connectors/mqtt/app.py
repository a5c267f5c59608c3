"""The agent's HTTP side: provisioning API (iotagent-node-lib paths), HTTP devices
(iotagent-json's ``/iot/json``), notifications, the NGSI-LD endpoints the broker
forwards commands and lazy reads to (``connectors.mqtt.source``), ``/health`` and
``/metrics``.

Routes stay thin: they read the scope from ``fiware-service``/``fiware-servicepath``
(or ``NGSILD-Path``),
call the :class:`Registry` and tell the :class:`IoTAgent` what changed. Errors are
answered as ``{"name": ..., "message": ...}``, the shape IoT Agent clients expect, and
as NGSI-LD ProblemDetails on the NGSI-LD endpoints.
Every route has the access-control dependency (``connectors.mqtt.access``); a
provisioning change is checked against the entity types it makes the agent write
before it is saved.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from broker.shared import AuditMiddleware, BadRequestData, NgsiLdError, auth_state
from broker.shared import Forbidden as LdForbidden
from broker.shared import InternalError as LdInternalError
from broker.shared import PayloadTooLarge as LdPayloadTooLarge
from broker.shared import ResourceNotFound as LdNotFound
from broker.shared import Unauthorized as LdUnauthorized
from connectors.client import BrokerError
from connectors.mqtt.access import (
    authorize,
    check_writes,
    grant_of,
    record_written,
)
from connectors.mqtt.agent import NOTIFY_PATH, IoTAgent, scope_of
from connectors.mqtt.body import read_json as _json
from connectors.mqtt.errors import (
    AgentError,
    BadRequest,
    BrokerUnavailable,
    DeviceNotFound,
    WrongSyntax,
)
from connectors.mqtt.mapping import BadValue
from connectors.mqtt.models import AttributeMapping, Device, Group, dump
from connectors.mqtt.registry import DEFAULT_TYPE, Registry, Resolved, Scope, entity_id_for
from connectors.mqtt.settings import AgentSettings
from connectors.mqtt.source import router as source
from connectors.mqtt.source import wants_problem

log = logging.getLogger("renkei.iota")

_SERVICE = re.compile(r"^[a-z0-9_]{0,50}$")
_SUBSERVICE = re.compile(r"^/[A-Za-z0-9_/#*]{0,50}$")


def _agent(request: Request) -> IoTAgent:
    agent: IoTAgent = request.app.state.agent
    return agent


def _scope(
    service: Annotated[str | None, Header(alias="fiware-service")] = None,
    subservice: Annotated[str | None, Header(alias="fiware-servicepath")] = None,
    ld_path: Annotated[str | None, Header(alias="NGSILD-Path")] = None,
) -> Scope:
    """The scope of a provisioning request: ``fiware-service`` and ``fiware-servicepath``
    (or ``NGSILD-Path``, as Orion-LD accepts it), which becomes the entities' scope."""
    scope = scope_of(service, subservice or ld_path)
    if not _SERVICE.match(scope.service):
        raise BadRequest("fiware-service must be lowercase letters, digits or '_' (at most 50)")
    if not _SUBSERVICE.match(scope.subservice):
        raise BadRequest("fiware-servicepath must start with '/' (e.g. /parking)")
    return scope


AgentDep = Annotated[IoTAgent, Depends(_agent)]
ScopeDep = Annotated[Scope, Depends(_scope)]


async def _items(request: Request, key: str) -> list[Any]:
    body = await _json(request)
    if not isinstance(body, dict) or not isinstance(body.get(key), list) or not body[key]:
        raise WrongSyntax(f'the body must be {{"{key}": [...]}} with at least one item')
    items: list[Any] = body[key]
    limit: int = request.app.state.settings.iota_max_devices
    if len(items) > limit:
        raise BadRequest(
            f"{len(items)} {key} in one request; at most {limit} (RENKEI_IOTA_MAX_DEVICES)"
        )
    return items


async def _object(request: Request) -> dict[str, Any]:
    body = await _json(request)
    if not isinstance(body, dict):
        raise WrongSyntax("the body must be a JSON object")
    return body


def _group_doc(scope: Scope, group: Group) -> dict[str, Any]:
    return {**dump(group), "service": scope.service, "subservice": scope.subservice}


def _device_doc(registry: Registry, scope: Scope, device: Device) -> dict[str, Any]:
    resolved = registry.resolve_in(scope, device.device_id)
    doc = dump(device)
    doc.update(
        service=scope.service,
        service_path=scope.subservice,
        entity_name=resolved.entity_id if resolved else device.entity_name,
        entity_type=resolved.entity_type if resolved else device.entity_type or DEFAULT_TYPE,
    )
    return doc


def _targets(entity_type: str, mappings: Iterable[AttributeMapping]) -> tuple[set[str], set[str]]:
    """Entity types and named entity ids that measures of a group or device write:
    its own type, and the entities of its multi-entity attributes."""
    types, ids = {entity_type}, set()
    for m in mappings:
        if m.entity_name:
            target = m.entity_type or entity_type
            types.add(target)
            ids.add(entity_id_for(m.entity_name, target))
    return types, ids


async def _check_targets(
    request: Request, agent: IoTAgent, scope: Scope, types: set[str], ids: set[str]
) -> None:
    """403 unless the provisioning principal may write ``types``, and every entity of
    ``ids`` that exists at the broker (whose types the broker is asked for)."""
    if grant_of(request) is None:
        return
    existing: list[list[str]] = []
    if ids:
        try:
            existing = list((await agent.entity_types(scope.tenant, sorted(ids))).values())
        except BrokerError as exc:
            log.warning("cannot check the entities a device names: %s", exc)
            raise BrokerUnavailable(
                "the broker cannot be asked about the entities named: try again later"
            ) from None
    check_writes(request, types, existing)


async def _check_groups(
    request: Request, agent: IoTAgent, scope: Scope, groups: list[Group]
) -> None:
    for group in groups:
        await _check_targets(
            request, agent, scope, *_targets(group.entity_type or DEFAULT_TYPE, group.attributes)
        )


async def _check_devices(
    request: Request, agent: IoTAgent, scope: Scope, devices: list[Device]
) -> None:
    for dev in devices:
        resolved = agent.registry.preview(scope, dev)
        types, ids = _targets(resolved.entity_type, resolved.mappings.values())
        if dev.entity_name or resolved.name_exp is not None:  # a name given, or computed
            ids.add(resolved.entity_id)
        await _check_targets(request, agent, scope, types, ids)
        record_written(request, [resolved.entity_id])


def _shared_apikeys(agent: IoTAgent, apikeys: Iterable[str | None]) -> None:
    """Tell the operator (never the client) when an apikey is now used by several
    services: its MQTT messages are refused until it is pinned to one."""
    for apikey in dict.fromkeys(a for a in apikeys if a):
        tenants = agent.registry.tenants_of(apikey)
        if len(tenants) > 1 and apikey not in agent.registry.pins:
            log.warning(
                "apikey %r is now used by %d services: its measures are refused until it is "
                "pinned to one (renkei iot mosquitto-acl --pin) / apikey %r は %d 個の "
                "サービスで使われています: いずれかに固定するまで計測値は書き込まれません",
                apikey,
                len(tenants),
                apikey,
                len(tenants),
            )


def _group_routes(path: str, key: str) -> APIRouter:
    router = APIRouter(prefix=path)

    @router.post("", status_code=201)
    async def create_groups(request: Request, agent: AgentDep, scope: ScopeDep) -> Response:
        groups = agent.registry.parse_groups(await _items(request, key))
        await _check_groups(request, agent, scope, groups)
        agent.registry.add_groups(scope, groups)
        _shared_apikeys(agent, [g.apikey for g in groups])
        await agent.sync_commands()
        return Response(status_code=201)

    @router.get("")
    async def list_groups(agent: AgentDep, scope: ScopeDep) -> dict[str, Any]:
        groups = agent.registry.list_groups(scope)
        return {"count": len(groups), key: [_group_doc(scope, g) for g in groups]}

    @router.put("", status_code=204)
    async def update_group(
        request: Request,
        agent: AgentDep,
        scope: ScopeDep,
        apikey: str | None = None,
        resource: str | None = None,
    ) -> Response:
        found, group = agent.registry.patched_group(scope, apikey, resource, await _object(request))
        await _check_groups(request, agent, scope, [group])
        agent.registry.replace_group(scope, found, group)
        _shared_apikeys(agent, [group.apikey])
        await agent.sync_commands()
        return Response(status_code=204)

    @router.delete("", status_code=204)
    async def delete_group(
        agent: AgentDep, scope: ScopeDep, apikey: str | None = None, resource: str | None = None
    ) -> Response:
        agent.registry.delete_group(scope, apikey, resource)
        await agent.sync_commands()
        return Response(status_code=204)

    return router


devices = APIRouter(prefix="/iot/devices")


async def _check_endpoints(agent: IoTAgent, docs: list[Any]) -> None:
    """Refuse a push endpoint the outbound policy refuses (it is checked again on use)."""
    for doc in docs:
        url = doc.get("endpoint") if isinstance(doc, dict) else None
        if isinstance(url, str):
            try:
                await agent.pusher.check(url)
            except (ValueError, OSError) as exc:
                raise BadRequest(f"endpoint {url}: {exc}") from None


@devices.post("", status_code=201)
async def create_devices(request: Request, agent: AgentDep, scope: ScopeDep) -> Response:
    docs = await _items(request, "devices")
    await _check_endpoints(agent, docs)
    parsed, invalid = agent.registry.parse_devices(docs)
    await _check_devices(request, agent, scope, parsed)
    added, refused = agent.registry.add_devices(scope, parsed, invalid)
    _shared_apikeys(agent, [d.apikey for d in added])
    agent.devices_added(added)
    await agent.sync_commands()
    if refused is not None:
        raise refused
    return Response(status_code=201)


@devices.get("")
async def list_devices(
    agent: AgentDep,
    scope: ScopeDep,
    limit: Annotated[int, Query(ge=0, le=1000)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    found = agent.registry.list_devices(scope)
    page = found[offset : offset + limit]
    return {
        "count": len(found),
        "devices": [_device_doc(agent.registry, scope, d) for d in page],
    }


@devices.get("/{device_id}")
async def get_device(device_id: str, agent: AgentDep, scope: ScopeDep) -> dict[str, Any]:
    return _device_doc(agent.registry, scope, agent.registry.get_device(scope, device_id))


@devices.put("/{device_id}", status_code=204)
async def update_device(
    device_id: str, request: Request, agent: AgentDep, scope: ScopeDep
) -> Response:
    patch = await _object(request)
    await _check_endpoints(agent, [patch])
    device = agent.registry.patched_device(scope, device_id, patch)
    await _check_devices(request, agent, scope, [device])
    agent.registry.update_device(scope, device_id, device)
    _shared_apikeys(agent, [device.apikey])
    await agent.sync_commands()
    return Response(status_code=204)


@devices.delete("/{device_id}", status_code=204)
async def delete_device(
    device_id: str, request: Request, agent: AgentDep, scope: ScopeDep
) -> Response:
    entities = agent.registry.entities_of(scope, device_id)
    agent.registry.delete_device(scope, device_id)
    record_written(request, entities)
    await agent.sync_commands()
    return Response(status_code=204)


south = APIRouter(prefix="/iot/json")


def _http_device(agent: IoTAgent, apikey: str | None, device_id: str | None) -> Resolved:
    if not apikey or not device_id:
        raise WrongSyntax("the k (apikey) and i (device id) query parameters are required")
    device = agent.http_device(apikey, device_id)
    if device is None:
        raise DeviceNotFound(f"no device {device_id!r} with apikey {apikey!r}")
    return device


@south.post("")
async def http_measures(
    request: Request,
    agent: AgentDep,
    k: str | None = None,
    i: str | None = None,
    getCmd: int | None = None,
) -> Response:
    """Measures of an HTTP device, as iotagent-json takes them (``?k=apikey&i=device``).

    200 once stored (202 if they are still queued after a while: they will be); with
    ``getCmd=1`` the answer carries the commands waiting for the device."""
    body = await _json(request)  # before the device: a refused body provisions nothing
    device = _http_device(agent, k, i)
    try:
        stored = await agent.http_measures(device, body)
    except BadValue as exc:
        raise WrongSyntax(str(exc)) from None
    if getCmd == 1:
        return JSONResponse(agent.poll_commands(device), status_code=200 if stored else 202)
    return Response(status_code=200 if stored else 202)


@south.get("")
async def http_poll(
    agent: AgentDep,
    k: str | None = None,
    i: str | None = None,
    getCmd: int | None = None,
) -> JSONResponse:
    """Commands waiting for a polling HTTP device (``getCmd=1``), handed over once."""
    device = _http_device(agent, k, i)
    return JSONResponse(agent.poll_commands(device) if getCmd == 1 else {})


@south.post("/commands")
async def http_command_result(
    request: Request, agent: AgentDep, k: str | None = None, i: str | None = None
) -> Response:
    """An HTTP device's command results: ``{"command": result}``."""
    device = _http_device(agent, k, i)
    if not agent.http_command_result(device, await _json(request)):
        raise BadRequest("a command result must be a JSON object naming the device's commands")
    return Response(status_code=200)


service = APIRouter()


@service.post(NOTIFY_PATH, status_code=204)
async def notify(
    request: Request,
    agent: AgentDep,
    tenant: Annotated[str | None, Header(alias="NGSILD-Tenant")] = None,
) -> Response:
    agent.notified(tenant, await _object(request))
    return Response(status_code=204)


@service.get("/health")
async def health(agent: AgentDep) -> JSONResponse:
    body: dict[str, Any] = {
        "mqtt": agent.link.connected,
        "mqttVersion": "5" if agent.link.mqtt5 else "3.1.1",
        "broker": agent.broker_up and agent.batcher.broker_ok,
        "buffered": agent.batcher.buffered,
        "commandMode": agent.command_mode,
    }
    if not agent.link.connected and agent.link.last_error:
        body["mqttError"] = agent.link.last_error
    return JSONResponse(body, status_code=200 if agent.healthy else 503)


@service.get("/metrics")
async def metrics(agent: AgentDep) -> PlainTextResponse:
    return PlainTextResponse(agent.metrics.render(), media_type="text/plain; version=0.0.4")


@service.get("/iot/about")
async def about() -> dict[str, str]:
    return {"libVersion": "renkei", "port": "", "baseRoot": "/", "version": "0.1.0"}


#: An agent error's NGSI-LD counterpart, by status, on the NGSI-LD endpoints.
_AS_PROBLEM: dict[int, type[NgsiLdError]] = {
    400: BadRequestData,
    401: LdUnauthorized,
    403: LdForbidden,
    404: LdNotFound,
    413: LdPayloadTooLarge,
}


def _problem(exc: NgsiLdError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        exc.problem(),
        status_code=exc.status,
        headers={**exc.headers, **(headers or {})},
        media_type="application/json",
    )


async def _agent_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AgentError)
    if wants_problem(request):
        as_problem = _AS_PROBLEM.get(exc.status, LdInternalError)(exc.message)
        return _problem(as_problem, exc.headers)
    return JSONResponse(
        {"name": exc.name, "message": exc.message}, status_code=exc.status, headers=exc.headers
    )


async def _ngsi_ld_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NgsiLdError)
    return _problem(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    if wants_problem(request):
        return _problem(BadRequestData(f"{where}: {first['msg']}"))
    return JSONResponse(
        {"name": "WRONG_SYNTAX", "message": f"{where}: {first['msg']}"}, status_code=400
    )


def create_app(settings: AgentSettings, agent: IoTAgent | None = None) -> FastAPI:
    """The agent's HTTP app; its lifespan starts and stops the agent."""
    auth = auth_state(settings.auth_file, settings.audit_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = agent or IoTAgent(settings)
        app.state.agent = running
        restore = auth.watch() if auth is not None else None
        await running.start()
        try:
            yield
        finally:
            await running.stop()
            if restore is not None:
                restore()
            if auth is not None:
                await auth.aclose()

    app = FastAPI(
        title="Renkei IoT agent",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # one access-control dependency, on every route
        dependencies=[Depends(authorize)],
    )
    app.state.auth = auth
    app.add_middleware(AuditMiddleware)
    app.state.settings = settings
    app.include_router(_group_routes("/iot/groups", "groups"))
    app.include_router(_group_routes("/iot/services", "services"))
    app.include_router(devices)
    app.include_router(south)
    app.include_router(service)
    app.include_router(source)
    app.add_exception_handler(AgentError, _agent_error)
    app.add_exception_handler(NgsiLdError, _ngsi_ld_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app
