"""The online feature store: Redis in production, in memory by default, one interface.

Each entity is one packed value (see :mod:`models.features`), so a whole candidate list comes
back in one MGET. A micro-batch is written atomically together with its event-id dedup markers:
either every event of the batch counts once, or (when some were seen before) nothing is written
and the caller retries without the duplicates. Replays after a crash are therefore harmless.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import string
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from models.features import (
    HALF_LIVES_S,
    HISTORY_TS,
    N_COUNTERS,
    VALUE_SIZE,
    EntityState,
    ItemMeta,
    history_entry,
    merge,
)
from stream.errors import StoreUnavailable
from stream.redaction import redact_url

log = logging.getLogger(__name__)


@dataclass
class FeatureUpdate:
    """What one micro-batch writes: deltas to merge, item facts to replace, ids to remember."""

    event_ids: list[str] = field(default_factory=list)
    users: dict[str, bytes] = field(default_factory=dict)
    items: dict[str, bytes] = field(default_factory=dict)
    item_meta: dict[str, bytes] = field(default_factory=dict)
    history: list[tuple[str, str, float]] = field(default_factory=list)  # user, item, ts


@dataclass(frozen=True)
class FetchedFeatures:
    user: bytes | None
    items: list[bytes | None]
    item_meta: list[bytes | None]
    history: list[bytes]  # packed engagement entries, newest first


Lookup = tuple[str, Sequence[str]]  # user id, candidate item ids


class FeatureStore(ABC):
    """Interface shared by the Redis and in-memory stores."""

    description: str

    @abstractmethod
    async def apply(self, update: FeatureUpdate) -> list[str]:
        """Write ``update`` atomically; return already-seen event ids instead if there are any."""

    @abstractmethod
    async def fetch_many(self, lookups: Sequence[Lookup]) -> list[FetchedFeatures]:
        """Everything several requests need, in one round trip."""

    async def fetch(self, user_id: str, item_ids: Sequence[str]) -> FetchedFeatures:
        return (await self.fetch_many([(user_id, item_ids)]))[0]

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """Number of users and items that have features."""

    async def close(self) -> None:
        return None


class MemoryStore(FeatureStore):
    description = "in-memory"

    def __init__(self, dedup_ttl_s: float, history_length: int) -> None:
        self._dedup_ttl_s = dedup_ttl_s
        self._history_length = history_length
        self._history: dict[str, deque[bytes]] = {}
        self._seen: dict[str, float] = {}
        self._users: dict[str, bytes] = {}
        self._items: dict[str, bytes] = {}
        self._meta: dict[str, bytes] = {}

    async def apply(self, update: FeatureUpdate) -> list[str]:
        now = time.monotonic()
        self._forget_expired(now)
        self._meta.update(update.item_meta)
        duplicates = [event_id for event_id in update.event_ids if event_id in self._seen]
        if duplicates:
            return duplicates
        expiry = now + self._dedup_ttl_s
        self._seen.update(dict.fromkeys(update.event_ids, expiry))
        for table, deltas in ((self._users, update.users), (self._items, update.items)):
            for key, delta in deltas.items():
                old = table.get(key)
                table[key] = delta if old is None else merge(
                    EntityState.unpack(old), EntityState.unpack(delta)).pack()
        for user_id, item_id, ts in update.history:
            meta = self._meta.get(item_id)
            if meta is not None:
                history = self._history.setdefault(user_id, deque(maxlen=self._history_length))
                history.appendleft(history_entry(ts, meta))
        return []

    def _forget_expired(self, now: float) -> None:
        # dicts keep insertion order and expiries are appended in time order: trim from the front.
        while self._seen:
            oldest = next(iter(self._seen))
            if self._seen[oldest] > now:
                break
            del self._seen[oldest]

    async def fetch_many(self, lookups: Sequence[Lookup]) -> list[FetchedFeatures]:
        return [
            FetchedFeatures(
                self._users.get(user_id),
                [self._items.get(i) for i in item_ids],
                [self._meta.get(i) for i in item_ids],
                list(self._history.get(user_id, ())),
            )
            for user_id, item_ids in lookups
        ]

    async def counts(self) -> dict[str, int]:
        return {"users": len(self._users), "items": len(self._items.keys() | self._meta.keys())}


# The Redis mirror of models.features.merge, run server-side so that workers sharing item keys
# never race (a client-side read-modify-write would). Lua has no numpy; the loop is tiny.
# Ids travel NUL-separated and deltas as one concatenated blob: a handful of arguments instead of
# tens of thousands keeps the client's command encoding off the hot path.
# KEYS: users index, items index, current and previous dedup bucket.
# ARGV: bucket TTL, event ids, user key prefix, user ids, user deltas, item key prefix, item ids,
#       item deltas, history key prefix, meta key prefix, history user ids, history item ids,
#       history timestamps (packed float64), history length.
_MERGE_LUA = string.Template("""
local function split(joined)
  local parts = {}
  for part in string.gmatch(joined, '[^%z]+') do parts[#parts + 1] = part end
  return parts
end
local ids = split(ARGV[2])
local dups = {}
for first = 1, #ids, 1000 do
  local last = math.min(first + 999, #ids)
  for _, bucket in ipairs({KEYS[3], KEYS[4]}) do
    local hits = redis.call('SMISMEMBER', bucket, unpack(ids, first, last))
    for j, hit in ipairs(hits) do
      if hit == 1 then dups[#dups + 1] = first + j - 2 end
    end
  end
end
if #dups > 0 then return dups end
for first = 1, #ids, 1000 do
  redis.call('SADD', KEYS[3], unpack(ids, first, math.min(first + 999, #ids)))
end
if #ids > 0 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end

local half_lives = {$half_lives}
local n_counters = $n_counters
local size = $size
local ln2 = math.log(2)
local fmt = '<dddd' .. string.rep('f', n_counters)
local function merge_all(prefix, joined, deltas, index)
  for e, id in ipairs(split(joined)) do
    local key = prefix .. id
    local delta = string.sub(deltas, (e - 1) * size + 1, e * size)
    local old = redis.call('GET', key)
    if not old then
      redis.call('SET', key, delta)
      redis.call('SADD', index, id)
    else
      local a = {struct.unpack(fmt, old)}
      local b = {struct.unpack(fmt, delta)}
      local ref = math.max(a[1], b[1])
      local out = {ref, math.min(a[2], b[2]), math.max(a[3], b[3]), math.max(a[4], b[4])}
      local decay_a, decay_b = {}, {}
      for h = 1, #half_lives do
        decay_a[h] = math.exp((a[1] - ref) * ln2 / half_lives[h])
        decay_b[h] = math.exp((b[1] - ref) * ln2 / half_lives[h])
      end
      for c = 0, n_counters - 1 do
        local h = c % #half_lives + 1
        out[5 + c] = a[5 + c] * decay_a[h] + b[5 + c] * decay_b[h]
      end
      redis.call('SET', key, struct.pack(fmt, unpack(out, 1, 4 + n_counters)))
    end
  end
end
merge_all(ARGV[3], ARGV[4], ARGV[5], KEYS[1])
merge_all(ARGV[6], ARGV[7], ARGV[8], KEYS[2])

local history_items = split(ARGV[12])
for e, user in ipairs(split(ARGV[11])) do
  local meta = redis.call('GET', ARGV[10] .. history_items[e])
  if meta then
    local key = ARGV[9] .. user
    local ts = string.sub(ARGV[13], (e - 1) * 8 + 1, e * 8)
    redis.call('LPUSH', key, ts .. string.sub(meta, $meta_head + 1))
    redis.call('LTRIM', key, 0, tonumber(ARGV[14]) - 1)
  end
end
return {}
""").substitute(
    half_lives=", ".join(repr(h) for h in HALF_LIVES_S),
    n_counters=N_COUNTERS,
    size=VALUE_SIZE,
    meta_head=ItemMeta.HEAD.size,
)


# Counters and metas of many items in one call. Like the merge script, it takes the ids as one
# NUL-joined argument: redis-py encodes every MGET key in pure Python, which cost ~3 us a key
# (a 1000-key MGET took 3.3 ms, most of a saturated worker's feature fetch).
# ARGV: counter key prefix, meta key prefix, item ids. Returns counters then metas, in id order.
_READ_ITEMS_LUA = """
local ids = {}
for id in string.gmatch(ARGV[3], '[^%z]+') do ids[#ids + 1] = id end
local out = {}
for _, prefix in ipairs({ARGV[1], ARGV[2]}) do
  for first = 1, #ids, 1000 do
    local keys = {}
    for k = first, math.min(first + 999, #ids) do keys[#keys + 1] = prefix .. ids[k] end
    local values = redis.call('MGET', unpack(keys))
    for k = 1, #keys do out[#out + 1] = values[k] end
  end
end
return out
"""


class RedisStore(FeatureStore):
    def __init__(self, client: aioredis.Redis, namespace: str, dedup_ttl_s: int,
                 history_length: int) -> None:
        self._client = client
        self._ns = namespace
        self._dedup_ttl_s = dedup_ttl_s
        self._history_length = history_length
        self._merge_sha = _sha1(_MERGE_LUA)
        self._read_items_sha = _sha1(_READ_ITEMS_LUA)
        self._users_index = f"{namespace}:idx:users"
        self._items_index = f"{namespace}:idx:items"
        self.description = "redis"

    @classmethod
    async def connect(cls, url: str, namespace: str, dedup_ttl_s: int,
                      history_length: int) -> RedisStore:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise StoreUnavailable(f"Redis at {redact_url(url)} is not reachable: {exc}") from exc
        return cls(client, namespace, dedup_ttl_s, history_length)

    def user_key(self, user_id: str) -> str:
        return f"{self._ns}:f1:u:{user_id}"

    def item_key(self, item_id: str) -> str:
        return f"{self._ns}:f1:i:{item_id}"

    def meta_key(self, item_id: str) -> str:
        return f"{self._ns}:m1:i:{item_id}"

    def history_key(self, user_id: str) -> str:
        return f"{self._ns}:h1:u:{user_id}"

    def seen_keys(self, now: float) -> list[str]:
        """Event ids live in time buckets of ``dedup_ttl_s``; the current and previous bucket
        are checked, so an id is remembered for between one and two TTLs. One set per bucket
        costs one variadic command per batch instead of one command per event."""
        bucket = int(now // self._dedup_ttl_s)
        return [f"{self._ns}:seen:{bucket}", f"{self._ns}:seen:{bucket - 1}"]

    async def apply(self, update: FeatureUpdate) -> list[str]:
        keys = [self._users_index, self._items_index, *self.seen_keys(time.time())]
        args: list[str | bytes | int] = [2 * self._dedup_ttl_s, "\0".join(update.event_ids),
                self.user_key(""), "\0".join(update.users), b"".join(update.users.values()),
                self.item_key(""), "\0".join(update.items), b"".join(update.items.values()),
                self.history_key(""), self.meta_key(""),
                "\0".join(user for user, _, _ in update.history),
                "\0".join(item for _, item, _ in update.history),
                b"".join(HISTORY_TS.pack(ts) for _, _, ts in update.history),
                self._history_length]

        def commands(pipe: Pipeline) -> None:
            if update.item_meta:
                pipe.mset({self.meta_key(i): v for i, v in update.item_meta.items()})
                pipe.sadd(self._items_index, *update.item_meta)
            pipe.evalsha(self._merge_sha, len(keys), *keys, *args)

        results = await self._pipeline(commands)
        return list({update.event_ids[int(i)] for i in results[-1]})

    async def fetch_many(self, lookups: Sequence[Lookup]) -> list[FetchedFeatures]:
        # Candidates overlap across a micro-batch: ask for each item once.
        users = list(dict.fromkeys(user for user, _ in lookups))
        items = list(dict.fromkeys(item for _, ids in lookups for item in ids))

        def commands(pipe: Pipeline) -> None:
            pipe.mget(list(map(self.user_key, users)))
            for user in users:
                pipe.lrange(self.history_key(user), 0, -1)
            if items:
                pipe.evalsha(self._read_items_sha, 0, self.item_key(""), self.meta_key(""),
                             "\0".join(items))

        replies = await self._pipeline(commands)
        n_users, n_items = len(users), len(items)
        user_values = dict(zip(users, cast(list[bytes | None], replies[0]), strict=True))
        histories = replies[1:1 + n_users]
        item_values = cast(list[bytes | None], replies[-1] if items else [])
        counters = dict(zip(items, item_values[:n_items], strict=True))
        metas = dict(zip(items, item_values[n_items:], strict=True))
        history = dict(zip(users, histories, strict=True))
        return [
            FetchedFeatures(user_values[user], [counters[i] for i in ids],
                            [metas[i] for i in ids], history[user])
            for user, ids in lookups
        ]

    async def _pipeline(self, commands: Callable[[Pipeline], None]) -> list[Any]:
        """One round trip. Scripts go by SHA alone: redis-py's registered scripts ask
        ``SCRIPT EXISTS`` before every pipeline that uses one, a second round trip on each
        feature fetch and write. A Redis that lost them (a restart) gets them loaded, and the
        pipeline runs again: nothing in it changes state twice, since a script that was
        missing did not run, and the other commands (MSET, SADD, reads) are idempotent."""
        try:
            return await self._execute(commands)
        except NoScriptError:
            for script in (_MERGE_LUA, _READ_ITEMS_LUA):
                await self._client.script_load(script)
            return await self._execute(commands)

    async def _execute(self, commands: Callable[[Pipeline], None]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            commands(pipe)
            return cast(list[Any], await pipe.execute())

    async def counts(self) -> dict[str, int]:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.scard(self._users_index)
            pipe.scard(self._items_index)
            users, items = await pipe.execute()
        return {"users": int(users), "items": int(items)}

    async def drop(self) -> None:
        """Delete every key of this namespace (benchmarks and tests clean up after themselves)."""
        keys = [key async for key in self._client.scan_iter(match=f"{self._ns}:*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await self._client.unlink(*keys[start:start + 10_000])

    async def close(self) -> None:
        await self._client.aclose()


T = TypeVar("T")


async def through_outages(call: Callable[[], Awaitable[T]], what: str) -> T:
    """Retry ``call`` with backoff while the store is down: the stream stalls, uncommitted,
    instead of dropping data or crashing the worker."""
    backoff = 0.05
    while True:
        try:
            return await call()
        except (RedisError, OSError) as exc:
            log.warning("%s failed, retrying in %.2fs: %s", what, backoff, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def _sha1(script: str) -> str:
    """The SHA that Redis files ``script`` under, as ``SCRIPT LOAD`` answers it."""
    return hashlib.sha1(script.encode()).hexdigest()
