"""Parse the NGSI-LD representation parameters into a :class:`broker.core.model.View`."""

from __future__ import annotations

from starlette.requests import Request

from broker.api.common import csv_param
from broker.core.model import View, check_name
from broker.errors import BadRequestData
from broker.jsonld.context import TermMap

_FORMATS = {
    "normalized": "normalized",
    "concise": "concise",
    "keyValues": "keyValues",
    "simplified": "keyValues",
}
_OPTIONS = {*_FORMATS, "sysAttrs", "noOverwrite", "replace", "update", "temporalValues",
            "aggregatedValues", "count"}
_ENTITY_MEMBERS = {"id", "type", "scope"}


def options_of(request: Request) -> set[str]:
    opts = set(csv_param(request.query_params.get("options")))
    unknown = opts - _OPTIONS
    if unknown:
        raise BadRequestData(f"unknown options value(s): {', '.join(sorted(unknown))}")
    return opts


def view_of(request: Request, tm: TermMap) -> View:
    params = request.query_params
    opts = options_of(request)
    formats = {_FORMATS[o] for o in opts if o in _FORMATS}
    fmt = params.get("format")
    if fmt is not None:
        if fmt not in _FORMATS:
            raise BadRequestData(f"unknown format {fmt!r}")
        formats = {_FORMATS[fmt]}
    if len(formats) > 1:
        raise BadRequestData("options asks for more than one representation format")
    view = View(tm, format=formats.pop() if formats else "normalized", sys_attrs="sysAttrs" in opts)  # type: ignore[arg-type]
    attrs = csv_param(params.get("attrs"))
    pick = csv_param(params.get("pick"))
    omit = csv_param(params.get("omit"))
    if pick and omit:
        raise BadRequestData("pick and omit cannot be used together")
    if attrs or pick:
        chosen = [*attrs, *pick]
        view.attrs = {tm.expand(check_name(a)) for a in chosen if a not in _ENTITY_MEMBERS}
        if pick:
            view.hide = _ENTITY_MEMBERS - set(pick)
    if omit:
        view.omit = {tm.expand(check_name(a)) for a in omit if a not in _ENTITY_MEMBERS}
        view.hide = _ENTITY_MEMBERS & set(omit)
    lang = params.get("lang")
    if lang is not None:
        if not lang.strip():
            raise BadRequestData("lang must not be empty")
        view.lang = lang
    return view
