"""Restarts anywhere in real captures, at the model level (hypothesis).

ctid runs a capture up to event ``k`` and dies; its last checkpoint was taken at
event ``j <= k`` (the checkpoint lags the stored rows by up to 0.2 s); the PBX goes
on to event ``back >= k`` unheard; a new model takes the checkpoint up (without
what the store shows ended since), resyncs from the PBX's state then (the
simulator's ``PbxState``, as the daemon's resync would read it) and goes on.

The rows that end up stored are those of the first run up to ``k`` and of the
second run, written as the daemon writes them (a record ctid closed itself never
replaces a stored one). Against the reference (the whole capture, no restart):

* no agent part has two activities (reconcile's ``duplicate_activity``);
* no agent has more activities in an interaction than in the reference;
* every call that began before the checkpoint has its row, and every agent part
  the checkpoint holds that had rung has its activity (what began later and ended
  unheard may be lost: README, "Restarts of ctid itself").
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctid import checkpoint
from ctid.core.agents import Link
from ctid.core.ami import AmiMessage
from ctid.core.effects import Effect, EmitActivity, EmitCall
from ctid.core.records import ActivityRecord, CallRecord
from ctid.sim.pbxstate import PbxState
from tests.fuzz_support import capture_events
from tests.test_model import feed, model

# Captures with calls in progress at many points, transfers and consults among them.
CAPTURES = (
    "inbound_answered",
    "blind_transfer",
    "attended_transfer",
    "consult_then_retrieve",
    "redirect_transfer",
    "agent_ring_noanswer",
    "inbound_abandoned",
    "hold_unhold",
    "outbound_click_to_dial",
)
RESYNC = ("CoreShowChannels", "BridgeList", "QueueStatus", "Status")


def resync_items(state: PbxState, now: float) -> list[AmiMessage]:
    """What the daemon's resync reads from the PBX: each list, then its Complete event."""
    items: list[AmiMessage] = []
    for action in RESYNC:
        items += state.list_items(action, now) or []
        items.append(AmiMessage.build({"Event": f"{action}Complete", "EventList": "Complete"}))
    return items


# What may change when a stored activity is saved again: its wrap-up ending later.
UPDATABLE = frozenset({"wrapup_s", "wrapup_code", "notes"})


class Store:
    """Calls and activities as the daemon stores them (only_new for what ctid closed).

    ``rewritten``: stored rows that a later save changed in more than ``UPDATABLE``
    (the same call or part closed a second time, differently).
    """

    def __init__(self) -> None:
        self.calls: dict[str, CallRecord] = {}
        self.activities: dict[str, ActivityRecord] = {}
        self.rewritten: list[tuple[Any, Any]] = []

    def take(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, EmitActivity):
                record: Any = effect.record
                table: dict[str, Any] = self.activities
                key = record.id
            elif isinstance(effect, EmitCall):
                record, table, key = effect.record, self.calls, effect.record.interaction_id
            else:
                continue
            old = table.get(key)
            if old is not None and record.ended_while_disconnected:
                continue
            if old is not None and old != record:
                changed = {
                    f for f in record.__dataclass_fields__ if getattr(old, f) != getattr(record, f)
                }
                if changed - UPDATABLE:
                    self.rewritten.append((old, record))
            table[key] = record


def first_index(events: list[AmiMessage], linkedid: str) -> int:
    return next(i for i, e in enumerate(events) if e.get("Linkedid") == linkedid)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.sampled_from(CAPTURES), st.data())
def test_a_restart_anywhere_loses_and_duplicates_nothing_it_knew(name: str, data: Any) -> None:
    n = len(capture_events(name))
    k = data.draw(st.integers(1, n - 1), label="killed after event")
    j = data.draw(st.integers(max(0, k - 40), k), label="checkpoint after event")
    back = data.draw(st.integers(k, n), label="back at event")
    check_restart(name, k, j, back)


@pytest.mark.parametrize(
    ("name", "k", "j", "back"),
    [
        # The customer gone, an agent leg still up at the resync: the call was ended,
        # then written again when that leg hung up.
        ("attended_transfer", 3, 3, 278),
        # A settling part stored after the checkpoint: closed and published again
        # unless the restore leaves out what the store holds.
        ("redirect_transfer", 140, 134, 157),
        # A leg that had not rung at the checkpoint: no activity, as without a restart.
        ("blind_transfer", 25, 25, 139),
    ],
)
def test_restarts_hypothesis_found(name: str, k: int, j: int, back: int) -> None:
    """The cases the search above found, kept so that they are always checked."""
    check_restart(name, k, j, back)


def check_restart(name: str, k: int, j: int, back: int) -> None:
    """Kill after event ``k``, checkpoint after ``j``, back at ``back``; check (docstring)."""
    events = list(capture_events(name))
    reference = Store()
    out: list[Effect] = []
    out += [e for _, e in feed(model(), events)]
    reference.take(out)

    first = model()
    stored = Store()
    out = []
    out += [e for _, e in feed(first, events[:j])]
    blob = checkpoint.dumps(first.state())
    out += [e for _, e in feed(first, events[j:k])]
    stored.take(out)

    pbx = PbxState()
    pbx.apply_all(events[:back])
    second = model()
    state = checkpoint.loads(blob)
    parts = [*state.parts.values(), *state.settling.values()]
    second.restore(
        state,
        stored_calls=frozenset(state.calls) & frozenset(stored.calls),
        stored_activities=frozenset(p.activity_id for p in parts) & frozenset(stored.activities),
    )
    now = (events[back - 1].timestamp or 0.0) if back > 0 else 0.0
    out = list(second.tick(now))
    out += second.set_link(Link.UP, now)  # the daemon's AMI link, then its resync
    out += second.resync(resync_items(pbx, now), now)
    out += [e for _, e in feed(second, events[back:])]
    out += second.tick(now + 24 * 3600)  # everything settles, wrap-ups end
    stored.take(out)

    assert stored.rewritten == []
    same_part = Counter(
        (a.interaction_id, a.agent, a.offered_at, a.answered_at) for a in stored.activities.values()
    )
    assert [p for p, count in same_part.items() if count > 1] == []
    per_agent = Counter((a.interaction_id, a.agent) for a in stored.activities.values())
    want = Counter((a.interaction_id, a.agent) for a in reference.activities.values())
    assert {key: c for key, c in per_agent.items() if c > want[key]} == {}

    known_calls = {c for c in reference.calls if first_index(events, c) < j}
    assert known_calls <= set(stored.calls), known_calls - set(stored.calls)
    # The parts the checkpoint knew as worth an activity (they rang, were answered or
    # dialled out; a leg that never rang gets none, with or without a restart).
    known_parts = {
        (p.call_id, p.agent)
        for p in [*state.parts.values(), *state.settling.values()]
        if p.alerting_at is not None
        or p.answered_at is not None
        or p.last_pop is not None
        or p.originator
    }
    assert known_parts <= set(per_agent), known_parts - set(per_agent)
