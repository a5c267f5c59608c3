"""Fuzzing the hub over HTTP: no input yields a 5xx or a dropped connection.

Both runs go to a real ``renkei serve`` (tests/support.py), so that a crash, a hang or a
connection the server closes after an error shows as such:

* a Hypothesis property test over the entity, query, subscription and temporal
  endpoints, with hostile parameters and bodies (Japanese text, control and format
  characters, huge numbers, deep nesting);
* schemathesis over the hub's own ``/openapi.json``: every declared operation with
  generated parameters and bodies.

Both are derandomized and bounded (a minute or two each).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err

from tests.support import broker

V1 = "/ngsi-ld/v1"


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with broker(tmp_path_factory.mktemp("fuzz") / "hub.db") as url:
        seed = {
            "id": "urn:ngsi-ld:Shelter:避難所1",
            "type": "Shelter",
            "名称": {"type": "Property", "value": "狛江第一小学校"},
            "収容人数": {"type": "Property", "value": 300, "observedAt": "2026-04-01T09:00:00Z"},
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [139.578, 35.634]},
            },
        }
        assert httpx.post(f"{url}{V1}/entities", json=seed).status_code == 201
        yield url


# -- Hypothesis ---------------------------------------------------------------------------

#: Text that has broken parsers before: Japanese, control and format characters,
#: surrogate-free odd code points, brackets, operators and numbers at the edges.
ATOMS = [
    "避難所",
    "狛江",
    "urn:ngsi-ld:Shelter:避難所1",
    "\x00",
    "\u202e",
    "\ufeff",
    "\u3164",
    "\ufe0f",
    "%00",
    "%",
    "99999999999999999999",
    "-1",
    "²",
    "1e999",
    "P999999999Y",
    "PT1H",
    "2026-04-01T09:00:00Z",
    "9999-12-31T23:59:59Z",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ";",
    "|",
    ",",
    "==",
    "~=",
    "..",
    '"',
    "'",
    "\\",
    "*",
    "収容人数",
    "location",
    "Shelter",
    "@context",
    "a" * 300,
]
text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(ATOMS), max_size=12).map("".join),
    st.lists(st.sampled_from(ATOMS), min_size=200, max_size=400).map("".join),
)
PARAMS = [
    "type",
    "id",
    "idPattern",
    "attrs",
    "q",
    "scopeQ",
    "pick",
    "omit",
    "limit",
    "offset",
    "count",
    "options",
    "format",
    "lang",
    "georel",
    "geometry",
    "coordinates",
    "geoproperty",
    "join",
    "joinLevel",
    "datasetId",
    "orderBy",
    "timerel",
    "timeAt",
    "endTimeAt",
    "lastN",
    "aggrMethods",
    "aggrPeriodDuration",
    "timeproperty",
]
params = st.dictionaries(st.sampled_from(PARAMS), text, max_size=5)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=20,
)
attribute = st.one_of(
    values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["Property", "Relationship", "GeoProperty", "LanguageProperty"])},
        optional={
            "value": values,
            "object": text,
            "languageMap": values,
            "observedAt": text,
            "datasetId": text,
            "unitCode": text,
        },
    ),
)
entity = st.fixed_dictionaries(
    {"id": st.one_of(text, st.just("urn:ngsi-ld:Shelter:避難所1")), "type": text},
    optional={"名称": attribute, "収容人数": attribute, "location": attribute},
).flatmap(lambda e: st.dictionaries(text, attribute, max_size=3).map(lambda extra: {**extra, **e}))
subscription = st.fixed_dictionaries(
    {"type": st.just("Subscription")},
    optional={
        "id": text,
        "entities": st.lists(st.fixed_dictionaries({"type": text}, optional={"id": text})),
        "watchedAttributes": st.lists(text, max_size=3),
        "q": text,
        "notification": st.fixed_dictionaries(
            {"endpoint": st.fixed_dictionaries({"uri": text})},
            optional={"attributes": st.lists(text, max_size=3), "format": text},
        ),
        "expires": text,
        "throttling": values,
    },
)
path_id = st.one_of(st.just("urn:ngsi-ld:Shelter:避難所1"), text)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], Any]:
    # the client sends path segments percent-encoded (control characters cannot be sent)
    eid = quote(draw(path_id), safe=":")
    attr = quote(draw(st.one_of(st.just("収容人数"), text)), safe="")
    return draw(
        st.sampled_from(
            [
                ("GET", f"{V1}/entities", None),
                ("POST", f"{V1}/entities", entity),
                ("GET", f"{V1}/entities/{eid}", None),
                ("PATCH", f"{V1}/entities/{eid}/attrs", st.dictionaries(text, attribute)),
                ("POST", f"{V1}/entities/{eid}/attrs", st.dictionaries(text, attribute)),
                ("PATCH", f"{V1}/entities/{eid}/attrs/{attr}", attribute),
                ("DELETE", f"{V1}/entities/{eid}/attrs/{attr}", None),
                ("PUT", f"{V1}/entities/{eid}", entity),
                ("DELETE", f"{V1}/entities/{eid}", None),
                ("POST", f"{V1}/entityOperations/upsert", st.lists(entity, max_size=3)),
                ("POST", f"{V1}/entityOperations/query", values),
                ("GET", f"{V1}/types", None),
                ("GET", f"{V1}/attributes", None),
                ("POST", f"{V1}/subscriptions", subscription),
                ("GET", f"{V1}/subscriptions", None),
                ("GET", f"{V1}/subscriptions/{eid}", None),
                ("PATCH", f"{V1}/subscriptions/{eid}", subscription),
                ("DELETE", f"{V1}/subscriptions/{eid}", None),
                ("POST", f"{V1}/temporal/entities", entity),
                ("GET", f"{V1}/temporal/entities", None),
                ("GET", f"{V1}/temporal/entities/{eid}", None),
                ("POST", f"{V1}/temporal/entities/{eid}/attrs", st.dictionaries(text, values)),
                ("DELETE", f"{V1}/temporal/entities/{eid}", None),
                ("GET", "/ogc/collections/Shelter/items", None),
            ]
        ).flatmap(
            lambda op: st.tuples(
                st.just(op[0]),
                st.just(op[1]),
                params,
                op[2] if op[2] is not None else st.none(),
            )
        )
    )


@settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_no_request_gets_a_server_error_or_a_dropped_connection(
    hub_url: str, request: tuple[str, str, dict[str, str], Any]
) -> None:
    method, path, query, body = request
    content = None if body is None else json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json"} if content is not None else {}
    with httpx.Client(base_url=hub_url, timeout=30) as client:
        # a dropped connection raises here (RemoteProtocolError), a hang times out
        r = client.request(method, path, params=query, content=content, headers=headers)
    assert r.status_code < 500, (method, path, query, body, r.status_code, r.text[:500])


def test_the_hub_is_still_serving_after_fuzzing(hub_url: str) -> None:
    assert httpx.get(f"{hub_url}/health").status_code == 200
    r = httpx.get(f"{hub_url}{V1}/entities", params={"type": "Shelter", "limit": 1000})
    assert r.status_code == 200


# -- schemathesis ---------------------------------------------------------------------------


def test_every_declared_operation_answers_without_a_server_error(hub_url: str) -> None:
    """Each operation of /openapi.json, with up to 15 generated cases (schemathesis's
    strategies, run here rather than through its pytest plugin)."""
    api = schemathesis.openapi.from_url(f"{hub_url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in api.get_all_operations():
        if isinstance(result, Err):  # a part of the document schemathesis cannot read
            failures.append(f"invalid OpenAPI operation: {result.err()}"[:1500])
            continue
        operation = result.ok()
        operations += 1
        if "501" in operation.definition.raw.get("responses", {}):
            # declared as not offered yet: it must say so (501 OperationNotSupported),
            # which is the one 5xx allowed, and nothing else is fuzzed on it
            method = operation.method.upper()
            body: dict[str, Any] | None = (
                {} if method in ("POST", "PUT", "PATCH") else None
            )  # 415 comes first
            answer = httpx.request(method, f"{hub_url}{operation.path}", json=body)
            if answer.status_code != 501:
                failures.append(
                    f"{operation.method.upper()} {operation.path}: {answer.status_code}"
                )
            continue

        @settings(
            max_examples=15,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(timeout=30)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            run()
        except Exception as exc:  # every operation runs; the failures are listed together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:1500])
    assert operations > 20
    assert failures == [], "\n\n".join(failures)
