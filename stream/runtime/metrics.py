"""Prometheus metrics of one worker, on a registry of its own so that workers in one process
(tests, benchmarks) never share counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream.runtime.latency import StageLatency

# Where a ranking's time goes, handover by the fetch to the broker's ack: see docs/scoring.md.
SCORING_STAGES = ("features", "matrix", "model", "ads", "produce", "total")
# 0.1 ms to 1.09 s, each bound 20% above the one before (52 buckets). A quantile read back
# (histogram_quantile, or the scoring bench's in-worker figure) interpolates linearly inside
# one bucket, so it is off by at most that bucket's width: 20% here, where the earlier
# hand-picked bounds were up to 2.5x apart (10 -> 25 ms, 100 -> 250 ms) just where a p99
# lies. Observing walks the bounds in order: ~0.4 us more per observation at 5 ms.
SCORING_BUCKETS_S = tuple(round(1e-4 * 1.2**k, 7) for k in range(52))


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
        self.replayed = Counter(
            "streamrank_events_replayed", "Events read again after a restart or a rewind and "
            "skipped, because the store's offset marks show them applied already.",
            registry=self.registry)
        self.rejected = Counter(
            "streamrank_rejected", "Messages sent to the dead-letter topic.",
            ["topic", "reason"], registry=self.registry)
        self.batch_seconds = Histogram(
            "streamrank_feature_write_seconds",
            "Combine and store write per micro-batch (while the next batch is decoded); "
            "its offsets are then committed within "
            "STREAMRANK_COMMIT_INTERVAL_MS.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))

        self.requests = Counter(
            "streamrank_requests_ranked", "Ranking requests answered.", ["model_version"],
            registry=self.registry)
        self.ranking_ms = Histogram(
            "streamrank_ranking_latency_ms", "Worker receipt to result, per request.",
            registry=self.registry,
            buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250))
        self.scoring_latency = StageLatency(
            self.registry, "streamrank_scoring_latency_seconds",
            "Per request, by stage: features (retrieval and the feature round trip), matrix, "
            "model (scores and values), ads (only requests with ad slots), produce (the "
            "ranking's send until the broker's ack) and total (the fetch's handover to that "
            "ack; over HTTP, to the answer). Batch stages count each request of the batch "
            "with the batch's duration.", SCORING_STAGES, SCORING_BUCKETS_S)
        self.http_refused = Counter(
            "streamrank_http_refused", "HTTP requests refused before ranking, by reason: "
            "unauthorized, overloaded, starting, unavailable (bad bodies count as "
            "streamrank_rejected{topic=\"http\"}).", ["reason"], registry=self.registry)

        self.outcomes = Counter(
            "streamrank_outcomes", "Outcomes emitted (acknowledged), by kind: item or ad.",
            ["kind"], registry=self.registry)
        self.outcomes_late = Counter(
            "streamrank_outcome_events_late",
            "Events read after their ranking's outcome window had closed: counted, not joined.",
            registry=self.registry)
        self.outcomes_dropped = Counter(
            "streamrank_outcome_inputs_dropped",
            "Outcome inputs that join nothing, by reason: unmatched_event (its ranking never "
            "came within the window), late_ranking (read after its own window had closed).",
            ["reason"], registry=self.registry)

        self.drift_updates = Counter(
            "streamrank_drift_updates", "Signal values fed to the drift monitors.",
            registry=self.registry)
        self.drift_signal = Gauge(
            "streamrank_drift_signal", "Each monitored signal's current level: the mean of "
            "its latest values (up to 1000) since its last change.", ["signal"],
            registry=self.registry)
        self.drift_alerts = Counter(
            "streamrank_drift_alerts", "Drift alerts published.", ["signal", "severity"],
            registry=self.registry)
        self.drift_detections_merged = Counter(
            "streamrank_drift_detections_merged", "Detections that were the same change as an "
            "alert within STREAMRANK_ALERT_COOLDOWN_S, so sent no alert of their own.",
            registry=self.registry)

        self.interests_updated = Counter(
            "streamrank_interests_updated", "Users whose interests were written.",
            registry=self.registry)
        self.interests_unknown_items = Counter(
            "streamrank_interests_unknown_items", "Positive engagements with an item that had "
            "no embedding in the store yet: left out of the interests.",
            registry=self.registry)
        self.interests_reset = Counter(
            "streamrank_interests_reset", "Stored interests that could not be read (another "
            "layout, or damaged) and were started over.", registry=self.registry)
        self.retrieved = Counter(
            "streamrank_retrieved_requests", "Requests whose candidates were retrieved, by "
            "source: interests, trending, none (nothing to retrieve yet).", ["source"],
            registry=self.registry)

        self.bn_rows = Counter(
            "streamrank_bn_rows", "Feature-log rows the BN role read, by what became of them: "
            "used, non_finite, other_features (another column layout), refused (in a refused "
            "update), dropped (the oldest, beyond STREAMRANK_BN_MAX_ROWS waiting).", ["outcome"],
            registry=self.registry)
        self.bn_updates = Counter(
            "streamrank_bn_updates", "Statistics updates, by result: accepted, or the guard "
            "that refused it (min_rows, step_cap, collapse), or frozen.", ["result"],
            registry=self.registry)
        self.bn_channels_held = Counter(
            "streamrank_bn_channels_held", "Channels an accepted update left as they were: no "
            "spread within its batch (a rare flag absent, a stuck input).",
            registry=self.registry)
        self.bn_rollbacks = Counter(
            "streamrank_bn_watchdog_rollbacks", "Versions the watchdog rolled back: worse "
            "than their parent on the same labelled outcomes.", registry=self.registry)
        self.bn_judged = Counter(
            "streamrank_bn_watchdog_judged", "Versions the watchdog compared with their parent.",
            registry=self.registry)

        self.ad_decisions = Counter(
            "streamrank_ad_decisions", "Ad-slot decisions served and logged (an ad or none).",
            registry=self.registry)
        self.ads_outcomes = Counter(
            "streamrank_ads_outcomes", "Ad-slot outcomes the learner read, by what became of "
            "them: learnt; no_context (its feature log never joined); other_context (another "
            "context layout); stale (older than STREAMRANK_ADS_MAX_AGE_S).", ["outcome"],
            registry=self.registry)
        self.ads_versions = Counter(
            "streamrank_ads_versions", "Bandit parameter versions the learner published.",
            registry=self.registry)

        self.state_refused = Counter(
            "streamrank_state_updates_refused",
            "Versions on model-updates this worker could not install, by reader (the serving "
            "one is versioned-state; a role that publishes versions reads them too), kind and "
            "reason (invalid_state: fails to load; untrusted_state: outside the model dir, "
            "unsigned or wrongly signed).", ["reader", "kind", "reason"], registry=self.registry)
        self.state_ignored = Counter(
            "streamrank_state_updates_ignored",
            "Versions on model-updates of a kind this worker has no loader for, by reader.",
            ["reader", "kind"], registry=self.registry)

        self.alert_deliveries = Counter(
            "streamrank_alert_deliveries", "Drift-alert deliveries to subscriptions, by sink "
            "(kafka, webhook) and outcome: delivered; retried (an attempt failed, another "
            "follows); failed (dead-lettered as delivery_failed).", ["sink", "outcome"],
            registry=self.registry)
        self.alert_delivery_failures = Counter(
            "streamrank_alert_delivery_failures", "Alerts dead-lettered as delivery_failed, by "
            "subscription id.", ["subscription"], registry=self.registry)

        self.item_index_items = Gauge(
            "streamrank_item_index_items", "Organic items in this worker's ANN index.",
            registry=self.registry)
        self.item_index_records = Counter(
            "streamrank_item_index_records_read", "Records read from the items topic by the ANN "
            "index's reader (items, ads, refused): after a restart from a snapshot, only the "
            "tail.", registry=self.registry)
        self.item_index_upserts = Counter(
            "streamrank_item_index_upserts", "Items inserted into or replaced in the ANN index.",
            registry=self.registry)
        self.item_index_removals = Counter(
            "streamrank_item_index_removals", "Items removed from the ANN index, by reason: "
            "expired (older than STREAMRANK_ITEM_MAX_AGE_S), retracted (metadata expired: true, "
            "or the id now names an ad).", ["reason"], registry=self.registry)
        self.item_index_snapshot_ts = Gauge(
            "streamrank_item_index_snapshot_timestamp_seconds", "When the ANN index's last "
            "snapshot was written or loaded (Unix time; its age is time() minus this).",
            registry=self.registry)
        self.item_index_snapshot_seconds = Histogram(
            "streamrank_item_index_snapshot_seconds", "Time to write one ANN index snapshot "
            "(copied under the index's lock, written off the event loop).",
            registry=self.registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def observe_ranking(self, model_version: str, latency_ms: float) -> None:
        self.requests.labels(model_version).inc()
        self.ranking_ms.observe(latency_ms)

    def total(self, name: str, **labels: str) -> float:
        """Sum of a counter over its labels (e.g. ``"streamrank_rejected"``), or over those
        samples that carry ``labels``."""
        return sum(
            sample.value
            for metric in self.registry.collect() if metric.name == name
            for sample in metric.samples if sample.name == f"{name}_total"
            and labels.items() <= sample.labels.items()
        )
