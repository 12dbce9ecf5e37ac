"""The pure model on real captures: wrap-up, PBX restart, expiry, resync (no I/O at all)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctid import checkpoint
from ctid.core.agents import Link, Presence
from ctid.core.ami import AmiMessage
from ctid.core.effects import Effect, EmitActivity, EmitCall, Lookup, Publish, SendAction
from ctid.core.model import AgentSpec, Model, ModelSettings
from ctid.core.numbers import NumberNormalizer
from ctid.replay import capture_messages, is_unsolicited

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "ami-captures"
AGENTS = tuple(
    AgentSpec(id=str(n), devices=(f"PJSIP/{n}", f"IAX2/{n}"), extension=str(n))
    for n in range(1001, 1011)
)


def model(**settings: float) -> Model:
    return Model(ModelSettings(agents=AGENTS, **settings), NumberNormalizer())  # type: ignore[arg-type]


def events(name: str) -> list[AmiMessage]:
    return [m for m in capture_messages(CAPTURES / f"{name}.ami") if is_unsolicited(m)]


def feed(m: Model, msgs: list[AmiMessage]) -> Iterator[tuple[float, Effect]]:
    now = 0.0
    for msg in msgs:
        now = msg.timestamp or now
        for effect in [*m.tick(now), *m.apply(msg, now)]:
            yield now, effect


def member(interface: str, queue: str, *, paused: bool = False, reason: str = "") -> AmiMessage:
    return AmiMessage.build(
        {
            "Event": "QueueMember",
            "Queue": queue,
            "Location": interface,
            "StateInterface": interface,
            "Paused": "1" if paused else "0",
            "PausedReason": reason,
        }
    )


def test_automatic_wrap_up_pauses_then_returns_ready_and_updates_the_activity() -> None:
    """With wrap-up on, the agent is paused 'wrap-up' after the call and ready again after it."""
    m = model(wrapup_s=10.0)
    out = list(feed(m, events("inbound_answered")))
    activities = [e for _, e in out if isinstance(e, EmitActivity)]
    assert [a.record.agent for a in activities] == ["1001"]
    ended = activities[0].record.ended_at
    pauses = [e for _, e in out if isinstance(e, SendAction)]
    assert pauses == [
        SendAction("QueuePause", (("Interface", d), ("Paused", "true"), ("Reason", "wrap-up")))
        for d in ("PJSIP/1001", "IAX2/1001")
    ]
    assert m.agents["1001"].presence == Presence.WRAP_UP

    assert m.tick(ended + 9.0) == []
    later = m.tick(ended + 10.0)
    unpauses = [e for e in later if isinstance(e, SendAction)]
    assert [dict(e.fields)["Paused"] for e in unpauses] == ["false", "false"]
    updated = [e.record for e in later if isinstance(e, EmitActivity)]
    assert len(updated) == 1
    assert updated[0].id == activities[0].record.id  # the same activity, updated
    assert updated[0].wrapup_s == 10.0
    assert m.agents["1001"].presence.value == "ready"  # (mypy narrowed it above)


def test_wrap_up_done_early_carries_code_and_notes() -> None:
    """end_wrapup before the timeout: ready at once, the activity gets the code and notes."""
    m = model(wrapup_s=60.0)
    out = list(feed(m, events("inbound_answered")))
    ended = next(e.record.ended_at for _, e in out if isinstance(e, EmitActivity))
    effects = m.end_wrapup("1001", ended + 4.0, code="sale", notes="wants a brochure")
    (update,) = [e.record for e in effects if isinstance(e, EmitActivity)]
    assert (update.wrapup_s, update.wrapup_code, update.notes) == (4.0, "sale", "wants a brochure")
    assert m.agents["1001"].presence == Presence.READY
    assert m.tick(ended + 120.0) == []  # nothing left to time out


def test_wrap_up_does_not_end_while_the_pbx_link_is_down() -> None:
    """The unpause could not reach Asterisk: the wrap-up ends once the link is back."""
    m = model(wrapup_s=10.0)
    out = list(feed(m, events("inbound_answered")))
    ended = next(e.record.ended_at for _, e in out if isinstance(e, EmitActivity))
    m.set_link(Link.DOWN, ended + 1.0)
    assert [e for e in m.tick(ended + 30.0) if isinstance(e, SendAction)] == []
    assert m.agents["1001"].presence == Presence.WRAP_UP
    m.set_link(Link.UP, ended + 31.0)
    unpauses = [e for e in m.tick(ended + 31.5) if isinstance(e, SendAction)]
    assert [dict(e.fields)["Paused"] for e in unpauses] == ["false", "false"]


def test_only_the_close_of_a_part_ctid_did_not_see_end_is_a_guess() -> None:
    """A part closed by a resync is emitted as unseen_close (never replaces a stored row);
    it starts no wrap-up (it ended at an unknown time); notes after it go to the stored
    activity (annotate: None), not through another guess."""
    msgs = events("inbound_answered")
    cut = next(i for i, e in enumerate(msgs) if e.event == "BridgeEnter") + 2
    m = model(wrapup_s=60.0)
    list(feed(m, msgs[:cut]))
    complete = AmiMessage.build({"Event": "CoreShowChannelsComplete", "ListItems": "0"})
    now = msgs[cut].timestamp or 0.0
    closed = [e for e in m.resync([complete], now) if isinstance(e, EmitActivity | EmitCall)]
    assert [(type(e).__name__, e.unseen_close) for e in closed] == [
        ("EmitActivity", True),
        ("EmitCall", True),
    ]
    assert m.agents["1001"].presence != Presence.WRAP_UP
    assert [e for e in m.tick(now + 120.0) if isinstance(e, EmitActivity | SendAction)] == []
    (activity,) = [e.record for e in closed if isinstance(e, EmitActivity)]
    assert m.annotate(activity.interaction_id, "1001", now + 5.0, notes="call back") is None


def test_a_lookup_under_way_at_the_checkpoint_is_asked_again() -> None:
    """The answer and the deadline of a lookup went with the previous run: ask again."""
    msgs = events("inbound_answered")
    rang = next(
        i
        for i, e in enumerate(msgs)
        if e.event == "Newstate" and e.get("ChannelStateDesc") == "Ringing"
    )
    m = model()
    list(feed(m, msgs[: rang + 1]))
    (call,) = m.calls.values()
    assert call.lookup == "pending"
    resumed = model()
    resumed.restore(checkpoint.loads(checkpoint.dumps(m.state())))
    lookups = resumed.pending_lookups()
    assert [(e.call_id, e.by, e.value) for e in lookups if isinstance(e, Lookup)] == [
        (call.id, "number", "+4930123456")
    ]


def test_no_wrap_up_by_default() -> None:
    """Wrap-up is off unless configured: no pause is sent after a call."""
    out = list(feed(model(), events("inbound_answered")))
    assert not [e for _, e in out if isinstance(e, SendAction)]


def test_not_ready_reason_is_reapplied_after_a_pbx_restart() -> None:
    """Asterisk forgets pause reasons on restart; ctid pauses the agent again with its reason."""
    m = model()
    m.restore_presence("1002", "not_ready", "Lunch", 1000.0)
    booted = AmiMessage.build({"Event": "FullyBooted", "Uptime": "12", "LastReload": "12"})
    m.apply(booted, 2000.0)  # the PBX came up at 1988, after the pause was set
    effects = m.resync([member("PJSIP/1002", "support"), member("PJSIP/1002", "sales")], 2000.0)
    actions = [e for e in effects if isinstance(e, SendAction)]
    assert actions == [
        SendAction(
            "QueuePause", (("Interface", "PJSIP/1002"), ("Paused", "true"), ("Reason", "Lunch"))
        )
    ]
    assert (m.agents["1002"].presence, m.agents["1002"].reason) == (Presence.NOT_READY, "Lunch")


def test_no_repause_without_a_restart() -> None:
    """A PBX that did not restart is the truth: an agent unpaused there is ready."""
    m = model()
    m.restore_presence("1002", "not_ready", "Lunch", 1000.0)
    booted = AmiMessage.build({"Event": "FullyBooted", "Uptime": "5000", "LastReload": "5000"})
    m.apply(booted, 2000.0)  # up since before the pause
    effects = m.resync([member("PJSIP/1002", "support")], 2000.0)
    assert not [e for e in effects if isinstance(e, SendAction)]
    assert m.agents["1002"].presence == Presence.READY


def test_a_call_whose_hangup_was_lost_expires() -> None:
    """A call cut off mid-way (no Hangup ever) is closed after max_call_age_s, flagged."""
    msgs = events("blind_transfer")
    cut = next(i for i, e in enumerate(msgs) if e.event == "BridgeEnter") + 2
    m = model(max_call_age_s=60.0)
    list(feed(m, msgs[:cut]))
    assert m.calls
    start = min(c.started_at for c in m.calls.values())
    effects = m.tick(start + 61.0)
    calls = [e.record for e in effects if isinstance(e, EmitCall)]
    acts = [e.record for e in effects if isinstance(e, EmitActivity)]
    assert len(calls) == 1
    assert [a.extra.get("closed_by") for a in acts] == ["expired"]
    assert not calls[0].ended_while_disconnected
    assert (m.calls, m.channels, m.parts, m.settling) == ({}, {}, {}, {})
    assert m.agents["1001"].parts == frozenset()


def test_resync_closes_calls_that_ended_during_the_outage() -> None:
    """Calls gone from CoreShowChannels are closed once, flagged ended_while_disconnected."""
    msgs = events("inbound_answered")
    cut = next(i for i, e in enumerate(msgs) if e.event == "BridgeEnter") + 2
    m = model()
    before = [e for _, e in feed(m, msgs[:cut]) if isinstance(e, EmitActivity)]
    assert before == []
    complete = AmiMessage.build({"Event": "CoreShowChannelsComplete", "ListItems": "0"})
    effects = m.resync([complete], msgs[cut].timestamp or 0.0)
    acts = [e.record for e in effects if isinstance(e, EmitActivity)]
    calls = [e.record for e in effects if isinstance(e, EmitCall)]
    assert [(a.agent, a.outcome, a.ended_while_disconnected) for a in acts] == [
        ("1001", "answered", True)
    ]
    assert [c.ended_while_disconnected for c in calls] == [True]
    assert (m.calls, m.channels, m.parts) == ({}, {}, {})
    # The events that arrive late (replayed after the resync) change nothing.
    late = [e for _, e in feed(m, msgs[cut:]) if isinstance(e, EmitActivity | EmitCall)]
    assert late == []


def test_resync_keeps_surviving_calls_without_duplicates() -> None:
    """A call still up after the outage keeps its part: one activity in the end, not two."""
    msgs = events("inbound_answered")
    cut = next(i for i, e in enumerate(msgs) if e.event == "BridgeEnter") + 2
    m = model()
    list(feed(m, msgs[:cut]))
    listing = [
        AmiMessage.build(
            {
                "Event": "CoreShowChannel",
                "Channel": c.name,
                "Uniqueid": c.uniqueid,
                "Linkedid": c.linkedid,
                "ChannelState": "6",
                "ChannelStateDesc": "Up",
                "BridgeId": c.bridge,
                "Duration": "00:00:05",
            }
        )
        for c in m.channels.values()
    ]
    listing.append(AmiMessage.build({"Event": "CoreShowChannelsComplete"}))
    assert [
        e for e in m.resync(listing, msgs[cut].timestamp or 0.0) if isinstance(e, EmitActivity)
    ] == []
    rest = [e for _, e in feed(m, msgs[cut:]) if isinstance(e, EmitActivity)]
    assert [(a.record.agent, a.record.outcome) for a in rest] == [("1001", "answered")]


def test_a_restored_model_goes_on_where_the_checkpoint_left_it() -> None:
    """A model restored from another's checkpoint (through its bytes) closes a call that
    ended unseen with the same activity id, flagged as such, and finishes a call that
    goes on as the original model would, activity for activity."""
    msgs = events("inbound_answered")
    cut = next(i for i, e in enumerate(msgs) if e.event == "BridgeEnter") + 2
    original = model()
    list(feed(original, msgs[:cut]))
    blob = checkpoint.dumps(original.state())

    resumed = model()
    resumed.restore(checkpoint.loads(blob))
    assert set(resumed.calls) == set(original.calls)
    assert resumed.agents["1001"].parts == original.agents["1001"].parts
    finish = [e.record for _, e in feed(resumed, msgs[cut:]) if isinstance(e, EmitActivity)]
    want = [e.record for _, e in feed(original, msgs[cut:]) if isinstance(e, EmitActivity)]
    assert finish == want
    assert len(want) == 1

    gone = model()
    gone.restore(checkpoint.loads(blob))
    complete = AmiMessage.build({"Event": "CoreShowChannelsComplete", "ListItems": "0"})
    effects = gone.resync([complete], msgs[cut].timestamp or 0.0)
    acts = [e.record for e in effects if isinstance(e, EmitActivity)]
    calls = [e.record for e in effects if isinstance(e, EmitCall)]
    assert [(a.id, a.ended_while_disconnected) for a in acts] == [(want[0].id, True)]
    assert [c.ended_while_disconnected for c in calls] == [True]


def test_what_ended_after_the_checkpoint_is_not_closed_again() -> None:
    """A call (or part) whose row was stored after the checkpoint was taken is dropped on
    restore: the resync closes nothing of it a second time; the agent's phone is idle."""
    msgs = events("inbound_answered")
    cut = next(i for i, e in enumerate(msgs) if e.event == "BridgeEnter") + 2
    original = model()
    list(feed(original, msgs[:cut]))
    state = original.state()
    (call_id,) = state.calls
    (part,) = state.parts.values()
    complete = AmiMessage.build({"Event": "CoreShowChannelsComplete", "ListItems": "0"})
    now = msgs[cut].timestamp or 0.0

    ended = model()
    ended.restore(state, stored_calls=frozenset({call_id}))
    assert (ended.calls, ended.parts, ended.channels) == ({}, {}, {})
    assert (ended.agents["1001"].parts, ended.agents["1001"].phone.value) == (frozenset(), "idle")
    assert [
        e for e in ended.resync([complete], now) if isinstance(e, EmitActivity | EmitCall)
    ] == []

    part_done = model()
    part_done.restore(state, stored_activities=frozenset({part.activity_id}))
    effects = part_done.resync([complete], now)
    assert [type(e).__name__ for e in effects if isinstance(e, EmitActivity | EmitCall)] == [
        "EmitCall"
    ]


def test_a_restored_model_keeps_only_configured_agents() -> None:
    """An agent no longer in the config is dropped with its parts; devices and limits are
    the config's, the rest (presence, open interactions) the checkpoint's."""
    msgs = events("inbound_answered")
    cut = next(i for i, e in enumerate(msgs) if e.event == "BridgeEnter") + 2
    original = model()
    list(feed(original, msgs[:cut]))
    assert original.agents["1001"].parts
    others = tuple(a for a in AGENTS if a.id != "1001")
    without = Model(ModelSettings(agents=others), NumberNormalizer())
    without.restore(checkpoint.loads(checkpoint.dumps(original.state())))
    assert "1001" not in without.agents
    assert all(p.agent != "1001" for p in without.parts.values())
    assert all(c.agent != "1001" for c in without.channels.values())
    moved = tuple(
        AgentSpec(id=a.id, devices=("PJSIP/x",), extension=a.id, limit=2) if a.id == "1001" else a
        for a in AGENTS
    )
    changed = Model(ModelSettings(agents=moved), NumberNormalizer())
    changed.restore(checkpoint.loads(checkpoint.dumps(original.state())))
    agent = changed.agents["1001"]
    assert (agent.devices, agent.limit) == (("PJSIP/x",), 2)
    assert agent.parts == original.agents["1001"].parts


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "unreadable checkpoint"),
        (b"not a pickle", "unreadable checkpoint"),
        (pickle.dumps({"calls": {}}), "not a model checkpoint: dict"),
    ],
)
def test_a_damaged_checkpoint_is_refused(blob: bytes, message: str) -> None:
    """Bytes that are not a model's state raise ValueError (the daemon starts without)."""
    with pytest.raises(ValueError, match=message):
        checkpoint.loads(blob)


def test_a_caller_with_an_extension_is_looked_up_too() -> None:
    """A colleague's phone that is no agent's calling the queue: its extension is looked up
    (the directory may hold it); an unknown network number would be, too."""
    msgs = [
        AmiMessage(tuple((k, "2001" if v == "+4930123456" else v) for k, v in m.headers))
        for m in events("inbound_answered")
    ]
    lookups = [e for _, e in feed(model(), msgs) if isinstance(e, Lookup)]
    assert [(e.by, e.value) for e in lookups] == [("number", "2001")]


def test_every_message_is_versioned_and_typed() -> None:
    """Everything the model publishes on a busy capture is a v1 payload with a type."""
    for _, effect in feed(model(wrapup_s=3.0), events("burst")):
        pubs = (effect,) if isinstance(effect, Publish) else getattr(effect, "messages", ())
        for pub in pubs:
            assert pub.payload["v"] == 1
            assert pub.payload["type"]
            assert pub.topic.startswith("v1/")


def queue_states(effects: list[Effect], queue: str) -> list[dict[str, object]]:
    return [
        e.payload
        for e in effects
        if isinstance(e, Publish) and e.topic == f"v1/queues/{queue}/state"
    ]


def test_queue_state_follows_callers_and_agents() -> None:
    """support's retained state: the caller waits, 1001 rings then talks, all idle at the end."""
    effects = [e for _, e in feed(model(), events("inbound_answered"))]
    states = queue_states(effects, "support")
    shown = [(s["waiting"], s["agents"]) for s in states]
    assert shown[0] == (1, {"ready": 0, "busy": 0, "paused": 0})  # members not known yet
    assert (0, {"ready": 0, "busy": 1, "paused": 0}) in shown  # answered: 1001 talks
    assert shown[-1] == (0, {"ready": 1, "busy": 0, "paused": 0})
    assert all(s["longest_wait_s"] >= 0 for s in states)  # type: ignore[operator]


def test_a_lost_queue_leave_does_not_leave_a_ghost_caller() -> None:
    """Without its QueueCallerLeave, the caller stops counting when its call ends."""
    msgs = [e for e in events("inbound_answered") if e.event != "QueueCallerLeave"]
    m = model()
    effects = [e for _, e in feed(m, msgs)]
    assert queue_states(effects, "support")[-1]["waiting"] == 0
    assert m.waiting == {"support": {}}
