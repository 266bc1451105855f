"""The features sections' stream: events with known unique ids and one shared ``ts`` (so every
count is a whole number of events, see :mod:`bench.faults.closed_form`), some item upserts,
produced at a steady pace; the feature group's progress; and the stored state read back
through the store's public read API.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import TopicPartition
from aiokafka.structs import RecordMetadata

from bench.faults.closed_form import ClosedForm, closed_form, compare
from bench.features import EVENT_MIX
from bench.harness import Environment, GroupProgress, open_run_store
from schemas import Event, ItemUpsert, encode
from stream.runtime.clients import kafka_producer

# t, events committed, events produced, records (events and upserts) produced but not committed
Sample = tuple[float, int, int, int]
SAMPLE_INTERVAL_S = 0.1  # commits are merged over 100 ms (STREAMRANK_COMMIT_INTERVAL_MS)
READ_CHUNK = 2000


@dataclass(frozen=True)
class KnownStream:
    ts: float
    events: list[tuple[bytes, bytes]]  # key, encoded Event
    upserts: list[tuple[bytes, bytes]]  # key, encoded ItemUpsert
    expected: ClosedForm
    users: list[str]
    items: list[str]


def known_stream(n_events: int, n_users: int, n_items: int, n_upserts: int, dim: int,
                 seed: int, tag: str) -> KnownStream:
    """``n_events`` events keyed by user, over many users and (Zipf-popular) items."""
    rng = np.random.default_rng(seed)
    ts = float(int(time.time()) - 60)
    types = rng.choice(list(EVENT_MIX), size=n_events, p=list(EVENT_MIX.values()))
    users = rng.integers(0, n_users, size=n_events)
    items = rng.zipf(1.3, size=n_events) % n_items
    events = [Event(ts=ts, event_id=f"{tag}-e{k}", user_id=f"u{users[k]}",
                    item_id=f"i{items[k]}", type=str(types[k]),  # type: ignore[arg-type]
                    dwell_s=12.5 if types[k] == "dwell" else None)
              for k in range(n_events)]
    upserted = [f"i{k}" for k in rng.choice(n_items, size=min(n_upserts, n_items),
                                            replace=False)]
    embeddings = rng.standard_normal((len(upserted), dim)).astype(np.float32) / np.sqrt(dim)
    upserts = [(item_id.encode(), encode(ItemUpsert(ts=ts, item_id=item_id,
                                                    embedding=embeddings[k].tolist())))
               for k, item_id in enumerate(upserted)]
    return KnownStream(ts, [(e.user_id.encode(), encode(e)) for e in events], upserts,
                       closed_form(events, upserted), sorted({e.user_id for e in events}),
                       sorted({e.item_id for e in events} | set(upserted)))


@dataclass
class Produced:
    """The next offset of every partition written to, from the producer's acknowledgements."""

    ends: dict[TopicPartition, int] = field(default_factory=dict)
    done: bool = False

    def acknowledged(self, sent: asyncio.Future[RecordMetadata]) -> None:
        if not sent.cancelled() and sent.exception() is None:
            meta = sent.result()
            tp = TopicPartition(meta.topic, meta.partition)
            self.ends[tp] = max(self.ends.get(tp, 0), meta.offset + 1)


async def produce_paced(env: Environment, stream: KnownStream, seconds: float,
                        produced: Produced) -> float:
    """Upserts spread among the events, all at an even pace over ``seconds``; how long it
    took until every record was acknowledged."""
    settings = env.settings
    every = max(1, len(stream.events) // max(1, len(stream.upserts)))
    records = []
    for k, event in enumerate(stream.events):
        if k % every == 0 and k // every < len(stream.upserts):
            records.append((settings.topic("items"), stream.upserts[k // every]))
        records.append((settings.topic("events"), event))
    producer = kafka_producer(settings, env.bootstrap, linger_ms=20)  # as bench/features.py
    await producer.start()
    started = time.monotonic()
    try:
        pending = []
        for k, (topic, (key, value)) in enumerate(records):
            delay = started + seconds * k / len(records) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = await producer.send(topic, value, key=key)
            sent.add_done_callback(produced.acknowledged)
            pending.append(sent)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    produced.done = True
    return time.monotonic() - started


@dataclass
class Progress:
    """Samples of the feature group's committed offsets against what was produced."""

    env: Environment
    produced: Produced
    t0: float
    samples: list[Sample] = field(default_factory=list)
    lag: int | None = None  # records produced and not yet committed, at the latest sample

    async def run(self) -> None:
        settings = self.env.settings
        events = settings.topic("events")
        group = GroupProgress(settings, self.env.bootstrap, settings.group("features"),
                              (events, settings.topic("items")))
        try:
            while True:
                committed = await asyncio.to_thread(group.committed)
                ends = dict(self.produced.ends)
                self.lag = sum(max(end - committed.get(tp, 0), 0) for tp, end in ends.items())
                self.samples.append((time.monotonic() - self.t0,
                                     sum(c for tp, c in committed.items() if tp.topic == events),
                                     sum(e for tp, e in ends.items() if tp.topic == events),
                                     self.lag))
                await asyncio.sleep(SAMPLE_INTERVAL_S)
        finally:
            group.close()

    async def caught_up(self, timeout_s: float) -> bool:
        """Until everything produced is committed: a sample taken after production ended
        shows no lag."""
        deadline = time.monotonic() + timeout_s
        after = time.monotonic() - self.t0
        while not (self.produced.done and self.samples and self.samples[-1][0] > after
                   and self.lag == 0):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def moved_since(self, t: float) -> bool:
        """Whether the group committed anything after ``t``, or has nothing left to do."""
        before = [committed for t_sample, committed, _, _ in self.samples if t_sample <= t]
        base = before[-1] if before else 0
        return any(committed > base for t_sample, committed, _, _ in self.samples
                   if t_sample > t) or (self.produced.done and self.lag == 0)


def catch_up_per_s(samples: Sequence[Sample], backlog: int) -> float:
    """Events committed per second over the sampling intervals that began with more than
    ``backlog`` records waiting and in which the group moved: the worker's speed while it works
    off a backlog (not while it is dead, starting or joining the group)."""
    moved = seconds = 0.0
    for (t, committed, _, lag), (t_next, committed_next, _, _) in itertools.pairwise(samples):
        if lag > backlog and committed_next > committed:
            moved += committed_next - committed
            seconds += t_next - t
    return round(moved / seconds, 1) if seconds else float("nan")


def recovery_s(samples: Sequence[Sample], kills: Sequence[float], backlog: int) -> list[float]:
    """Per kill -9 that its next life recovered from before being killed in turn: seconds until
    the group was back at the live edge (no more than ``backlog`` records waiting), restart,
    rejoin and catch-up included."""
    back = []
    for killed, next_kill in zip(kills, [*kills[1:], float("inf")], strict=True):
        behind = False
        for t, _, _, lag in samples:
            if not killed < t <= next_kill:
                continue
            behind = behind or lag > backlog
            if behind and lag <= backlog:
                back.append(round(t - killed, 3))
                break
    return back


async def compare_stored(env: Environment, stream: KnownStream) -> dict[str, Any]:
    """Every user's and item's stored counters against the closed form."""
    store = await open_run_store(env.settings)
    users: dict[str, bytes | None] = {}
    items: dict[str, bytes | None] = {}
    metas: dict[str, bytes | None] = {}
    try:
        for start in range(0, len(stream.users), READ_CHUNK):
            chunk = stream.users[start:start + READ_CHUNK]
            fetched = await store.fetch_many([(user, ()) for user in chunk])
            users.update(zip(chunk, (f.user for f in fetched), strict=True))
        for start in range(0, len(stream.items), READ_CHUNK):
            chunk = stream.items[start:start + READ_CHUNK]
            (fetched_items,) = await store.fetch_many([(stream.users[0], chunk)])
            items.update(zip(chunk, fetched_items.items, strict=True))
            metas.update(zip(chunk, fetched_items.item_meta, strict=True))
    finally:
        await store.close()
    return compare(stream.expected, users, items, metas, stream.ts)
