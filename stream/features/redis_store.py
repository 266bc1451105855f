"""The Redis feature store, on one Redis or a Redis Cluster with the same code.

Every key carries a hash tag ``{n}``, one of ``slots`` buckets of its entity id, and every script
call touches the keys of one tag only: one hash slot, the slot of the key it names in KEYS[1],
which routes it on a cluster. Scripts that touch one key per entity build those keys from a
prefix of that tag and the ids (NUL-joined), because redis-py encodes every argument in pure
Python (~1 us each), and a batch touches ~15k entities. On one Redis, ``slots=1`` puts every
key under one tag, so a batch is one claim call and one write call per entity kind. On a
cluster, more tags spread the keys over the nodes. Key names also carry
:data:`models.features.LAYOUT_ID`, so a new value layout starts on keys of its own instead of
sending a script into an error on every batch.

Keys expire ``ttl_s`` after their last write (entities, histories, metas), the dedup buckets
after two dedup TTLs, and the daily censuses behind ``counts()`` a day after the TTL.
"""

from __future__ import annotations

import hashlib
import string
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from models.features import HALF_LIVES_S, LAYOUT_ID, N_COUNTERS, VALUE_SIZE
from stream.errors import StoreUnavailable
from stream.features.store import (
    Conflict,
    EntityWrite,
    EventBatch,
    FeatureStore,
    FetchedFeatures,
    Lookup,
    Written,
)
from stream.features.watermarks import MARK, RANGE, pack_ranges, unpack_marks
from stream.redaction import redact_url

# The Redis mirror of models.features.merge plus the offset-mark rule of
# stream.features.watermarks, run server-side so that workers sharing item keys never race.
# Lua has no numpy; the loop is tiny. Every entity of one call shares the call's offset ranges
# (a batch's, see batch_ranges), so they are parsed once and, in the usual case, the new marks
# are one precomputed trailer. Ids, deltas and histories travel as blobs, not as arguments per
# entity: redis-py encodes every argument in pure Python, and a batch of 20k events touches ~17k.
# KEYS: the kind's census of the day (in the tag of every key the script builds).
# ARGV: ttl, history length, history entry size, entity key prefix, history key prefix, the
#       ranges, the n entity ids (NUL-joined), the n packed deltas, per entity a history entry
#       count (uint16), and the entries (oldest first).
_MERGE_LUA = string.Template("""
local ttl, history_length, entry_size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix, history_prefix, ranges = ARGV[4], ARGV[5], ARGV[6]
local ids, deltas, history_counts, history = {}, ARGV[8], ARGV[9], ARGV[10]
for id in string.gmatch(ARGV[7], '[^%z]+') do ids[#ids + 1] = id end
local size, n_counters, half_lives = $size, $n_counters, {$half_lives}
local n = #deltas / size
local with_history = #history_counts > 0
local ln2 = math.log(2)
local fmt = '<dddd' .. string.rep('f', n_counters)
local function merge(old, delta)
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
  return struct.pack(fmt, unpack(out, 1, 4 + n_counters))
end
local partitions, lows, highs, covered, high_marks = {}, {}, {}, {}, {}
for pos = 1, #ranges, $range_size do
  local p, low, high = struct.unpack('$range_fmt', ranges, pos)
  partitions[#partitions + 1], lows[#lows + 1], highs[#highs + 1] = p, low, high
  covered[p] = high
  high_marks[#high_marks + 1] = struct.pack('$mark_fmt', p, high)
end
local all_high = table.concat(high_marks)  -- the new marks of an entity with no others
local conflicts, replayed, written = {}, {}, {}
local history_pos = 1
for k = 1, n do
  local key, delta = prefix .. ids[k], string.sub(deltas, (k - 1) * size + 1, k * size)
  local entries = 0
  if with_history then entries = struct.unpack('<H', history_counts, 2 * k - 1) end
  local first_entry = history_pos
  history_pos = history_pos + entries * entry_size
  local old = redis.call('GET', key)
  local marks, others = {}, false
  if old then
    if #old < size or (#old - size) % $mark_size ~= 0 then
      return redis.error_reply('streamrank layout $layout: ' .. key .. ' holds ' .. #old ..
                               ' bytes, which is no value of this layout')
    end
    for pos = size + 1, #old, $mark_size do
      local p, o = struct.unpack('$mark_fmt', old, pos)
      marks[p] = o
      if covered[p] == nil then others = true end
    end
  end
  local applied, fresh = true, true
  for i = 1, #partitions do
    local mark = marks[partitions[i]] or -1
    if mark < highs[i] then applied = false end
    if mark >= lows[i] then fresh = false end
  end
  if applied then
    replayed[#replayed + 1] = k - 1
  elseif not fresh then
    conflicts[#conflicts + 1] = k - 1
    conflicts[#conflicts + 1] = string.sub(old, size + 1)
  else
    local value = delta
    if old then value = merge(string.sub(old, 1, size), delta) end
    local trailer = all_high
    if others then  -- marks of partitions this batch does not read: kept, in their order
      local kept = {}
      for pos = size + 1, #old, $mark_size do
        local p, o = struct.unpack('$mark_fmt', old, pos)
        if covered[p] == nil then kept[#kept + 1] = string.sub(old, pos, pos + $mark_size - 1) end
      end
      trailer = table.concat(kept) .. all_high
    end
    redis.call('SET', key, value .. trailer, 'EX', ttl)
    written[#written + 1] = ids[k]
  end
  if entries > 0 and fresh and not applied then
    local history_key = history_prefix .. ids[k]
    for pos = first_entry, history_pos - 1, entry_size do
      redis.call('LPUSH', history_key, string.sub(history, pos, pos + entry_size - 1))
    end
    redis.call('LTRIM', history_key, 0, history_length - 1)
    redis.call('EXPIRE', history_key, ttl)
  end
end
for first = 1, #written, 1000 do
  redis.call('PFADD', KEYS[1], unpack(written, first, math.min(first + 999, #written)))
end
if #written > 0 then redis.call('EXPIRE', KEYS[1], ttl + 86400) end
return {conflicts, replayed}
""").substitute(
    half_lives=", ".join(repr(h) for h in HALF_LIVES_S), n_counters=N_COUNTERS,
    size=VALUE_SIZE, layout=LAYOUT_ID, mark_fmt=MARK.format, mark_size=MARK.size,
    range_fmt=RANGE.format, range_size=RANGE.size)

# Claims event ids for their origin (see stream.features.store): returns the 0-based indices of
# events whose id was first read at another origin.
# KEYS: current and previous dedup bucket. ARGV: bucket TTL, ids and origins, NUL-joined.
_CLAIM_LUA = """
local function split(joined)
  local parts = {}
  for part in string.gmatch(joined, '[^%z]+') do parts[#parts + 1] = part end
  return parts
end
local ids, origins = split(ARGV[2]), split(ARGV[3])
local duplicates, claimed, new = {}, {}, {}
for first = 1, #ids, 1000 do
  local last = math.min(first + 999, #ids)
  local current = redis.call('HMGET', KEYS[1], unpack(ids, first, last))
  local previous = redis.call('HMGET', KEYS[2], unpack(ids, first, last))
  for j = 1, last - first + 1 do
    local e = first + j - 1
    local seen = claimed[ids[e]] or current[j] or previous[j]
    if not seen then
      claimed[ids[e]] = origins[e]
      new[#new + 1] = ids[e]
      new[#new + 1] = origins[e]
    elseif seen ~= origins[e] then
      duplicates[#duplicates + 1] = e - 1
    end
  end
end
for first = 1, #new, 1000 do
  redis.call('HSET', KEYS[1], unpack(new, first, math.min(first + 999, #new)))
end
if #new > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return duplicates
"""

# Counters (cut to the value, without offset marks) and metas of many items of one tag in one
# call. It builds the keys from the ids itself: redis-py encodes every key argument in pure
# Python, ~3 us a key, which made a 1000-key read cost 3.3 ms. KEYS[1] is a key of the same tag,
# which routes the call to the node that holds the tag on a cluster.
# ARGV: item ids (NUL-joined), counter key prefix, meta key prefix ('' skips counters).
_READ_ITEMS_LUA = string.Template("""
local ids = {}
for id in string.gmatch(ARGV[1], '[^%z]+') do ids[#ids + 1] = id end
local out = {}
for _, prefix in ipairs({ARGV[2], ARGV[3]}) do
  if prefix ~= '' then
    for first = 1, #ids, 1000 do
      local keys = {}
      for k = first, math.min(first + 999, #ids) do keys[#keys + 1] = prefix .. ids[k] end
      local values = redis.call('MGET', unpack(keys))
      for k = 1, #keys do
        local value = values[k]
        if value and prefix == ARGV[2] then value = string.sub(value, 1, $size) end
        out[#out + 1] = value
      end
    end
  end
end
return out
""").substitute(size=VALUE_SIZE)

_SCRIPTS = (_MERGE_LUA, _CLAIM_LUA, _READ_ITEMS_LUA)


class RedisStore(FeatureStore):
    description = "redis"

    def __init__(self, client: aioredis.Redis | RedisCluster, namespace: str, *,
                 dedup_ttl_s: int, history_length: int, ttl_s: int, slots: int = 1) -> None:
        self._client = client
        self._ns = namespace
        self._dedup_ttl_s = dedup_ttl_s
        self._history_length = history_length
        self._ttl_s = ttl_s
        self._slots = slots
        self._merge_sha, self._claim_sha, self._read_sha = (_sha1(s) for s in _SCRIPTS)

    @classmethod
    async def connect(cls, url: str, namespace: str, *, cluster: bool = False, dedup_ttl_s: int,
                      history_length: int, ttl_s: int, slots: int = 1) -> RedisStore:
        client: aioredis.Redis | RedisCluster = (
            RedisCluster.from_url(url, socket_connect_timeout=3) if cluster
            else aioredis.Redis.from_url(url, socket_connect_timeout=3))
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise StoreUnavailable(
                f"Redis at {redact_url(url)} is not reachable: {redact_url(str(exc))}") from exc
        return cls(client, namespace, dedup_ttl_s=dedup_ttl_s, history_length=history_length,
                   ttl_s=ttl_s, slots=slots)

    def tag(self, entity_id: str) -> int:
        return zlib.crc32(entity_id.encode()) % self._slots if self._slots > 1 else 0

    def prefix(self, tag: int, kind: str) -> str:
        """Key prefix of one kind (u, i: counters; m: item metas; h: histories; s:<role kind>:
        other roles' state) in one tag."""
        return f"{self._ns}:{{{tag}}}:{LAYOUT_ID}:{kind}:"

    def _census(self, tag: int, kind: str, day: int) -> str:
        """A HyperLogLog of the entities of one kind written on one day (UTC): ``counts()``
        reads the days within the TTL. A sorted set by last write was exact, but adding every
        written entity to it cost as much as the merge itself."""
        return f"{self._ns}:{{{tag}}}:census:{kind}:{day}"

    def _route(self, tag: int) -> str:
        """A key name of the tag, which routes a script call to the tag's node in a cluster."""
        return f"{self._ns}:{{{tag}}}:route"

    def _seen(self, tag: int, now: float) -> list[str]:
        """Event ids live in time buckets of ``dedup_ttl_s``; the current and previous bucket
        are checked, so an id is remembered for between one and two TTLs."""
        bucket = int(now // self._dedup_ttl_s)
        return [f"{self._ns}:{{{tag}}}:seen:{bucket}", f"{self._ns}:{{{tag}}}:seen:{bucket - 1}"]

    def _by_tag(self, ids: Iterable[str]) -> dict[int, list[str]]:
        tags: dict[int, list[str]] = {}
        for entity_id in ids:
            tags.setdefault(self.tag(entity_id), []).append(entity_id)
        return tags

    async def _claim(self, batch: EventBatch, history_items: Sequence[str]
                     ) -> tuple[set[int], dict[str, bytes]]:
        now = time.time()
        events: dict[int, list[int]] = {}
        if self._slots == 1:  # the usual case, and this loop runs per event
            events[0] = list(range(len(batch.events)))
        else:
            for index, event in enumerate(batch.events):
                events.setdefault(self.tag(event.user_id), []).append(index)
        wanted = self._by_tag(dict.fromkeys(i for i in history_items if i not in batch.metas))

        def commands(pipe: Any) -> None:
            for tag, indices in events.items():
                _evalsha(pipe, self._claim_sha, 2, *self._seen(tag, now), 2 * self._dedup_ttl_s,
                             "\0".join([batch.events[k].event_id for k in indices]),
                             "\0".join([batch.origins[k].token() for k in indices]))
            for tag, ids in wanted.items():
                _evalsha(pipe, self._read_sha, 1, self._route(tag), "\0".join(ids), "",
                             self.prefix(tag, "m"))

        replies = await self._pipeline(commands)
        duplicates = {indices[int(d)] for indices, reply in zip(
            events.values(), replies[:len(events)], strict=True) for d in reply}
        metas = {item: meta for ids, reply in zip(wanted.values(), replies[len(events):],
                                                  strict=True)
                 for item, meta in zip(ids, reply, strict=True) if meta is not None}
        return duplicates, metas

    async def _put_metas(self, metas: Mapping[str, bytes]) -> None:
        now = time.time()

        def commands(pipe: Any) -> None:
            for tag, ids in self._by_tag(metas).items():
                prefix = self.prefix(tag, "m")
                for item_id in ids:
                    pipe.set(prefix + item_id, metas[item_id], ex=self._ttl_s)
                census = self._census(tag, "i", int(now // 86_400))
                pipe.execute_command("PFADD", census, *ids)
                pipe.expire(census, self._ttl_s + 86_400)

        await self._pipeline(commands)

    async def _write(self, users: Sequence[EntityWrite], items: Sequence[EntityWrite]
                     ) -> Written:
        now = time.time()
        calls = []  # (kind, tag, writes that share their offset ranges)
        for kind, writes in (("u", users), ("i", items)):
            groups: dict[tuple[int, int], list[EntityWrite]] = {}
            for write in writes:
                groups.setdefault((self.tag(write.entity_id), id(write.ranges)), []).append(write)
            calls += [(kind, tag, group) for (tag, _), group in groups.items()]

        def commands(pipe: Any) -> None:
            for kind, tag, writes in calls:
                entry_size = next((len(w.history[0]) for w in writes if w.history), 0)
                _evalsha(pipe, self._merge_sha, 1, self._census(tag, kind, int(now // 86_400)),
                         self._ttl_s, self._history_length, entry_size, self.prefix(tag, kind),
                         self.prefix(tag, "h"), pack_ranges(writes[0].ranges),
                         "\0".join(w.entity_id for w in writes),
                         b"".join(w.delta for w in writes),
                         struct.pack(f"<{len(writes)}H", *(len(w.history) for w in writes))
                         if kind == "u" else b"",
                         b"".join(entry for w in writes for entry in w.history))

        written = Written([], [])
        for (kind, _, writes), (conflicts, replayed) in zip(calls, await self._pipeline(commands),
                                                            strict=True):
            written.conflicts += [
                Conflict("user" if kind == "u" else "item", writes[int(conflicts[j])].entity_id,
                         unpack_marks(conflicts[j + 1])) for j in range(0, len(conflicts), 2)]
            if kind == "u":
                written.replayed += [writes[int(k)].entity_id for k in replayed]
        return written

    async def fetch_many(self, lookups: Sequence[Lookup], state_kind: str | None = None
                         ) -> list[FetchedFeatures]:
        # Candidates overlap across a micro-batch: ask for each item once.
        users = self._by_tag(dict.fromkeys(user for user, _ in lookups))
        items = self._by_tag(dict.fromkeys(item for _, ids in lookups for item in ids))

        def commands(pipe: Any) -> None:
            for tag, ids in users.items():
                user_prefix, history_prefix = self.prefix(tag, "u"), self.prefix(tag, "h")
                # One tag: one slot, so the cluster pipeline may route the raw MGET.
                pipe.execute_command("MGET", *(user_prefix + user for user in ids))
                if state_kind is not None:
                    state_prefix = self.prefix(tag, f"s:{state_kind}")
                    pipe.execute_command("MGET", *(state_prefix + user for user in ids))
                for user in ids:
                    pipe.lrange(history_prefix + user, 0, -1)
            for tag, ids in items.items():
                _evalsha(pipe, self._read_sha, 1, self._route(tag), "\0".join(ids),
                             self.prefix(tag, "i"), self.prefix(tag, "m"))

        replies = iter(await self._pipeline(commands))
        user_values: dict[str, bytes | None] = {}
        states: dict[str, bytes | None] = {}
        history: dict[str, list[bytes]] = {}
        for ids in users.values():
            values = next(replies)
            if state_kind is not None:
                states.update(zip(ids, next(replies), strict=True))
            for user, value in zip(ids, values, strict=True):
                user_values[user] = None if value is None else value[:VALUE_SIZE]
                history[user] = next(replies)
        counters: dict[str, bytes | None] = {}
        metas: dict[str, bytes | None] = {}
        for ids in items.values():
            values = cast(list[bytes | None], next(replies))
            counters.update(zip(ids, values[:len(ids)], strict=True))
            metas.update(zip(ids, values[len(ids):], strict=True))
        return [
            FetchedFeatures(user_values[user], [counters[i] for i in ids],
                            [metas[i] for i in ids], history[user], states.get(user))
            for user, ids in lookups
        ]

    async def _pipeline(self, commands: Callable[[Any], None]) -> list[Any]:
        """One round trip. Scripts go by SHA alone: redis-py's registered scripts ask
        ``SCRIPT EXISTS`` before every pipeline that uses one, a second round trip on each
        feature fetch and write. A Redis that lost them (a restart) gets them loaded, and the
        pipeline runs again: nothing in it changes state twice, since a script that was
        missing did not run, and the other commands (SET, ZADD, reads) are idempotent."""
        try:
            return await self._execute(commands)
        except NoScriptError:
            for script in _SCRIPTS:
                await self._client.script_load(script)
            return await self._execute(commands)

    async def _execute(self, commands: Callable[[Any], None]) -> list[Any]:
        pipe = (self._client.pipeline() if isinstance(self._client, RedisCluster)
                else self._client.pipeline(transaction=False))
        async with pipe:
            commands(pipe)
            return cast(list[Any], await pipe.execute())

    async def get_states(self, kind: str, ids: Sequence[str]) -> list[bytes | None]:
        by_tag = self._by_tag(dict.fromkeys(ids))

        def commands(pipe: Any) -> None:
            for tag, tagged in by_tag.items():
                prefix = self.prefix(tag, f"s:{kind}")
                pipe.mget([prefix + i for i in tagged])

        found: dict[str, bytes | None] = {}
        for tagged, reply in zip(by_tag.values(), await self._pipeline(commands), strict=True):
            found.update(zip(tagged, reply, strict=True))
        return [found[i] for i in ids]

    async def put_states(self, kind: str, values: Mapping[str, bytes]) -> None:
        def commands(pipe: Any) -> None:
            for tag, tagged in self._by_tag(values).items():
                prefix = self.prefix(tag, f"s:{kind}")
                for entity_id in tagged:
                    pipe.set(prefix + entity_id, values[entity_id], ex=self._ttl_s)

        await self._pipeline(commands)

    async def counts(self) -> dict[str, int]:
        """Entities written within the TTL, estimated (HyperLogLog: exact for small numbers,
        within ~1% beyond)."""
        today = int(time.time() // 86_400)
        days = range(today - self._ttl_s // 86_400, today + 1)

        def commands(pipe: Any) -> None:
            for tag in range(self._slots):
                for kind in ("u", "i"):
                    pipe.execute_command(
                        "PFCOUNT", *(self._census(tag, kind, day) for day in days))

        replies = await self._pipeline(commands)
        return {"users": sum(replies[0::2]), "items": sum(replies[1::2])}

    async def drop(self) -> None:
        """Delete every key of this namespace (benchmarks and tests clean up after themselves)."""
        for tag in range(self._slots):
            pattern = f"{self._ns}:{{{tag}}}:*"
            keys = [key async for key in self._client.scan_iter(match=pattern, count=10_000)]
            for start in range(0, len(keys), 1000):
                await self._client.unlink(*keys[start:start + 1000])

    async def close(self) -> None:
        await self._client.aclose()


def _evalsha(pipe: Any, sha: str, numkeys: int, *args: Any) -> None:
    """Queue a script call; redis-py's cluster pipeline blocks its ``evalsha`` method but
    routes the raw command by the keys it names."""
    pipe.execute_command("EVALSHA", sha, numkeys, *args)


def _sha1(script: str) -> str:
    """The SHA that Redis files ``script`` under, as ``SCRIPT LOAD`` answers it."""
    return hashlib.sha1(script.encode()).hexdigest()
