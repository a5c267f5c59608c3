"""Compiled dependency plans (broker/api/solver.py) against the framework's own solver.

Every declared route is served by a plan compiled once per route instead of the
framework resolving the dependency tree per request. These tests hold the plans to the
framework: the same dependencies (the access check first), and the same arguments for
the endpoint on requests with and without parameters, Japanese values included.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from fastapi.dependencies.utils import solve_dependencies
from fastapi.routing import _iter_routes_with_context
from fastapi.testclient import TestClient
from starlette.requests import Request

from broker.api.auth import authorize
from broker.api.solver import CompiledRoute, Plan, plan_of
from broker.app import create_app
from tests.conftest import make_settings

LINK = '<https://example.org/ctx.jsonld>; rel="http://www.w3.org/ns/json-ld#context"'


def _tree(dependant: Any) -> list[Any]:
    out = []
    for d in dependant.dependencies:
        out.extend(_tree(d))
        out.append(d.call)
    return out


def _compiled_routes(app: Any) -> list[tuple[Any, Any, Plan | None]]:
    found = []
    for route, context in _iter_routes_with_context(app.routes):
        if isinstance(route, CompiledRoute):
            effective = context if context is not None else route
            found.append((route, effective, plan_of(effective)))
    return found


def test_every_declared_route_has_a_plan_that_calls_the_framework_s_dependencies(
    tmp_path: Path,
) -> None:
    app = create_app(make_settings(tmp_path))
    routes = _compiled_routes(app)
    assert len(routes) > 90  # NGSI-LD, temporal, subscriptions, contexts, entity maps, NGSI v2
    for route, effective, plan in routes:
        where = f"{sorted(route.methods)} {route.path}"
        assert plan is not None, f"{where} fell back to the framework's solver"
        calls = plan.calls()
        # the access check runs first, before anything the route itself needs
        assert calls[0] is authorize, where
        assert calls[-1] is effective.dependant.call, where
        assert calls[:-1] == _tree(effective.dependant), where


def _request(app: Any, route: Any, plan: Plan, *, full: bool) -> Request:
    path_params = {name: "urn:ngsi-ld:避難所:小学校１" for name in route.param_convertors}
    query: list[tuple[str, str]] = []
    headers: list[tuple[bytes, bytes]] = [(b"host", b"127.0.0.1")]
    if full:
        for step in (*plan.steps, plan.endpoint):
            for p in step.params:
                if p.where == "query":
                    query.append((p.key, f"値-{p.key}"))
        query += [("type", "Shelter"), ("limit", "5"), ("q", 'name=="避難所"')]
        for name, value in (
            ("ngsild-tenant", "komae"),
            ("fiware-service", "komae"),
            ("fiware-servicepath", "/地区1"),
            ("link", LINK),
            ("accept", "application/json"),
        ):
            headers.append((name.encode(), value.encode()))
    from urllib.parse import urlencode

    scope = {
        "type": "http",
        "method": sorted(route.methods)[0],
        "path": route.path,
        "query_string": urlencode(query).encode(),
        "headers": headers,
        "path_params": path_params,
        "app": app,
        "route": route,
        "fastapi_inner_astack": AsyncExitStack(),
        "fastapi_function_astack": AsyncExitStack(),
    }
    return Request(scope)


async def _outcome(solve: Any) -> Any:
    try:
        values = await solve()
    except Exception as exc:  # both solvers must fail alike
        return ("raised", type(exc).__name__, str(exc))
    return ("values", values)


def test_plans_give_the_endpoint_the_framework_s_arguments(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        compared = 0
        for route, effective, plan in _compiled_routes(app):
            assert plan is not None
            for full in (False, True):
                request = _request(app, route, plan, full=full)

                async def framework(request: Request = request, effective: Any = effective) -> Any:
                    solved = await solve_dependencies(
                        request=request,
                        dependant=effective.dependant,
                        async_exit_stack=request.scope["fastapi_inner_astack"],
                        embed_body_fields=False,
                    )
                    assert not solved.errors, solved.errors
                    return solved.values

                async def compiled(request: Request = request, plan: Plan = plan) -> Any:
                    return await plan.solve(request)

                expected = client.portal.call(_outcome, framework)  # type: ignore[union-attr]
                got = client.portal.call(_outcome, compiled)  # type: ignore[union-attr]
                assert got == expected, f"{sorted(route.methods)} {route.path} full={full}"
                compared += 1
        assert compared > 180  # two requests per route


def test_a_compiled_route_still_refuses_without_credentials(tmp_path: Path) -> None:
    """The plan runs the access check: a writer's route without a key is 401."""
    from broker.auth import hash_key

    auth = tmp_path / "auth.yaml"
    auth.write_text(
        f"""
api_keys:
  - {{name: 狛江市, key_sha256: "{hash_key("komae-key-0001")}", roles: [writer], tenants: [komae]}}
roles:
  writer: {{read: ["*"], write: ["*"], subscribe: ["*"]}}
"""
    )
    app = create_app(make_settings(tmp_path, auth_file=auth))
    body = {"id": "urn:ngsi-ld:Shelter:避難所1", "type": "Shelter"}
    tenant = {"NGSILD-Tenant": "komae", "Content-Type": "application/json"}
    with TestClient(app) as client:
        refused = client.post("/ngsi-ld/v1/entities", json=body, headers=tenant)
        assert refused.status_code == 401
        assert "WWW-Authenticate" in refused.headers
        ok = client.post(
            "/ngsi-ld/v1/entities", json=body, headers={**tenant, "X-API-Key": "komae-key-0001"}
        )
        assert ok.status_code == 201, ok.text
        assert (
            client.get(
                "/ngsi-ld/v1/entities/urn:ngsi-ld:Shelter:避難所1", headers=tenant
            ).status_code
            == 404
        )
