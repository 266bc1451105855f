"""Applied offsets carried inside each entity's stored value: the exactly-once rule of the store.

Every stored entity value ends in a trailer of ``(partition, offset)`` marks: the highest offset
up to which it holds every event of that partition. A write names, per partition, the
lowest and highest offset of the batch its delta comes from; the store then

- applies it when every mark lies below the delta's lowest offset (``FRESH``),
- skips it when every mark has reached the delta's highest offset (``APPLIED``: a replay),
- and otherwise reports a ``CONFLICT``: a replay whose batch boundaries differ from the first
  run's, so part of the delta is in the value already. The caller rebuilds that entity's delta
  from its events above the marks and writes again.

Marks live in the entity's own value, so each atomic write stays within one key (and one Redis
Cluster hash slot) whatever the retention or the consumer group's reset policy. Mirrored by
the Lua merge script in :mod:`stream.features.redis_store`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from typing import NamedTuple

# Offsets are float64 in the value because Redis's Lua numbers are doubles: exact to 2**53.
MARK = struct.Struct("<id")
RANGE = struct.Struct("<idd")

Marks = dict[int, int]
Ranges = dict[int, tuple[int, int]]  # partition -> (lowest, highest) offset in a delta


class Origin(NamedTuple):
    """Where a record was read; a replay of the same record carries the same origin. A tuple:
    a batch makes one per event."""

    partition: int
    offset: int

    def token(self) -> str:
        return f"{self.partition}:{self.offset}"


class Verdict(enum.Enum):
    FRESH = "fresh"
    APPLIED = "applied"
    CONFLICT = "conflict"


def judge(marks: Mapping[int, int], ranges: Mapping[int, tuple[int, int]]) -> Verdict:
    if all(marks.get(p, -1) >= high for p, (_, high) in ranges.items()):
        return Verdict.APPLIED
    if all(marks.get(p, -1) < low for p, (low, _) in ranges.items()):
        return Verdict.FRESH
    return Verdict.CONFLICT


def advanced(marks: Mapping[int, int], ranges: Mapping[int, tuple[int, int]]) -> Marks:
    return {**marks, **{p: high for p, (_, high) in ranges.items()}}


def batch_ranges(origins: Sequence[Origin]) -> Ranges:
    """The lowest and highest offset per partition of a batch's records.

    Every entity a batch touches is written with the batch's ranges, not with the offsets of
    its own events: a fetch returns each partition's records as one contiguous run, so "every
    event of this entity up to the batch's highest offset is in" holds as well, and the ranges
    cost one pass per batch instead of one per entity."""
    ranges: Ranges = {}
    for origin in origins:
        low, high = ranges.get(origin.partition, (origin.offset, origin.offset))
        ranges[origin.partition] = (min(low, origin.offset), max(high, origin.offset))
    return ranges


def above(ranges: Mapping[int, tuple[int, int]], marks: Mapping[int, int]) -> Ranges:
    """The part of ``ranges`` that lies above ``marks``: what a conflicting write still owes."""
    return {p: (max(low, marks.get(p, -1) + 1), high) for p, (low, high) in ranges.items()
            if high > marks.get(p, -1)}


def pack_marks(marks: Mapping[int, int]) -> bytes:
    return b"".join(MARK.pack(p, float(o)) for p, o in sorted(marks.items()))


def unpack_marks(trailer: bytes) -> Marks:
    if len(trailer) % MARK.size:
        raise ValueError(f"offset marks of {len(trailer)} bytes are not whole {MARK.size}-byte "
                         "entries")
    return {p: int(o) for p, o in MARK.iter_unpack(trailer)}


def pack_ranges(ranges: Mapping[int, tuple[int, int]]) -> bytes:
    return b"".join(RANGE.pack(p, float(lo), float(hi)) for p, (lo, hi) in ranges.items())
