"""The agent as an NGSI-LD context source: the endpoints the broker forwards to.

The broker forwards to these, per the agent's registrations
(``connectors.mqtt.registrations``), what its clients ask of the devices' lazy
attributes and commands (clause 4.3.6.3):

* ``GET /ngsi-ld/v1/entities/{id}`` and ``GET /ngsi-ld/v1/entities`` (retrieveEntity,
  queryEntity): the last value each device reported of each of its lazy attributes,
  with the ``observedAt`` of that measure. A device publishes a lazy attribute like any
  measure; the agent keeps its value and never writes it to the broker. (iotagent-json
  has no query handler of its own: iotagent-node-lib answers an empty string for every
  lazy attribute of an MQTT device, which tells the reader nothing.) Query filters
  (``id``, ``idPattern``, ``type``, ``attrs``, ``q``, ``scopeQ``, geo-queries) are
  evaluated on what the agent holds, as each source of a distributed query does;
* ``PATCH /ngsi-ld/v1/entities/{id}/attrs`` and ``.../attrs/{name}`` (updateAttrs),
  ``POST /ngsi-ld/v1/entities/{id}/attrs`` (appendAttrs),
  ``PUT .../attrs/{name}`` (replaceAttrs), ``PATCH`` and ``PUT /ngsi-ld/v1/entities/{id}``
  (mergeEntity, replaceEntity): each command named is sent to its device, as a command
  notification would be (MQTT ``cmd`` topic, HTTP push, or held for polling), and its
  ``{command}_status`` set to ``PENDING`` at the broker; the device's answer sets
  ``_status``/``_info`` as ever.

Values are read as the client wrote them: an attribute fragment's ``value`` (or
``object``, ``json``, ``languageMap``, ``vocab``), a bare value in the concise form.
Attribute and type names are the agent's own, or their IRIs under the core context's
default vocabulary.

Access (``connectors.mqtt.access``): a request carrying the agent's secret in
``SOURCE_HEADER`` (the header its registrations' ``contextSourceInfo`` names) is the
broker's, which checked its client already; any other request needs a principal of the
auth file with ``read`` (reads) or ``write`` (commands) on the device's entity type, and
without an auth file it is refused. Errors are NGSI-LD ProblemDetails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from broker.shared import (
    BadRequestData,
    GeoQuery,
    NgsiLdError,
    Node,
    ResourceNotFound,
    ScopeQuery,
    check_pattern,
    matches_geo,
    matches_q,
    matches_scope,
    parse_geo_query,
    parse_q,
    parse_scope_q,
    resolve_geo,
    resolve_q,
    search,
    type_alternatives,
)
from connectors.mqtt.access import check_source, record_written
from connectors.mqtt.body import read_json
from connectors.mqtt.registry import Resolved

if TYPE_CHECKING:
    from connectors.mqtt.agent import IoTAgent

#: The core context's ``@vocab``: a name the client wrote as a full IRI under it is
#: the agent's short name.
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
#: NGSI-LD Null (clause 4.5.0): an attribute set to it is being deleted, not commanded.
NGSI_LD_NULL = "urn:ngsi-ld:null"
ENTITY_KEYS = frozenset({"id", "type", "@id", "@type", "@context", "scope"})
_VALUE_MEMBERS = ("value", "object", "json", "languageMap", "vocab", "valueList", "objectList")
MAX_LIMIT = 1000


def wants_problem(request: Request) -> bool:
    """Whether errors are answered as NGSI-LD ProblemDetails (on these endpoints)."""
    return str(request.scope["path"]).startswith(router.prefix + "/")


def short(name: str) -> str:
    return name.removeprefix(DEFAULT_VOCAB)


def command_values(fragment: Any) -> list[Any]:
    """The values a client's attribute fragment commands (several instances: each)."""
    if isinstance(fragment, list):
        return [v for item in fragment for v in command_values(item)]
    if fragment == NGSI_LD_NULL:
        return []
    if isinstance(fragment, dict):
        for member in _VALUE_MEMBERS:
            if member in fragment:
                value = fragment[member]
                return [] if value == NGSI_LD_NULL else [value]
        if "type" in fragment:
            return []  # typed, but no value
    return [fragment]


def _entity(device: Resolved, attrs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The internal form (attribute -> instances) the query evaluator reads."""
    ent: dict[str, Any] = {"id": device.entity_id, "type": [device.entity_type]}
    if device.scope_path:
        ent["scope"] = [device.scope_path]
    ent.update({name: [attr] for name, attr in attrs.items()})
    return ent


def _render(device: Resolved, attrs: dict[str, dict[str, Any]], key_values: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": device.entity_id, "type": device.entity_type}
    if device.scope_path:
        out["scope"] = device.scope_path
    for name, attr in sorted(attrs.items()):
        if key_values:
            member = next((m for m in _VALUE_MEMBERS if m in attr), "value")
            out[name] = attr.get(member)
        else:
            out[name] = attr
    return out


class Selection:
    """What a ``GET /entities`` of the broker (or a client) selects."""

    def __init__(self, params: dict[str, str]) -> None:
        def csv(name: str) -> list[str]:
            return [short(v.strip()) for v in params.get(name, "").split(",") if v.strip()]

        self.ids = set(params["id"].split(",")) if params.get("id") else None
        self.id_pattern = params.get("idPattern")
        if self.id_pattern is not None:
            check_pattern(self.id_pattern)
        self.types = [[short(t) for t in alt] for alt in type_alternatives(params.get("type"))]
        self.attrs = set(csv("attrs")) or None
        self.q: Node | None = resolve_q(parse_q(params["q"]), short) if params.get("q") else None
        self.scope_q: ScopeQuery | None = (
            parse_scope_q(params["scopeQ"]) if params.get("scopeQ") else None
        )
        geo = parse_geo_query(
            params.get("georel"),
            params.get("geometry"),
            params.get("coordinates"),
            params.get("geoproperty"),
        )
        self.geo: GeoQuery | None = resolve_geo(geo, short) if geo is not None else None
        options = set(csv("options"))
        self.key_values = bool(options & {"keyValues", "simplified"})
        self.limit = _number(params.get("limit"), "limit", 20)
        self.offset = _number(params.get("offset"), "offset", 0)
        if self.limit > MAX_LIMIT:
            raise BadRequestData(f"limit may be at most {MAX_LIMIT}")
        self.count = params.get("count") == "true" or "count" in options

    def admits(self, device: Resolved) -> bool:
        if self.ids is not None and device.entity_id not in self.ids:
            return False
        if self.id_pattern is not None and not search(self.id_pattern, device.entity_id):
            return False
        return not self.types or any(
            all(t == device.entity_type for t in alt) for alt in self.types
        )

    def matches(self, device: Resolved, attrs: dict[str, dict[str, Any]]) -> bool:
        if not attrs:
            return False
        ent = _entity(device, attrs)
        if self.q is not None and not matches_q(self.q, ent):
            return False
        if self.scope_q is not None and not matches_scope(self.scope_q, ent):
            return False
        return self.geo is None or matches_geo(self.geo, ent)


def _number(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    if not text.isascii() or not text.isdigit():
        raise BadRequestData(f"{name} must be a non-negative integer")
    return int(text)


def lazy_of(agent: IoTAgent, device: Resolved, wanted: set[str] | None) -> dict[str, Any]:
    """The device's lazy attribute values, those of ``wanted`` only when given."""
    values = agent.lazy.of(device.tenant, device.entity_id)
    names = {m.name for m in device.lazy.values()}
    return {n: a for n, a in values.items() if n in names and (wanted is None or n in wanted)}


# -- routes -----------------------------------------------------------------------------------


def _agent(request: Request) -> IoTAgent:
    agent: IoTAgent = request.app.state.agent
    return agent


TenantHeader = Annotated[str | None, Header(alias="NGSILD-Tenant")]

router = APIRouter(prefix="/ngsi-ld/v1")


def _device(agent: IoTAgent, tenant: str | None, entity_id: str) -> Resolved:
    device = agent.registry.by_entity(tenant or "", entity_id)
    if device is None:
        raise ResourceNotFound(f"entity {entity_id} is not one of the agent's devices")
    return device


@router.get("/entities/{entity_id}")
async def retrieve_entity(
    entity_id: str, request: Request, tenant: TenantHeader = None
) -> JSONResponse:
    """A device's lazy attributes (retrieveEntity)."""
    agent = _agent(request)
    params = dict(request.query_params)
    device = _device(agent, tenant, entity_id)
    check_source(request, "read", [device.entity_type])
    wanted = {short(a) for a in params.get("attrs", "").split(",") if a.strip()} or None
    attrs = lazy_of(agent, device, wanted)
    if not attrs:
        raise ResourceNotFound(f"the agent holds no lazy attribute of {entity_id} asked for")
    agent.metrics.inc("lazy_reads_total")
    options = {o.strip() for o in params.get("options", "").split(",")}
    return JSONResponse(_render(device, attrs, bool(options & {"keyValues", "simplified"})))


@router.get("/entities")
async def query_entities(request: Request, tenant: TenantHeader = None) -> JSONResponse:
    """The devices' lazy attributes that match a query (queryEntity)."""
    agent = _agent(request)
    selection = Selection(dict(request.query_params))
    found: list[tuple[Resolved, dict[str, Any]]] = []
    for device in agent.registry.all_entities():
        if device.tenant != (tenant or None) or not device.lazy:
            continue
        if not selection.admits(device) or not check_source(
            request, "read", [device.entity_type], refuse=False
        ):
            continue
        attrs = lazy_of(agent, device, selection.attrs)
        if selection.matches(device, attrs):
            found.append((device, attrs))
    found.sort(key=lambda pair: pair[0].entity_id)
    page = found[selection.offset : selection.offset + selection.limit]
    agent.metrics.inc("lazy_reads_total", amount=len(page))
    headers = {"NGSILD-Results-Count": str(len(found))} if selection.count else {}
    body = [_render(d, a, selection.key_values) for d, a in page]
    return JSONResponse(body, headers=headers)


async def _commands(
    request: Request,
    tenant: str | None,
    entity_id: str,
    attrs: dict[str, Any],
) -> Response:
    """Send the commands among ``attrs`` (attribute name -> fragment) to the device."""
    agent = _agent(request)
    device = _device(agent, tenant, entity_id)
    check_source(request, "write", [device.entity_type])
    record_written(request, [entity_id])
    commands: dict[str, list[Any]] = {}
    refused: list[dict[str, str]] = []
    for raw, fragment in attrs.items():
        name = short(raw)
        if raw in ENTITY_KEYS:
            continue
        values = command_values(fragment)
        if name in device.commands and values:
            commands[name] = values
        else:
            why = "not a command of the device" if name not in device.commands else "no value"
            if any(m.name == name for m in device.lazy.values()):
                why = "a lazy attribute: its value comes from the device"
            refused.append({"attributeName": raw, "reason": why})
    if not commands:
        detail = "; ".join(f"{r['attributeName']}: {r['reason']}" for r in refused)
        raise BadRequestData(f"no command to send to {entity_id} ({detail or 'nothing given'})")
    failed = agent.source_commands(device, commands)
    if failed:
        raise CommandsNotSent(
            f"commands {', '.join(failed)} of {entity_id} could not be sent to the device"
            " (MQTT down or its apikey ambiguous); their status is ERROR"
        )
    if refused:
        return JSONResponse({"updated": sorted(commands), "notUpdated": refused}, status_code=207)
    return Response(status_code=204)


class CommandsNotSent(NgsiLdError):
    status = 503
    type_name = "InternalError"
    title = "Command not sent"


async def _body_object(request: Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequestData("the body must be a JSON object")
    return body


@router.patch("/entities/{entity_id}/attrs", status_code=204)
async def update_attrs(entity_id: str, request: Request, tenant: TenantHeader = None) -> Response:
    """Commands written with updateAttrs."""
    return await _commands(request, tenant, entity_id, await _body_object(request))


@router.post("/entities/{entity_id}/attrs", status_code=204)
async def append_attrs(entity_id: str, request: Request, tenant: TenantHeader = None) -> Response:
    """Commands written with appendAttrs."""
    return await _commands(request, tenant, entity_id, await _body_object(request))


@router.patch("/entities/{entity_id}/attrs/{attr}", status_code=204)
async def update_attr(
    entity_id: str, attr: str, request: Request, tenant: TenantHeader = None
) -> Response:
    """One command written with updateAttrs (``/attrs/{name}``)."""
    return await _commands(request, tenant, entity_id, {attr: await read_json(request)})


@router.put("/entities/{entity_id}/attrs/{attr}", status_code=204)
async def replace_attr(
    entity_id: str, attr: str, request: Request, tenant: TenantHeader = None
) -> Response:
    """One command written with replaceAttrs."""
    return await _commands(request, tenant, entity_id, {attr: await read_json(request)})


@router.patch("/entities/{entity_id}", status_code=204)
async def merge_entity(entity_id: str, request: Request, tenant: TenantHeader = None) -> Response:
    """Commands written with mergeEntity."""
    return await _commands(request, tenant, entity_id, await _body_object(request))


@router.put("/entities/{entity_id}", status_code=204)
async def replace_entity(entity_id: str, request: Request, tenant: TenantHeader = None) -> Response:
    """Commands written with replaceEntity (the broker sends only the registered part)."""
    return await _commands(request, tenant, entity_id, await _body_object(request))
