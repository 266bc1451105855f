"""When the next BatchNorm statistics update happens, and on which rows.

Every accepted update is a version each scorer hot-swaps by building a new session. At 2000
rows an update, a busy feature log would make several versions a second and the scorers would
spend their time rebuilding sessions. So an update needs ``min_rows`` rows and
``min_interval_s`` of event time since the last one; rows that arrive faster wait, and only the
newest ``max_rows`` of them are kept, which bounds memory at any traffic and weighs the update
towards the present.

>>> batch = RowBatch(min_rows=4, max_rows=6, min_interval_s=10.0)
>>> batch.add(np.zeros((3, 2)), ts=100.0)
0
>>> batch.due()
False
>>> batch.add(np.ones((5, 2)), ts=101.0)  # two old rows make room
2
>>> batch.due(), batch.rows
(True, 6)
>>> batch.take().sum(axis=0).tolist()
[5.0, 5.0]
>>> batch.add(np.ones((5, 2)), ts=105.0)
0
>>> batch.due()  # 4 s after the last update
False
"""

from __future__ import annotations

import numpy as np


class RowBatch:
    def __init__(self, min_rows: int, max_rows: int, min_interval_s: float) -> None:
        if not 2 <= min_rows <= max_rows or min_interval_s < 0:
            raise ValueError("2 <= min_rows <= max_rows, and min_interval_s >= 0")
        self.min_rows, self.max_rows, self.min_interval_s = min_rows, max_rows, min_interval_s
        self.rows = 0  # held now
        self._arrays: list[np.ndarray] = []
        self._newest_ts: float | None = None
        self._last_update_ts: float | None = None

    def add(self, rows: np.ndarray, ts: float) -> int:
        """Rows logged at event time ``ts``; returns how many old rows made room for them."""
        self._arrays.append(rows)
        self.rows += len(rows)
        self._newest_ts = ts if self._newest_ts is None else max(self._newest_ts, ts)
        held = self.rows
        while self.rows - len(self._arrays[0]) >= self.max_rows:
            self.rows -= len(self._arrays.pop(0))
        if self.rows > self.max_rows:
            self._arrays[0] = self._arrays[0][self.rows - self.max_rows:]
            self.rows = self.max_rows
        return held - self.rows

    def due(self) -> bool:
        if self.rows < self.min_rows or self._newest_ts is None:
            return False
        last = self._last_update_ts
        return last is None or self._newest_ts - last >= self.min_interval_s

    def take(self) -> np.ndarray:
        """The rows of the update now due, which starts the next interval."""
        rows = np.concatenate(self._arrays)
        self._last_update_ts = self._newest_ts
        self.clear()
        return rows

    def clear(self) -> None:
        """Forget the rows held (a rewind reads them again); the interval goes on."""
        self._arrays, self.rows = [], 0
