"""Without an auth file the hub starts open on loopback only."""

from __future__ import annotations

import pytest

from broker.auth.startup import (
    AUTH_OFF_NOTICE,
    InsecureStartRefused,
    check_open_start,
    is_loopback,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "komae-hub.local", ""])
def test_other_addresses(host: str) -> None:
    assert not is_loopback(host)


def test_the_demo_starts_open_on_loopback_with_a_bilingual_notice() -> None:
    notice = check_open_start("127.0.0.1", auth_file=None, insecure_no_auth=False)
    assert notice == AUTH_OFF_NOTICE
    assert "Access control is off" in notice
    assert "アクセス制御は無効です" in notice


def test_other_addresses_need_an_auth_file_or_the_insecure_flag() -> None:
    with pytest.raises(InsecureStartRefused) as caught:
        check_open_start("0.0.0.0", auth_file=None, insecure_no_auth=False)
    assert "--insecure-no-auth" in str(caught.value)
    assert "起動しません" in str(caught.value)
    assert check_open_start("0.0.0.0", auth_file=None, insecure_no_auth=True) == AUTH_OFF_NOTICE
    assert (
        check_open_start("0.0.0.0", auth_file="/etc/renkei/auth.yaml", insecure_no_auth=False)
        is None
    )
