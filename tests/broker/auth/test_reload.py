"""SIGHUP reloads the auth file; a broken file leaves the previous policy in force."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import anyio.to_thread
import pytest

from broker.auth import Authenticator, PolicyHolder, hash_key, install_sighup_reload
from broker.errors import Unauthorized

OLD_KEY = "komae-old-鍵"
NEW_KEY = "komae-new-鍵"


def auth_file(key: str) -> str:
    return (
        f"api_keys: [{{name: komae-iot, key_sha256: '{hash_key(key)}', roles: [w], tenants: [komae]}}]\n"
        "roles: {w: {write: ['*']}}\n"
    )


def hup_and_wait(holder: PolicyHolder) -> None:
    holder.reloaded.clear()
    os.kill(os.getpid(), signal.SIGHUP)
    assert holder.reloaded.wait(10), "no reload within 10 s of SIGHUP"


def test_sighup_reloads_and_a_broken_file_keeps_the_old_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text(auth_file(OLD_KEY), encoding="utf-8")
    holder = PolicyHolder(path)
    previous = signal.getsignal(signal.SIGHUP)
    reopened: list[bool] = []
    restore = install_sighup_reload(holder, lambda: reopened.append(True))
    try:
        first = holder.policy
        path.write_text(auth_file(NEW_KEY), encoding="utf-8")
        hup_and_wait(holder)
        assert holder.policy is not first
        assert holder.policy.api_keys[0].digest.hex() == hash_key(NEW_KEY)
        assert holder.generation == 1
        assert reopened == [True]

        good = holder.policy
        path.write_text("roles:\n  w: {write: ['*']}\n  w: {read: ['*']}\n", encoding="utf-8")
        with caplog.at_level(logging.ERROR, logger="renkei.auth"):
            hup_and_wait(holder)
        assert holder.policy is good
        assert holder.generation == 1
        assert holder.last_error == f"{path}:3: 'w' is given twice"
        assert f"{path}:3: 'w' is given twice" in caplog.text
        assert "以前の設定のまま" in caplog.text
    finally:
        restore()
    assert signal.getsignal(signal.SIGHUP) == previous


@pytest.mark.anyio
async def test_inside_the_event_loop_the_next_request_sees_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    path.write_text(auth_file(OLD_KEY), encoding="utf-8")
    holder = PolicyHolder(path)
    auth = Authenticator(holder)
    remove = install_sighup_reload(holder)
    try:
        assert (await auth.authenticate({"X-API-Key": OLD_KEY})).name == "komae-iot"
        path.write_text(auth_file(NEW_KEY), encoding="utf-8")
        holder.reloaded.clear()
        os.kill(os.getpid(), signal.SIGHUP)
        # the handler runs on this loop: wait for it without blocking the loop
        assert await anyio.to_thread.run_sync(holder.reloaded.wait, 10)
        assert (await auth.authenticate({"X-API-Key": NEW_KEY})).name == "komae-iot"
        with pytest.raises(Unauthorized):
            await auth.authenticate({"X-API-Key": OLD_KEY})
    finally:
        remove()
        await auth.aclose()
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
