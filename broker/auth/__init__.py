"""Access control: credentials, the policy they are held to, and the audit log.

* ``config``: the auth file (``RENKEI_AUTH_FILE``) parsed into a ``Policy``, held by a
  ``PolicyHolder`` that reloads it on SIGHUP;
* ``credentials``: ``Authenticator`` turns request headers (API key or bearer JWT)
  into a ``Principal``;
* ``policy``: ``Policy.can`` / ``check`` / ``readable_types`` decide per action, tenant
  and entity type;
* ``audit``: ``AuditLog`` writes one JSON line per write or refusal;
* ``middleware``: what an HTTP app (the broker, the IoT agent) holds for all this
  (``AuthState``) and the ``AuditMiddleware`` that writes its audit lines;
* ``masking``: credentials in subscription endpoints, answered as ``***``.
"""

from broker.auth.audit import AuditLog, open_audit_log
from broker.auth.config import (
    DEFAULT_VOCAB,
    AuthConfigError,
    PolicyHolder,
    default_expand,
    hash_key,
    install_sighup_reload,
    load_policy,
    new_api_key,
    parse_auth_text,
)
from broker.auth.credentials import Authenticator
from broker.auth.masking import (
    MASK,
    is_secret_name,
    mask_headers,
    mask_pairs,
    mask_subscription,
    mask_uri,
)
from broker.auth.policy import ACTIONS, ALL, ANONYMOUS, DEFAULT_TENANT, Action, Policy, Principal

__all__ = [
    "ACTIONS",
    "ALL",
    "ANONYMOUS",
    "DEFAULT_TENANT",
    "DEFAULT_VOCAB",
    "MASK",
    "Action",
    "AuditLog",
    "AuthConfigError",
    "Authenticator",
    "Policy",
    "PolicyHolder",
    "Principal",
    "default_expand",
    "hash_key",
    "install_sighup_reload",
    "is_secret_name",
    "load_policy",
    "mask_headers",
    "mask_pairs",
    "mask_subscription",
    "mask_uri",
    "new_api_key",
    "open_audit_log",
    "parse_auth_text",
]
