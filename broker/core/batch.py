"""Batch entity operations (clause 5.6.7-5.6.10 and batch merge).

Each entity of a batch gets its own mutation and its own result; the whole batch is
handed to the store in one ``write`` call, so a SQLite batch is one transaction with
a savepoint per entity: a bad entity never blocks the others and leaves nothing
half-written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from broker.core.entities import EntityService, UpdateResult
from broker.errors import BadRequestData, NgsiLdError, ResourceNotFound
from broker.jsonld.context import TermMap
from broker.model.entity import Entity, check_entity_id
from broker.model.store import DELETE, Mutation

Operation = Literal["create", "upsert", "update", "merge", "delete"]


@dataclass
class BatchItem:
    """One element of a batch body, with its resolved term map or the error resolving it."""

    body: Any
    tm: TermMap | None = None
    error: NgsiLdError | None = None


@dataclass
class BatchResult:
    success: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: Ids that did not exist before (upsert reports them with 201).
    created: list[str] = field(default_factory=list)

    def fail(self, entity_id: str, error: NgsiLdError) -> None:
        self.errors.append({"entityId": entity_id, "error": error.problem()})

    def body(self) -> dict[str, Any]:
        return {"success": self.success, "errors": self.errors}


def _item_id(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        return str(body["id"])
    return ""


class BatchService:
    def __init__(self, entities: EntityService, *, max_batch: int = 1000) -> None:
        self.entities = entities
        self.max_batch = max_batch

    def check_size(self, count: int) -> None:
        if count == 0:
            raise BadRequestData("the batch is empty")
        if count > self.max_batch:
            raise BadRequestData(f"a batch holds at most {self.max_batch} entities (got {count})")

    def _mutation(
        self, op: Operation, item: BatchItem, options: set[str], reports: dict[str, UpdateResult]
    ) -> tuple[str, Mutation]:
        if item.error is not None:
            raise item.error
        assert item.tm is not None
        body = item.body
        svc = self.entities
        if not isinstance(body, dict):
            raise BadRequestData("each entity of a batch must be a JSON object")
        eid = check_entity_id(body.get("id"))
        if op == "create":
            return eid, svc.create_mutation(svc.new_entity(body, item.tm))
        if op == "merge":
            return eid, svc.merge_mutation(eid, body, item.tm)
        if op == "update":
            mutation, reports[eid] = svc.attr_changes(
                eid, body, item.tm, append=True, no_overwrite="noOverwrite" in options
            )
            return eid, mutation
        # upsert
        new = svc.new_entity(body, item.tm)
        if "update" in options:
            merge, _ = svc.attr_changes(eid, body, item.tm, append=True, no_overwrite=False)

            def upsert_update(current: Entity | None) -> Any:
                return dict(new) if current is None else merge(current)

            return eid, upsert_update

        def upsert_replace(current: Entity | None) -> Entity:
            out = dict(new)
            if current is not None:
                out["createdAt"] = current["createdAt"]
            return out

        return eid, upsert_replace

    async def run(
        self, tenant: str, op: Operation, items: list[BatchItem], options: set[str]
    ) -> BatchResult:
        self.check_size(len(items))
        result = BatchResult()
        mutations: list[tuple[str, Mutation]] = []
        reports: dict[str, UpdateResult] = {}
        for item in items:
            try:
                mutations.append(self._mutation(op, item, options, reports))
            except NgsiLdError as exc:
                result.fail(_item_id(item.body), exc)
        if mutations:
            for r in await self.entities.write(tenant, mutations):
                report = reports.get(r.id)
                if r.error is not None:
                    result.fail(r.id, r.error)
                elif report is not None and report.not_updated:
                    names = ", ".join(n["attributeName"] for n in report.not_updated)
                    result.fail(
                        r.id, BadRequestData(f"attributes not updated (noOverwrite): {names}")
                    )
                else:
                    result.success.append(r.id)
                    if r.before is None:
                        result.created.append(r.id)
        return result

    async def delete(self, tenant: str, ids: list[Any]) -> BatchResult:
        self.check_size(len(ids))
        result = BatchResult()
        mutations: list[tuple[str, Mutation]] = []
        for eid in ids:
            try:
                checked = check_entity_id(eid)
            except NgsiLdError as exc:
                result.fail(str(eid), exc)
                continue
            mutations.append((checked, _delete_existing(checked)))
        if mutations:
            for r in await self.entities.write(tenant, mutations):
                if r.error is not None:
                    result.fail(r.id, r.error)
                else:
                    result.success.append(r.id)
        return result


def _delete_existing(eid: str) -> Mutation:
    def mutate(current: Entity | None) -> Any:
        if current is None:
            raise ResourceNotFound(f"entity {eid} not found")
        return DELETE

    return mutate
