"""What the interests role keeps per user, packed into one store value: the interests, and the
engagements they came from (with the items' ids, so retrieval can leave out what the user has
just engaged with).

The role keeps its own engagement history rather than reading the features role's: another
consumer group may not have applied the same events yet, and that history has no item ids.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from models.interests import Interests

STATE = "interests"  # the kind of state in the store
VERSION = 1
HEADER = struct.Struct("<BIHH")  # version, interests bytes, history entries, dim


@dataclass(frozen=True)
class UserInterests:
    interests: Interests | None
    ts: np.ndarray  # float64 [k], newest first
    embeddings: np.ndarray  # float32 [k, dim]
    item_ids: tuple[str, ...]

    @classmethod
    def empty(cls, dim: int) -> UserInterests:
        return cls(None, np.zeros(0), np.zeros((0, dim), np.float32), ())

    def with_engagements(self, ts: np.ndarray, embeddings: np.ndarray, item_ids: list[str],
                         max_history: int, oldest_ts: float) -> UserInterests:
        """The history with these engagements added, each (time, item) once however often it
        comes (a replay adds nothing), newest first, at most ``max_history``, none before
        ``oldest_ts``."""
        seen = set(zip(self.ts.tolist(), self.item_ids, strict=True))
        fresh = [k for k, key in enumerate(zip(ts.tolist(), item_ids, strict=True))
                 if key not in seen and key[0] >= oldest_ts]
        if not fresh:
            return self
        all_ts = np.concatenate([self.ts, ts[fresh]])
        all_emb = np.concatenate([self.embeddings, embeddings[fresh].astype(np.float32)])
        all_ids = (*self.item_ids, *(item_ids[k] for k in fresh))
        order = np.lexsort((np.array(all_ids), -all_ts))[:max_history]  # newest, then by id
        return UserInterests(self.interests, all_ts[order], all_emb[order],
                             tuple(all_ids[k] for k in order.tolist()))

    def to_bytes(self) -> bytes:
        packed = self.interests.to_bytes() if self.interests is not None else b""
        ids = "\0".join(self.item_ids).encode()
        return (HEADER.pack(VERSION, len(packed), len(self.ts), self.embeddings.shape[1])
                + packed + self.ts.astype("<f8").tobytes()
                + self.embeddings.astype("<f4").tobytes() + ids)

    @classmethod
    def from_bytes(cls, value: bytes) -> UserInterests:
        """Refuses, with a ValueError, another version or a value that does not add up."""
        if len(value) < HEADER.size:
            raise ValueError(f"user interests value has {len(value)} bytes, less than a header")
        version, size, count, dim = HEADER.unpack_from(value)
        if version != VERSION:
            raise ValueError(f"user interests value has version {version}, expected {VERSION}")
        offset = HEADER.size
        interests = Interests.from_bytes(value[offset:offset + size]) if size else None
        offset += size
        ts = np.frombuffer(value, "<f8", count, offset).astype(np.float64)
        offset += 8 * count
        embeddings = np.frombuffer(value, "<f4", count * dim, offset).reshape(count, dim)
        offset += 4 * count * dim
        ids = tuple(value[offset:].decode().split("\0")) if count else ()
        if len(ids) != count:
            raise ValueError(f"user interests value has {len(ids)} item ids for {count} entries")
        return cls(interests, ts, embeddings.astype(np.float32), ids)


def stored_interests(value: bytes | None) -> Interests | None:
    """The interests in a stored value; None for none, or for a value that cannot be read
    (the interests role rebuilds it at the user's next engagement)."""
    try:
        return UserInterests.from_bytes(value).interests if value else None
    except ValueError:
        return None
