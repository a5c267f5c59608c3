"""Safe defaults at start-up: without an auth file the hub serves only loopback.

``renkei serve`` without an auth file still starts on a loopback address (the demo, a
laptop) and says once, in Japanese and English, that access control is off; on any
other address it refuses to start unless ``--insecure-no-auth`` is given.
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger("renkei.auth")

AUTH_OFF_NOTICE = (
    "Access control is off: no auth file (RENKEI_AUTH_FILE / --auth-file), so anyone who "
    "can reach this address may read and change every tenant's data.\n"
    "アクセス制御は無効です: 認証設定ファイル (RENKEI_AUTH_FILE / --auth-file) がないため、"
    "このアドレスに届く誰もがすべてのテナントのデータを読み書きできます。"
)

REFUSE_TO_START = (
    "Refusing to listen on {host} without an auth file: set RENKEI_AUTH_FILE "
    "(--auth-file), or pass --insecure-no-auth to run open on purpose.\n"
    "認証設定ファイルなしで {host} では起動しません: RENKEI_AUTH_FILE (--auth-file) を"
    "指定するか、意図して公開で動かす場合は --insecure-no-auth を付けてください。"
)


class InsecureStartRefused(RuntimeError):
    """The hub would listen beyond loopback with no access control."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as given to ``--host``) only accepts connections from this
    machine: ``localhost``, 127.0.0.0/8, ``::1``. ``0.0.0.0``, ``::`` and names are not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_open_start(host: str, *, auth_file: object | None, insecure_no_auth: bool) -> str | None:
    """Decide whether the hub may start: None with an auth file; the bilingual notice
    (to print once) when it starts open; ``InsecureStartRefused`` (its message
    bilingual too) when it must not start."""
    if auth_file:
        return None
    if is_loopback(host) or insecure_no_auth:
        return AUTH_OFF_NOTICE
    raise InsecureStartRefused(REFUSE_TO_START.format(host=host))
