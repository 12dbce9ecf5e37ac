"""The simulator's PBX state answers a resync like Asterisk 22 would at that moment.

Expectations are derived independently of ``PbxState``: live channels from
``Newchannel``/``Hangup`` pairs and the latest snapshot any event carried,
bridges from ``BridgeEnter``/``BridgeLeave``, and the recorded list answers in
the captures (``reconnect.ami``, ``agent_pause_unpause.ami``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from ctid.core.ami import AmiMessage
from ctid.sim import AmiSimulator, Capture, PbxState, RawAmiClient, load_capture
from ctid.sim.pbxstate import CHANNEL_SNAPSHOT

CAPTURE_DIR = Path(os.environ.get("CTID_CAPTURES", "/work/shared/ami-captures"))
pytestmark = pytest.mark.skipif(
    not (CAPTURE_DIR / "reconnect.ami").is_file(), reason=f"no captures in {CAPTURE_DIR}"
)
CAPTURES = sorted(p.stem for p in CAPTURE_DIR.glob("*.ami"))

USER = "ctid"
SECRET = "s3cret"
BRIDGED = 95
"""In blind_transfer.ami, an event index where the customer and 1001 are bridged."""


@cache
def capture(name: str) -> Capture:
    return load_capture(CAPTURE_DIR / f"{name}.ami")


def answer(cap: Capture, action_id: str) -> list[AmiMessage]:
    """The items a recorded list answer carried, without ``ActionID`` and the ``…Complete``."""
    return [
        AmiMessage(tuple((k, v) for k, v in m.headers if k != "ActionID"))
        for m in cap.list_items
        if m.action_id == action_id and m.get("EventList") != "Complete"
    ]


def keyed(items: Sequence[AmiMessage], *keys: str) -> dict[tuple[str, ...], AmiMessage]:
    out = {(m.event, *(m.get(k) for k in keys)): m for m in items}
    assert len(out) == len(items), "duplicate keys"
    return out


# --------------------------------------------------------------------------- an independent oracle


@dataclass
class Live:
    """What a capture says is alive after its first ``k`` events, the naive way."""

    snapshot: dict[str, dict[str, str]] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    app: dict[str, tuple[str, str]] = field(default_factory=dict)
    bridge: dict[str, str] = field(default_factory=dict)

    def feed(self, msg: AmiMessage) -> None:
        uid = msg.get("Uniqueid")
        if msg.event == "Newchannel":
            self.created[uid] = msg.timestamp or 0.0
            self.app[uid] = ("", "")
            self.bridge[uid] = ""
        if msg.event == "Hangup":
            for table in (self.snapshot, self.created, self.app, self.bridge):
                table.pop(uid, None)
            return
        if uid not in self.created or "ChannelState" not in msg:
            return
        # Any event's snapshot of the channel, not only the New* events PbxState uses.
        self.snapshot[uid] = {k: msg.get(k) for k in CHANNEL_SNAPSHOT}
        if msg.event == "Newexten":
            self.app[uid] = (msg.get("Application"), msg.get("AppData"))
        elif msg.event == "BridgeEnter":
            self.bridge[uid] = msg.get("BridgeUniqueid")
        elif msg.event == "BridgeLeave":
            self.bridge[uid] = ""

    def core_show_channels(self, now: float) -> dict[str, dict[str, str]]:
        out = {}
        for uid, snap in self.snapshot.items():
            secs = int(now - self.created[uid])
            out[uid] = {
                **snap,
                "Application": self.app[uid][0],
                "ApplicationData": self.app[uid][1],
                "Duration": f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}",
                "BridgeId": self.bridge[uid],
            }
        return out


def check_state_against_oracle(cap: Capture) -> int:
    """Apply ``cap`` event by event; after each one the lists must match the oracle."""
    state = PbxState()
    live = Live()
    checked = 0
    for msg in cap.replay_events:
        state.apply(msg)
        live.feed(msg)
        now = (msg.timestamp or 0.0) + 0.5
        got = {m.get("Uniqueid"): dict(m.headers[1:]) for m in state.core_show_channels(now)}
        assert got == live.core_show_channels(now), f"after {msg.event} {msg.get('Timestamp')}"
        bridges = {m.get("BridgeUniqueid"): m.get("BridgeNumChannels") for m in state.bridge_list()}
        in_bridges = [b for b in live.bridge.values() if b]
        assert {b: str(in_bridges.count(b)) for b in in_bridges}.items() <= bridges.items()
        checked += 1
    return checked


# --------------------------------------------------------------------------- whole captures


@pytest.mark.parametrize("name", CAPTURES)
def test_after_a_whole_capture_nothing_is_left(name: str) -> None:
    cap = capture(name)
    state = PbxState()
    if name == "reconnect":
        # The calls were up before the recording began (captures README, point 17).
        state.seed(cap.list_items, now=cap.first_timestamp)
    state.apply_all(cap.replay_events)
    assert state.channels == []
    assert state.bridges == {}
    assert state.queue_callers == {}
    assert state.core_show_channels() == []
    assert state.status() == []
    assert state.bridge_list() == []
    assert not [m for m in state.queue_status() if m.event == "QueueEntry"]


@pytest.mark.parametrize("name", ["blind_transfer", "attended_transfer", "consult_then_retrieve"])
def test_channels_match_newchannel_hangup_pairs_after_every_event(name: str) -> None:
    assert check_state_against_oracle(capture(name)) == len(capture(name).replay_events)


def test_blind_transfer_mid_points() -> None:
    cap = capture("blind_transfer")
    events = cap.replay_events
    transfer = next(i for i, m in enumerate(events) if m.event == "BlindTransfer")
    state = PbxState()
    state.apply_all(events[: transfer + 1])
    # At the transfer the customer and agent 1001 are still bridged together.
    assert sorted(state.channels) == ["PJSIP/1001-0000000d", "PJSIP/carrier-0000000c"]
    (members,) = state.bridges.values()
    assert sorted(members) == sorted(state.channels)
    now = events[transfer].timestamp
    assert now is not None
    carrier, agent = (
        keyed(state.core_show_channels(now), "Channel")[("CoreShowChannel", c)]
        for c in ("PJSIP/carrier-0000000c", "PJSIP/1001-0000000d")
    )
    assert (carrier.get("Application"), carrier.get("ApplicationData")) == (
        "Queue",
        "support,tTc,,,120",
    )
    assert (agent.get("Application"), agent.get("ApplicationData")) == (
        "AppQueue",
        "(Outgoing Line)",
    )
    assert agent.get("Linkedid") == carrier.get("Uniqueid") == "1795308226.12"

    # When 1002 answers, 1001 is gone and the customer sits in a new bridge with 1002.
    answered = max(i for i, m in enumerate(events) if m.event == "BridgeEnter")
    state.apply_all(events[transfer + 1 : answered + 1])
    assert sorted(state.channels) == ["PJSIP/1002-0000000e", "PJSIP/carrier-0000000c"]
    (bid,) = state.bridges
    assert bid == "fdad0db1-627e-4050-b273-2b82f79d460a"
    carrier_now = state.channel("PJSIP/carrier-0000000c")
    assert carrier_now is not None
    assert (carrier_now["Context"], carrier_now["Exten"]) == ("internal", "1002")


def test_attended_transfer_consult_moment() -> None:
    cap = capture("attended_transfer")
    events = cap.replay_events
    # 1002 has answered the consult: its leg joins the Local;2 half (README point 10).
    consult = next(
        i
        for i, m in enumerate(events)
        if m.event == "BridgeEnter" and m.get("Channel") == "Local/1002@internal-00000000;2"
    )
    state = PbxState()
    state.apply_all(events[: consult + 1])
    assert sorted(state.channels) == [
        "Local/1002@internal-00000000;1",
        "Local/1002@internal-00000000;2",
        "PJSIP/1001-00000016",
        "PJSIP/1002-00000017",
        "PJSIP/carrier-00000015",
    ]
    # The customer waits alone in the queue bridge; 1001 consults 1002 through the Local pair.
    bridges = {bid: sorted(chans) for bid, chans in state.bridges.items()}
    assert sorted(bridges.values()) == [
        ["Local/1002@internal-00000000;1", "PJSIP/1001-00000016"],
        ["Local/1002@internal-00000000;2", "PJSIP/1002-00000017"],
        ["PJSIP/carrier-00000015"],
    ]
    # After the transfer the Local;1 half sits with the customer, and 1001 hangs up.
    done = next(
        i
        for i, m in enumerate(events)
        if m.event == "Hangup" and m.get("Channel") == "PJSIP/1001-00000016"
    )
    state.apply_all(events[consult + 1 : done + 1])
    assert "PJSIP/1001-00000016" not in state.channels
    assert sorted(map(sorted, state.bridges.values())) == [
        ["Local/1002@internal-00000000;1", "PJSIP/carrier-00000015"],
        ["Local/1002@internal-00000000;2", "PJSIP/1002-00000017"],
    ]


# --------------------------------------------------------------------------- recorded answers


RECONNECT_ANSWERS = {
    "cti-2": "CoreShowChannels",
    "cti-3": "QueueStatus",
    "cti-4": "QueueSummary",
    "cti-5": "Status",
    "cti-6": "BridgeList",
    "cti-8": "DeviceStateList",
}
ITEM_KEYS = {
    "CoreShowChannel": ("Channel",),
    "Status": ("Channel",),
    "QueueParams": ("Queue",),
    "QueueMember": ("Queue", "Location"),
    "QueueEntry": ("Queue", "Uniqueid"),
    "QueueSummary": ("Queue",),
    "BridgeListItem": ("BridgeUniqueid",),
    "DeviceStateChange": ("Device",),
}


def by_item(items: Sequence[AmiMessage]) -> dict[tuple[str, ...], AmiMessage]:
    out = {}
    for m in items:
        out[(m.event, *(m.get(k) for k in ITEM_KEYS[m.event]))] = m
    assert len(out) == len(items)
    return out


def reconnect_moment() -> float:
    ts = capture("reconnect").first_timestamp  # the CTI's SuccessfulAuth, just before cti-2
    assert ts is not None
    return ts


@pytest.mark.parametrize(("action_id", "action"), sorted(RECONNECT_ANSWERS.items()))
def test_seeded_reconnect_answers_render_as_recorded(action_id: str, action: str) -> None:
    """reconnect.ami has no events before its answers (the calls were already up):
    the state is seeded from the answers, and must render every list as recorded."""
    cap = capture("reconnect")
    state = PbxState()
    state.seed(cap.list_items, now=reconnect_moment())
    rendered = state.list_items(action, reconnect_moment())
    assert rendered is not None
    recorded = by_item(answer(cap, action_id))
    got = by_item(rendered)
    assert got.keys() == recorded.keys()
    for key, item in recorded.items():
        assert got[key].headers == item.headers, key


def test_reconnect_derived_lists_from_a_partial_seed() -> None:
    """Seeded only with CoreShowChannels, BridgeList, QueueStatus: Status, BridgeInfo and
    QueueSummary follow from them (bar the formats and DNID, which no list but Status shows)."""
    cap = capture("reconnect")
    at = reconnect_moment()
    state = PbxState()
    for aid in ("cti-2", "cti-3", "cti-6"):
        state.seed(answer(cap, aid), now=at)

    recorded_status = by_item(answer(cap, "cti-5"))
    got_status = by_item(state.status(at))
    assert got_status.keys() == recorded_status.keys()
    for key, item in recorded_status.items():
        want = [(k, v) for k, v in item.headers if k != "DNID"]
        assert [(k, v) for k, v in got_status[key].headers if k != "DNID"] == want

    assert by_item(state.queue_summary(at)) == by_item(answer(cap, "cti-4"))

    info = state.bridge_info("2426f4d5-a2e4-4210-867c-bbfc1133be9d")
    assert info is not None
    items, fields = info
    assert keyed(items, "Channel") == keyed(answer(cap, "cti-13"), "Channel")
    complete = next(m for m in cap.list_items if m.event == "BridgeInfoComplete")
    assert fields == [(k, v) for k, v in complete.headers if k.startswith("Bridge")]
    assert state.bridge_info("no-such-bridge") is None


def test_reconnect_events_after_the_answers_end_both_calls() -> None:
    cap = capture("reconnect")
    state = PbxState()
    state.seed(cap.list_items, now=reconnect_moment())
    state.apply_all(cap.replay_events)
    assert state.channels == []
    params = {m.get("Queue"): m for m in state.queue_status() if m.event == "QueueParams"}
    # The waiting caller ends as QueueCallerAbandon (captures README, point 17) and the
    # talking one as AgentComplete.
    assert params["support"].get("Calls") == "0"
    assert params["support"].get("Abandoned") == "2"
    assert params["support"].get("Completed") == "11"
    # The lab's reset on another session unpaused 1002 (point 17).
    assert state.queue_members["support"]["PJSIP/1002"]["Paused"] == "0"


def test_agent_pause_unpause_queue_status_from_events_only() -> None:
    """A QueueStatus answered mid-capture: replay the events before it, render, compare."""
    cap = capture("agent_pause_unpause")
    answered_at = next(i for i, m in enumerate(cap.messages) if m.action_id == "cti-10")
    before = {id(m) for m in cap.messages[:answered_at]}
    state = PbxState()
    state.apply_all(m for m in cap.replay_events if id(m) in before)
    recorded = answer(cap, "cti-10")
    rendered = [m for m in state.queue_status() if m.get("Queue") == "backoffice"]
    assert by_item(rendered) == by_item(recorded)


def test_rendered_items_have_asterisk_22_header_order() -> None:
    """Items built from events have exactly the headers of the recorded answers, in order."""
    recorded = capture("reconnect").list_items
    shapes = {m.event: [k for k, _ in m.headers if k != "ActionID"] for m in reversed(recorded)}
    cap = capture("inbound_abandoned")
    state = PbxState()
    # Ringing the first agent: the caller waits and the members have reported.
    ringing = next(i for i, m in enumerate(cap.replay_events) if m.event == "AgentRingNoAnswer")
    state.apply_all(cap.replay_events[: ringing + 1])
    items = [*state.core_show_channels(), *state.status(), *state.queue_status()]
    blind = capture("blind_transfer")
    bridged = PbxState()
    bridged.apply_all(blind.replay_events[:BRIDGED])
    items += [*bridged.bridge_list(), *bridged.queue_summary(), *bridged.device_state_list()]
    assert {m.event for m in items} >= {
        "CoreShowChannel",
        "Status",
        "QueueParams",
        "QueueMember",
        "QueueEntry",
        "BridgeListItem",
        "QueueSummary",
        "DeviceStateChange",
    }
    for item in items:
        assert [k for k, _ in item.headers] == shapes[item.event], item.event
    entry = next(m for m in items if m.event == "QueueEntry")
    waiting = state.channel(entry.get("Uniqueid"))
    assert waiting is not None
    # The agent rings, so the caller's connected line is already the agent.
    assert entry.get("ConnectedLineNum") == waiting["ConnectedLineNum"] != "<unknown>"


def test_queue_entry_positions_close_up_when_a_caller_leaves() -> None:
    def caller(event: str, uid: str, pos: int, ts: float) -> AmiMessage:
        return AmiMessage(
            (
                ("Event", event),
                ("Timestamp", f"{ts:.6f}"),
                ("Channel", f"PJSIP/carrier-{uid}"),
                ("Uniqueid", uid),
                ("CallerIDNum", "+4930123456"),
                ("Queue", "support"),
                ("Position", str(pos)),
            )
        )

    state = PbxState()
    state.define_queue("support", strategy="linear", service_level=20)
    for n, uid in enumerate(("a", "b", "c"), 1):
        state.apply(caller("QueueCallerJoin", uid, n, 1000.0 + n))
    state.apply(caller("QueueCallerAbandon", "a", 1, 1010.0))
    state.apply(caller("QueueCallerLeave", "a", 1, 1010.0))
    entries = [m for m in state.queue_status(1012.2) if m.event == "QueueEntry"]
    assert [(m.get("Uniqueid"), m.get("Position"), m.get("Wait")) for m in entries] == [
        ("b", "1", "10"),
        ("c", "2", "9"),
    ]
    (params,) = [m for m in state.queue_status(1012.2) if m.event == "QueueParams"]
    assert (params.get("Strategy"), params.get("Calls"), params.get("Abandoned")) == (
        "linear",
        "2",
        "1",
    )
    assert params.get("ServicelevelPerf2") == "100.0"


# --------------------------------------------------------------------------- the simulator


@pytest.fixture
async def sim() -> AsyncIterator[AmiSimulator]:
    async with AmiSimulator(username=USER, secret=SECRET, track_state=True) as server:
        yield server


async def login(sim: AmiSimulator) -> RawAmiClient:
    client = await RawAmiClient.connect("127.0.0.1", sim.port)
    assert (await client.login(USER, SECRET)).get("Message") == "Authentication accepted"
    await client.wait_for(lambda m: m.event == "SuccessfulAuth")
    return client


async def ask_list(client: RawAmiClient, action: str, **fields: str) -> list[AmiMessage]:
    """Send a list action; return its items (without the ``…Complete``)."""
    reply = await client.request(action, fields)
    assert reply.get("EventList") == "start", reply.headers
    items: list[AmiMessage] = []
    while True:
        msg = await client.wait_for(lambda m: m.action_id == reply.action_id)
        if msg.get("EventList") == "Complete":
            assert msg.get("ListItems") == str(len(items))
            return items
        items.append(msg)


async def test_outage_events_change_the_pbx_but_reach_nobody(sim: AmiSimulator) -> None:
    cap = capture("blind_transfer")
    events = cap.replay_events
    # Cut the link while customer and 1001 talk; bring it back once 1002 has taken over.
    k = next(i for i, m in enumerate(events) if m.event == "BlindTransfer")
    m = max(i for i, e in enumerate(events) if e.event == "BridgeEnter") + 1

    first = await login(sim)
    assert await sim.replay(cap, None, stop=k) == k
    seen = await first.wait_for(lambda e: e.get("Timestamp") == events[k - 1].get("Timestamp"))
    assert seen.event == events[k - 1].event

    await sim.stop_accepting()
    assert not sim.accepting
    assert await first.closed_by_server()
    await first.close()
    with pytest.raises(ConnectionRefusedError):
        await RawAmiClient.connect("127.0.0.1", sim.port, timeout=1.0)

    assert await sim.replay(cap, None, start=k, stop=m) == m - k
    await sim.start_accepting()
    second = await login(sim)
    outage_stamps = {e.get("Timestamp") for e in events[k:m]}

    channels = await ask_list(second, "CoreShowChannels")
    assert sorted(c.get("Channel") for c in channels) == [
        "PJSIP/1002-0000000e",
        "PJSIP/carrier-0000000c",
    ]
    assert {c.get("BridgeId") for c in channels} == {"fdad0db1-627e-4050-b273-2b82f79d460a"}
    # Durations run on the capture's clock (the login's own SuccessfulAuth does not move it).
    carrier = next(c for c in channels if c.get("Channel") == "PJSIP/carrier-0000000c")
    born = next(e for e in events if e.event == "Newchannel").timestamp
    last = events[m - 1].timestamp
    assert born is not None
    assert last is not None
    h, mi, sec = map(int, carrier.get("Duration").split(":"))
    assert 0 <= h * 3600 + mi * 60 + sec - int(last - born) <= 1
    assert all(c.headers[1] == ("ActionID", c.action_id) for c in channels)
    bridges = await ask_list(second, "BridgeList")
    assert [(b.get("BridgeUniqueid"), b.get("BridgeNumChannels")) for b in bridges] == [
        ("fdad0db1-627e-4050-b273-2b82f79d460a", "2")
    ]
    status = await ask_list(second, "Status")
    assert sorted(s.get("Channel") for s in status) == sorted(c.get("Channel") for c in channels)
    assert all(s.headers[-1][0] == "ActionID" for s in status)
    queues = await ask_list(second, "QueueStatus", Queue="support")
    assert not [q for q in queues if q.event == "QueueEntry"]
    members = {q.get("Location"): q for q in queues if q.event == "QueueMember"}
    # 1001 went idle (1) during the outage; 1002 is busy (3) with the transferred call.
    assert (members["PJSIP/1001"].get("Status"), members["PJSIP/1002"].get("Status")) == ("1", "3")

    # Nothing from the outage was delivered, now or late.
    assert not [e for e in await second.quiet(0.2) if e.get("Timestamp") in outage_stamps]

    await sim.replay(cap, None, start=m)
    final = await second.wait_for(lambda e: e.get("Timestamp") == events[-1].get("Timestamp"))
    assert final.event == events[-1].event
    assert await ask_list(second, "CoreShowChannels") == []
    await second.close()


async def test_set_list_overrides_the_state_until_removed(sim: AmiSimulator) -> None:
    cap = capture("blind_transfer")
    await sim.replay(cap, None, stop=BRIDGED)
    assert sim.state is not None
    assert len(sim.state.channels) == 2
    fake = AmiMessage((("Event", "CoreShowChannel"), ("Channel", "PJSIP/9999-00000001")))
    sim.set_list("CoreShowChannels", [fake])
    client = await login(sim)
    assert [c.get("Channel") for c in await ask_list(client, "CoreShowChannels")] == [
        "PJSIP/9999-00000001"
    ]
    sim.set_list("CoreShowChannels", None)
    assert len(await ask_list(client, "CoreShowChannels")) == 2
    core = await client.request("CoreStatus")
    assert core.get("CoreCurrentCalls") == "2"
    await client.close()


async def test_status_of_one_channel_and_bridge_info(sim: AmiSimulator) -> None:
    cap = capture("blind_transfer")
    await sim.replay(cap, None, stop=BRIDGED)
    client = await login(sim)
    (one,) = await ask_list(client, "Status", Channel="PJSIP/1001-0000000d")
    assert one.get("Application") == "AppQueue"
    assert one.get("Type") == "PJSIP"
    missing = await client.request("Status", {"Channel": "PJSIP/1001-00000000"})
    assert (missing.response, missing.get("Message")) == ("Error", "No such channel")

    bid = "a91ac037-e332-4af7-acc6-f48df14079a2"
    info = await ask_list(client, "BridgeInfo", BridgeUniqueid=bid)
    assert sorted(i.get("Channel") for i in info) == [
        "PJSIP/1001-0000000d",
        "PJSIP/carrier-0000000c",
    ]
    bad = await client.request("BridgeInfo", {"BridgeUniqueid": "nope"})
    assert bad.get("Message") == "Specified BridgeUniqueid not found"
    await client.close()


async def test_without_track_state_lists_stay_empty() -> None:
    async with AmiSimulator(username=USER, secret=SECRET) as plain:
        await plain.replay(capture("blind_transfer"), None, stop=BRIDGED)
        assert plain.state is None
        client = await login(plain)
        assert await ask_list(client, "CoreShowChannels") == []
        unknown = await client.request("BridgeInfo", {"BridgeUniqueid": "x"})
        assert unknown.response == "Error"
        await client.close()


def test_index_at_cuts_a_capture_by_time() -> None:
    cap = capture("blind_transfer")
    transfer = next(m for m in cap.replay_events if m.event == "BlindTransfer")
    assert transfer.timestamp is not None
    i = cap.index_at(transfer.timestamp)
    assert cap.replay_events[i].timestamp == transfer.timestamp
    assert cap.index_at(0.0) == 0
    assert cap.index_at(float("inf")) == len(cap.replay_events)
