"""When a BatchNorm statistics update happens, and on which rows (models/bn_batch.py)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from pydantic import ValidationError

import models.bn_batch
from models.bn_batch import RowBatch
from stream.settings import Settings


def test_updates_wait_for_rows_and_for_the_interval_keeping_the_newest_rows() -> None:
    assert doctest.testmod(models.bn_batch).failed == 0
    batch = RowBatch(min_rows=100, max_rows=250, min_interval_s=30.0)
    for k in range(10):  # 10 x 40 rows within 9 s: due once, then held back by the interval
        batch.add(np.full((40, 2), float(k)), ts=1000.0 + k)
    assert batch.due() and batch.rows == 250
    rows = batch.take()
    assert len(rows) == 250 and rows.min() == 3.0 and rows[:10].max() == 3.0  # newest kept
    batch.add(np.zeros((200, 2)), ts=1020.0)
    assert not batch.due()  # 11 s after the update
    batch.add(np.zeros((1, 2)), ts=1039.0)
    assert batch.due()
    with pytest.raises(ValueError):
        RowBatch(min_rows=300, max_rows=250, min_interval_s=0.0)


def test_settings_refuse_a_cap_below_the_rows_an_update_needs() -> None:
    with pytest.raises(ValidationError, match="STREAMRANK_BN_MAX_ROWS=1000 must be at least "
                                              "STREAMRANK_BN_MIN_ROWS=2000"):
        Settings(bn_min_rows=2000, bn_max_rows=1000)
