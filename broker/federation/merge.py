"""Merging what several sources hold of one entity (clause 4.3.6.4).

Entities are merged attribute by attribute: for each attribute, instances are told apart
by ``datasetId`` (the default instance has none), and of two instances with the same
datasetId the newer one wins: the later ``observedAt``, else the later ``modifiedAt``; a
tie keeps the instance met first (the local one, as sources are merged after it).
Types and scopes are the union of all. ``createdAt`` is the earliest, ``modifiedAt`` the
latest.

:func:`merge_reference` is the slow, obvious statement of the same rule, which the tests
hold :func:`merge` to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from broker.model.entity import ENTITY_KEYS, Entity, Instance


def _stamp(inst: Instance) -> tuple[str, str]:
    return (str(inst.get("observedAt") or ""), str(inst.get("modifiedAt") or ""))


def _union(a: Any, b: Any) -> list[Any]:
    out: list[Any] = []
    for item in [*(a if isinstance(a, list) else [a]), *(b if isinstance(b, list) else [b])]:
        if item is not None and item not in out:
            out.append(item)
    return out


def merge(base: Entity, other: Entity) -> Entity:
    """``other``'s view of the same entity merged into (a copy of) ``base``."""
    out: Entity = dict(base)
    out["type"] = _union(base.get("type"), other.get("type"))
    if "scope" in base or "scope" in other:
        out["scope"] = _union(base.get("scope"), other.get("scope"))
    for key, pick in (("createdAt", min), ("modifiedAt", max)):
        stamps = [e[key] for e in (base, other) if e.get(key)]
        if stamps:
            out[key] = pick(stamps)
    for name, raw in other.items():
        if name in ENTITY_KEYS or not isinstance(raw, list):
            continue
        held = out.get(name)
        if not isinstance(held, list):
            out[name] = list(raw)
            continue
        by_dataset: dict[Any, Instance] = {i.get("datasetId"): i for i in held}
        for inst in raw:
            ds = inst.get("datasetId")
            mine = by_dataset.get(ds)
            if mine is None or _stamp(inst) > _stamp(mine):
                by_dataset[ds] = inst
        out[name] = list(by_dataset.values())
    return out


def merge_all(groups: Iterable[Iterable[Entity]]) -> dict[str, Entity]:
    """Entities of several sources by id, each merged from every source holding it, in
    the order first seen."""
    out: dict[str, Entity] = {}
    for entities in groups:
        for ent in entities:
            eid = ent["id"]
            out[eid] = merge(out[eid], ent) if eid in out else ent
    return out


def merge_reference(views: list[Entity]) -> Entity:
    """The same as folding :func:`merge` over ``views``, stated directly: for each
    attribute and datasetId, the first of the newest instances."""
    out: Entity = {"id": views[0]["id"]}
    types: list[Any] = []
    scopes: list[Any] = []
    for v in views:
        types = _union(types, v.get("type"))
        if "scope" in v:
            scopes = _union(scopes, v.get("scope"))
    out["type"] = types
    if any("scope" in v for v in views):
        out["scope"] = scopes
    created = [v["createdAt"] for v in views if v.get("createdAt")]
    modified = [v["modifiedAt"] for v in views if v.get("modifiedAt")]
    if created:
        out["createdAt"] = min(created)
    if modified:
        out["modifiedAt"] = max(modified)
    names: list[str] = []
    for v in views:
        names += [
            n for n in v if n not in ENTITY_KEYS and isinstance(v[n], list) and n not in names
        ]
    for name in names:
        datasets: list[Any] = []
        for v in views:
            for inst in v.get(name) or []:
                if inst.get("datasetId") not in datasets:
                    datasets.append(inst.get("datasetId"))
        chosen = []
        for ds in datasets:
            candidates = [i for v in views for i in v.get(name) or [] if i.get("datasetId") == ds]
            newest = max(_stamp(i) for i in candidates)
            chosen.append(next(i for i in candidates if _stamp(i) == newest))
        out[name] = chosen
    return out


def _join_rendered(
    base: dict[str, Any],
    other: dict[str, Any],
    added: Callable[[list[Any], list[Any]], Iterable[Any]],
) -> dict[str, Any]:
    """``base`` with ``other``'s attributes it lacks, and for an attribute both hold as
    lists of instances, the instances ``added(held, offered)`` picks appended in order."""
    out = dict(base)
    for name, value in other.items():
        if name in ENTITY_KEYS:
            continue
        held = out.get(name)
        if held is None:
            out[name] = value
        elif isinstance(held, list) and isinstance(value, list):
            out[name] = [*held, *added(held, value)]
    return out


def merge_rendered(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Two sources' renderings of one entity's temporal evolution (attribute members
    holding lists of instances) joined: instances ``base`` lacks are added, in order."""
    return _join_rendered(base, other, lambda held, value: (v for v in value if v not in held))


def fill_rendered(base: dict[str, Any], other: dict[str, Any], prop: str) -> dict[str, Any]:
    """What an ``auxiliary`` source adds to an entity's temporal evolution (clause
    5.7.3.4): its attributes ``base`` lacks, and its instances at a time (``prop``:
    observedAt, createdAt, ...) none of ``base``'s instances of the attribute has."""

    def at_new_times(held: list[Any], value: list[Any]) -> Iterable[Any]:
        times = {i.get(prop) for i in held if isinstance(i, dict)}
        return (v for v in value if not (isinstance(v, dict) and v.get(prop) in times))

    return _join_rendered(base, other, at_new_times)
