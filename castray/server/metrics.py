"""Prometheus metrics for ``GET /metrics``, kept in a registry of the app's own (two apps in
one process never share series).

What is counted as it happens (transfers by outcome, their durations and throughputs, chunks
sent again, agent restarts, events dropped) is fed by the event hub; what is a state (each
endpoint's byte counters, endpoints and clusters by state, WebSocket clients) is read from
the registry and the hub at scrape time, so it can never drift from what the API shows.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from castray.models import (
    ClusterConnectedEvent,
    ClusterDisconnectedEvent,
    ClusterStatus,
    CopyStatus,
    EventData,
    NodeStatus,
    TransferFinishedEvent,
)
from castray.server.events import EventHub
from castray.server.registry import Registry

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Seconds: a small file on one machine to a big one across a slow link."""
THROUGHPUT_BUCKETS = tuple(float(10**e * m) for e in range(5, 11) for m in (1, 2.5, 5))
"""Bytes per second, 100 kB/s to 5 GB/s."""


class Metrics:
    """CastRay's series; ``render`` answers a scrape."""

    def __init__(self, registry: Registry, events: EventHub) -> None:
        self.prometheus = CollectorRegistry(auto_describe=True)
        self._connected_before: set[str] = set()
        self.transfers = Counter(
            "castray_transfers",
            "Transfers that ended, by mode and final status.",
            ("mode", "status"),
            registry=self.prometheus,
        )
        self.duration = Histogram(
            "castray_transfer_duration_seconds",
            "From start to end of each transfer that ended.",
            ("mode",),
            buckets=DURATION_BUCKETS,
            registry=self.prometheus,
        )
        self.throughput = Histogram(
            "castray_transfer_throughput_bytes_per_second",
            "The file's size over the duration, of each completed transfer.",
            ("mode",),
            buckets=THROUGHPUT_BUCKETS,
            registry=self.prometheus,
        )
        self.chunks_resent = Counter(
            "castray_chunks_resent",
            "Chunks sent again after a failed check or a lost hop.",
            registry=self.prometheus,
        )
        self.agent_restarts = Counter(
            "castray_agent_restarts",
            "A cluster's agent connected again after its cluster was lost or unreachable.",
            ("cluster",),
            registry=self.prometheus,
        )
        self.pin_fill = Histogram(
            "castray_pin_fill_seconds",
            "From a node lacking a pinned file's version (it joined, its copy went, a new "
            "version came) to its verified copy.",
            buckets=DURATION_BUCKETS,
            registry=self.prometheus,
        )
        self.prometheus.register(_StateCollector(registry, events))
        events.observe(self._observe)

    def observe_pin_fill(self, seconds: float) -> None:
        self.pin_fill.observe(seconds)

    def watch_pins(self, pins: PinCounts) -> None:
        """Pinned copies by state, read at scrape time."""
        self.prometheus.register(_PinCollector(pins))

    def render(self) -> bytes:
        return generate_latest(self.prometheus)

    def _observe(self, event: EventData) -> None:
        if isinstance(event, TransferFinishedEvent):
            transfer = event.transfer
            mode = transfer.mode.value
            self.transfers.labels(mode, transfer.status.value).inc()
            self.chunks_resent.inc(transfer.chunks_resent)
            if transfer.started_at is not None and transfer.finished_at is not None:
                seconds = (transfer.finished_at - transfer.started_at).total_seconds()
                self.duration.labels(mode).observe(seconds)
            if transfer.throughput_bps is not None:
                self.throughput.labels(mode).observe(transfer.throughput_bps)
        elif isinstance(event, ClusterConnectedEvent):
            if event.cluster in self._connected_before:
                self.agent_restarts.labels(event.cluster).inc()
            self._connected_before.add(event.cluster)
        elif isinstance(event, ClusterDisconnectedEvent) and not event.reconnecting:
            self._connected_before.discard(event.cluster)  # a user's connect again is no restart


class _StateCollector(Collector):
    """Series read from the registry and the event hub when scraped."""

    def __init__(self, registry: Registry, events: EventHub) -> None:
        self._registry = registry
        self._events = events

    def collect(self) -> Iterator[Metric]:
        labels = ("endpoint", "cluster")
        sent = CounterMetricFamily(
            "castray_endpoint_bytes_sent", "Verified bytes an endpoint sent.", labels=labels
        )
        received = CounterMetricFamily(
            "castray_endpoint_bytes_received", "Verified bytes an endpoint received.", labels=labels
        )
        nodes = self._registry.nodes()
        for node in nodes:
            sent.add_metric((node.id, node.cluster), node.counters.bytes_sent)
            received.add_metric((node.id, node.cluster), node.counters.bytes_received)
        yield sent
        yield received
        endpoints = GaugeMetricFamily(
            "castray_endpoints", "Endpoints by cluster and state.", labels=("cluster", "state")
        )
        clusters = self._registry.clusters()
        by_state = Tally((n.cluster, n.status) for n in nodes)
        for cluster in clusters:
            for node_state in NodeStatus:
                endpoints.add_metric(
                    (cluster.name, node_state.value), by_state[cluster.name, node_state]
                )
        yield endpoints
        states = Tally((c.status, c.is_external) for c in clusters)
        family = GaugeMetricFamily(
            "castray_clusters", "Clusters by state.", labels=("state", "external")
        )
        for state in ClusterStatus:
            for external in (False, True):
                family.add_metric((state.value, str(external).lower()), states[state, external])
        yield family
        yield GaugeMetricFamily(
            "castray_websocket_clients",
            "WebSocket clients subscribed to /ws.",
            value=self._events.subscribers,
        )
        yield CounterMetricFamily(
            "castray_events_dropped",
            "Events a WebSocket client that fell behind lost.",
            value=self._events.dropped,
        )


class PinCounts(Protocol):
    def copies_by_status(self) -> dict[CopyStatus, int]: ...


class _PinCollector(Collector):
    def __init__(self, pins: PinCounts) -> None:
        self._pins = pins

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "castray_pinned_copies", "Pinned copies by state, over every pin.", labels=("state",)
        )
        for state, count in self._pins.copies_by_status().items():
            family.add_metric((state.value,), count)
        yield family
