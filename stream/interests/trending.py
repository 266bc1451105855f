"""Trending items: what users engage with now, for users who have no interests yet.

A decayed count per item (half-life ``half_life_s``, event time): the most engaged items of the
last hours, not of all time. It lives in the interests role, which sees every positive
engagement; the top of it is written to the store for the scoring workers.
"""

from __future__ import annotations

import heapq
import math

STATE_KIND = "trending"
STATE_KEY = "top"


class Trending:
    def __init__(self, half_life_s: float = 3600.0, capacity: int = 100_000) -> None:
        self._rate = math.log(2) / half_life_s
        self._capacity = capacity
        self._reference = 0.0  # scores are kept as exp(rate * (ts - reference)) sums
        self._scores: dict[str, float] = {}

    def add(self, item_id: str, ts: float) -> None:
        if not self._scores:
            self._reference = ts
        exponent = self._rate * (ts - self._reference)
        if exponent > 50:  # rebase before the sums overflow
            self._rebase(ts)
            exponent = 0.0
        self._scores[item_id] = self._scores.get(item_id, 0.0) + math.exp(exponent)
        if len(self._scores) > 2 * self._capacity:
            self._scores = dict(heapq.nlargest(self._capacity, self._scores.items(),
                                               key=lambda kv: kv[1]))

    def top(self, n: int) -> list[str]:
        return [item for item, _ in heapq.nlargest(n, self._scores.items(), key=lambda kv: kv[1])]

    def _rebase(self, ts: float) -> None:
        factor = math.exp(-self._rate * (ts - self._reference))
        self._scores = {k: v * factor for k, v in self._scores.items() if v * factor > 1e-12}
        self._reference = ts


def pack_top(item_ids: list[str]) -> bytes:
    return "\0".join(item_ids).encode()


def unpack_top(value: bytes | None) -> list[str]:
    return value.decode().split("\0") if value else []
