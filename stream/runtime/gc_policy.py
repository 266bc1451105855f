"""Garbage-collector thresholds for a process that holds micro-batches of many objects.

A batch of 20k events is some 200k container objects (records, decoded events, deltas), alive
until the batch is applied. Under CPython's default thresholds (700, 10, 10) that traffic runs
a full collection every few batches, and each one traces every object alive: in
``streamrank bench features`` that was a third of the worker's CPU. The batch path makes no
reference cycles, so the oldest generation is collected 100 times less often; the younger two
keep their thresholds, so short-lived cycles are still freed soon.
"""

from __future__ import annotations

import gc

FULL_COLLECTION_THRESHOLD = 1000  # gen1 collections between full ones; CPython's default is 10


def tune_for_batches() -> None:
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_THRESHOLD)
