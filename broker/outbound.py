"""The outbound policy: which addresses the hub may connect to on a user's behalf.

A request can make the hub reach another host: a remote ``@context`` in a ``Link``
header, a subscription's notification endpoint, a command sent to a device. Without a
policy that is a way into the networks the hub sits in (the cloud metadata service at
169.254.169.254, the hub's own API, anything only the hub can reach). The policy is two
lists of rules, from ``RENKEI_OUTBOUND_ALLOW`` and ``RENKEI_OUTBOUND_DENY``:

* a rule is an IP address or network (``10.0.0.0/8``, ``::1``), a host name
  (``contexts.city.example``), a domain (``.city.example`` or ``*.city.example``: its
  subdomains), or ``self`` (the address and port the hub listens on, and the host and
  port of its public URL);
* a connection is refused when its host name or its address matches a deny rule; when
  allow rules are set, it must also match one of them (by name or by address).

The rules are checked on the **resolved address, when connecting**: the name is
resolved once, the addresses the policy refuses are dropped, and the connection goes to
one of the checked addresses (the TLS server name and ``Host`` header stay the URL's).
A name that resolves to a permitted address when a subscription is created and to a
refused one later (DNS rebinding) is thus refused when it matters. The pieces:

* :func:`policy_transport` -- an httpx transport (remote ``@context``), whose network
  backend resolves and checks before it connects;
* :func:`policy_resolver` -- an aiohttp resolver (HTTP notifications) that only hands
  out checked addresses, with :meth:`OutboundPolicy.check_literal` for URLs whose host
  is an IP literal (aiohttp does not ask a resolver about those);
* :meth:`OutboundPolicy.check_host` -- resolve and check, synchronously (MQTT);
* :meth:`OutboundPolicy.check_url` -- the check made when an endpoint is registered:
  scheme, literal addresses and names; a name that cannot be resolved yet is not refused.

This module is a leaf: it imports the standard library, httpx/httpcore and aiohttp only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    # Imported where the clients are built: the settings import this module, and the
    # store's writer process reads the settings without ever making a request.
    import httpcore
    import httpx
    from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``RENKEI_OUTBOUND_DENY`` when it is not set: link-local (the cloud metadata address
#: among them), unspecified ("this host"), multicast and broadcast, and the hub itself.
DEFAULT_DENY: tuple[str, ...] = (
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
    "self",
)
SELF = "self"
DEFAULT_PORTS = {"http": 80, "https": 443, "mqtt": 1883, "mqtts": 8883}
#: Seconds a name may take to resolve when an endpoint is registered.
CHECK_RESOLVE_TIMEOUT = 3.0


class OutboundRefused(OSError):
    """The policy refuses this destination. ``str()`` names the host, never a response.

    An OSError, so that HTTP clients report it as a failed connection (aiohttp wraps it
    in a ``ClientConnectorError`` whose ``os_error`` it is).
    """

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"connection to {host} refused by the outbound policy ({reason})")
        self.host = host
        self.reason = reason


class ResolutionFailed(Exception):
    """A host name could not be resolved."""


def _address(text: str) -> IPAddress | None:
    """The IP address ``text`` is (brackets and an IPv6 zone allowed), else None.

    IPv4-mapped IPv6 addresses are their IPv4 address, so ``::ffff:169.254.169.254`` is
    checked as ``169.254.169.254``.
    """
    text = text.strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _name(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class Rules:
    """One list of rules (allow or deny), parsed."""

    networks: tuple[IPNetwork, ...] = ()
    names: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()  # ".city.example": its subdomains
    self_: bool = False

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Rules:
        networks: list[IPNetwork] = []
        names: set[str] = set()
        domains: list[str] = []
        self_ = False
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry.lower() == SELF:
                self_ = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _name(entry)
            if name.startswith("*."):
                name = name[1:]
            if not name or any(c in name for c in "/: @"):
                raise ValueError(f"outbound rule {raw!r} is not an address, network or host")
            if name.startswith("."):
                domains.append(name)
            else:
                names.add(name)
        return cls(tuple(networks), frozenset(names), tuple(domains), self_)

    @property
    def empty(self) -> bool:
        return not (self.networks or self.names or self.domains or self.self_)

    def match_name(self, host: str) -> bool:
        name = _name(host)
        return name in self.names or any(name.endswith(d) for d in self.domains)

    def match_address(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.networks if net.version == ip.version)


@dataclass(frozen=True)
class OutboundPolicy:
    """Allow and deny rules plus what "self" is; immutable, shared by every client.

    ``require_allow``: refuse whatever the allow rules do not match even when there are
    none (the ``RENKEI_CONTEXT_FETCH=allowlist`` mode).
    """

    allow: Rules = field(default_factory=Rules)
    deny: Rules = field(default_factory=lambda: Rules.parse(DEFAULT_DENY))
    #: The hub's own (address, port) pairs; an address of None is any local address.
    own_addresses: frozenset[tuple[IPAddress | None, int]] = frozenset()
    #: The hub's own (host name, port) pairs (its public URL, a named listening host).
    own_names: frozenset[tuple[str, int]] = frozenset()
    #: Addresses of this machine, for a hub listening on every interface.
    local_addresses: frozenset[IPAddress] = frozenset()
    require_allow: bool = False

    @classmethod
    def build(
        cls,
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] | None = None,
        listen_host: str | None = None,
        listen_port: int | None = None,
        public_url: str | None = None,
    ) -> OutboundPolicy:
        """The policy from settings; ``deny=None`` is :data:`DEFAULT_DENY`.

        ``listen_host``/``listen_port`` and ``public_url`` say what ``self`` denies: the
        listening address and port (every local address when listening on 0.0.0.0 or
        ::), and the public URL's host and port.
        """
        own_addresses: set[tuple[IPAddress | None, int]] = set()
        own_names: set[tuple[str, int]] = set()
        local: frozenset[IPAddress] = frozenset()
        if listen_port is not None:
            ip = _address(listen_host or "0.0.0.0")
            if ip is None:
                own_names.add((_name(listen_host or ""), listen_port))
            elif ip.is_unspecified:
                own_addresses.add((None, listen_port))
                local = _local_addresses()
            else:
                own_addresses.add((ip, listen_port))
        if public_url:
            parts = urlsplit(public_url)
            if parts.hostname:
                port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 80)
                ip = _address(parts.hostname)
                if ip is None:
                    own_names.add((_name(parts.hostname), port))
                else:
                    own_addresses.add((ip, port))
        return cls(
            allow=Rules.parse(allow),
            deny=Rules.parse(DEFAULT_DENY if deny is None else deny),
            own_addresses=frozenset(own_addresses),
            own_names=frozenset(own_names),
            local_addresses=local,
        )

    def allowlist_only(self) -> OutboundPolicy:
        """This policy, refusing whatever the allow rules do not name."""
        return OutboundPolicy(
            self.allow,
            self.deny,
            self.own_addresses,
            self.own_names,
            self.local_addresses,
            require_allow=True,
        )

    # -- the checks --------------------------------------------------------------------------

    def _is_self(self, ip: IPAddress, port: int) -> bool:
        if (ip, port) in self.own_addresses:
            return True
        if (None, port) in self.own_addresses:
            return ip.is_loopback or ip.is_unspecified or ip in self.local_addresses
        return False

    def name_refusal(self, host: str, port: int) -> str | None:
        """Why the host name (before resolution) is refused, or None if it may be tried."""
        if self.deny.match_name(host):
            return "host is denied"
        if self.deny.self_ and (_name(host), port) in self.own_names:
            return "the hub's own address"
        return None

    def address_refusal(self, host: str, ip: IPAddress, port: int) -> str | None:
        """Why connecting to ``ip``:``port`` for ``host`` is refused, or None if allowed."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        reason = self.name_refusal(host, port)
        if reason is not None:
            return reason
        if self.deny.match_address(ip):
            return f"address {ip} is denied"
        if self.deny.self_ and self._is_self(ip, port):
            return "the hub's own address"
        if self.require_allow or not self.allow.empty:
            named = self.allow.match_name(host) or self.allow.match_address(ip)
            if not named and not (self.allow.self_ and self._is_self(ip, port)):
                return f"{host} is not on the allow list"
        return None

    def check_literal(self, host: str, port: int) -> None:
        """Refuse an IP-literal host the policy refuses (names are checked on resolution)."""
        ip = _address(host)
        if ip is not None:
            reason = self.address_refusal(host, ip, port)
            if reason is not None:
                raise OutboundRefused(host, reason)

    def _filter(self, host: str, port: int, infos: Sequence[Any]) -> list[Any]:
        """The ``getaddrinfo`` results the policy allows; OutboundRefused if none."""
        allowed: list[Any] = []
        reason = "no address"
        for info in infos:
            ip = _address(str(info[4][0]))
            if ip is None:
                continue
            refusal = self.address_refusal(host, ip, port)
            if refusal is None:
                allowed.append(info)
            else:
                reason = refusal
        if not allowed:
            raise OutboundRefused(host, reason)
        return allowed

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` now and return the addresses the policy allows, in order.

        Raises OutboundRefused when none is allowed and ResolutionFailed when the name
        does not resolve.
        """
        reason = self.name_refusal(host, port)
        if reason is not None:
            raise OutboundRefused(host, reason)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ResolutionFailed(f"cannot resolve {host}") from exc
        return _unique(str(i[4][0]) for i in self._filter(host, port, infos))

    def check_host(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` synchronously and return the allowed addresses (for MQTT
        clients, which connect from a thread); connect to one of them, not to the name.

        Raises OutboundRefused or ResolutionFailed like :meth:`resolve`.
        """
        reason = self.name_refusal(host, port)
        if reason is not None:
            raise OutboundRefused(host, reason)
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ResolutionFailed(f"cannot resolve {host}") from exc
        return _unique(str(i[4][0]) for i in self._filter(host, port, infos))

    async def check_url(self, url: str, schemes: Iterable[str] = ("http", "https")) -> None:
        """The check made when an endpoint is registered (a subscription's endpoint).

        Refuses another scheme, a URL without a host, and a host the policy refuses by
        its name, its literal address or any address it resolves to now. A name that does
        not resolve (yet) is not refused here: connections are checked again when made.
        Raises OutboundRefused (or ValueError for a malformed URL).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in set(schemes):
            raise ValueError(f"scheme {scheme or '(none)'!r} is not allowed")
        host = parts.hostname
        if not host:
            raise ValueError("the URL has no host")
        port = parts.port or DEFAULT_PORTS.get(scheme, 80)
        reason = self.name_refusal(host, port)
        if reason is not None:
            raise OutboundRefused(host, reason)
        ip = _address(host)
        if ip is not None:
            self.check_literal(host, port)
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CHECK_RESOLVE_TIMEOUT):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (TimeoutError, socket.gaierror, UnicodeError):
            return
        for info in infos:  # any refused address refuses the name (it may be chosen)
            resolved = _address(str(info[4][0]))
            if resolved is not None:
                refusal = self.address_refusal(host, resolved, port)
                if refusal is not None:
                    raise OutboundRefused(host, refusal)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _local_addresses() -> frozenset[IPAddress]:
    """This machine's addresses, as far as its own name resolves to them."""
    found: set[IPAddress] = set()
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except (OSError, UnicodeError):
        return frozenset()
    for info in infos:
        ip = _address(str(info[4][0]))
        if ip is not None:
            found.add(ip)
    return frozenset(found)


# -- httpx ----------------------------------------------------------------------------------


class PolicyBackend:
    """An httpcore network backend that resolves, checks and connects to an address."""

    def __init__(self, policy: OutboundPolicy) -> None:
        import httpcore

        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        import httpcore

        try:
            addresses = await self.policy.resolve(host, port)
        except ResolutionFailed as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused(path, "unix sockets are not outbound destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def policy_transport(
    policy: OutboundPolicy, *, limits: httpx.Limits | None = None
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection passes the policy when it is made.

    Environment proxies are not used: through a proxy, the connection the policy sees
    would be the proxy's, not the destination's.
    """
    import httpcore
    import httpx

    limits = limits or httpx.Limits(max_connections=20, max_keepalive_connections=10)
    transport = httpx.AsyncHTTPTransport(trust_env=False, limits=limits)
    # httpx builds its httpcore pool with no way to pass a network backend: the pool is
    # built again with the same settings and the checking backend.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=cast(httpcore.AsyncNetworkBackend, PolicyBackend(policy)),
    )
    return transport


# -- aiohttp --------------------------------------------------------------------------------


class PolicyResolver:
    """An aiohttp resolver (see :func:`policy_resolver`) handing out only addresses the policy allows.

    aiohttp resolves IP-literal hosts without a resolver: check those with
    :meth:`OutboundPolicy.check_literal` before the request. Refusals surface from
    aiohttp as ``ClientConnectorError`` whose ``os_error`` is the OutboundRefused.
    """

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self.policy.resolve(host, port)
        except ResolutionFailed as exc:
            raise OSError(str(exc)) from exc
        results: list[ResolveResult] = []
        for address in addresses:
            ip = ipaddress.ip_address(address)
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            results.append(
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": fam,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        if not results:
            raise OSError(f"no allowed address of the requested family for {host}")
        return results

    async def close(self) -> None:
        return None


def policy_resolver(policy: OutboundPolicy) -> AbstractResolver:
    """A :class:`PolicyResolver`, for ``aiohttp.TCPConnector(resolver=...)``."""
    from aiohttp.abc import AbstractResolver

    AbstractResolver.register(PolicyResolver)
    return cast(AbstractResolver, PolicyResolver(policy))
