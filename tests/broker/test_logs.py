"""Log lines: ``X-Request-Id`` accepted, checked and echoed; JSON lines carry the
request id and tenant of the request they were written for; no secret in them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from broker import logs
from broker.app import create_app
from tests.conftest import make_settings
from tests.support import free_port


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the broker logs meanwhile, as RENKEI_LOG_FORMAT=json writes it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger("renkei")
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def test_a_clients_request_id_is_echoed(client: TestClient) -> None:
    r = client.get("/health", headers={"X-Request-Id": "komae-req.0001:a_b"})
    assert r.headers["x-request-id"] == "komae-req.0001:a_b"


@pytest.mark.parametrize(
    "given",
    ["", "a" * 129, "two words", "<script>", 'quote"s', "市役所-1"],
)
def test_an_unfit_request_id_is_replaced(client: TestClient, given: str) -> None:
    r = client.get("/health", headers={b"X-Request-Id": given.encode("utf-8")})
    echoed = r.headers["x-request-id"]
    assert echoed != given
    assert 0 < len(echoed) <= 128
    assert echoed.replace("-", "").isalnum()


def test_a_request_id_is_made_when_there_is_none(client: TestClient) -> None:
    first = client.get("/health/live").headers["x-request-id"]
    second = client.get("/health/live").headers["x-request-id"]
    assert first != second


def test_json_lines_carry_the_request_and_tenant(tmp_path: Path, json_lines: io.StringIO) -> None:
    settings = make_settings(tmp_path, notification_attempts=1)
    down = f"http://user:s3cret@127.0.0.1:{free_port()}/notify"
    with TestClient(create_app(settings)) as client:
        h = {"NGSILD-Tenant": "komae", "X-Request-Id": "sub-create-1"}
        r = client.post(
            "/ngsi-ld/v1/subscriptions",
            json={
                "type": "Subscription",
                "entities": [{"type": "WaterLevelObserved"}],
                "notification": {"endpoint": {"uri": down}},
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        h["X-Request-Id"] = "write-42"
        body = {
            "id": "urn:ngsi-ld:WaterLevelObserved:nogawa-1",
            "type": "WaterLevelObserved",
            "name": {"type": "Property", "value": "野川水位計"},
        }
        assert client.post("/ngsi-ld/v1/entities", json=body, headers=h).status_code == 201
        # the notification this write causes fails at once (one attempt) and is logged
        # by a task the request started: it carries the request's id and tenant
        for _ in range(200):
            if "notification for" in json_lines.getvalue():
                break
            client.get("/health/live")  # lets the broker's loop run the delivery
        lines = [orjson.loads(line) for line in json_lines.getvalue().splitlines()]
    failed = [line for line in lines if line["message"].startswith("notification for")]
    assert failed, lines
    line = failed[0]
    assert line["level"] == "WARNING"
    assert line["logger"] == "renkei.subscriptions"
    assert line["request_id"] == "write-42"
    assert line["tenant"] == "komae"
    assert line["time"].endswith("+00:00")
    assert all("s3cret" not in orjson.dumps(each).decode() for each in lines)


def test_userinfo_in_a_message_is_masked() -> None:
    record = logging.LogRecord(
        "renkei",
        logging.ERROR,
        __file__,
        1,
        "cannot reach %s",
        ("mqtt://iot:p4ss@mq:1883/t",),
        None,
    )
    line = orjson.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "cannot reach mqtt://***@mq:1883/t"
    assert "request_id" not in line
