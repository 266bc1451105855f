"""Prometheus metrics of one worker, on a registry of its own so that workers in one process
(tests, benchmarks) never share counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "streamrank_events_processed", "Events applied to the feature store.",
            registry=self.registry)
        self.items = Counter(
            "streamrank_items_upserted", "Item and ad upserts applied.", registry=self.registry)
        self.duplicates = Counter(
            "streamrank_duplicate_events", "Events skipped because their event_id was seen.",
            registry=self.registry)
        self.rejected = Counter(
            "streamrank_rejected", "Messages sent to the dead-letter topic.",
            ["topic", "reason"], registry=self.registry)
        self.batch_seconds = Histogram(
            "streamrank_feature_write_seconds", "Combine, store write and commit per micro-batch.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))

    def total(self, name: str) -> float:
        """Sum of a counter over all its labels (e.g. ``"streamrank_rejected"``)."""
        return sum(
            sample.value
            for metric in self.registry.collect() if metric.name == name
            for sample in metric.samples if sample.name == f"{name}_total"
        )
