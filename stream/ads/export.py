"""Joined ad-slot rounds written in Open Bandit Pipeline's bandit-feedback layout, so a log can
be evaluated with OBP (or anything that reads its dictionaries) as well as with ours.

``DIR/bandit_feedback.npz`` holds OBP's keys (``n_rounds``, ``n_actions``, ``action``,
``position``, ``reward``, ``pscore``, ``context``, and the logging policy's ``action_dist``
``[n_rounds, n_actions, 1]``) plus what OBP has no key for: the feed ``slot``, ``revenue`` and
``engagements_after`` (to recompute the reward at another dial), and per round every action's
context row with its ``feasible`` mask. OBP's ``action_context`` is one fixed row per action;
here an action index means a different ad in each round, so it is left out. ``position``
indexes ``action_dist``'s last axis: each round is one slot's decision, a list of one, so it
is 0 (OBP checks it against that axis); the slot is in ``slot``. ``DIR/meta.json`` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.bandit import CONTEXT_NAMES
from stream.ads.offline import ACTION_AXIS, REWARD, REWARD_NOTE, JoinCounts, SlotRounds, rewards

FEEDBACK_FILE = "bandit_feedback.npz"
META_FILE = "meta.json"


def export_obp(rounds: SlotRounds, counts: JoinCounts, dial: float, directory: Path,
               dial_source: str) -> dict[str, Any]:
    """Write the two files into ``directory`` (made if missing); returns the meta written."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        directory / FEEDBACK_FILE, n_rounds=rounds.n, n_actions=rounds.n_actions,
        action=rounds.action, position=np.zeros(rounds.n, dtype=np.int64),
        reward=rewards(rounds, dial), pscore=rounds.pscore, context=rounds.context,
        action_dist=rounds.logging_dist[..., None], slot=rounds.slot, revenue=rounds.revenue,
        engagements_after=rounds.engagements, action_contexts=rounds.contexts,
        feasible=rounds.feasible, decision_id=np.array(rounds.decision_ids, dtype=str),
        policy_version=np.array(rounds.policy_versions, dtype=str))
    meta = {
        "n_rounds": rounds.n, "n_actions": rounds.n_actions, "len_list": 1,
        "context_names": list(CONTEXT_NAMES), "dial": dial, "dial_source": dial_source,
        "reward": REWARD, "reward_note": REWARD_NOTE, "action_axis": ACTION_AXIS,
        "position": "0 for every round: one slot decision per round; the feed slot is `slot`",
        "action_contexts": "[n_rounds, n_actions, len(context_names)]: row 0 the no-ad "
                           "context, then each feasible ad's; padding rows are 0, feasible "
                           "False",
        "counts": counts.as_dict()}
    (directory / META_FILE).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return meta
