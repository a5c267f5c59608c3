"""Decisions: who may do what, in which tenant, to which entity types."""

from __future__ import annotations

import json

import pytest

from broker.auth import ANONYMOUS, DEFAULT_VOCAB, Action, Principal, parse_auth_text
from broker.errors import Forbidden, ResourceNotFound, Unauthorized

POLICY = parse_auth_text(
    """
roles:
  reader:  {read: ["*"]}
  writer:  {read: ["*"], write: ["*"], subscribe: ["*"]}
  aed-editor: {read: ["*"], write: [AEDLocation]}
  admin:   {read: ["*"], write: ["*"], subscribe: ["*"], admin: true}
  避難所担当: {read: [EvacuationSite], write: ["EvacuationSite@komae"]}
anonymous:
  read: [AEDLocation, "EvacuationSite@komae"]
"""
)

AED = DEFAULT_VOCAB + "AEDLocation"
EVAC = DEFAULT_VOCAB + "EvacuationSite"
AIR = DEFAULT_VOCAB + "AirQualityObserved"


def who(*roles: str, tenants: tuple[str, ...] = ("komae",)) -> Principal:
    return Principal(
        name="狛江市職員", roles=frozenset(roles), tenants=frozenset(tenants), via="oidc"
    )


WRITER = who("writer")
READER = who("reader", tenants=("komae", ""))
AED_EDITOR = who("aed-editor")
ADMIN = who("admin")
SHELTERS = who("避難所担当", tenants=("komae", "chofu"))
OPERATOR = who("admin", tenants=("*",))
IDP_ONLY = who("offline_access", "uma_authorization")  # roles the policy does not define

# principal, action, tenant, types, allowed
TABLE: list[tuple[str, Principal, Action, str, str | list[str] | None, bool]] = [
    ("writer writes in its tenant", WRITER, "write", "komae", AIR, True),
    ("writer cannot write in another tenant", WRITER, "write", "chofu", AIR, False),
    ("writer cannot read in another tenant", WRITER, "read", "chofu", AIR, False),
    ("writer is not in the default tenant", WRITER, "read", "", AIR, False),
    ("writer subscribes in its tenant", WRITER, "subscribe", "komae", None, True),
    ("writer is no admin", WRITER, "admin", "komae", None, False),
    ("reader reads the default tenant", READER, "read", "", AED, True),
    ("reader cannot write", READER, "write", "komae", AED, False),
    ("reader cannot subscribe", READER, "subscribe", "komae", AED, False),
    ("aed-editor writes AEDs", AED_EDITOR, "write", "komae", AED, True),
    ("aed-editor cannot write shelters", AED_EDITOR, "write", "komae", EVAC, False),
    ("aed-editor reads shelters", AED_EDITOR, "read", "komae", EVAC, True),
    ("a write needs every type writable", AED_EDITOR, "write", "komae", [AED, EVAC], False),
    ("a read needs one type readable", SHELTERS, "read", "komae", [AED, EVAC], True),
    ("a write not limited to types needs all", AED_EDITOR, "write", "komae", None, False),
    ("Type@tenant in a role is that tenant only", SHELTERS, "write", "chofu", EVAC, False),
    ("Type@tenant in a role holds there", SHELTERS, "write", "komae", EVAC, True),
    ("a bare type in a role holds in each tenant", SHELTERS, "read", "chofu", EVAC, True),
    ("admin administers its tenant", ADMIN, "admin", "komae", None, True),
    ("admin does not administer others", ADMIN, "admin", "chofu", None, False),
    ("'*' tenants: every tenant", OPERATOR, "admin", "hachioji", None, True),
    ("'*' tenants include the default", OPERATOR, "write", "", AIR, True),
    ("unknown roles give nothing", IDP_ONLY, "read", "komae", AED, False),
    ("anonymous reads open AEDs of the default tenant", ANONYMOUS, "read", "", AED, True),
    ("anonymous: a bare type is the default tenant's", ANONYMOUS, "read", "komae", AED, False),
    ("anonymous reads komae's shelters", ANONYMOUS, "read", "komae", EVAC, True),
    ("anonymous reads no other type", ANONYMOUS, "read", "komae", AIR, False),
    ("anonymous never writes", ANONYMOUS, "write", "", AED, False),
    ("anonymous never subscribes", ANONYMOUS, "subscribe", "", AED, False),
    ("anonymous is no admin", ANONYMOUS, "admin", "", None, False),
]


@pytest.mark.parametrize(
    ("principal", "action", "tenant", "types", "allowed"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_decisions(
    principal: Principal, action: Action, tenant: str, types: str | list[str] | None, allowed: bool
) -> None:
    assert POLICY.can(principal, action, tenant, types) is allowed


def test_readable_types_filter_queries() -> None:
    assert POLICY.readable_types(WRITER, "komae") is None  # everything
    assert POLICY.readable_types(WRITER, "chofu") == frozenset()  # not its tenant
    assert POLICY.readable_types(SHELTERS, "chofu") == frozenset({EVAC})
    assert POLICY.readable_types(ANONYMOUS, "") == frozenset({AED})
    assert POLICY.readable_types(ANONYMOUS, "komae") == frozenset({EVAC})
    assert POLICY.readable_types(ANONYMOUS, "chofu") == frozenset()
    assert POLICY.allowed_types(AED_EDITOR, "write", "komae") == frozenset({AED})


def test_tenants_seen() -> None:
    assert POLICY.sees_tenant(WRITER, "komae")
    assert not POLICY.sees_tenant(WRITER, "chofu")
    assert POLICY.sees_tenant(ANONYMOUS, "komae")  # it has open data there
    assert not POLICY.sees_tenant(ANONYMOUS, "chofu")


def test_refusals_say_nothing_about_other_tenants() -> None:
    with pytest.raises(Forbidden) as forbidden:
        POLICY.check(WRITER, "write", "chofu", AIR)
    with pytest.raises(Forbidden) as forbidden_type:
        POLICY.check(AED_EDITOR, "write", "komae", EVAC)
    # the same answer whether the tenant is foreign or the type is not allowed
    assert forbidden.value.problem() == forbidden_type.value.problem()
    assert forbidden.value.status == 403
    assert "chofu" not in str(forbidden.value.problem())
    assert "AirQualityObserved" not in str(forbidden.value.problem())


def test_a_read_of_what_cannot_be_seen_answers_as_missing() -> None:
    missing = "entity urn:ngsi-ld:AirQualityObserved:調布駅前 not found"
    with pytest.raises(ResourceNotFound) as caught:
        POLICY.check(WRITER, "read", "chofu", AIR, not_found=missing)
    assert caught.value.problem() == ResourceNotFound(missing).problem()
    POLICY.check(WRITER, "read", "komae", AIR, not_found=missing)  # allowed: no error


def test_anonymous_refusals_ask_for_credentials() -> None:
    with pytest.raises(Unauthorized) as caught:
        POLICY.check(ANONYMOUS, "write", "", AED)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="renkei"'


def test_an_open_anonymous_section_allows_everything() -> None:
    # the ETSI conformance run: anonymous users get full access
    policy = parse_auth_text(
        "anonymous: {read: ['*@*'], write: ['*@*'], subscribe: ['*@*'], admin: true}"
    )
    for action in ("read", "write", "subscribe", "admin"):
        assert policy.can(ANONYMOUS, action, "komae", AIR)
        assert policy.can(ANONYMOUS, action, "", None)


def test_a_principal_is_stored_and_read_back_as_json() -> None:
    record = json.loads(json.dumps(SHELTERS.as_record(), ensure_ascii=False))
    assert record == {
        "name": "狛江市職員",
        "roles": ["避難所担当"],
        "tenants": ["chofu", "komae"],
        "anonymous": False,
        "via": "oidc",
    }
    assert Principal.from_record(record) == SHELTERS
    assert Principal.from_record(ANONYMOUS.as_record()) is ANONYMOUS
    # the owner's rights, read back, still decide what its notifications may carry
    owner = Principal.from_record(record)
    assert POLICY.can(owner, "read", "chofu", EVAC)
    assert not POLICY.can(owner, "read", "chofu", AED)
