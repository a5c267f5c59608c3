"""``renkei serve`` with and without an auth file: the start rule, SIGHUP reload, and
the clients' credentials against a real hub process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.auth import hash_key
from connectors.client import BrokerClient, BrokerError
from opendata.client import Client
from tests.support import broker, free_port
from tests.support_oidc import oidc_issuer

KEY = "komae-import-key-0001"
NEW_KEY = "komae-import-key-0002"
AED_ID = "urn:ngsi-ld:AEDLocation:狛江市役所"
AED: dict[str, Any] = {
    "id": AED_ID,
    "type": "AEDLocation",
    "name": {"type": "Property", "value": "狛江市役所"},
}


def auth_file(path: Path, *keys: str, oidc: str = "") -> Path:
    entries = "\n".join(
        f'  - {{name: key{i}, key_sha256: "{hash_key(k)}", roles: [writer], tenants: ["*"]}}'
        for i, k in enumerate(keys)
    )
    path.write_text(
        f"api_keys:\n{entries}\n{oidc}roles:\n  writer: {{read: ['*'], write: ['*']}}\n",
        encoding="utf-8",
    )
    return path


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_no_auth_file_refuses_a_public_address(tmp_path: Path) -> None:
    done = serve(
        "--host", "0.0.0.0", "--port", str(free_port()), "--store", f"sqlite:///{tmp_path}/x.db"
    )
    assert done.returncode == 2
    assert "--insecure-no-auth" in done.stderr
    assert "認証設定ファイルなしで" in done.stderr


def test_loopback_without_auth_file_says_so_once(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RENKEI_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "serve",
            "--port",
            str(port),
            "--store",
            f"sqlite:///{tmp_path}/x.db",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/ngsi-ld/v1/entities", json=AED)
        assert r.status_code == 201
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert err.count("アクセス制御は無効です") == 1
    assert err.count("Access control is off") == 1


def test_clients_send_keys_and_tokens_and_sighup_reloads(tmp_path: Path) -> None:
    with oidc_issuer() as issuer:
        oidc = (
            f"oidc:\n  issuer: {issuer.issuer}\n  audience: renkei\n"
            f"  jwks_url: {issuer.jwks_url}\n  roles_claim: realm_access.roles\n"
            "  tenants_claim: tenants\n"
        )
        path = auth_file(tmp_path / "auth.yaml", KEY, oidc=oidc)
        with broker(tmp_path / "hub.db", "--auth-file", str(path)) as url:
            with Client(url) as anonymous, pytest.raises(BrokerError, match="401"):
                anonymous.upsert([AED])
            with Client(url, api_key=KEY) as c:
                c.upsert([AED])
                got = c.get_entity(AED_ID)
                assert got is not None
                assert got["name"]["value"] == "狛江市役所"
            token = issuer.sign({"realm_access": {"roles": ["writer"]}, "tenants": ["*"]})
            with Client(url, token=token) as c:
                by_token = c.get_entity(AED_ID)
                assert by_token is not None
                assert by_token["id"] == AED_ID

            async def batch() -> None:
                client = BrokerClient(url, api_key=KEY)
                try:
                    await client.upsert([{**AED, "id": "urn:ngsi-ld:AEDLocation:狛江駅"}])
                finally:
                    await client.aclose()

            asyncio.run(batch())
            # a new key works once the file is reloaded on SIGHUP
            new = {"X-API-Key": NEW_KEY}
            probe = f"{url}/ngsi-ld/v1/entities/{AED['id']}"
            assert httpx.get(probe, headers=new).status_code == 401
            auth_file(path, KEY, NEW_KEY, oidc=oidc)
            for proc_pid in _serve_pids(url):
                os.kill(proc_pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while httpx.get(probe, headers=new).status_code != 200:
                assert time.monotonic() < deadline, "the new key was not accepted after SIGHUP"
                time.sleep(0.1)


def _serve_pids(url: str) -> list[int]:
    """The pid of the ``renkei serve`` process listening on ``url``'s port."""
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(
        {int(p.split("=")[1]) for p in out.replace(",", " ").split() if p.startswith("pid=")}
    )
