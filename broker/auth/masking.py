"""Secrets at rest, answered masked: credentials in subscription endpoints.

A subscription may carry what its endpoint needs to accept notifications: a password in
the URI (``https://user:password@host/``), a token in its query string, or headers in
``receiverInfo``/``notifierInfo`` (NGSI-LD) and ``httpCustom.headers`` (NGSI v2). They
are stored as given, so notifications work, and every answer that shows the
subscription shows them as ``***``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

#: Names of headers, query parameters and info keys whose values are secrets.
_SECRET_NAME = re.compile(
    r"auth|token|key|secret|passw|pwd|credential|cookie|signature|session|sig$",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a header, parameter or key named ``name`` holds a secret (Authorization,
    X-Auth-Token, apikey, client_secret, password, Cookie ...)."""
    return bool(_SECRET_NAME.search(name))


def mask_uri(uri: str) -> str:
    """``uri`` with its userinfo (``user:password@``) and secret-named query parameters
    replaced by ``***``; a URI that does not parse is masked whole."""
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = MASK + "@" + netloc.rpartition("@")[2]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(is_secret_name(k) for k, _ in pairs):
                query = urlencode(
                    [(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="*"
                )
        if netloc == parts.netloc and query == parts.query:
            return uri
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return MASK


def mask_pairs(pairs: Any) -> Any:
    """NGSI-LD ``[{"key": k, "value": v}, ...]`` with secret-named values masked."""
    if not isinstance(pairs, list):
        return pairs
    return [
        {**p, "value": MASK}
        if isinstance(p, dict) and isinstance(p.get("key"), str) and is_secret_name(p["key"])
        else p
        for p in pairs
    ]


def mask_headers(headers: Any) -> Any:
    """A header or query-parameter mapping with secret-named values masked."""
    if not isinstance(headers, Mapping):
        return headers
    return {k: MASK if isinstance(k, str) and is_secret_name(k) else v for k, v in headers.items()}


def mask_subscription(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a subscription (NGSI-LD or NGSI v2) with endpoint credentials masked;
    ``doc`` itself is left as stored."""
    out = copy.deepcopy(dict(doc))
    notification = out.get("notification")
    if not isinstance(notification, dict):
        return out
    endpoint = notification.get("endpoint")
    if isinstance(endpoint, dict):  # NGSI-LD
        if isinstance(endpoint.get("uri"), str):
            endpoint["uri"] = mask_uri(endpoint["uri"])
        for name in ("receiverInfo", "notifierInfo"):
            if name in endpoint:
                endpoint[name] = mask_pairs(endpoint[name])
    for name in ("http", "httpCustom", "mqtt", "mqttCustom"):  # NGSI v2
        part = notification.get(name)
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("url"), str):
            part["url"] = mask_uri(part["url"])
        for secret in ("passwd", "password"):
            if secret in part:
                part[secret] = MASK
        for mapping in ("headers", "qs"):
            if mapping in part:
                part[mapping] = mask_headers(part[mapping])
    return out


def _unmask_pairs(old: Any, new: Any) -> Any:
    """``new`` receiverInfo pairs, a ``***`` value taking the stored value of its key."""
    if not isinstance(new, list) or not isinstance(old, list):
        return new
    stored = {p.get("key"): p.get("value") for p in old if isinstance(p, dict)}
    return [
        {**p, "value": stored[p["key"]]}
        if isinstance(p, dict) and p.get("value") == MASK and p.get("key") in stored
        else p
        for p in new
    ]


def keep_masked(stored: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """An NGSI-LD ``notification`` patch in which what a client echoes back masked (a
    URI as ``mask_uri`` answered it, ``***`` receiverInfo values) keeps the stored
    secret, so a read-modify-write of a subscription does not overwrite it with
    ``***``."""
    out = dict(patch)
    old = stored.get("endpoint")
    new = out.get("endpoint")
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return out
    endpoint = dict(new)
    uri = old.get("uri")
    if isinstance(uri, str) and endpoint.get("uri") == mask_uri(uri):
        endpoint["uri"] = uri
    for name in ("receiverInfo", "notifierInfo"):
        if name in endpoint:
            endpoint[name] = _unmask_pairs(old.get(name), endpoint[name])
    out["endpoint"] = endpoint
    return out


def keep_masked_v2(stored: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """An NGSI v2 ``notification`` given in a PATCH, in which what a client echoes back
    masked (a URL as ``mask_uri`` answered it, ``***`` header, query or ``passwd``
    values) keeps the stored secret."""
    out = dict(patch)
    for name in ("http", "httpCustom", "mqtt", "mqttCustom"):
        old = stored.get(name)
        new = out.get(name)
        if not isinstance(old, Mapping) or not isinstance(new, Mapping):
            continue
        part = dict(new)
        url = old.get("url")
        if isinstance(url, str) and part.get("url") == mask_uri(url):
            part["url"] = url
        if part.get("passwd") == MASK and "passwd" in old:
            part["passwd"] = old["passwd"]
        for mapping in ("headers", "qs"):
            kept, given = old.get(mapping), part.get(mapping)
            if isinstance(kept, Mapping) and isinstance(given, Mapping):
                part[mapping] = {
                    k: kept[k] if v == MASK and k in kept else v for k, v in given.items()
                }
        out[name] = part
    return out
