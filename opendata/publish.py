"""Publishing: keep a CKAN catalogue in step with the hub, idempotently.

For each dataset definition: read the entities from the broker's API (paged), render the
resources, then through ckanapi

- create the organisation when it is missing (when the definition allows it);
- create the package by its stable name, or ``package_patch`` only the fields that
  differ (never ``package_update``, which would drop what other tools set; extras are
  merged, not replaced);
- upload each resource whose SHA-256 differs from the ``hash`` stored on the CKAN
  resource (resources are found again by their ``renkei_key``), skip the others;
- optionally upsert tabular rows into the DataStore under a primary key, deleting the
  rows whose key is gone;
- write each district_indicators layer into the hub's OGC layers folder (when one is
  given), after CKAN has it, so that ``/ogc`` serves the figures the catalogue holds; an
  unchanged layer file is left alone.

Every dataset gets a report: created / updated / unchanged / failed, with CKAN's error
text; one failure does not stop the others. CKAN calls are retried with exponential
backoff on timeouts, connection errors, 429 and 5xx, and spaced to a configurable rate.
The API token is sent as a header and never logged or put in a message.

Error tree::

    PublishError
     +-- CatalogError      CKAN refused a call, or could not be reached after the retries
     +-- SourceError       the broker could not be read
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from ckanapi import RemoteCKAN
from ckanapi.errors import (
    CKANAPIError,
    NotAuthorized,
    NotFound,
    ServerIncompatibleError,
    ValidationError,
)

from connectors.client import BrokerClient, BrokerError
from opendata.datasets import DatasetDefinition, ResourceSpec
from opendata.render import Layer, LayerInputError, Rendered, render_dataset, simplify

__all__ = [
    "Catalog",
    "CatalogError",
    "ChangeListener",
    "DatasetReport",
    "PublishError",
    "Publisher",
    "SourceError",
    "fetch_entities",
    "subscribe_changes",
    "unsubscribe",
]

log = logging.getLogger("renkei.publish")

USER_AGENT = "renkei-publish/0.1"
DATASTORE_BATCH = 1000


class PublishError(Exception):
    """A dataset could not be published; the message is shown in the report."""


class CatalogError(PublishError):
    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class SourceError(PublishError):
    pass


# -- CKAN ------------------------------------------------------------------------------------


class _Transient(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status = status


class _RemoteCKAN(RemoteCKAN):  # type: ignore[misc]
    """ckanapi's client, with 5xx and 429 answers raised so that they can be retried."""

    def _request_fn(
        self, url: str, data: Any, headers: Any, files: Any, requests_kwargs: Any
    ) -> tuple[int, str]:
        status, text = super()._request_fn(url, data, headers, files, requests_kwargs)
        if status >= 500 or status == 429:
            raise _Transient(status, text)
        return status, text


def _error_text(exc: Exception) -> str:
    """CKAN's own error text, without the token or the request."""
    if isinstance(exc, ValidationError):
        errors = getattr(exc, "error_dict", {}) or {}
        parts = []
        for key, value in errors.items():
            if key == "__type":
                continue
            parts.append(f"{key}: {_flatten(value)}")
        return "; ".join(parts) or "Validation Error"
    if isinstance(exc, NotAuthorized):
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, dict):
            detail = detail.get("message", "")
        return f"Authorization Error: {detail}".rstrip(": ")
    if isinstance(exc, NotFound):
        return f"Not Found: {exc.extra_msg or ''}".rstrip(": ")
    return str(exc)[:1000]


def _flatten(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_flatten(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in value.items())
    return str(value)


class Catalog:
    """A CKAN catalogue reached with ckanapi: retries, backoff and a request rate.

    ``rate`` is the most requests per second (0: no limit). ``retries`` more attempts
    follow a timeout, a connection error, 429 or 5xx, after ``backoff`` seconds, doubled
    each time (at most ``max_backoff``).
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        rate: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._ckan = _RemoteCKAN(self.url, apikey=token, user_agent=USER_AGENT)
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._last = 0.0
        self._lock = threading.Lock()
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.calls: list[str] = []
        self._licenses: set[str] | None = None

    def _pace(self) -> None:
        if not self._interval:
            return
        with self._lock:
            wait = self._last + self._interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()

    def call(
        self, action: str, *, files: dict[str, tuple[str, bytes]] | None = None, **data: Any
    ) -> Any:
        """One CKAN action; ckanapi's exceptions become :class:`CatalogError`, except
        ``NotFound`` which callers handle."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            self._pace()
            self.calls.append(action)
            try:
                file_args = (
                    {k: (name, io.BytesIO(content)) for k, (name, content) in files.items()}
                    if files
                    else None
                )
                return self._ckan.call_action(
                    action,
                    data_dict=data,
                    files=file_args,
                    requests_kwargs={"timeout": self.timeout},
                )
            except NotFound:
                raise
            except (_Transient, requests.Timeout, requests.ConnectionError) as exc:
                if attempt == self.retries:
                    raise CatalogError(
                        f"CKAN {action}: {exc} (after {self.retries + 1} attempts)",
                        transient=True,
                    ) from exc
                log.warning("CKAN %s failed (%s); retrying in %.1fs", action, exc, delay)
            except CKANAPIError as exc:
                raise CatalogError(f"CKAN {action}: {_error_text(exc)}") from exc
            except ServerIncompatibleError as exc:
                raise CatalogError(
                    f"CKAN {action}: {self.url} does not answer as a CKAN action API does"
                ) from exc
            except requests.RequestException as exc:
                raise CatalogError(f"CKAN {action}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")

    def show(self, action: str, **data: Any) -> Any | None:
        """A ``*_show`` action; ``None`` when CKAN says Not Found."""
        try:
            return self.call(action, **data)
        except NotFound:
            return None

    def licenses(self) -> set[str]:
        if self._licenses is None:
            self._licenses = {str(lic["id"]) for lic in self.call("license_list")}
        return self._licenses

    def close(self) -> None:
        self._ckan.close()


# -- the broker ----------------------------------------------------------------------------


async def _fetch(definition: DatasetDefinition, broker_url: str) -> list[dict[str, Any]]:
    q = definition.query
    client = BrokerClient(broker_url, tenant=q.tenant, context=q.context)
    try:
        params: dict[str, Any] = q.params()
        return [e async for e in client.query(**params)]
    finally:
        await client.aclose()


def fetch_entities(definition: DatasetDefinition, broker_url: str) -> list[dict[str, Any]]:
    """The dataset's entities, simplified and sorted by id (so output is deterministic)."""
    try:
        raw = asyncio.run(_fetch(definition, broker_url))
    except BrokerError as exc:
        raise SourceError(f"broker: {exc}") from exc
    entities = [simplify(e, definition.language) for e in raw]
    entities.sort(key=lambda e: str(e.get("id")))
    return entities


def entities_digest(
    entities: Sequence[dict[str, Any]], definition: DatasetDefinition | None = None
) -> str:
    """What a dataset is made of: its entities, and the files its aggregate layers read."""
    text = json.dumps(entities, ensure_ascii=False, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode())
    for agg in definition.aggregates if definition is not None else ():
        for path in agg.inputs:
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"missing")
    return digest.hexdigest()


# -- reports -------------------------------------------------------------------------------


@dataclass
class DatasetReport:
    name: str
    #: created | updated | unchanged | failed (| rendered: a dry run without a catalogue)
    status: str
    error: str | None = None
    #: resource key -> created | updated | unchanged | deleted (dry_run: what would happen)
    resources: dict[str, str] = field(default_factory=dict)
    #: OGC layer name -> created | updated | unchanged (dry_run: what would happen)
    layers: dict[str, str] = field(default_factory=dict)
    #: changed package fields
    fields: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    entities: int = 0
    datastore_rows: int | None = None
    dry_run: bool = False
    url: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


# -- publishing ----------------------------------------------------------------------------


def _text(texts: dict[str, str], lang: str = "ja") -> str:
    return texts.get(lang) or next(iter(texts.values()), "")


def _bilingual(texts: dict[str, str]) -> str:
    ja, en = texts.get("ja", ""), texts.get("en", "")
    return "\n\n".join(t for t in (ja, en) if t)


def package_fields(d: DatasetDefinition) -> dict[str, Any]:
    """The CKAN package fields a definition owns (extras separately, merged)."""
    return {
        "title": _text(d.title),
        "notes": _bilingual(d.description),
        "license_id": d.license,
        "owner_org": d.organization.name,
        "private": d.private,
        "tags": sorted(d.tags),
    }


def package_extras(d: DatasetDefinition) -> dict[str, str]:
    extras = {"renkei_entity_type": d.query.type}
    if "en" in d.title:
        extras["title_en"] = d.title["en"]
    if "en" in d.description:
        extras["description_en"] = d.description["en"]
    extras.update(d.extras)
    return extras


def _current_fields(pkg: dict[str, Any]) -> dict[str, Any]:
    org = pkg.get("organization") or {}
    return {
        "title": pkg.get("title") or "",
        "notes": pkg.get("notes") or "",
        "license_id": pkg.get("license_id"),
        "owner_org": org.get("name") if isinstance(org, dict) else None,
        "private": bool(pkg.get("private")),
        "tags": sorted(t["name"] for t in pkg.get("tags") or []),
    }


def _resource_fields(r: Rendered) -> dict[str, Any]:
    spec = r.spec
    fields: dict[str, Any] = {
        "name": _text(spec.name),
        "description": _bilingual(spec.description),
        "format": r.format_label,
        "mimetype": r.media_type,
        "renkei_key": spec.key,
    }
    if spec.standard:
        fields["renkei_standard"] = spec.standard
    return fields


def _datastore_fields(r: Rendered, primary_key: Sequence[str]) -> dict[str, str]:
    """Column -> DataStore type, so that CKAN's data explorer sorts and filters numbers and
    dates as such. Primary key columns stay ``text``: rows are matched by their text."""
    assert r.table is not None
    return {
        h: "text" if h in primary_key else t
        for h, t in zip(r.table.headers, r.table.field_types(), strict=True)
    }


class Publisher:
    """Publishes definitions from one broker to one catalogue."""

    def __init__(
        self,
        catalog: Catalog | None,
        broker_url: str,
        *,
        dry_run: bool = False,
        echo: Callable[[str], None] | None = None,
        ogc_layers_dir: Path | None = None,
    ) -> None:
        """``ogc_layers_dir``: the hub's OGC layers folder (``RENKEI_OGC_LAYERS_DIR``),
        where district_indicators layers are written as ``<layer>.geojson``."""
        if catalog is None and not dry_run:
            raise ValueError("a catalogue is needed unless dry_run")
        self.catalog = catalog
        self.broker_url = broker_url
        self.dry_run = dry_run
        self.ogc_layers_dir = ogc_layers_dir
        self.echo = echo or (lambda _m: None)

    def publish_all(self, definitions: Sequence[DatasetDefinition]) -> list[DatasetReport]:
        return [self.publish(d) for d in definitions]

    def publish(
        self, d: DatasetDefinition, entities: list[dict[str, Any]] | None = None
    ) -> DatasetReport:
        """One dataset; never raises for a CKAN or broker failure (see the report)."""
        report = DatasetReport(name=d.name, status="unchanged", dry_run=self.dry_run)
        report.notes.extend(d.tag_notes)
        try:
            if entities is None:
                entities = fetch_entities(d, self.broker_url)
            report.entities = len(entities)
            rendered, layers = render_dataset(d.resources, entities, d.language)
            for layer in layers:
                report.notes.extend(layer.notes)
            for r in rendered:
                report.notes.extend(r.notes())
            self._check_datastore(d, rendered)
            if self.catalog is not None:
                self._sync(d, rendered, report)
            else:  # a dry run with no catalogue to compare with
                report.status = "rendered"
                report.resources = {r.spec.key: "rendered" for r in rendered}
            self._write_layers(layers, report)
        except (PublishError, LayerInputError) as exc:
            report.status = "failed"
            report.error = str(exc)
        except Exception as exc:  # one dataset's failure never stops the others
            log.exception("publishing %s failed", d.name)
            report.status = "failed"
            report.error = f"{type(exc).__name__}: {exc}"
        return report

    def _write_layers(self, layers: Sequence[Layer], report: DatasetReport) -> None:
        """Put the aggregate layers where ``/ogc`` serves them (dry run: say what would
        change). A file that already holds the same bytes is not rewritten."""
        if self.ogc_layers_dir is None:
            return
        from opendata.gis import publish_layer

        for layer in layers:
            name = layer.spec.layer
            if name is None:
                continue
            path = self.ogc_layers_dir / f"{name}.geojson"
            try:
                current: bytes | None = path.read_bytes()
            except FileNotFoundError:
                current = None
            except OSError as exc:
                raise PublishError(
                    f"OGC layer {name}: {path} を読めません / cannot read {path}: {exc.strerror}"
                ) from exc
            if current == layer.geojson:
                report.layers[name] = "unchanged"
                continue
            report.layers[name] = "created" if current is None else "updated"
            if report.status == "unchanged":
                report.status = "updated"
            if self.dry_run:
                continue
            try:
                publish_layer(
                    layer.frame,
                    self.ogc_layers_dir,
                    name,
                    id_column=layer.spec.id_column,
                    title=layer.title,
                    description=layer.description,
                )
            except OSError as exc:
                raise PublishError(
                    f"OGC layer {name}: {self.ogc_layers_dir} に書けません / "
                    f"cannot write to {self.ogc_layers_dir}: {exc.strerror}"
                ) from exc

    def _check_datastore(self, d: DatasetDefinition, rendered: list[Rendered]) -> None:
        if d.datastore is None:
            return
        r = next(r for r in rendered if r.spec.key == d.datastore.resource)
        assert r.table is not None
        missing = [k for k in d.datastore.primary_key if k not in r.table.headers]
        if missing:
            raise PublishError(
                f"datastore.primary_key: 列 {missing} が {r.spec.key} にありません / "
                f"columns {missing} are not in {r.spec.key} (columns: {r.table.headers})"
            )
        seen: set[tuple[str, ...]] = set()
        idx = [r.table.headers.index(k) for k in d.datastore.primary_key]
        for row in r.table.rows:
            key = tuple(row[i] for i in idx)
            if key in seen:
                raise PublishError(
                    f"datastore.primary_key: 値 {list(key)} が重複しています / "
                    f"duplicate primary key {list(key)} in {r.spec.key}"
                )
            seen.add(key)

    # -- CKAN ------------------------------------------------------------------------------

    def _sync(self, d: DatasetDefinition, rendered: list[Rendered], report: DatasetReport) -> None:
        cat = self.catalog
        assert cat is not None
        if d.license not in cat.licenses():
            raise CatalogError(
                f"license: CKAN にライセンス {d.license!r} がありません / the catalogue has no "
                f"licence {d.license!r} (license_list: {', '.join(sorted(cat.licenses()))})"
            )
        report.url = f"{cat.url}/dataset/{d.name}"
        org = cat.show("organization_show", id=d.organization.name, include_datasets=False)
        if org is None and not d.organization.create and self.dry_run:
            raise CatalogError(
                f"organization: CKAN に組織 {d.organization.name} がありません (create: false) / "
                f"the catalogue has no organisation {d.organization.name} (create: false)"
            )
        if org is None and d.organization.create:
            if self.dry_run:
                report.notes.append(
                    f"組織 {d.organization.name} を作成します / would create organisation "
                    f"{d.organization.name}"
                )
            else:
                cat.call(
                    "organization_create",
                    name=d.organization.name,
                    title=_text(d.organization.title),
                    description=_bilingual(d.organization.description),
                )
        pkg = cat.show("package_show", id=d.name)
        want = package_fields(d)
        extras = package_extras(d)
        if pkg is None:
            report.status = "created"
            report.fields = sorted(want)
            if not self.dry_run:
                data = dict(want)
                data["tags"] = [{"name": t} for t in want["tags"]]
                data["extras"] = [{"key": k, "value": v} for k, v in sorted(extras.items())]
                pkg = cat.call("package_create", name=d.name, **data)
        else:
            have = _current_fields(pkg)
            patch = {k: v for k, v in want.items() if have.get(k) != v}
            current_extras = {e["key"]: e["value"] for e in pkg.get("extras") or []}
            merged = {**current_extras, **extras}
            if merged != current_extras:
                patch["extras"] = merged
            if pkg.get("state") == "deleted":  # deleted in CKAN: the definition brings it back
                patch["state"] = "active"
            if patch:
                report.status = "updated"
                report.fields = sorted(patch)
                if not self.dry_run:
                    if "tags" in patch:
                        patch["tags"] = [{"name": t} for t in patch["tags"]]
                    if "extras" in patch:
                        patch["extras"] = [
                            {"key": k, "value": v} for k, v in sorted(merged.items())
                        ]
                    pkg = cat.call("package_patch", id=pkg["id"], **patch)
        existing: dict[str, dict[str, Any]] = {}
        for res in (pkg or {}).get("resources") or []:
            if res.get("renkei_key"):
                existing.setdefault(str(res["renkei_key"]), res)
        for r in rendered:
            action = self._sync_resource(pkg, existing.get(r.spec.key), r)
            report.resources[r.spec.key] = action
            if action != "unchanged" and report.status == "unchanged":
                report.status = "updated"
        # resources this tool published that the definition no longer names
        for key, res in existing.items():
            if key not in report.resources:
                if not self.dry_run:
                    cat.call("resource_delete", id=res["id"])
                report.resources[key] = "deleted"
                if report.status == "unchanged":
                    report.status = "updated"
        if d.datastore is not None:
            r = next(r for r in rendered if r.spec.key == d.datastore.resource)
            res = existing.get(r.spec.key)
            changed = report.resources[r.spec.key] != "unchanged"
            if not self.dry_run and (
                changed
                or res is None
                or not res.get("datastore_active")
                or self._datastore_fields(str(res["id"]))
                != _datastore_fields(r, d.datastore.primary_key)
            ):
                report.datastore_rows = self._datastore(pkg, r, d.datastore.primary_key)
                if report.status == "unchanged":
                    report.status = "updated"

    def _sync_resource(
        self, pkg: dict[str, Any] | None, res: dict[str, Any] | None, r: Rendered
    ) -> str:
        cat = self.catalog
        assert cat is not None
        fields = _resource_fields(r)
        content_changed = res is None or res.get("hash") != r.sha256
        meta_changed = res is not None and any(
            (res.get(k) or "") != v for k, v in fields.items() if k != "mimetype"
        )
        if not content_changed and not meta_changed:
            return "unchanged"
        action = "created" if res is None else "updated"
        if self.dry_run:
            return action
        assert pkg is not None
        if not content_changed:
            assert res is not None
            cat.call("resource_patch", id=res["id"], **fields)
            return action
        files = {"upload": (r.spec.filename, r.content)}
        data: dict[str, Any] = {**fields, "hash": r.sha256, "size": str(len(r.content))}
        if res is None:
            created = cat.call("resource_create", files=files, package_id=pkg["id"], **data)
            pkg.setdefault("resources", []).append(created)
        else:
            cat.call("resource_patch", files=files, id=res["id"], **data)
        return action

    def _datastore(
        self, pkg: dict[str, Any] | None, r: Rendered, primary_key: Sequence[str]
    ) -> int:
        """Upsert the rows of a tabular resource into the DataStore and delete the rows whose
        key is gone; returns how many rows the table holds."""
        cat = self.catalog
        assert cat is not None
        assert pkg is not None
        assert r.table is not None
        res_id = self._resource_id(pkg, r.spec)
        fields = _datastore_fields(r, primary_key)
        current = self._datastore_fields(res_id)
        if current and any(current.get(k, t) != t for k, t in fields.items()):
            # CKAN keeps the type of an existing column: a table published with other
            # types (all text, before types were given) is made again
            cat.call("datastore_delete", resource_id=res_id, force=True)
        cat.call(
            "datastore_create",
            resource_id=res_id,
            force=True,
            fields=[{"id": k, "type": t} for k, t in fields.items()],
            primary_key=list(primary_key),
        )
        records = r.table.records()
        for i in range(0, len(records), DATASTORE_BATCH):
            cat.call(
                "datastore_upsert",
                resource_id=res_id,
                force=True,
                method="upsert",
                records=records[i : i + DATASTORE_BATCH],
            )
        wanted = {tuple(rec[k] for k in primary_key) for rec in records}
        for key in self._datastore_keys(res_id, primary_key):
            if key not in wanted:
                cat.call(
                    "datastore_delete",
                    resource_id=res_id,
                    force=True,
                    filters=dict(zip(primary_key, key, strict=True)),
                )
        return len(records)

    def _datastore_fields(self, res_id: str) -> dict[str, str]:
        """The DataStore table's columns and their types; empty when there is no table."""
        cat = self.catalog
        assert cat is not None
        try:
            page = cat.call("datastore_search", resource_id=res_id, limit=0)
        except NotFound:
            return {}
        return {
            str(f["id"]): str(f.get("type", "text"))
            for f in page.get("fields") or []
            if f.get("id") != "_id"
        }

    def _datastore_keys(self, res_id: str, primary_key: Sequence[str]) -> Iterator[tuple[str, ...]]:
        cat = self.catalog
        assert cat is not None
        offset = 0
        while True:
            page = cat.call(
                "datastore_search",
                resource_id=res_id,
                fields=list(primary_key),
                limit=DATASTORE_BATCH,
                offset=offset,
            )
            rows = page.get("records") or []
            for rec in rows:
                yield tuple(str(rec.get(k, "")) for k in primary_key)
            if len(rows) < DATASTORE_BATCH:
                return
            offset += DATASTORE_BATCH

    def _resource_id(self, pkg: dict[str, Any], spec: ResourceSpec) -> str:
        for res in pkg.get("resources") or []:
            if res.get("renkei_key") == spec.key:
                return str(res["id"])
        cat = self.catalog
        assert cat is not None
        fresh = cat.call("package_show", id=pkg["id"])
        for res in fresh.get("resources") or []:
            if res.get("renkei_key") == spec.key:
                return str(res["id"])
        raise CatalogError(f"CKAN: resource {spec.key} not found after upload")

    # -- watch mode --------------------------------------------------------------------------

    def watch(
        self,
        definitions: Sequence[DatasetDefinition],
        every: float,
        *,
        rounds: int | None = None,
        on_report: Callable[[DatasetReport], None] | None = None,
        trigger: threading.Event | None = None,
    ) -> None:
        """Republish, every ``every`` seconds (or sooner when ``trigger`` is set), only the
        datasets whose entities changed since their last successful publish."""
        digests: dict[str, str] = {}
        n = 0
        while rounds is None or n < rounds:
            n += 1
            for d in definitions:
                try:
                    entities = fetch_entities(d, self.broker_url)
                except PublishError as exc:
                    report = DatasetReport(name=d.name, status="failed", error=str(exc))
                else:
                    digest = entities_digest(entities, d)
                    if digests.get(d.name) == digest:
                        continue
                    report = self.publish(d, entities)
                    if report.ok:
                        digests[d.name] = digest
                if on_report is not None:
                    on_report(report)
            if rounds is not None and n >= rounds:
                return
            if trigger is not None:
                trigger.wait(every)
                trigger.clear()
            else:
                time.sleep(every)


# -- triggered by broker subscriptions -------------------------------------------------------


class ChangeListener:
    """An HTTP endpoint for NGSI-LD notifications: each one sets :attr:`event`, which wakes
    :meth:`Publisher.watch` so that changed datasets are republished at once."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.event = threading.Event()
        self.received = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.received += 1
                owner.event.set()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/notify"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def _subscribe(
    definitions: Sequence[DatasetDefinition], broker_url: str, endpoint: str
) -> list[tuple[str | None, str]]:
    made: list[tuple[str | None, str]] = []
    seen: set[tuple[str | None, str, str | None, str | None]] = set()
    for d in definitions:
        q = d.query
        key = (q.tenant, q.type, q.q, q.context)
        if key in seen:
            continue
        seen.add(key)
        sub: dict[str, Any] = {
            "type": "Subscription",
            "description": f"renkei publish: {d.name}",
            "entities": [{"type": q.type}],
            "notification": {"endpoint": {"uri": endpoint, "accept": "application/json"}},
        }
        if q.q:
            sub["q"] = q.q
        client = BrokerClient(broker_url, tenant=q.tenant, context=q.context)
        try:
            made.append((q.tenant, await client.subscribe(sub)))
        finally:
            await client.aclose()
    return made


def subscribe_changes(
    definitions: Sequence[DatasetDefinition], broker_url: str, endpoint: str
) -> list[tuple[str | None, str]]:
    """One broker subscription per distinct query, notifying ``endpoint``; returns
    ``(tenant, subscription id)`` pairs for :func:`unsubscribe`."""
    try:
        return asyncio.run(_subscribe(definitions, broker_url, endpoint))
    except BrokerError as exc:
        raise SourceError(f"broker: {exc}") from exc


def unsubscribe(broker_url: str, subscriptions: Sequence[tuple[str | None, str]]) -> None:
    import httpx

    for tenant, sub_id in subscriptions:
        headers = {"NGSILD-Tenant": tenant} if tenant else {}
        try:
            httpx.delete(
                f"{broker_url.rstrip('/')}/ngsi-ld/v1/subscriptions/{sub_id}",
                headers=headers,
                timeout=10,
            )
        except httpx.HTTPError as exc:
            log.warning("could not delete subscription %s: %s", sub_id, exc)


@contextmanager
def open_catalog(url: str, token: str | None, **kwargs: Any) -> Iterator[Catalog]:
    cat = Catalog(url, token, **kwargs)
    try:
        yield cat
    finally:
        cat.close()
