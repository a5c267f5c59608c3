"""Counters of the agent, rendered in the Prometheus text format at ``/metrics``.

Updated only on the event loop thread (paho's thread hands messages over first), so
plain integers suffice; prometheus-client renders them at scrape time, as the broker's
``/metrics`` does (``broker.metrics``: the same ``renkei_`` prefix and conventions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

PREFIX = "renkei_iota"

_HELP = {
    "messages_received_total": "Messages (MQTT or HTTP) received, by kind",
    "measures_stored_total": "Measures the broker accepted",
    "bad_input_total": "Messages or values refused, by reason",
    "dropped_total": "Measures dropped, by reason",
    "broker_writes_total": "Batch writes accepted by the broker",
    "broker_write_failures_total": "Batch write attempts that failed and were retried",
    "entities_rejected_total": "Entities of a batch write the broker refused",
    "commands_sent_total": "Commands sent to devices (published, pushed, or held for polling)",
    "command_results_total": "Command results received from devices",
    "command_failures_total": "Commands pushed to an HTTP device that failed",
    "lazy_values_total": "Values of lazy attributes received (kept for the broker's reads)",
    "lazy_reads_total": "Entities whose lazy attributes were read through the agent",
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
        registry = CollectorRegistry()
        registry.register(_Collector(self))
        return generate_latest(registry).decode()


_LABELS = {
    "messages_received_total": "kind",
    "bad_input_total": "reason",
    "dropped_total": "reason",
}


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counters = self.metrics.counters
        for name, help_text in _HELP.items():
            label = _LABELS.get(name)
            family = CounterMetricFamily(
                f"{PREFIX}_{name}", help_text, labels=(label,) if label else None
            )
            series = sorted((lbl, v) for (n, lbl), v in list(counters.items()) if n == name)
            if label is None:
                family.add_metric([], sum(v for _, v in series))
            for value, n in series if label else ():
                family.add_metric([value], n)
            yield family
        for name, read in sorted(self.metrics.gauges.items()):
            gauge = GaugeMetricFamily(f"{PREFIX}_{name}", name.replace("_", " "))
            gauge.add_metric([], read())
            yield gauge
