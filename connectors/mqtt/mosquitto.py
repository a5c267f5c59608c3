"""Mosquitto logins and ACLs for the agent's devices: one login per apikey.

A device's messages name only an apikey and a device id, so whoever can publish on
``/{apikey}/...`` speaks for every device of that apikey. With Mosquitto's
``password_file`` and ``acl_file`` (``allow_anonymous false``), each apikey gets a login
of its own (user name = the apikey), allowed to publish only on its own topics
(``/{apikey}/+/attrs``, ``.../attrs/+``, ``.../cmdexe``, with or without the leading
slash and the ``json/`` prefix) and to read only its command topics; the agent gets a
login that reads and writes every topic.

``plan`` decides, from the agent's registry, which apikeys get a login and pins each to
the one service its messages then belong to (``Registry.pin``): an apikey used by one
service is pinned there; one used by several is left without a login (and its
messages refused as ambiguous) unless the operator names the service (``--pin``).
Existing logins are kept (their password hashes are read back); a new login, or one
whose apikey is pinned to another service (its devices' old password must stop
working), gets a new random password, shown once. Logins of apikeys no longer
provisioned are dropped.

Password hashes are mosquitto_passwd's ``$7$`` format: PBKDF2-HMAC-SHA512 over a
12-byte salt, 64-byte key, ``$7$<iterations>$<base64 salt>$<base64 key>``. The passwords
are random 256-bit tokens, so the iteration count (mosquitto_passwd's default of 101)
adds nothing to their strength and keeps each login cheap for the broker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from connectors.mqtt.registry import Registry

ITERATIONS = 101
SALT_BYTES = 12
KEY_BYTES = 64
AGENT_USER = "renkei-iota"

#: Topic levels after the apikey a device publishes on, and the one it reads.
_PUBLISH = ("+/attrs", "+/attrs/+", "+/cmdexe")
_READ = ("+/cmd",)
_PREFIXES = ("/", "/json/", "", "json/")


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The ``$7$`` hash Mosquitto checks ``password`` against."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, KEY_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    salt = base64.b64decode(parts[3])
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), KEY_BYTES)
    return hmac.compare_digest(base64.b64encode(key).decode(), parts[4])


def new_password() -> str:
    """A random password, safe in an ``mqtt://user:password@`` URL."""
    return secrets.token_urlsafe(32)


def valid_user(name: str) -> bool:
    """Whether ``name`` can be a login in a password file and an ACL file."""
    return bool(name) and not any(c.isspace() or c in ":\x00" for c in name)


def read_password_file(path: Path) -> dict[str, str]:
    """``user -> hash`` of a Mosquitto password file (empty when there is none)."""
    if not path.exists():
        return {}
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if sep:
            found[user] = hashed
    return found


def device_acl(apikey: str) -> list[str]:
    """ACL lines of an apikey's login: its devices' topics only."""
    lines = [f"user {apikey}"]
    lines += [f"topic write {p}{apikey}/{t}" for p in _PREFIXES for t in _PUBLISH]
    lines += [f"topic read {p}{apikey}/{t}" for p in _PREFIXES for t in _READ]
    return lines


def render_acl(agent_user: str, pinned: Mapping[str, str]) -> str:
    """The ACL file: the agent reads and writes every topic; each apikey's login its own."""
    out = [
        "# Written by `renkei iot mosquitto-acl`: one login per apikey, pinned to a service.",
        f"user {agent_user}",
        "topic readwrite #",
    ]
    for apikey, service in sorted(pinned.items()):
        out += ["", f"# apikey {apikey}: service {service or '(default)'}", *device_acl(apikey)]
    return "\n".join(out) + "\n"


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class Plan:
    #: user -> password hash, as the password file will hold them
    hashes: dict[str, str] = field(default_factory=dict)
    #: apikey -> service it is pinned to (the logins of the ACL file)
    pinned: dict[str, str] = field(default_factory=dict)
    #: (user, service, password) of logins made now: shown once, never stored
    new: list[tuple[str, str | None, str]] = field(default_factory=list)
    #: apikey -> services using it, left without a login
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    #: apikeys that cannot be a login name
    unusable: list[str] = field(default_factory=list)


class PinError(ValueError):
    """A ``--pin`` names a service that does not use the apikey."""


def plan(
    registry: Registry,
    existing: Mapping[str, str],
    *,
    pins: Mapping[str, str] | None = None,
    agent_user: str = AGENT_USER,
) -> Plan:
    """Logins and pins for the apikeys of ``registry`` (see the module docstring);
    pins are written to the registry's file."""
    pins = dict(pins or {})
    out = Plan()
    if agent_user in existing:
        out.hashes[agent_user] = existing[agent_user]
    else:
        password = new_password()
        out.hashes[agent_user] = hash_password(password)
        out.new.append((agent_user, None, password))
    for apikey, service in pins.items():
        if service not in registry.tenants_of(apikey):
            raise PinError(f"apikey {apikey!r} is not used by service {service!r}")
    for apikey in registry.apikeys():
        tenants = registry.tenants_of(apikey)
        current = registry.pins.get(apikey)
        if apikey in pins:
            target = pins[apikey]
        elif current in tenants:
            target = current
        elif len(tenants) == 1:
            target = next(iter(tenants))
        else:
            out.ambiguous[apikey] = sorted(tenants)
            continue
        if not valid_user(apikey) or apikey == agent_user:
            out.unusable.append(apikey)
            continue
        moved = current is not None and current != target
        if target != current:
            registry.pin(apikey, target)
        out.pinned[apikey] = target
        if apikey in existing and not moved:
            out.hashes[apikey] = existing[apikey]
        else:
            password = new_password()
            out.hashes[apikey] = hash_password(password)
            out.new.append((apikey, target, password))
    for apikey, service in list(registry.pins.items()):
        if service not in registry.tenants_of(apikey):
            registry.pin(apikey, None)  # no longer provisioned there
    return out


def password_file_text(hashes: Mapping[str, str]) -> str:
    return "".join(f"{user}:{hashed}\n" for user, hashed in hashes.items())
