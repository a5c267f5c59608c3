"""A test OpenID Connect issuer on 127.0.0.1: discovery, a JWKS, and token signing.

Keys are generated here (RSA 2048 and EC P-256); ``sign`` makes real tokens with
PyJWT. ``rotate`` adds a new key that the issuer publishes only when asked
(``publish``), so tests can show an unknown ``kid`` refused, then accepted after the
issuer publishes it. Every JWKS request is counted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import free_port


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return data


def new_key(kid: str, alg: str) -> SigningKey:
    if alg == "RS256":
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(alg)
    return SigningKey(kid, alg, private)


@dataclass
class OidcIssuer:
    port: int
    keys: dict[str, SigningKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    jwks_requests: int = 0
    discovery_requests: int = 0
    #: Seconds each JWKS answer is held back (to cause a fetch timeout).
    jwks_delay: float = 0.0

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/city"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def add_key(self, kid: str, alg: str, *, publish: bool = True) -> SigningKey:
        key = new_key(kid, alg)
        self.keys[kid] = key
        if publish:
            self.published.append(kid)
        return key

    def publish(self, kid: str) -> None:
        self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.keys[kid].jwk() for kid in self.published]}

    def sign(
        self,
        claims: dict[str, Any] | None = None,
        *,
        kid: str = "rsa-1",
        alg: str | None = None,
        key: Any = None,
        headers: dict[str, Any] | None = None,
        audience: str | None = "renkei",
        lifetime: float = 300.0,
    ) -> str:
        """A token for ``claims`` over sensible defaults (``iss`` this issuer, ``aud``
        renkei, ``exp`` in five minutes); ``key``/``alg`` override the signing key."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "f2b0c6de-0000-4000-8000-000000000001",
            "iat": now,
            "exp": now + int(lifetime),
            "preferred_username": "山田太郎",
        }
        if audience is not None:
            body["aud"] = audience
        body.update(claims or {})
        body = {k: v for k, v in body.items() if v is not None}
        signing = self.keys.get(kid)
        algorithm = alg or (signing.alg if signing else "RS256")
        secret = key if key is not None else (signing.private if signing else "")
        return jwt.encode(
            body, secret, algorithm=algorithm, headers={"kid": kid, **(headers or {})}
        )


@contextmanager
def oidc_issuer() -> Iterator[OidcIssuer]:
    """An issuer with one RSA key (``rsa-1``) and one EC key (``ec-1``) published."""
    state = OidcIssuer(port=free_port())
    state.add_key("rsa-1", "RS256")
    state.add_key("ec-1", "ES256")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/realms/city/.well-known/openid-configuration":
                state.discovery_requests += 1
                self._json(
                    {
                        "issuer": state.issuer,
                        "jwks_uri": state.jwks_url,
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }
                )
            elif self.path == "/realms/city/protocol/openid-connect/certs":
                state.jwks_requests += 1
                if state.jwks_delay:
                    time.sleep(state.jwks_delay)  # a slow issuer, for the fetch timeout
                self._json(state.jwks())
            else:
                self.send_error(404)

        def _json(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (fetch timeout)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
