"""The AMI link cut in the middle of a transfer, on real parts.

The simulator replays a real capture into the daemon, stops accepting
connections (the link is down), goes on replaying (calls go on and end while
ctid cannot see them), then accepts again: ctid reconnects, resyncs from
``CoreShowChannels``/``BridgeList``/``QueueStatus``/``Status`` answered from the
simulator's PBX state, and must close what ended while it was away (flagged
``ended_while_disconnected``) without duplicating what survived.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from ctid.adapters.store import Store
from ctid.sim.capture import Capture, load_capture
from ctid.sim.server import AmiSimulator
from tests.broker import MosquittoBroker
from tests.test_slice_inbound import SECRET, daemon_config, queue_member, running_daemon

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "ami-captures"


def index_of(cap: Capture, event: str, *, after: int = 0, **headers: str) -> int:
    """The index of the first replay event named ``event`` (with ``headers``) from ``after``."""
    for i, msg in enumerate(cap.replay_events[after:], start=after):
        if msg.event == event and all(msg.get(k) == v for k, v in headers.items()):
            return i
    raise AssertionError(f"no {event} {headers} in {cap.name}")


async def drain(
    client: aiomqtt.Client, *, quiet_s: float = 1.0, until_type: str = ""
) -> list[dict[str, Any]]:
    """Every message until one of ``until_type`` has arrived and then none for ``quiet_s``."""
    got: list[dict[str, Any]] = []
    if until_type:
        async with asyncio.timeout(20):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append({"topic": message.topic.value, **orjson.loads(message.payload)})
                if got[-1]["type"] == until_type:
                    break
    while True:
        try:
            async with asyncio.timeout(quiet_s):
                message = await anext(aiter(client.messages))
        except TimeoutError:
            return got
        assert isinstance(message.payload, bytes)
        got.append({"topic": message.topic.value, **orjson.loads(message.payload)})


async def outage(
    broker: MosquittoBroker, cap: Capture, cut: int, back: int
) -> tuple[list[dict[str, Any]], Path]:
    """Replay ``cap`` with the link down from event ``cut`` to ``back``; return what crm saw."""
    async with AmiSimulator(secret=SECRET, track_state=True) as sim:
        # Static members, as in the lab: the queue state comes from the simulator.
        sim.set_list(
            "QueueStatus",
            [queue_member("PJSIP/1001", "support"), queue_member("PJSIP/1002", "support")],
        )
        config = daemon_config(broker, sim)
        async with broker.client("crm") as crm:
            await crm.subscribe("ctid/v1/#", qos=1)
            async with running_daemon(config, sim) as daemon:
                await sim.replay(cap, None, stop=cut)
                await drain(crm, quiet_s=0.5)  # let ctid see everything up to the cut
                await sim.stop_accepting()
                async with asyncio.timeout(10):
                    while daemon.ami.ready.is_set():  # noqa: ASYNC110 - no event for "cleared"
                        await asyncio.sleep(0.01)
                await sim.replay(cap, None, start=cut, stop=back)
                await sim.start_accepting()
                async with asyncio.timeout(15):
                    await sim.wait_for_clients(1)
                    await daemon.ami.ready.wait()
                await sim.replay(cap, None, start=back)
                # The call record is the last thing a call produces.
                got = await drain(crm, until_type="call_record")
                assert sim.logins == 2
                assert not daemon.model.calls
                assert not daemon.model.channels
    return got, config.store.path


def activities(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in got if m["topic"].startswith("ctid/v1/agents/") and m["type"] == "activity"]


def calls(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in got if m["type"] == "call_record"]


async def stored(path: Path) -> tuple[list[Any], list[Any]]:
    async with Store.open(path) as store:
        acts = await store.list_activities()
        rows = await store.export(0, "calls")
    return acts, rows


async def test_blind_transfer_ends_entirely_while_disconnected(mosquitto: MosquittoBroker) -> None:
    """Cut while alice talks; transfer and call end unseen: closed once, flagged."""
    cap = load_capture(CAPTURES / "blind_transfer.ami")
    cut = index_of(cap, "BlindTransfer")
    got, path = await outage(mosquitto, cap, cut, len(cap.replay_events))
    acts = activities(got)
    # alice's part is completed with what is known; bob's part was never seen.
    assert [(a["agent"], a["outcome"], a["ended_while_disconnected"]) for a in acts] == [
        ("alice", "answered", True)
    ]
    (call,) = calls(got)
    assert call["ended_while_disconnected"] is True
    assert call["outcome"] == "answered"
    rows_a, rows_c = await stored(path)
    assert [a.id for a in rows_a] == [acts[0]["id"]]
    assert len(rows_c) == 1


async def test_blind_transfer_survives_the_outage(mosquitto: MosquittoBroker) -> None:
    """Cut before the transfer, back once bob talks: alice transferred, bob answered, once each."""
    cap = load_capture(CAPTURES / "blind_transfer.ami")
    cut = index_of(cap, "BlindTransfer")
    answered = index_of(
        cap, "Newstate", after=cut, Channel=_bob_channel(cap, cut), ChannelStateDesc="Up"
    )
    got, path = await outage(mosquitto, cap, cut, answered + 3)
    acts = activities(got)
    assert Counter(a["id"] for a in acts) == Counter({a["id"]: 1 for a in acts})  # no duplicates
    by_agent = {a["agent"]: a for a in acts}
    assert sorted(by_agent) == ["alice", "bob"]
    assert by_agent["alice"]["outcome"] == "transferred"
    assert by_agent["alice"]["transfer_to"] == "1002"
    assert by_agent["alice"]["ended_while_disconnected"] is True
    assert by_agent["bob"]["outcome"] == "answered"
    assert by_agent["bob"]["ended_while_disconnected"] is False
    (call,) = calls(got)
    assert call["ended_while_disconnected"] is False
    assert call["transfers"] == 1
    rows_a, rows_c = await stored(path)
    assert sorted(a.agent for a in rows_a) == ["alice", "bob"]
    assert len(rows_c) == 1


@pytest.mark.parametrize(
    "back_at", ["before_transferer_hangup", "after_completion", "after_hangup"]
)
async def test_attended_transfer_completed_while_disconnected(
    mosquitto: MosquittoBroker, back_at: str
) -> None:
    """Cut during the consultation; the transfer completes unseen. bob ends up with the customer."""
    cap = load_capture(CAPTURES / "attended_transfer.ami")
    consult_up = index_of(cap, "DialEnd", DialStatus="ANSWER", after=index_of(cap, "Hold"))
    cut = consult_up + 2
    done = index_of(cap, "AttendedTransfer")
    alice_gone = index_of(
        cap, "Hangup", after=done, Channel=cap.replay_events[done].get("OrigTransfererChannel")
    )
    back = {
        # Back before alice hangs up: only the AttendedTransfer event was lost.
        "before_transferer_hangup": done + 1,
        # Back after alice hung up (her hang-up, like the transfer, was never seen).
        "after_completion": alice_gone + 1,
        "after_hangup": len(cap.replay_events),
    }[back_at]
    assert done + 1 < alice_gone
    got, path = await outage(mosquitto, cap, cut, back)
    acts = activities(got)
    assert Counter(a["id"] for a in acts) == Counter({a["id"]: 1 for a in acts})
    by_agent = {a["agent"]: a for a in acts}
    assert sorted(by_agent) == ["alice", "bob"]
    assert by_agent["alice"]["ended_while_disconnected"] is (back_at != "before_transferer_hangup")
    if back_at != "after_hangup":
        # Seen again while bob still talks to the customer: the hand-over is inferred.
        assert by_agent["alice"]["outcome"] == "transferred"
        assert by_agent["alice"]["transfer_to"] == "1002"
        assert by_agent["bob"]["outcome"] == "answered"
        assert by_agent["bob"]["ended_while_disconnected"] is False
    else:
        # Everything ended unseen: both parts are closed with what was known (a consult).
        assert by_agent["bob"]["ended_while_disconnected"] is True
        assert by_agent["bob"]["outcome"] in ("consulted", "answered")
    (call,) = calls(got)
    assert call["ended_while_disconnected"] is (back_at == "after_hangup")
    rows_a, _ = await stored(path)
    assert sorted(a.agent for a in rows_a) == ["alice", "bob"]


def _bob_channel(cap: Capture, after: int) -> str:
    msg = cap.replay_events[index_of(cap, "Newchannel", after=after)]
    assert msg.get("Channel").startswith("PJSIP/1002-")
    return msg.get("Channel")
