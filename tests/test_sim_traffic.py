"""The traffic generator: deterministic, consistent, and shaped like the real captures."""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctid.core.ami import AmiMessage, AmiParser
from ctid.sim import AmiSimulator, RawAmiClient, Timing, generate, queue_status_items

CAPTURE_DIR = Path(os.environ.get("CTID_CAPTURES", "/work/shared/ami-captures"))
SHAPE_CAPTURES = ["inbound_answered", "inbound_abandoned", "blind_transfer", "agent_ring_noanswer"]

CHANNEL = re.compile(r"^PJSIP/(carrier|\d{4})-[0-9a-f]{8}$")
UNIQUEID = re.compile(r"^\d{10}\.\d+$")
TIMESTAMP = re.compile(r"^\d{10}\.\d{6}$")


def check_invariants(msgs: list[AmiMessage], callers: int) -> None:
    """What any consumer of the stream may rely on, whatever the parameters."""
    stamps = []
    for m in msgs:
        assert m.headers[0][0] == "Event"
        assert m.headers[1][0] == "Privilege"
        assert m.headers[1][1].endswith(",all")
        assert m.headers[2][0] == "Timestamp"
        assert TIMESTAMP.match(m.headers[2][1])
        stamps.append(float(m.headers[2][1]))
    assert stamps == sorted(stamps)

    # Channels: one Newchannel first, one Hangup last, Linkedid = the customer's Uniqueid.
    created: dict[str, int] = {}
    hung_up: dict[str, int] = {}
    customers: set[str] = set()
    last_seen: dict[str, int] = {}
    for i, m in enumerate(msgs):
        if m.event == "Cdr":
            continue
        uid = m.get("Uniqueid")
        if m.event == "Newchannel":
            assert uid not in created
            assert CHANNEL.match(m.get("Channel"))
            assert UNIQUEID.match(uid)
            created[uid] = i
            if m.get("Channel").startswith("PJSIP/carrier-"):
                customers.add(uid)
                assert m.get("Linkedid") == uid
        if uid:
            assert uid in created, f"{m.event} before Newchannel of {uid}"
            last_seen[uid] = i
        if m.event == "Hangup":
            assert uid not in hung_up
            hung_up[uid] = i
    assert set(hung_up) == set(created)
    for uid, i in hung_up.items():
        assert last_seen[uid] == i, f"{uid} has events after its Hangup"
    for m in msgs:
        if m.event == "Newchannel":
            assert m.get("Linkedid") in customers

    # Queue: each caller joins once and leaves once; an abandon comes right before its leave.
    joins = [m.get("Uniqueid") for m in msgs if m.event == "QueueCallerJoin"]
    leaves = [m.get("Uniqueid") for m in msgs if m.event == "QueueCallerLeave"]
    assert len(joins) == callers
    assert sorted(joins) == sorted(leaves) == sorted(customers)
    connected = Counter(m.get("Uniqueid") for m in msgs if m.event == "AgentConnect")
    abandoned = Counter(m.get("Uniqueid") for m in msgs if m.event == "QueueCallerAbandon")
    assert max(connected.values(), default=0) <= 1
    assert not set(connected) & set(abandoned)
    for i, m in enumerate(msgs):
        if m.event == "QueueCallerAbandon":
            leave = next(
                n
                for n in msgs[i:]
                if n.event == "QueueCallerLeave" and n.get("Uniqueid") == m.get("Uniqueid")
            )
            assert leave.get("Queue") == m.get("Queue")

    # Agents are never in two calls at once: BUSY and NOT_INUSE alternate.
    device: dict[str, str] = {}
    for m in msgs:
        if m.event == "DeviceStateChange" and re.match(r"^PJSIP/\d{4}$", m.get("Device")):
            state = m.get("State")
            assert device.get(m.get("Device"), "NOT_INUSE") != state, m.get("Device")
            device[m.get("Device")] = state
    assert set(device.values()) <= {"NOT_INUSE"}

    # Bridges: create, two enters, two leaves, destroy.
    bridges: dict[str, list[str]] = defaultdict(list)
    for m in msgs:
        if m.event.startswith("Bridge") and m.event != "BridgeListItem":
            bridges[m.get("BridgeUniqueid")].append(m.event)
    for steps in bridges.values():
        assert steps == [
            "BridgeCreate",
            "BridgeEnter",
            "BridgeEnter",
            "BridgeLeave",
            "BridgeLeave",
            "BridgeDestroy",
        ]


def test_default_stream_is_consistent() -> None:
    msgs = list(generate(agents=5, callers=60, seed=1))
    check_invariants(msgs, 60)
    names = Counter(m.event for m in msgs)
    assert names["AgentConnect"] > 30
    assert names["QueueCallerAbandon"] > 0
    assert names["AgentRingNoAnswer"] > 0


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    first = [m.to_bytes() for m in generate(agents=3, callers=15, seed=42)]
    again = [m.to_bytes() for m in generate(agents=3, callers=15, seed=42)]
    other = [m.to_bytes() for m in generate(agents=3, callers=15, seed=43)]
    assert first == again
    assert first != other


def test_starts_at_start_ts_with_asterisk_ids() -> None:
    msgs = list(generate(agents=2, callers=2, seed=0, start_ts=1795308161.0))
    assert msgs[0].timestamp is not None
    assert 1795308161.0 <= msgs[0].timestamp < 1795308162.0
    first = next(m for m in msgs if m.event == "Newchannel")
    assert first.get("Channel") == "PJSIP/carrier-00000000"
    assert first.get("Uniqueid") == "1795308161.0"
    agent_leg = next(
        m for m in msgs if m.event == "Newchannel" and "carrier" not in m.get("Channel")
    )
    assert agent_leg.get("Channel") == "PJSIP/1001-00000001"
    assert agent_leg.get("Linkedid") == "1795308161.0"


def test_stream_bytes_parse_back_identically() -> None:
    msgs = list(generate(agents=3, callers=10, seed=5))
    raw = b"".join(m.to_bytes() for m in msgs)
    assert AmiParser(expect_banner=False).feed(raw) == msgs
    assert "Müller".encode() in raw or "ü".encode() in raw or b"anonymous" in raw


def test_all_answered() -> None:
    msgs = list(generate(agents=3, callers=12, seed=2, answer=1.0, abandon=0.0, transfer=0.0))
    check_invariants(msgs, 12)
    names = Counter(m.event for m in msgs)
    assert names["AgentConnect"] == names["AgentComplete"] == 12
    assert names["AgentRingNoAnswer"] == names["QueueCallerAbandon"] == 0
    reasons = {m.get("Reason") for m in msgs if m.event == "AgentComplete"}
    assert reasons <= {"caller", "agent"}


def test_all_abandon() -> None:
    msgs = list(generate(agents=2, callers=6, seed=3, abandon=1.0))
    check_invariants(msgs, 6)
    names = Counter(m.event for m in msgs)
    assert names["QueueCallerAbandon"] == 6
    assert names["AgentConnect"] == 0
    abandon_then_leave = [
        m.event for m in msgs if m.event in {"QueueCallerAbandon", "QueueCallerLeave"}
    ]
    assert abandon_then_leave == ["QueueCallerAbandon", "QueueCallerLeave"] * 6


def test_nobody_answers_and_the_queue_times_out() -> None:
    timing = Timing(max_wait=40.0, ring_timeout=6.0)
    msgs = list(generate(agents=2, callers=3, seed=4, answer=0.0, abandon=0.0, timing=timing))
    check_invariants(msgs, 3)
    names = Counter(m.event for m in msgs)
    assert names["AgentConnect"] == names["QueueCallerAbandon"] == 0
    assert names["AgentRingNoAnswer"] >= 3
    rna = next(m for m in msgs if m.event == "AgentRingNoAnswer")
    assert rna.get("RingTime") == "6000"
    # README point 15: NOANSWER then CANCEL for the same leg.
    i = msgs.index(rna)
    assert [(m.event, m.get("DialStatus")) for m in msgs[i + 1 : i + 3]] == [
        ("DialEnd", "NOANSWER"),
        ("DialEnd", "CANCEL"),
    ]


def test_blind_transfers() -> None:
    timing = Timing(mean_interarrival=300.0)  # agents mostly free, so targets exist
    msgs = list(
        generate(agents=4, callers=8, seed=6, answer=1.0, abandon=0.0, transfer=1.0, timing=timing)
    )
    check_invariants(msgs, 8)
    transfers = [m for m in msgs if m.event == "BlindTransfer"]
    assert len(transfers) == 8
    for bt in transfers:
        i = msgs.index(bt)
        customer = bt.get("TransfereeUniqueid")
        complete = next(
            m for m in msgs[i:] if m.event == "AgentComplete" and m.get("Uniqueid") == customer
        )
        assert complete.get("Reason") == "transfer"
        assert complete.get("DestChannel") == bt.get("TransfererChannel")
        dial = next(m for m in msgs[i:] if m.event == "DialBegin" and m.get("Uniqueid") == customer)
        assert dial.get("DialString") == bt.get("Extension")
        assert dial.get("DestLinkedid") == customer
        assert msgs[i - 1].event == "Unhold"
        assert msgs[i - 1].get("Channel") == bt.get("TransfererChannel")


@pytest.mark.skipif(not (CAPTURE_DIR / "inbound_answered.ami").is_file(), reason="no captures")
def test_every_event_has_a_header_layout_seen_in_the_captures() -> None:
    from ctid.sim import load_capture  # noqa: PLC0415 - only with captures

    shapes: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for name in SHAPE_CAPTURES:
        for m in load_capture(CAPTURE_DIR / f"{name}.ami").events:
            shapes[m.event].add(tuple(k for k, _ in m.headers))
    msgs = generate(agents=4, callers=60, seed=3, transfer=0.5, abandon=0.2)
    unseen = {m.event for m in msgs if tuple(k for k, _ in m.headers) not in shapes[m.event]}
    assert unseen == set()


@settings(max_examples=40, deadline=None)
@given(
    agents=st.integers(1, 4),
    callers=st.integers(0, 8),
    seed=st.integers(0, 2**32),
    answer=st.floats(0.0, 1.0),
    abandon=st.floats(0.0, 1.0),
    transfer=st.floats(0.0, 1.0),
)
def test_invariants_hold_for_any_parameters(
    agents: int, callers: int, seed: int, answer: float, abandon: float, transfer: float
) -> None:
    msgs = list(
        generate(
            agents=agents,
            callers=callers,
            seed=seed,
            answer=answer,
            abandon=abandon,
            transfer=transfer,
            timing=Timing(max_wait=60.0),
        )
    )
    check_invariants(msgs, callers)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="agents"):
        list(generate(agents=0))
    with pytest.raises(ValueError, match="answer"):
        list(generate(answer=1.5))


async def test_the_simulator_plays_generated_traffic() -> None:
    msgs = list(generate(agents=3, callers=5, seed=9))
    async with AmiSimulator(username="ctid", secret="pw") as sim:
        sim.set_list("QueueStatus", queue_status_items(3))
        async with await RawAmiClient.connect("127.0.0.1", sim.port) as client:
            await client.login("ctid", "pw", events="call,agent,security,dialplan,cdr")
            await client.wait_for(lambda m: m.event == "SuccessfulAuth")
            sent = await sim.replay(iter(msgs), speed=None)
            got = await client.collect(sent)
            assert got == msgs
            await client.send("QueueStatus", [("ActionID", "q")])
            answer = await client.collect(6)
            assert [m.event or m.response for m in answer] == [
                "Success",
                "QueueParams",
                "QueueMember",
                "QueueMember",
                "QueueMember",
                "QueueStatusComplete",
            ]
            assert answer[2].get("Location") == "PJSIP/1001"
