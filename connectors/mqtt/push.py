"""HTTP push commands: ``POST {command: value}`` to a device's ``endpoint``.

A device provisioned with ``transport: HTTP`` and an ``endpoint`` gets its commands
pushed, as iotagent-json does; the device's answer is the command's result. The endpoint
is named by whoever provisions devices, so every connection passes the hub's outbound
policy (``broker.outbound``, the same ``RENKEI_OUTBOUND_ALLOW``/``RENKEI_OUTBOUND_DENY``
rules as the broker's notifications), checked on the resolved address when connecting;
an endpoint the policy refuses outright is refused at provisioning.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson

from broker.shared import OutboundPolicy, OutboundRefused, policy_transport
from connectors.mqtt.settings import AgentSettings

log = logging.getLogger("renkei.iota")

PUSH_TIMEOUT = 10.0
#: Longest device answer kept as a command's ``_info``.
MAX_ANSWER = 64 * 1024


class CommandPusher:
    def __init__(self, settings: AgentSettings) -> None:
        self.policy = OutboundPolicy.build(
            allow=settings.outbound_allow,
            deny=settings.outbound_deny,
            listen_host=settings.iota_host,
            listen_port=settings.iota_port,
            public_url=settings.public_url,
        )
        self._http: httpx.AsyncClient | None = None

    async def check(self, url: str) -> None:
        """Refuse (ValueError, OutboundRefused) an endpoint the policy cannot allow."""
        await self.policy.check_url(url)

    async def push(self, url: str, body: dict[str, Any]) -> tuple[bool, Any]:
        """POST ``body``; (True, the device's answer) or (False, why it failed)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                transport=policy_transport(self.policy), timeout=PUSH_TIMEOUT
            )
        try:
            resp = await self._http.post(
                url, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
            )
        except OutboundRefused as exc:
            return False, str(exc)
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OutboundRefused):
                return False, str(cause)
            return False, f"the device at {url} did not answer: {exc!r}"
        text = resp.text[:MAX_ANSWER]
        if not resp.is_success:
            return False, f"the device answered HTTP {resp.status_code}: {text}"
        try:
            answer: Any = orjson.loads(text) if text else ""
        except orjson.JSONDecodeError:
            answer = text
        if isinstance(answer, dict) and len(answer) == 1:
            answer = next(iter(answer.values()))  # {"ping": "pong"}: the command's result
        return True, answer

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
