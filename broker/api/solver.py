"""Route handlers whose dependencies are resolved by a plan compiled once per route.

The framework resolves a route's dependency tree afresh on every request: it inspects
each dependency's kind, builds cache keys and validates every declared parameter through
pydantic. For a retrieve that costs more CPU than the retrieve itself. The routes of this
hub declare only plain text parameters (path, query and headers as ``str``/``str | None``,
checked by the broker itself) and async, non-generator dependencies, so the same tree can
be flattened once into a plan: for each dependency, in the framework's order, which
request values to pass and which earlier results to reuse.

The plan calls exactly the dependencies the framework would, in the same order, with the
same arguments and the same per-request cache (a dependency shared by two others runs
once), so the app-level ``authorize`` dependency runs for every request as before. A route
whose tree has anything else (a body parameter, a generator dependency, a typed or
constrained parameter, security scopes, ...) keeps the framework's handler, and so does a
request that lacks a required parameter (the framework then answers its validation
error) or an app with dependency overrides (tests).
``tests/broker/api/test_solver.py`` holds both handlers to the same values on every route.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi.dependencies.models import Dependant
from fastapi.params import Header, Path, Query
from fastapi.routing import APIRoute
from starlette.convertors import PathConvertor, StringConvertor
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

_MISSING = object()
_TEXT = (str, str | None, typing.Optional[str])  # noqa: UP045 - both spellings occur


#: Parts of a dependency the plan does not cover (a route having any keeps the
#: framework's handler).
_UNSUPPORTED = (
    "body_params",
    "cookie_params",
    "websocket_param_name",
    "http_connection_param_name",
    "response_param_name",
    "background_tasks_param_name",
    "security_scopes_param_name",
    "own_oauth_scopes",
    "concurrency",
)


class NotCompiled(Exception):
    """The tree has something the plan does not cover: the framework's handler serves it."""


@dataclass(frozen=True)
class _Param:
    name: str  # the keyword the callable takes
    key: str  # the name in the request (path parameter, query parameter, header)
    where: str  # "path" | "query" | "header"
    default: Any  # _MISSING when required


@dataclass(frozen=True)
class _Step:
    """One call of the plan: a dependency (or, last, the endpoint)."""

    call: Callable[..., Awaitable[Any]]
    params: tuple[_Param, ...]
    request_name: str | None
    subs: tuple[tuple[str | None, int], ...]  # (keyword, index of the step giving it)
    cached: bool  # use_cache: reuse an earlier result of the same call
    key: tuple[Any, str]  # the framework's cache key: the callable and its scope


def _param(field: Any, where: str) -> _Param:
    info = field.field_info
    if field.field_info.annotation not in _TEXT or info.metadata:
        raise NotCompiled(f"parameter {field.name} is not plain text")
    if info.validation_alias not in (None, field.alias):
        raise NotCompiled(f"parameter {field.name} has alias choices")
    kinds = {"path": Path, "query": Query, "header": Header}
    if not isinstance(info, kinds[where]):
        raise NotCompiled(f"parameter {field.name} is not a {where} parameter")
    if info.is_required():
        default = _MISSING
    elif isinstance(info.default, str | None):
        default = info.default
    else:
        raise NotCompiled(f"parameter {field.name} has a mutable default")
    return _Param(name=field.name, key=field.alias, where=where, default=default)


def _plain_async(call: Any) -> bool:
    return inspect.iscoroutinefunction(call) and not inspect.isasyncgenfunction(call)


class _Compiler:
    def __init__(self) -> None:
        self.steps: list[_Step] = []

    def add(self, dep: Dependant) -> int:
        """Compile ``dep`` after its own dependencies; the index of its step."""
        # attributes some versions of the framework lack count as absent
        unsupported = tuple(getattr(dep, name, None) for name in _UNSUPPORTED)
        if any(unsupported) or not _plain_async(dep.call):
            raise NotCompiled(f"dependency {getattr(dep.call, '__name__', dep.call)!r}")
        subs = tuple((sub.name, self.add(sub)) for sub in dep.dependencies)
        params = (
            *(_param(f, "path") for f in dep.path_params),
            *(_param(f, "query") for f in dep.query_params),
            *(_param(f, "header") for f in dep.header_params),
        )
        assert dep.call is not None
        self.steps.append(
            _Step(
                call=dep.call,
                params=params,
                request_name=dep.request_param_name,
                subs=subs,
                cached=dep.use_cache,
                key=(dep.call, getattr(dep, "scope", None) or ""),
            )
        )
        return len(self.steps) - 1


def _returns_response(call: Any) -> bool:
    try:
        returned = typing.get_type_hints(call).get("return")
    except (NameError, TypeError):
        return False
    return isinstance(returned, type) and issubclass(returned, Response)


def _effective(route: APIRoute) -> Any:
    """What the framework builds the route's handler from.

    A router included in an app is served with the app's and the router's dependencies
    added to each route's own (``FastAPI(dependencies=...)``: ``authorize``). Versions of
    the framework that keep included routers whole hand ``get_route_handler`` that
    combined view through a context variable, the one ``APIRoute.get_route_handler``
    reads; earlier versions copy the route with the combined dependencies instead.
    """
    var = getattr(fastapi.routing, "_effective_route_context_var", None)
    context = var.get() if var is not None else None
    if context is not None and context.original_route is route:
        return context
    return route


class Plan:
    """A route's dependency tree flattened into calls, in the framework's order."""

    def __init__(self, dependant: Dependant) -> None:
        compiler = _Compiler()
        compiler.add(dependant)
        *self.steps, self.endpoint = compiler.steps

    def calls(self) -> list[Callable[..., Any]]:
        """The dependencies called, in order (the endpoint last)."""
        return [step.call for step in (*self.steps, self.endpoint)]

    async def solve(self, request: Request) -> dict[str, Any] | None:
        """The endpoint's arguments, after running its dependencies; None when a required
        parameter is missing (the framework's handler then answers it)."""
        sources = {"path": request.path_params, "query": request.query_params}
        sources["header"] = request.headers
        results: list[Any] = []
        done: dict[Any, Any] = {}
        for step in self.steps:
            if step.cached and step.key in done:
                results.append(done[step.key])
                continue
            kwargs = self._arguments(step, request, sources, results)
            if kwargs is None:
                return None
            result = await step.call(**kwargs)
            results.append(result)
            done.setdefault(step.key, result)
        return self._arguments(self.endpoint, request, sources, results)

    @staticmethod
    def _arguments(
        step: _Step, request: Request, sources: dict[str, Any], results: list[Any]
    ) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {}
        for p in step.params:
            value = sources[p.where].get(p.key)
            if value is None:
                if p.default is _MISSING:
                    return None
                value = p.default
            kwargs[p.name] = value
        if step.request_name is not None:
            kwargs[step.request_name] = request
        for name, index in step.subs:
            if name is not None:
                kwargs[name] = results[index]
        return kwargs


def plan_of(effective: Any) -> Plan | None:
    """The plan of a route (or of its effective view in an app: ``_effective``), or None
    when the framework's handler must serve it."""
    dependant = effective.dependant
    if effective.body_field is not None or effective.response_model is not None:
        return None
    if not _returns_response(dependant.call):
        return None
    convertors = effective.param_convertors.values()
    if not all(isinstance(c, StringConvertor | PathConvertor) for c in convertors):
        return None  # a typed path parameter: the framework converts and validates it
    try:
        return Plan(dependant)
    except NotCompiled:
        return None


def compile_handler(route: APIRoute, fallback: Handler) -> Handler:
    """The route's handler with a compiled plan, or ``fallback`` when it cannot have one."""
    effective = _effective(route)
    plan = plan_of(effective)
    if plan is None:
        return fallback
    overrides_provider = effective.dependency_overrides_provider
    endpoint = plan.endpoint.call

    async def handler(request: Request) -> Response:
        if overrides_provider is not None and getattr(
            overrides_provider, "dependency_overrides", None
        ):
            return await fallback(request)
        kwargs = await plan.solve(request)
        if kwargs is None:
            return await fallback(request)  # the framework's validation error
        response = await endpoint(**kwargs)
        if not isinstance(response, Response):
            raise TypeError(f"{route.name} returned {type(response).__name__}, not a Response")
        return response

    return handler


class CompiledRoute(APIRoute):
    """An APIRoute served by :func:`compile_handler` where its tree allows."""

    def get_route_handler(self) -> Handler:
        return compile_handler(self, super().get_route_handler())
