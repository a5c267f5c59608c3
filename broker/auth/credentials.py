"""Credentials: API keys and OIDC bearer JWTs, turned into a ``Principal``.

A request brings at most one credential: ``X-API-Key: <key>`` or
``Authorization: Bearer <key-or-JWT>``. API keys are compared by their SHA-256 with a
constant-time comparison against every configured key. A bearer value that is not a
configured key and looks like a JWT is verified with PyJWT: the signature (RS256 or
ES256) with a key from the issuer's JWKS, ``iss``, ``aud``, ``exp`` and ``nbf`` with a
small leeway. The JWKS comes from ``jwks_url`` or from OpenID Connect discovery
(``{issuer}/.well-known/openid-configuration``), fetched with a timeout, cached, and
fetched again when a token names a ``kid`` not in the cache (at most once per
``jwks_min_refresh_seconds``), so a key rotated at the issuer is picked up.

No credential gives the anonymous principal; a credential that does not verify is a
401 (RFC 6750 ``WWW-Authenticate``), never a fallback to anonymous. Neither the key
nor the token appears in any message or log line.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import httpx
import jwt
from starlette.datastructures import Headers

from broker.auth.policy import ANONYMOUS, TENANT_RE, ApiKey, OidcSettings, Policy, Principal
from broker.errors import Unauthorized

log = logging.getLogger("renkei.auth")

REALM = "renkei"
CHALLENGE = f'Bearer realm="{REALM}"'


def invalid_token(description: str) -> Unauthorized:
    """401 for a credential that was sent but does not verify (RFC 6750 3.1)."""
    return Unauthorized(
        description,
        challenge=f'{CHALLENGE}, error="invalid_token", error_description="{description}"',
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``name`` from Starlette headers (case-insensitive already) or a plain mapping."""
    value = headers.get(name)
    if value is not None or isinstance(headers, Headers):
        return value
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def match_api_key(keys: tuple[ApiKey, ...], key: str) -> ApiKey | None:
    """The configured key whose SHA-256 is ``key``'s, compared in constant time with
    every configured key (no early exit), so timing tells nothing about the match."""
    digest = hashlib.sha256(key.encode()).digest()
    found = None
    for entry in keys:
        if hmac.compare_digest(entry.digest, digest):
            found = entry
    return found


def _claim(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _strings(value: Any) -> list[str]:
    """A claim as a list of strings: a list keeps its strings, a string is split on
    spaces (as ``scope`` is), anything else is nothing."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _looks_like_jwt(value: str) -> bool:
    header, payload, _signature = ([*value.split("."), "", ""])[:3]
    return value.count(".") == 2 and bool(header) and bool(payload)


class JwksCache:
    """The issuer's signing keys by ``kid``, fetched on demand and refreshed when a token
    names an unknown one (rate-limited), or when older than ``jwks_cache_seconds``."""

    def __init__(self, oidc: OidcSettings, client: httpx.AsyncClient) -> None:
        self.oidc = oidc
        self.client = client
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._jwks_url = oidc.jwks_url
        self._lock = asyncio.Lock()

    async def _get_json(self, url: str) -> Any:
        response = await self.client.get(url, timeout=self.oidc.fetch_timeout)
        response.raise_for_status()
        return response.json()

    async def _fetch(self) -> None:
        self.fetches += 1
        self.fetched_at = time.monotonic()
        if self._jwks_url is None:
            discovery = await self._get_json(
                self.oidc.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            if not isinstance(discovery, dict) or discovery.get("issuer") != self.oidc.issuer:
                raise ValueError("the discovery document names another issuer")
            uri = discovery.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise ValueError("the discovery document has no jwks_uri")
            self._jwks_url = uri
        document = await self._get_json(self._jwks_url)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("the JWKS has no keys array")
        keys: dict[str | None, jwt.PyJWK] = {}
        for data in document["keys"]:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(data)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # encryption keys, unsupported algorithms
            if key.algorithm_name in self.oidc.algorithms:
                keys[data.get("kid")] = key
        self.keys = keys

    async def refresh(self, *, forced: bool) -> None:
        """Fetch the keys again unless another caller just did (or, when ``forced`` by an
        unknown ``kid``, unless the last fetch is more recent than the minimum interval).
        A failed fetch keeps the keys held and is logged."""
        async with self._lock:
            now = time.monotonic()
            if self.fetched_at is not None:
                age = now - self.fetched_at
                limit = (
                    self.oidc.jwks_min_refresh_seconds if forced else self.oidc.jwks_cache_seconds
                )
                if age < limit:
                    return
            try:
                await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning(
                    "signing keys of %s not fetched / 署名鍵を取得できません: %s",
                    self.oidc.issuer,
                    type(exc).__name__ if isinstance(exc, httpx.HTTPError) else exc,
                )

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if self.fetched_at is None or (
            time.monotonic() - self.fetched_at >= self.oidc.jwks_cache_seconds
        ):
            await self.refresh(forced=False)
        key = self._pick(kid, alg)
        if key is None:
            await self.refresh(forced=True)
            key = self._pick(kid, alg)
        return key

    def _pick(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            key = self.keys.get(kid)
        else:  # no kid: only unambiguous when one key fits the algorithm
            fitting = [k for k in self.keys.values() if k.algorithm_name == alg]
            key = fitting[0] if len(fitting) == 1 else None
        if key is None or key.algorithm_name != alg:
            return None
        return key


class TokenVerifier:
    """Verifies bearer JWTs against one ``oidc`` section; remembers verified tokens
    until they expire (bounded), so a client's repeated requests cost a lookup."""

    CACHE_SIZE = 1024
    #: Seconds a verified token is reused without checking it again.
    CACHE_SECONDS = 60.0

    def __init__(self, oidc: OidcSettings, client: httpx.AsyncClient) -> None:
        self.oidc = oidc
        self.jwks = JwksCache(oidc, client)
        self._verified: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    def cached(self, token: str) -> Principal | None:
        """The principal of ``token`` if it verified recently and has not expired."""
        hit = self._verified.get(token)
        if hit is None:
            return None
        if hit[0] > time.time():
            self._verified.move_to_end(token)
            return hit[1]
        self._verified.pop(token, None)
        return None

    async def verify(self, token: str) -> Principal:
        known = self.cached(token)
        if known is not None:
            return known
        now = time.time()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise invalid_token("the bearer token is malformed") from None
        alg = header.get("alg")
        if alg not in self.oidc.algorithms:
            raise invalid_token("the token's signing algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise invalid_token("the bearer token is malformed")
        key = await self.jwks.key(kid, alg)
        if key is None:
            raise invalid_token("the token's signing key is not known")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=list(self.oidc.audience),
                issuer=self.oidc.issuer,
                leeway=self.oidc.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise invalid_token("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise invalid_token("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise invalid_token("the token is not meant for this hub") from None
        except jwt.InvalidIssuerError:
            raise invalid_token("the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise invalid_token("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"the token has no {exc.claim} claim") from None
        except jwt.InvalidTokenError:
            raise invalid_token("the bearer token is not valid") from None
        principal = self._principal(claims)
        expires = float(claims["exp"]) + self.oidc.leeway
        self._verified[token] = (min(expires, now + self.CACHE_SECONDS), principal)
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        name = claims.get(self.oidc.name_claim)
        if not isinstance(name, str) or not name:
            name = str(claims.get("sub", "unnamed"))
        tenants = [
            t
            for t in _strings(_claim(claims, self.oidc.tenants_claim))
            if t == "*" or TENANT_RE.match(t)
        ]
        return Principal(
            name=name,
            roles=frozenset(_strings(_claim(claims, self.oidc.roles_claim))),
            tenants=frozenset(tenants),
            via="oidc",
        )


class PolicySource(Protocol):
    """Anything holding the policy in force (``PolicyHolder``)."""

    @property
    def policy(self) -> Policy: ...


class Authenticator:
    """Turns a request's headers into a ``Principal`` under the policy in force.

    ``policy`` is read on every call through ``current`` (``PolicyHolder.policy``'s
    getter, or a fixed policy), so a reload applies to the next request; the token
    verifier is rebuilt when the ``oidc`` section changes."""

    def __init__(
        self,
        current: Policy | PolicySource,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """``current`` is a ``Policy`` or an object with a ``policy`` attribute (a
        ``PolicyHolder``). ``client`` is used for JWKS fetches; one is made (and
        closed by ``aclose``) when not given."""
        self._current = current
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._own_client = client is None
        self._verifier: TokenVerifier | None = None

    @property
    def policy(self) -> Policy:
        current = self._current
        return current if isinstance(current, Policy) else current.policy

    def verifier(self, policy: Policy) -> TokenVerifier | None:
        if policy.oidc is None:
            return None
        if self._verifier is None or self._verifier.oidc != policy.oidc:
            self._verifier = TokenVerifier(policy.oidc, self._client)
        return self._verifier

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The principal of a request: anonymous without credentials; 401 for
        credentials that are malformed, unknown or do not verify."""
        policy = self.policy
        api_key = _header(headers, "x-api-key")
        authorization = _header(headers, "authorization")
        if api_key is not None and authorization is not None:
            raise Unauthorized(
                "send either X-API-Key or Authorization, not both",
                challenge=f'{CHALLENGE}, error="invalid_request"',
            )
        if api_key is not None:
            entry = match_api_key(policy.api_keys, api_key.strip())
            if entry is None:
                raise invalid_token("the API key is not valid")
            return _key_principal(entry)
        if authorization is None:
            return ANONYMOUS
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized(
                "use Authorization: Bearer <API key or token>",
                challenge=f'{CHALLENGE}, error="invalid_request"',
            )
        verifier = self.verifier(policy)
        if verifier is not None:
            known = verifier.cached(credential)  # only tokens that verified are held
            if known is not None:
                return known
        entry = match_api_key(policy.api_keys, credential)
        if entry is not None:
            return _key_principal(entry)
        if verifier is None or not _looks_like_jwt(credential):
            raise invalid_token("the bearer credential is not valid")
        return await verifier.verify(credential)

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


@functools.lru_cache(maxsize=1024)
def _key_principal(entry: ApiKey) -> Principal:
    return Principal(
        name=entry.name, roles=frozenset(entry.roles), tenants=entry.tenants, via="api_key"
    )
