"""Counters of the agent, rendered in the Prometheus text format at ``/metrics``.

Updated only on the event loop thread (paho's thread hands messages over first), so
plain integers suffice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

PREFIX = "renkei_iota"

_HELP = {
    "messages_received_total": "MQTT messages received, by kind",
    "measures_stored_total": "Measures the broker accepted",
    "bad_input_total": "Messages or values refused, by reason",
    "dropped_total": "Measures dropped, by reason",
    "broker_writes_total": "Batch writes accepted by the broker",
    "broker_write_failures_total": "Batch write attempts that failed and were retried",
    "entities_rejected_total": "Entities of a batch write the broker refused",
    "commands_sent_total": "Commands published to devices",
    "command_results_total": "Command results received from devices",
    "mqtt_connections_total": "MQTT connections established (reconnections included)",
}


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[tuple[str, str]] = Counter()
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, label: str = "", amount: int = 1) -> None:
        self.counters[name, label] += amount

    def get(self, name: str, label: str = "") -> int:
        return self.counters[name, label]

    def total(self, name: str) -> int:
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def render(self) -> str:
        lines: list[str] = []
        label_names = {
            "messages_received_total": "kind",
            "bad_input_total": "reason",
            "dropped_total": "reason",
        }
        for name, help_text in _HELP.items():
            lines.append(f"# HELP {PREFIX}_{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}_{name} counter")
            series = sorted((lbl, v) for (n, lbl), v in self.counters.items() if n == name)
            if not series:
                lines.append(f"{PREFIX}_{name} 0")
            for label, value in series:
                if label:
                    lines.append(f'{PREFIX}_{name}{{{label_names[name]}="{label}"}} {value}')
                else:
                    lines.append(f"{PREFIX}_{name} {value}")
        for name, read in sorted(self.gauges.items()):
            lines.append(f"# TYPE {PREFIX}_{name} gauge")
            lines.append(f"{PREFIX}_{name} {read():g}")
        return "\n".join(lines) + "\n"
