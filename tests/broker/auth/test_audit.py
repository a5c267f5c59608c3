"""The audit log: one JSON line per event, whole under concurrency, never a secret."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.auth import (
    ANONYMOUS,
    AuditLog,
    Authenticator,
    Principal,
    hash_key,
    open_audit_log,
    parse_auth_text,
)
from broker.errors import Unauthorized
from tests.support_oidc import OidcIssuer

KEY = "komae-iot-秘密-9f8e7d"


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_no_path_no_log() -> None:
    assert open_audit_log(None) is None
    assert open_audit_log("") is None


def test_an_event_has_who_where_what_and_the_outcome(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=True)
    ids = ["urn:ngsi-ld:AEDLocation:狛江市役所", "urn:ngsi-ld:AEDLocation:狛江駅"]
    writer = Principal(name="komae-iot", roles=frozenset({"writer"}), via="api_key")
    log.record(
        principal=writer, tenant="komae", operation="batch/upsert", status=201, entity_ids=ids
    )
    log.record(
        principal=ANONYMOUS,
        tenant="",
        operation="entities/create",
        status=401,
        reason="invalid_token",
        client="127.0.0.1",
    )
    log.close()
    first, second = lines(path)
    time = datetime.fromisoformat(str(first.pop("time")))
    assert abs(datetime.now(UTC) - time) < timedelta(minutes=1)
    assert first == {
        "principal": "komae-iot",
        "via": "api_key",
        "tenant": "komae",
        "operation": "batch/upsert",
        "status": 201,
        "entities": {"count": 2, "ids": ids},
    }
    second.pop("time")
    assert second == {
        "principal": "anonymous",
        "via": "anonymous",
        "tenant": "",
        "operation": "entities/create",
        "status": 401,
        "reason": "invalid_token",
        "client": "127.0.0.1",
    }
    assert "狛江市役所" in path.read_text(encoding="utf-8")  # UTF-8, not \\u escapes


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path), AuditLog(path)]  # two descriptors, as two processes would have
    ids = [f"urn:ngsi-ld:WaterLevel:多摩川-{i}" for i in range(50)]

    def write(n: int) -> None:
        for i in range(200):
            logs[n % 2].record(
                principal=ANONYMOUS,
                tenant="komae",
                operation=f"w{n}",
                status=201,
                entity_ids=ids[: i % 50 + 1],
            )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    events = lines(path)
    assert len(events) == 1600
    assert {e["operation"] for e in events} == {f"w{n}" for n in range(8)}


def test_reopen_follows_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record(principal=ANONYMOUS, tenant="", operation="before", status=403)
    path.rename(tmp_path / "audit.jsonl.1")
    log.reopen()
    log.record(principal=ANONYMOUS, tenant="", operation="after", status=403)
    log.close()
    assert [e["operation"] for e in lines(tmp_path / "audit.jsonl.1")] == ["before"]
    assert [e["operation"] for e in lines(path)] == ["after"]


@pytest.mark.anyio
async def test_no_key_or_token_reaches_the_log(tmp_path: Path, issuer: OidcIssuer) -> None:
    policy = parse_auth_text(
        f"api_keys: [{{name: komae-iot, key_sha256: '{hash_key(KEY)}', roles: [w], tenants: [komae]}}]\n"
        f"oidc: {{issuer: '{issuer.issuer}', audience: renkei, jwks_url: '{issuer.jwks_url}'}}\n"
        "roles: {w: {write: ['*']}}\n"
    )
    auth = Authenticator(policy)
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    token = issuer.sign({"tenants": ["komae"], "realm_access": {"roles": ["w"]}})
    try:
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {token}"}):
            principal = await auth.authenticate(headers)
            await log.arecord(
                principal=principal,
                tenant="komae",
                operation="entities/create",
                status=201,
                entity_ids=["urn:ngsi-ld:AEDLocation:1"],
            )
        for bad in ({"X-API-Key": KEY + "0"}, {"Authorization": f"Bearer {token[:-4]}AAAA"}):
            with pytest.raises(Unauthorized):
                await auth.authenticate(bad)
            log.record(
                principal=ANONYMOUS,
                tenant="komae",
                operation="entities/create",
                status=401,
                reason="invalid_token",
            )
    finally:
        await auth.aclose()
        log.close()
    text = path.read_text(encoding="utf-8")
    assert [e["principal"] for e in lines(path)] == [
        "komae-iot",
        "山田太郎",
        "anonymous",
        "anonymous",
    ]
    for secret in (KEY, hash_key(KEY), token, token.split(".")[2]):
        assert secret not in text
