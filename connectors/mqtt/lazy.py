"""The values of lazy attributes the devices reported, which the agent serves to the
broker's reads (``connectors.mqtt.source``) instead of writing them to it."""

from __future__ import annotations

from typing import Any


class LazyValues:
    """The last value each device reported of each of its lazy attributes (in memory:
    a restarted agent answers nothing until the device reports again)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str | None, str], dict[str, tuple[float, dict[str, Any]]]] = {}

    def put(
        self, tenant: str | None, entity_id: str, name: str, observed: float, attr: dict[str, Any]
    ) -> None:
        """Keep ``attr`` unless a value observed later is kept already."""
        held = self._values.setdefault((tenant, entity_id), {})
        old = held.get(name)
        if old is None or observed >= old[0]:
            held[name] = (observed, attr)

    def of(self, tenant: str | None, entity_id: str) -> dict[str, dict[str, Any]]:
        return {n: a for n, (_, a) in self._values.get((tenant, entity_id), {}).items()}

    def retain(self, keys: set[tuple[str | None, str]]) -> None:
        """Forget the values of entities no device has any more."""
        for key in [k for k in self._values if k not in keys]:
            del self._values[key]
