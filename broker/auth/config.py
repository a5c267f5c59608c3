"""The auth file (``RENKEI_AUTH_FILE``): YAML parsed with pydantic into a ``Policy``.

The file says which API keys exist (by SHA-256 only), which identity provider issues
bearer tokens, what each role may do to which entity types, and what anonymous
clients may read::

    api_keys:
      - {name: komae-iot, key_sha256: "<hex>", roles: [writer], tenants: [komae]}
    oidc:
      issuer: https://idp.example/realms/city
      audience: renkei
      roles_claim: realm_access.roles
      tenants_claim: tenants
    roles:
      writer: {read: ["*"], write: ["*"], subscribe: ["*"]}
      admin:  {read: ["*"], write: ["*"], subscribe: ["*"], admin: true}
    anonymous:
      read: [AEDLocation, "EvacuationSite@komae"]

Entity types are written ``Type``, ``Type@tenant``, ``*`` or ``*@tenant``; short names
are expanded to IRIs with the core context, as ``RENKEI_HISTORY_RETENTION`` is. In a
role, a type without ``@`` holds in each tenant of the principal; under ``anonymous``
it means the default tenant (``Type@*``: every tenant). ``Type@`` names the default
tenant explicitly. A principal's ``tenants`` are
tenant names as sent in ``NGSILD-Tenant``, ``""`` for the default tenant and ``*`` for
every tenant.

Errors name the file and line. ``PolicyHolder`` keeps the policy in force and
reloads the file on SIGHUP (``install_sighup_reload``); a file that does not load
leaves the previous policy in force.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from broker.auth.policy import (
    ALL,
    DEFAULT_TENANT,
    TENANT_RE,
    ApiKey,
    OidcSettings,
    Policy,
    Role,
    Scope,
)

log = logging.getLogger("renkei.auth")

#: The ``@vocab`` of the NGSI-LD core context: where short type names land.
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"


class AuthConfigError(ValueError):
    """The auth file cannot be used; the message names the file, line and problem."""


def default_expand(name: str) -> str:
    """A type name as the core context expands it: an IRI stays, a term gets ``@vocab``."""
    return name if ":" in name else DEFAULT_VOCAB + name


def hash_key(key: str) -> str:
    """The ``key_sha256`` to write in the auth file for an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh random API key and its ``key_sha256``."""
    key = secrets.token_urlsafe(32)
    return key, hash_key(key)


# -- the file, as pydantic models ---------------------------------------------------------------


def _tenant_name(value: str) -> str:
    if value in (ALL, DEFAULT_TENANT) or TENANT_RE.match(value):
        return value
    raise ValueError(
        f"tenant {value!r} cannot be named in NGSILD-Tenant: use letters, digits, '-' and '_' "
        '(at most 64), "" for the default tenant or "*" for all'
    )


def _type_spec(value: str) -> str:
    name, at, tenant = value.rpartition("@") if "@" in value else (value, "", "")
    if not name.strip() or name != name.strip():
        raise ValueError(f"entity type {value!r} is empty or has spaces around it")
    if at and tenant not in (ALL, DEFAULT_TENANT) and not TENANT_RE.match(tenant):
        raise ValueError(
            f"tenant {tenant!r} in {value!r} cannot be named in NGSILD-Tenant: "
            "use letters, digits, '-' and '_'"
        )
    return value


_ALGORITHMS: tuple[Literal["RS256", "ES256"], ...] = ("RS256", "ES256")


TenantName = Annotated[str, AfterValidator(_tenant_name)]
TypeSpec = Annotated[str, AfterValidator(_type_spec)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKeyConfig(_Strict):
    name: str = Field(min_length=1)
    key_sha256: str
    roles: list[str] = Field(default_factory=list)
    tenants: list[TenantName] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_plain_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "key" in data:
            raise ValueError(
                "write key_sha256 (the SHA-256 of the key, e.g. `printf %s KEY | sha256sum`), "
                "never the key itself"
            )
        return data

    @field_validator("key_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("key_sha256 must be 64 hexadecimal digits")
        return value.lower()


class OidcConfig(_Strict):
    issuer: str = Field(min_length=1)
    audience: str | list[str]
    #: The issuer's JWKS; without it, ``jwks_uri`` from ``{issuer}/.well-known/openid-configuration``.
    jwks_url: str | None = None
    roles_claim: str = "realm_access.roles"
    tenants_claim: str = "tenants"
    #: The claim naming the principal in the audit log (``sub`` when absent from a token).
    name_claim: str = "preferred_username"
    algorithms: list[Literal["RS256", "ES256"]] = Field(
        default_factory=lambda: list(_ALGORITHMS), min_length=1
    )
    #: Seconds of clock difference allowed on ``exp``, ``nbf`` and ``iat``.
    leeway: float = Field(30.0, ge=0, le=300)
    #: Seconds allowed for fetching discovery and JWKS documents.
    fetch_timeout: float = Field(5.0, gt=0, le=60)
    #: Seconds JWKS keys are reused before they are fetched again.
    jwks_cache_seconds: float = Field(3600.0, ge=0)
    #: Least seconds between two fetches caused by tokens with an unknown ``kid``.
    jwks_min_refresh_seconds: float = Field(30.0, ge=0)

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} must be an http(s):// URL")
        return value


class RoleConfig(_Strict):
    read: list[TypeSpec] = Field(default_factory=list)
    write: list[TypeSpec] = Field(default_factory=list)
    subscribe: list[TypeSpec] = Field(default_factory=list)
    admin: bool = False


class AuthFile(_Strict):
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    oidc: OidcConfig | None = None
    roles: dict[str, RoleConfig] = Field(default_factory=dict)
    #: What requests without credentials may do: normally ``read`` of open data only.
    anonymous: RoleConfig = Field(default_factory=RoleConfig)

    @model_validator(mode="after")
    def _consistent(self) -> AuthFile:
        seen_names: set[str] = set()
        seen_keys: set[str] = set()
        for entry in self.api_keys:
            if entry.name in seen_names:
                raise ValueError(f"API key name {entry.name!r} is used twice")
            if entry.key_sha256 in seen_keys:
                raise ValueError(f"API key {entry.name!r} has the same key_sha256 as another")
            seen_names.add(entry.name)
            seen_keys.add(entry.key_sha256)
            for role in entry.roles:
                if role not in self.roles:
                    raise ValueError(f"API key {entry.name!r} names role {role!r}, not defined")
        return self


def _scope(specs: Iterable[str], expand: Callable[[str], str], bare_tenant: str) -> Scope:
    pairs = set()
    for spec in specs:
        name, at, tenant = spec.rpartition("@") if "@" in spec else (spec, "", "")
        pairs.add((tenant if at else bare_tenant, ALL if name == ALL else expand(name)))
    return Scope(frozenset(pairs))


def _role(config: RoleConfig, expand: Callable[[str], str], bare_tenant: str) -> Role:
    return Role(
        read=_scope(config.read, expand, bare_tenant),
        write=_scope(config.write, expand, bare_tenant),
        subscribe=_scope(config.subscribe, expand, bare_tenant),
        admin=config.admin,
    )


def compile_policy(
    config: AuthFile, expand: Callable[[str], str] = default_expand, source: str = "<memory>"
) -> Policy:
    """The decisions' form of a parsed auth file."""
    oidc = None
    if config.oidc is not None:
        o = config.oidc
        oidc = OidcSettings(
            issuer=o.issuer,
            audience=(o.audience,) if isinstance(o.audience, str) else tuple(o.audience),
            jwks_url=o.jwks_url,
            roles_claim=tuple(o.roles_claim.split(".")),
            tenants_claim=tuple(o.tenants_claim.split(".")),
            name_claim=o.name_claim,
            algorithms=tuple(o.algorithms),
            leeway=o.leeway,
            fetch_timeout=o.fetch_timeout,
            jwks_cache_seconds=o.jwks_cache_seconds,
            jwks_min_refresh_seconds=o.jwks_min_refresh_seconds,
        )
    anonymous = _role(config.anonymous, expand, DEFAULT_TENANT)
    if anonymous.write.pairs or anonymous.subscribe.pairs or anonymous.admin:
        log.warning(
            "%s lets clients without credentials write, subscribe or administer / "
            "認証なしのクライアントに書き込み・購読・管理を許可しています",
            source,
        )
    return Policy(
        api_keys=tuple(
            ApiKey(
                name=k.name,
                digest=bytes.fromhex(k.key_sha256),
                roles=tuple(k.roles),
                tenants=frozenset(k.tenants),
            )
            for k in config.api_keys
        ),
        oidc=oidc,
        roles={name: _role(r, expand, ALL) for name, r in config.roles.items()},
        anonymous=anonymous,
        source=source,
    )


# -- reading the file, with line numbers in errors ----------------------------------------------


def _check_duplicates(node: yaml.Node, where: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if key.value in seen:
                raise AuthConfigError(
                    f"{where}:{key.start_mark.line + 1}: {key.value!r} is given twice"
                )
            seen.add(key.value)
            _check_duplicates(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, where)


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The line (1-based) of the deepest node of ``loc`` found in the YAML tree."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def parse_auth_text(
    text: str, where: str = "<auth file>", expand: Callable[[str], str] = default_expand
) -> Policy:
    """Parse and compile an auth file's text; ``AuthConfigError`` names the line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        raise AuthConfigError(f"{at}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise AuthConfigError(f"{where}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AuthConfigError(f"{where}:1: the auth file must be a mapping (api_keys, roles ...)")
    if root is not None:
        _check_duplicates(root, where)
    try:
        config = AuthFile.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(err["loc"])
            line = _line_of(root, loc)
            path = ".".join(str(p) for p in loc) or "(top)"
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{where}:{line or 1}: {path}: {msg}")
        raise AuthConfigError("\n".join(lines)) from None
    return compile_policy(config, expand, source=where)


def load_policy(path: str | Path, expand: Callable[[str], str] = default_expand) -> Policy:
    """Read, parse and compile the auth file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"{path}: cannot read the auth file: {exc}") from None
    return parse_auth_text(text, str(path), expand)


class PolicyHolder:
    """The policy in force, replaced whole by ``reload()``.

    Readers take ``holder.policy`` once per request; a reload swaps the reference, so a
    request sees one policy or the other, never a mix. ``reloaded`` is set after every
    reload attempt (successful or not) so callers can wait for one; ``last_error`` says
    why the latest attempt was refused."""

    def __init__(self, path: str | Path, expand: Callable[[str], str] = default_expand) -> None:
        self.path = Path(path)
        self.expand = expand
        self._policy = load_policy(self.path, expand)
        self.generation = 0
        self.last_error: str | None = None
        self.reloaded = threading.Event()
        self._lock = threading.RLock()  # a SIGHUP may land during a reload

    @property
    def policy(self) -> Policy:
        return self._policy

    def reload(self) -> bool:
        """Load the file again; True when the new policy is in force. A file that does
        not load is logged and the previous policy stays."""
        with self._lock:
            try:
                policy = load_policy(self.path, self.expand)
            except AuthConfigError as exc:
                self.last_error = str(exc)
                log.error(
                    "auth file not reloaded, the previous policy stays in force / "
                    "認証設定を再読み込みできませんでした、以前の設定のままです: %s",
                    exc,
                )
                ok = False
            else:
                self._policy = policy
                self.generation += 1
                self.last_error = None
                log.info("auth file %s reloaded / 認証設定を再読み込みしました", self.path)
                ok = True
        self.reloaded.set()
        return ok


def install_sighup_reload(holder: PolicyHolder, *also: Callable[[], object]) -> Callable[[], None]:
    """Reload ``holder`` (then call each of ``also``, e.g. an audit log's ``reopen``) on
    SIGHUP. Inside a running asyncio loop the handler runs on the loop; otherwise it is
    a plain signal handler (call from the main thread). Returns a function that
    removes the handler again."""
    import asyncio

    def on_hup() -> None:
        holder.reload()
        for callback in also:
            try:
                callback()
            except Exception:
                log.exception("SIGHUP callback failed")

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)

        def remove_loop_handler() -> None:
            loop.remove_signal_handler(signal.SIGHUP)

        return remove_loop_handler
    previous = signal.signal(signal.SIGHUP, lambda _signum, _frame: on_hup())

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore
