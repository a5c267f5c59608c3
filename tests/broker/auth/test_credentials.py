"""Credentials with real keys and tokens: API keys, and JWTs from a real OIDC issuer on
127.0.0.1 (RS256 and ES256 keys generated in the test, JWKS over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from broker.auth import ANONYMOUS, Authenticator, Principal, hash_key, parse_auth_text
from broker.errors import Unauthorized
from tests.support_oidc import OidcIssuer

pytestmark = pytest.mark.anyio

KOMAE_KEY = "k0mae-iot-2026-狛江"
CHOFU_KEY = "chofu-dashboard-key"


def policy_text(issuer: OidcIssuer, *, discovery: bool = False, **oidc: Any) -> str:
    lines = [
        "api_keys:",
        f"  - {{name: komae-iot, key_sha256: '{hash_key(KOMAE_KEY)}', roles: [writer], tenants: [komae]}}",
        f"  - {{name: chofu-dashboard, key_sha256: '{hash_key(CHOFU_KEY)}', roles: [reader], tenants: [chofu, '']}}",
        "oidc:",
        f"  issuer: {issuer.issuer}",
        "  audience: renkei",
        "  fetch_timeout: 1",
    ]
    if not discovery:
        lines.append(f"  jwks_url: {issuer.jwks_url}")
    lines += [f"  {k}: {v}" for k, v in oidc.items()]
    lines += [
        "roles:",
        "  reader: {read: ['*']}",
        "  writer: {read: ['*'], write: ['*'], subscribe: ['*']}",
        "  admin: {read: ['*'], write: ['*'], subscribe: ['*'], admin: true}",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def auth(issuer: OidcIssuer) -> AsyncIterator[Authenticator]:
    authenticator = Authenticator(parse_auth_text(policy_text(issuer)))
    yield authenticator
    await authenticator.aclose()


def claims(**extra: Any) -> dict[str, Any]:
    return {"realm_access": {"roles": ["writer", "offline_access"]}, "tenants": ["komae"], **extra}


async def refused(auth: Authenticator, headers: dict[str, str]) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        await auth.authenticate(headers)
    error = caught.value
    assert error.status == 401
    assert error.headers["WWW-Authenticate"].startswith('Bearer realm="renkei"')
    for value in (*headers.values(), KOMAE_KEY):
        secret = value.split(" ", 1)[-1]
        if secret.lower() in ("bearer", "basic"):
            continue
        assert secret not in error.detail
        assert secret not in error.headers["WWW-Authenticate"]
    return error


# -- API keys and anonymous --------------------------------------------------------------------


async def test_no_credentials_is_the_anonymous_principal(auth: Authenticator) -> None:
    assert await auth.authenticate({"Accept": "application/json"}) is ANONYMOUS


async def test_an_api_key_in_either_header_gives_its_principal(auth: Authenticator) -> None:
    expected = Principal(
        name="komae-iot", roles=frozenset({"writer"}), tenants=frozenset({"komae"}), via="api_key"
    )
    assert await auth.authenticate({"X-API-Key": KOMAE_KEY}) == expected
    assert await auth.authenticate({"x-api-key": KOMAE_KEY}) == expected
    assert await auth.authenticate({"Authorization": f"Bearer {KOMAE_KEY}"}) == expected
    chofu = await auth.authenticate({"authorization": f"bearer {CHOFU_KEY}"})
    assert chofu.name == "chofu-dashboard"
    assert chofu.tenants == frozenset({"chofu", ""})


async def test_a_wrong_key_is_refused_without_repeating_it(auth: Authenticator) -> None:
    error = await refused(auth, {"X-API-Key": KOMAE_KEY + "x"})
    assert 'error="invalid_token"' in error.headers["WWW-Authenticate"]
    await refused(auth, {"Authorization": "Bearer not-a-key-nor-a-token"})
    await refused(auth, {"X-API-Key": hash_key(KOMAE_KEY)})  # the hash is not the key


async def test_other_schemes_and_two_credentials_are_refused(auth: Authenticator) -> None:
    basic = base64.b64encode(b"komae:" + KOMAE_KEY.encode()).decode()
    error = await refused(auth, {"Authorization": f"Basic {basic}"})
    assert 'error="invalid_request"' in error.headers["WWW-Authenticate"]
    await refused(auth, {"Authorization": "Bearer"})
    await refused(auth, {"X-API-Key": KOMAE_KEY, "Authorization": f"Bearer {CHOFU_KEY}"})


# -- JWTs ---------------------------------------------------------------------------------------


async def test_a_valid_rs256_token_gives_roles_and_tenants(
    auth: Authenticator, issuer: OidcIssuer
) -> None:
    token = issuer.sign(claims(), kid="rsa-1")
    principal = await auth.authenticate({"Authorization": f"Bearer {token}"})
    assert principal == Principal(
        name="山田太郎",
        roles=frozenset({"writer", "offline_access"}),
        tenants=frozenset({"komae"}),
        via="oidc",
    )


async def test_a_valid_es256_token_is_accepted(auth: Authenticator, issuer: OidcIssuer) -> None:
    token = issuer.sign(claims(tenants=["komae", "chofu"]), kid="ec-1")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    principal = await auth.authenticate({"Authorization": f"Bearer {token}"})
    assert principal.tenants == frozenset({"komae", "chofu"})
    assert issuer.jwks_requests == 1
    # verified keys are cached: a second token costs no fetch
    await auth.authenticate({"Authorization": f"Bearer {issuer.sign(claims(), kid='rsa-1')}"})
    assert issuer.jwks_requests == 1


async def test_keys_come_from_discovery_without_jwks_url(issuer: OidcIssuer) -> None:
    auth = Authenticator(parse_auth_text(policy_text(issuer, discovery=True)))
    try:
        principal = await auth.authenticate({"Authorization": f"Bearer {issuer.sign(claims())}"})
        assert principal.name == "山田太郎"
        assert (issuer.discovery_requests, issuer.jwks_requests) == (1, 1)
    finally:
        await auth.aclose()


async def test_claims_at_other_paths_and_sub_as_name(issuer: OidcIssuer) -> None:
    text = policy_text(
        issuer, roles_claim="resource_access.renkei.roles", tenants_claim="renkei_tenants"
    )
    auth = Authenticator(parse_auth_text(text))
    try:
        token = issuer.sign(
            {
                "preferred_username": None,
                "resource_access": {"renkei": {"roles": ["admin"]}},
                "renkei_tenants": "komae 狛江市 chofu",  # space-separated; 狛江市 is no tenant name
            }
        )
        principal = await auth.authenticate({"Authorization": f"Bearer {token}"})
        assert principal.name == "f2b0c6de-0000-4000-8000-000000000001"
        assert principal.roles == frozenset({"admin"})
        assert principal.tenants == frozenset({"komae", "chofu"})
    finally:
        await auth.aclose()


async def test_expired_and_not_yet_valid_tokens_are_refused(
    auth: Authenticator, issuer: OidcIssuer
) -> None:
    now = int(time.time())
    # within the 30 s leeway: accepted
    ok = issuer.sign(claims(exp=now - 5))
    assert (await auth.authenticate({"Authorization": f"Bearer {ok}"})).via == "oidc"
    expired = issuer.sign(claims(iat=now - 600, exp=now - 120))
    error = await refused(auth, {"Authorization": f"Bearer {expired}"})
    assert "expired" in error.detail
    early = issuer.sign(claims(nbf=now + 600))
    error = await refused(auth, {"Authorization": f"Bearer {early}"})
    assert "not valid yet" in error.detail
    no_exp = issuer.sign(claims(exp=None))
    error = await refused(auth, {"Authorization": f"Bearer {no_exp}"})
    assert "exp" in error.detail


async def test_wrong_audience_and_issuer_are_refused(
    auth: Authenticator, issuer: OidcIssuer
) -> None:
    error = await refused(
        auth, {"Authorization": f"Bearer {issuer.sign(claims(), audience='account')}"}
    )
    assert "not meant for this hub" in error.detail
    await refused(auth, {"Authorization": f"Bearer {issuer.sign(claims(), audience=None)}"})
    other = issuer.sign(claims(iss="http://127.0.0.1:1/realms/other"))
    error = await refused(auth, {"Authorization": f"Bearer {other}"})
    assert "another issuer" in error.detail
    # a list audience containing ours is fine
    both = issuer.sign(claims(aud=["account", "renkei"]))
    assert (await auth.authenticate({"Authorization": f"Bearer {both}"})).name == "山田太郎"


async def test_unknown_kid_is_refused_then_accepted_once_the_issuer_publishes_it(
    issuer: OidcIssuer,
) -> None:
    auth = Authenticator(parse_auth_text(policy_text(issuer, jwks_min_refresh_seconds=0)))
    try:
        await auth.authenticate({"Authorization": f"Bearer {issuer.sign(claims())}"})
        assert issuer.jwks_requests == 1
        issuer.add_key("rsa-2", "RS256", publish=False)  # rotated at the issuer, not yet out
        rotated = issuer.sign(claims(), kid="rsa-2")
        error = await refused(auth, {"Authorization": f"Bearer {rotated}"})
        assert "signing key is not known" in error.detail
        assert issuer.jwks_requests == 2  # the unknown kid caused one refresh
        issuer.publish("rsa-2")
        principal = await auth.authenticate({"Authorization": f"Bearer {rotated}"})
        assert principal.name == "山田太郎"
        assert issuer.jwks_requests == 3
    finally:
        await auth.aclose()


async def test_refreshes_for_unknown_kids_are_rate_limited(
    auth: Authenticator, issuer: OidcIssuer
) -> None:
    await auth.authenticate({"Authorization": f"Bearer {issuer.sign(claims())}"})
    issuer.add_key("rsa-2", "RS256")  # published, but the last fetch is too recent
    for _ in range(5):
        await refused(auth, {"Authorization": f"Bearer {issuer.sign(claims(), kid='rsa-2')}"})
    assert issuer.jwks_requests == 1


async def test_a_tampered_token_is_refused(auth: Authenticator, issuer: OidcIssuer) -> None:
    header, payload, signature = issuer.sign(claims(), kid="rsa-1").split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["realm_access"]["roles"] = ["admin"]
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    error = await refused(auth, {"Authorization": f"Bearer {header}.{forged}.{signature}"})
    assert "signature does not verify" in error.detail
    # and one signed by a key the issuer never published under that kid
    stranger = OidcIssuer(port=0)
    impostor = stranger.add_key("rsa-1", "RS256")
    token = issuer.sign(claims(), kid="rsa-1", key=impostor.private)
    await refused(auth, {"Authorization": f"Bearer {token}"})


async def test_alg_none_is_refused(auth: Authenticator, issuer: OidcIssuer) -> None:
    token = jwt.encode(
        {"iss": issuer.issuer, "aud": "renkei", "exp": int(time.time()) + 60, **claims()},
        "",
        algorithm="none",
        headers={"kid": "rsa-1"},
    )
    error = await refused(auth, {"Authorization": f"Bearer {token}"})
    assert "algorithm is not accepted" in error.detail


async def test_hs256_signed_with_the_public_key_is_refused(
    auth: Authenticator, issuer: OidcIssuer
) -> None:
    # The classic key-confusion attack: HMAC keyed with the issuer's public key.
    public = issuer.keys["rsa-1"].private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(
        json.dumps(
            {"iss": issuer.issuer, "aud": "renkei", "exp": int(time.time()) + 60, **claims()}
        ).encode()
    )
    mac = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    error = await refused(auth, {"Authorization": f"Bearer {head}.{body}.{mac}"})
    assert "algorithm is not accepted" in error.detail


async def test_an_rs256_header_on_the_ec_kid_is_refused(
    auth: Authenticator, issuer: OidcIssuer
) -> None:
    token = issuer.sign(claims(), kid="ec-1", alg="RS256", key=issuer.keys["rsa-1"].private)
    await refused(auth, {"Authorization": f"Bearer {token}"})


async def test_an_unreachable_or_slow_issuer_gives_401_within_the_fetch_timeout(
    issuer: OidcIssuer,
) -> None:
    issuer.jwks_delay = 3.0
    auth = Authenticator(parse_auth_text(policy_text(issuer)))  # fetch_timeout: 1
    try:
        started = time.monotonic()
        error = await refused(auth, {"Authorization": f"Bearer {issuer.sign(claims())}"})
        assert "signing key is not known" in error.detail
        assert time.monotonic() - started < 2.9
    finally:
        await auth.aclose()
