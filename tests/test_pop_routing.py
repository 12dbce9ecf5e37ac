"""Which agent gets which pop, end to end on real parts (issue 4, point 5).

Real captures are replayed by the AMI simulator into the real daemon, with a
directory (imported as in ``tests/test_pops.py``) that holds the customer; each
agent reads its own pops from a real Mosquitto with its own credentials (the
generated ACL lets it read nothing else). The rig's agents are alice
(``PJSIP/1001``) and bob (``PJSIP/1002``), both members of ``support``.

- A transferred or consulted call pops at the receiving agent (bob) with the
  original customer's match and attached data, ``why: transfer`` / ``consult``.
- ``calls.pop_on = "accepted"``: no alerting pop, the first pop is the accepted one.
- A call ringing two agents at once pops at both, and the pop of the one who did
  not answer is withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import aiomqtt
import orjson
import pytest

from ctid.core.ami import AmiMessage
from ctid.sim.capture import load_capture
from ctid.sim.server import AmiSimulator
from tests.broker import MosquittoBroker
from tests.test_pops import MAX, PERSON, load_directory
from tests.test_slice_inbound import (
    CAPTURES,
    SECRET,
    daemon_config,
    dedup_runs,
    queue_member,
    running_daemon,
)

# alice (PJSIP/1001) and bob (PJSIP/1002) of tests/broker.py's make_config.
ALICE, BOB = "alice", "bob"

# The original customer's match: PERSON, found by the caller's number (MAX).
CRM_1 = {"kind": "single", "records": [{"id": "crm-1", "kind": "person", "name": "Max Mustermann"}]}

# Data an IVR attached to the customer's channel (not an account id: the number is
# still looked up, so the match is the directory's).
ATTACHED = {"ORDER": "A-4711", "LANGUAGE": "de"}

# The caller of agent_ring_noanswer ("Hans Meier" <+4940555666>), in the directory.
HANS = {"id": "crm-3", "kind": "person", "name": "Hans Meier", "numbers": ["+4940555666"]}
HANS_MATCH = {
    "kind": "single",
    "records": [{"id": "crm-3", "kind": "person", "name": "Hans Meier"}],
}

Pops = dict[str, list[dict[str, Any]]]
Messages = dict[str, list[dict[str, Any]]]


# ---------------------------------------------------------------------- streams


def with_attached(name: str, prefix: str, data: dict[str, str]) -> list[AmiMessage]:
    """The capture ``name`` with the IVR having attached ``data`` to the caller's channel
    before the call queued: one ``VarSet`` per variable (``Set(CTI_ORDER=...)`` in the
    dialplan), each a copy of the caller's last recorded ``VarSet`` before
    ``QueueCallerJoin`` with only ``Variable`` and ``Value`` changed."""
    events = list(load_capture(CAPTURES / f"{name}.ami").replay_events)
    queued = next(i for i, e in enumerate(events) if e.event == "QueueCallerJoin")
    caller = events[queued].get("Channel")
    last = max(
        i
        for i in range(queued)
        if events[i].event == "VarSet" and events[i].get("Channel") == caller
    )
    added = []
    for variable, value in data.items():
        changed = {"Variable": prefix + variable, "Value": value}
        added.append(AmiMessage(tuple((k, changed.get(k, v)) for k, v in events[last].headers)))
    return [*events[: last + 1], *added, *events[last + 1 :]]


def _retimed(segments: Sequence[tuple[Sequence[AmiMessage], float]]) -> list[AmiMessage]:
    """The segments one after the other, each keeping its events' recorded spacing and
    starting ``gap`` seconds after the previous segment's last event."""
    out: list[AmiMessage] = []
    clock: float | None = None
    for events, gap in segments:
        first = events[0].timestamp
        assert first is not None
        start = first if clock is None else clock + gap
        for e in events:
            ts = e.timestamp
            assert ts is not None
            clock = start + (ts - first)
            stamp = f"{clock:.6f}"
            out.append(
                AmiMessage(tuple((k, stamp if k == "Timestamp" else v) for k, v in e.headers))
            )
    return out


def ringall_stream() -> list[AmiMessage]:
    """One call ringing alice and bob at once; bob answers, alice's leg is cancelled.

    None of the captures has two agents ringing at the same time (the ringall queue
    ``backoffice`` rang a single member in ``agent_pause_unpause``), so this stream
    is built from the real events of ``agent_ring_noanswer``, where the linear
    ``support`` queue rings 1001 for 6 s (no answer), then 1002, who answers after
    2 s and talks. Its events are kept as recorded, only reordered (and re-stamped
    so that time never goes backwards) the way a ringall queue orders them:

    1. everything up to 1001 ringing (``Newchannel`` … ``DialState RINGING`` and
       1001's ``QueueMemberStatus``), as recorded;
    2. right after it (1 ms), 1002's leg from its ``Newchannel`` to its
       ``QueueMemberStatus`` ringing: both phones ring now;
    3. 2 s later (as recorded) 1002's ``Newstate Up`` and ``DialEnd ANSWER``;
    4. at once, 1001's leg torn down as app_queue hangs up the other members' legs
       when one answers: its recorded ``DialEnd CANCEL``, ``Hangup`` (with
       ``Cause: 26``, "Answered elsewhere", instead of the recorded 0) and 1001's
       idle ``DeviceStateChange``/``QueueMemberStatus``;
    5. the rest of the call (``AgentConnect``, bridge, talk, hangup), as recorded.

    Left out: the ``AgentRingNoAnswer`` and ``DialEnd NOANSWER`` of 1001's
    ring timeout (a ringall call answered elsewhere has no timeout) and two RTCP
    reports of the caller's leg sent during that timeout.
    """
    events = load_capture(CAPTURES / "agent_ring_noanswer.ami").replay_events

    def at(event: str, channel: str, **headers: str) -> int:
        return next(
            i
            for i, e in enumerate(events)
            if e.event == event
            and channel in (e.get("Channel"), e.get("DestChannel"))
            and all(e.get(k) == v for k, v in headers.items())
        )

    alice_leg, bob_leg = "PJSIP/1001-0000000a", "PJSIP/1002-0000000b"
    alice_rtcp = at("RTCPSent", "PJSIP/carrier-00000009")  # after 1001's ringing events
    no_answer = at("AgentRingNoAnswer", alice_leg)
    cancel = at("DialEnd", alice_leg, DialStatus="CANCEL")
    bob_new = at("Newchannel", bob_leg)
    bob_up = at("Newstate", bob_leg, ChannelStateDesc="Up")
    bob_answer = at("DialEnd", bob_leg, DialStatus="ANSWER")
    # The recorded order this relies on.
    assert alice_rtcp + 2 == no_answer
    assert cancel == no_answer + 2
    assert bob_answer == bob_up + 1
    assert events[cancel + 1].event == "Hangup"
    assert events[cancel + 1].get("Channel") == alice_leg

    elsewhere = {"Cause": "26", "Cause-txt": "Answered elsewhere"}
    teardown = [
        AmiMessage(tuple((k, elsewhere.get(k, v)) for k, v in e.headers))
        if e.event == "Hangup"
        else e
        for e in events[cancel:bob_new]
    ]
    return _retimed(
        [
            (events[:alice_rtcp], 0.0),
            (events[bob_new:bob_up], 0.001),
            (events[bob_up : bob_answer + 1], 2.0),
            (teardown, 0.0001),
            (events[bob_answer + 1 :], 0.0001),
        ]
    )


# ---------------------------------------------------------------------- the rig


async def run_call(
    broker: MosquittoBroker,
    events: Sequence[AmiMessage],
    entries: list[dict[str, Any]],
    done: Callable[[Messages], bool],
    *,
    leaves: Sequence[str] = ("pop",),
    pop_on: str | None = None,
    speed: float = 4.0,
) -> Messages:
    """Replay ``events`` into the daemon with the directory ``entries`` and collect what
    alice and bob each read on their own ``ctid/v1/agents/{agent}/{leaf}`` topics, as
    themselves, until ``done`` says enough and the replay is over."""
    async with AmiSimulator(secret=SECRET) as sim:
        sim.set_list(
            "QueueStatus",
            [queue_member("PJSIP/1001", "support"), queue_member("PJSIP/1002", "support")],
        )
        config = daemon_config(broker, sim)
        if pop_on is not None:
            config = dataclasses.replace(
                config, calls=dataclasses.replace(config.calls, pop_on=pop_on)
            )
        await load_directory(config, entries)
        got: Messages = {ALICE: [], BOB: []}
        enough = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            readers = []
            for agent in (ALICE, BOB):
                client = await stack.enter_async_context(broker.client(agent))
                for leaf in leaves:
                    await client.subscribe(f"ctid/v1/agents/{agent}/{leaf}", qos=1)
                readers.append((agent, client))

            async def read(agent: str, client: aiomqtt.Client) -> None:
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    got[agent].append(orjson.loads(message.payload))
                    if done(got):
                        enough.set()

            async with running_daemon(config, sim):
                tasks = [asyncio.create_task(read(a, c)) for a, c in readers]
                try:
                    async with asyncio.timeout(12):
                        await sim.replay(events, speed)
                        await enough.wait()
                finally:
                    for task in tasks:
                        task.cancel()
                    for task in tasks:
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
    return got


def pops_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("type") == "pop"]


def has(messages: list[dict[str, Any]], **fields: Any) -> bool:
    return any(all(m.get(k) == v for k, v in fields.items()) for m in messages)


# ---------------------------------------------------------------------- 1. transfer, consult


@pytest.mark.parametrize(
    ("capture", "bob_whys", "last"),
    [
        # Blind transfer (AMI BlindTransfer): bob's leg rings after alice's is gone.
        ("blind_transfer", ["transfer"], {"phase": "accepted", "why": "transfer"}),
        # Attended transfer: bob is consulted first; alice hangs up, bob takes over.
        ("attended_transfer", ["consult", "transfer"], {"phase": "accepted", "why": "transfer"}),
        # A consultation alice cancels: bob was only ever consulted.
        ("consult_then_retrieve", ["consult"], {"phase": "accepted", "why": "consult"}),
    ],
    ids=["blind", "attended", "consult_retrieved"],
)
async def test_the_receiving_agent_pops_the_original_customer(
    mosquitto: MosquittoBroker, capture: str, bob_whys: list[str], last: dict[str, str]
) -> None:
    """bob, reached by a transfer or a consultation, pops the customer alice had: the same
    interaction, number, match (crm-1) and IVR-attached data, with ``why`` saying how
    the call came to him; his pop rings (alerting) before he answers (accepted)."""
    prefix = mosquitto.config.calls.attached_prefix
    events = with_attached(capture, prefix, ATTACHED)
    got = await run_call(
        mosquitto,
        events,
        [PERSON],
        lambda got: has(got[BOB], lookup="done", **last),
    )
    alice, bob = pops_of(got[ALICE]), pops_of(got[BOB])

    # alice took the call from the queue and popped the customer.
    assert alice[0]["phase"] == "alerting"
    assert alice[0]["why"] == "inbound"
    interaction = alice[0]["interaction_id"]
    assert any(p["lookup"] == "done" and p["match"] == CRM_1 for p in alice)

    # bob's pops: the same interaction, the original customer, alerting first.
    assert bob, got
    assert bob[0]["phase"] == "alerting"
    assert bob[0]["why"] == bob_whys[0]
    for pop in bob:
        assert pop["agent"] == BOB
        assert pop["interaction_id"] == interaction
        assert pop["direction"] == "inbound"
        assert pop["number"]["e164"] == MAX  # the customer's, not alice's extension
        assert pop["caller_name"] == "Max Mustermann"
        assert pop["attached"] == ATTACHED
        assert pop["queue"] == "support"
    # Asked once (at alice's pop), the match is on bob's pops from his first one.
    assert bob[0]["lookup"] == "done"
    assert [p["match"] for p in bob] == [CRM_1] * len(bob)
    # In order: how bob came to the call, and alerting before accepted.
    assert dedup_runs([p["why"] for p in bob]) == bob_whys
    assert [(p["phase"], p["why"]) for p in bob][-1] == (last["phase"], last["why"])
    first_accepted = next(i for i, p in enumerate(bob) if p["phase"] == "accepted")
    assert {p["phase"] for p in bob[:first_accepted]} == {"alerting"}
    assert all(p["phase"] == "accepted" for p in bob[first_accepted:])


# ---------------------------------------------------------------------- 2. pop_on


def call_over(agent: str) -> Callable[[Messages], bool]:
    """``done`` for ``run_call``: ``agent``'s activity is in (its pops came before it)."""
    return lambda got: has(got[agent], type="activity")


@pytest.mark.parametrize("pop_on", ["alerting", "accepted"])
async def test_pop_on(mosquitto: MosquittoBroker, pop_on: str) -> None:
    """``calls.pop_on``: with ``accepted`` no alerting pop reaches the agent while the
    phone rings; the first pop is the accepted one and carries the match. With the
    default ``alerting``, the alerting pop comes first, accepted after it.

    alice reads her whole stream (``ctid/v1/agents/alice/#``) until the call's activity:
    from the ringing on its ``seq`` numbers have no gap, so no pop went missing."""
    got = await run_call(
        mosquitto,
        load_capture(CAPTURES / "inbound_answered.ami").replay_events,
        [PERSON],
        call_over(ALICE),
        leaves=("#",),
        pop_on=pop_on,
        speed=2.0,
    )
    stream = got[ALICE]
    # From her phone ringing to the activity, every seq (not from the start: what she
    # reads first may be retained by an earlier daemon on this broker, with its seqs).
    rang = next(i for i, m in enumerate(stream) if m.get("phone") == "ringing")
    seqs = [m["seq"] for m in stream[rang:]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    phones = dedup_runs([m["phone"] for m in stream if m["type"] == "agent_state"])
    assert phones == ["idle", "ringing", "talking", "idle"]  # she did ring
    pops = pops_of(stream)
    assert pops, stream
    assert {p["interaction_id"] for p in pops} == {"1795308161.0"}
    phases = dedup_runs([p["phase"] for p in pops])
    if pop_on == "accepted":
        assert phases == ["accepted"]
        # The pop comes when she answers (stamped with the answer's time, as her
        # talking state is), not while her phone rings.
        talking = next(m for m in stream if m.get("phone") == "talking")
        last_ringing = max(i for i, m in enumerate(stream) if m.get("phone") == "ringing")
        assert pops[0]["ts"] == talking["ts"]
        assert stream.index(pops[0]) > last_ringing
        # The lookup started while she rang: the accepted pop has the match at once.
        assert (pops[0]["lookup"], pops[0]["match"]) == ("done", CRM_1)
    else:
        assert phases == ["alerting", "accepted"]
    assert pops[0]["number"]["e164"] == MAX
    # The match: on the first pop, or as its update (``lookup: done``) right after.
    settled = [p for p in pops if p["lookup"] == "done"]
    assert settled
    assert settled[0]["phase"] == pops[0]["phase"]
    assert {orjson.dumps(p["match"]) for p in settled} == {orjson.dumps(CRM_1)}
    assert pops[-1]["phase"] == "accepted"
    assert pops[-1]["match"] == CRM_1
    # bob was never offered the call: nothing popped at him.
    assert pops_of(got[BOB]) == []


# ---------------------------------------------------------------------- 3. ringall


async def test_ringing_agents_all_pop_and_the_others_are_withdrawn(
    mosquitto: MosquittoBroker,
) -> None:
    """A call rings alice and bob at once (see ``ringall_stream`` for how the stream is
    built from a real capture): both get an alerting pop for the same interaction;
    bob answers and gets accepted; alice's pop is withdrawn."""
    got = await run_call(
        mosquitto,
        ringall_stream(),
        [HANS],
        lambda got: has(got[ALICE], phase="withdrawn") and has(got[BOB], phase="accepted"),
        speed=2.0,
    )
    alice, bob = pops_of(got[ALICE]), pops_of(got[BOB])
    interaction = "1795308207.9"  # the caller's Uniqueid = the call's Linkedid
    assert {p["interaction_id"] for p in alice + bob} == {interaction}
    assert {p["agent"] for p in alice} == {ALICE}
    assert {p["agent"] for p in bob} == {BOB}

    # Both rang: an alerting pop each, before anyone answered.
    assert alice[0]["phase"] == "alerting"
    assert bob[0]["phase"] == "alerting"
    for pop in (alice[0], bob[0]):
        assert pop["why"] == "inbound"
        assert pop["queue"] == "support"
        assert pop["number"]["e164"] == "+4940555666"

    # alice did not answer: her pop ends withdrawn, and nothing accepted.
    assert dedup_runs([p["phase"] for p in alice]) == ["alerting", "withdrawn"]
    assert alice[-1]["match"] == HANS_MATCH

    # bob answered: accepted after alerting, never withdrawn.
    assert dedup_runs([p["phase"] for p in bob]) == ["alerting", "accepted"]
    assert bob[-1]["match"] == HANS_MATCH


async def test_pop_on_accepted_pops_only_the_agent_who_answers(
    mosquitto: MosquittoBroker,
) -> None:
    """With ``pop_on = "accepted"`` the same two-agent ring pops nothing at alice (no
    alerting pop, so nothing to withdraw) and an accepted pop at bob."""
    got = await run_call(
        mosquitto,
        ringall_stream(),
        [HANS],
        lambda got: has(got[BOB], type="activity") and has(got[ALICE], type="activity"),
        leaves=("pop", "activity"),
        pop_on="accepted",
        speed=2.0,
    )
    assert pops_of(got[ALICE]) == []
    # alice still has the offer on record: rung, not answered.
    (offered,) = [m for m in got[ALICE] if m["type"] == "activity"]
    assert offered["answered_at"] is None
    bob = pops_of(got[BOB])
    assert bob, got
    assert {p["phase"] for p in bob} == {"accepted"}
    assert bob[-1]["match"] == HANS_MATCH
