"""The auth file: the issue's format parsed into a policy, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.auth import (
    DEFAULT_VOCAB,
    AuthConfigError,
    default_expand,
    hash_key,
    load_policy,
    parse_auth_text,
)
from broker.auth.policy import ALL
from broker.jsonld.context import ContextResolver

KOMAE_KEY = "komae-iot-鍵-0001"

EXAMPLE = f"""\
api_keys:                       # the key itself is never stored, only its SHA-256
  - {{name: komae-iot, key_sha256: "{hash_key(KOMAE_KEY)}", roles: [writer], tenants: [komae]}}
oidc:
  issuer: https://idp.example/realms/city
  audience: renkei
  jwks_url: https://idp.example/realms/city/protocol/openid-connect/certs
  roles_claim: realm_access.roles
  tenants_claim: tenants
roles:
  reader:  {{read: ["*"]}}
  writer:  {{read: ["*"], write: ["*"], subscribe: ["*"]}}
  aed-editor: {{read: ["*"], write: [AEDLocation]}}
  admin:   {{read: ["*"], write: ["*"], subscribe: ["*"], admin: true}}
  避難所担当: {{read: [避難所], write: ["避難所@komae", "https://example.org/ns#Shelter"]}}
anonymous:
  read: [AEDLocation, "EvacuationSite@komae"]   # open data: Type or Type@tenant
"""


def test_the_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    policy = load_policy(path)
    [key] = policy.api_keys
    assert key.name == "komae-iot"
    assert key.digest.hex() == hash_key(KOMAE_KEY)
    assert KOMAE_KEY not in repr(policy)
    assert key.roles == ("writer",)
    assert key.tenants == frozenset({"komae"})
    assert policy.oidc is not None
    assert policy.oidc.roles_claim == ("realm_access", "roles")
    assert policy.oidc.audience == ("renkei",)
    assert policy.roles["writer"].write.pairs == frozenset({(ALL, ALL)})
    assert policy.roles["aed-editor"].write.pairs == frozenset(
        {(ALL, DEFAULT_VOCAB + "AEDLocation")}
    )
    assert policy.roles["避難所担当"].write.pairs == frozenset(
        {("komae", DEFAULT_VOCAB + "避難所"), (ALL, "https://example.org/ns#Shelter")}
    )
    assert policy.roles["admin"].admin
    assert not policy.roles["writer"].admin
    # anonymous: a bare type is the default tenant's, Type@tenant a named tenant's
    assert policy.anonymous.read.pairs == frozenset(
        {("", DEFAULT_VOCAB + "AEDLocation"), ("komae", DEFAULT_VOCAB + "EvacuationSite")}
    )
    assert policy.source == str(path)


@pytest.mark.anyio
async def test_short_names_expand_as_the_core_context_does() -> None:
    resolver = ContextResolver()
    try:
        core = await resolver.term_map(None)
        for name in ("AEDLocation", "避難所", "EvacuationSite"):
            assert default_expand(name) == core.expand(name)
        policy = parse_auth_text("anonymous: {read: [AEDLocation]}", expand=core.expand)
        assert policy.anonymous.read.pairs == frozenset({("", core.expand("AEDLocation"))})
    finally:
        await resolver.aclose()


def test_wildcards_and_explicit_default_tenant() -> None:
    policy = parse_auth_text(
        "anonymous: {read: ['*@komae', 'AEDLocation@*', 'Building@']}\n"
        "api_keys: [{name: 運用, key_sha256: '" + "ab" * 32 + "', tenants: ['*', '']}]\n"
    )
    assert policy.anonymous.read.pairs == frozenset(
        {("komae", ALL), (ALL, DEFAULT_VOCAB + "AEDLocation"), ("", DEFAULT_VOCAB + "Building")}
    )
    assert policy.api_keys[0].tenants == frozenset({"*", ""})


def test_an_empty_file_is_a_policy_that_allows_nothing() -> None:
    policy = parse_auth_text("")
    assert policy.api_keys == ()
    assert policy.oidc is None
    assert not policy.roles


def _error(text: str) -> str:
    with pytest.raises(AuthConfigError) as caught:
        parse_auth_text(text, "auth.yaml")
    return str(caught.value)


def test_a_role_that_does_not_exist_is_named_with_its_line() -> None:
    message = _error(
        "roles:\n  reader: {read: ['*']}\napi_keys:\n"
        "  - {name: komae-iot, key_sha256: '" + "0" * 64 + "', roles: [writer]}\n"
    )
    assert message.startswith("auth.yaml:")
    assert "komae-iot" in message
    assert "'writer'" in message
    assert "not defined" in message


def test_a_bad_hash_points_at_its_line() -> None:
    message = _error(
        "roles: {}\napi_keys:\n  - name: a\n    key_sha256: 1234\n  - name: b\n    key_sha256: xyz\n"
    )
    assert "auth.yaml:4: api_keys.0.key_sha256" in message
    assert "auth.yaml:6: api_keys.1.key_sha256: key_sha256 must be 64 hexadecimal digits" in message


def test_a_plain_key_is_refused_without_repeating_it() -> None:
    message = _error("api_keys:\n  - {name: a, key: very-secret-鍵}\n")
    assert "auth.yaml:2: api_keys.0" in message
    assert "key_sha256" in message
    assert "very-secret" not in message


def test_japanese_tenant_names_cannot_be_sent_in_ngsild_tenant_so_are_refused() -> None:
    # NGSILD-Tenant takes letters, digits, '-' and '_' (broker.api.common.tenant_of):
    # a tenant named 狛江市 could never be asked for, so the file is wrong.
    message = _error(
        "api_keys:\n  - name: 狛江市IoT\n    key_sha256: '"
        + "0" * 64
        + "'\n    tenants: [狛江市]\n"
    )
    assert "auth.yaml:4: api_keys.0.tenants.0" in message
    assert "NGSILD-Tenant" in message
    message = _error("anonymous:\n  read:\n    - AEDLocation\n    - 避難所@狛江市\n")
    assert "auth.yaml:4: anonymous.read.1" in message
    assert "'狛江市'" in message


def test_unknown_fields_and_types_are_named() -> None:
    message = _error("roles:\n  reader:\n    reed: ['*']\n")
    assert "auth.yaml:3: roles.reader.reed: Extra inputs are not permitted" in message
    message = _error("oidc:\n  issuer: ftp://idp.example\n  audience: renkei\n")
    assert "auth.yaml:2: oidc.issuer" in message
    assert "http(s)://" in message
    message = _error("oidc:\n  issuer: https://idp\n  audience: renkei\n  algorithms: [HS256]\n")
    assert "auth.yaml:4: oidc.algorithms.0" in message


def test_yaml_syntax_errors_and_duplicate_keys_name_the_line() -> None:
    message = _error("roles:\n  reader: {read: ['*']\n")
    assert message.startswith("auth.yaml:3:")
    assert "not valid YAML" in message
    message = _error("roles:\n  reader: {read: ['*']}\n  reader: {write: ['*']}\n")
    assert message == "auth.yaml:3: 'reader' is given twice"
    assert (
        _error("- a\n- b\n") == "auth.yaml:1: the auth file must be a mapping (api_keys, roles ...)"
    )


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read the auth file"):
        load_policy(tmp_path / "none.yaml")
