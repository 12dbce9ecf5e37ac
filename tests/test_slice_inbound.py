"""The first vertical slice, end to end on real parts.

The real capture ``inbound_answered`` (customer +4930123456 calls the support
queue; 1001 rings 3 s, answers, talks 3 s; the customer hangs up) is replayed
by the AMI simulator over TCP into the real daemon, which publishes through a
real Mosquitto (the test subscribes as the agent, with the agent's own
credentials and the generated ACL) and stores into a real SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from ctid.adapters.store import Store
from ctid.app import Daemon
from ctid.config import AmiConfig, Config
from ctid.core.ami import AmiMessage
from ctid.sim.server import AmiSimulator
from tests.broker import MosquittoBroker

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "ami-captures"
SECRET = "sim-secret"
INTERACTION = "1795308161.0"  # the customer channel's Uniqueid = the call's Linkedid


def queue_member(
    interface: str, queue: str, *, paused: bool = False, reason: str = ""
) -> AmiMessage:
    """A ``QueueMember`` list item as Asterisk 22 answers ``QueueStatus``."""
    return AmiMessage.build(
        [
            ("Event", "QueueMember"),
            ("Queue", queue),
            ("Name", interface),
            ("Location", interface),
            ("StateInterface", interface),
            ("Membership", "static"),
            ("Penalty", "0"),
            ("CallsTaken", "0"),
            ("LastCall", "0"),
            ("LastPause", "0"),
            ("LoginTime", "1795308150"),
            ("InCall", "0"),
            ("Status", "1"),
            ("Paused", "1" if paused else "0"),
            ("PausedReason", reason),
            ("Wrapuptime", "0"),
        ]
    )


def daemon_config(broker: MosquittoBroker, sim: AmiSimulator) -> Config:
    ami = AmiConfig(
        host="127.0.0.1",
        port=sim.port,
        username="ctid",
        secret=SECRET,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.2,
    )
    return dataclasses.replace(broker.config, ami=ami)


@contextlib.asynccontextmanager
async def running_daemon(config: Config, sim: AmiSimulator) -> AsyncIterator[Daemon]:
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(), name="test.daemon")
    try:
        async with asyncio.timeout(10):
            await sim.wait_for_clients(1)
            await daemon.ami.ready.wait()
            await daemon.bus.connected.wait()
        yield daemon
    finally:
        daemon.stop()
        async with asyncio.timeout(15):
            await task


async def collect(
    client: aiomqtt.Client, until: Any, within_s: float = 10.0
) -> list[dict[str, Any]]:
    """Messages (topic + payload) until ``until(message)`` is true for one of them."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            item = {"topic": message.topic.value, **orjson.loads(message.payload)}
            got.append(item)
            if until(item):
                return got
    return got


def call_over() -> Any:
    """A ``collect`` predicate: true once the activity and the agent's idle state (after
    talking) have both arrived, in whichever order."""
    seen: set[str] = set()

    def until(m: dict[str, Any]) -> bool:
        if m["type"] == "activity":
            seen.add("activity")
        elif m["type"] == "agent_state" and m["phone"] == "talking":
            seen.add("talking")
        elif m["type"] == "agent_state" and m["phone"] == "idle" and "talking" in seen:
            seen.add("idle again")
        return {"activity", "idle again"} <= seen

    return until


@pytest.fixture
def sim_members() -> list[AmiMessage]:
    return [queue_member("PJSIP/1001", "support"), queue_member("PJSIP/1002", "support")]


async def test_inbound_answered_end_to_end(
    mosquitto: MosquittoBroker, sim_members: list[AmiMessage], tmp_path: Path
) -> None:
    """Ringing → talking → idle, an alerting then accepted pop, an activity, and SQLite rows."""
    async with AmiSimulator(secret=SECRET) as sim:
        sim.set_list("QueueStatus", sim_members)
        config = daemon_config(mosquitto, sim)
        async with mosquitto.client("alice") as alice:
            await alice.subscribe("ctid/v1/agents/alice/#", qos=1)
            async with running_daemon(config, sim) as daemon:
                assert (await sim.wait_for_action("QueueStatus")).get("Action") == "QueueStatus"
                await sim.replay(CAPTURES / "inbound_answered.ami", speed=None)
                got = await collect(alice, call_over())
                assert daemon.events_applied > 100

    states = [m for m in got if m["type"] == "agent_state"]
    phones = [s["phone"] for s in states]
    # Retained start-up state first, then the call's phases in order.
    assert phones[0] == "idle"
    assert dedup_runs(phones) == ["idle", "ringing", "talking", "idle"]
    assert states[-1]["presence"] == "ready"
    assert states[-1]["interactions"] == 0
    assert all(s["pbx"] == "up" for s in states)

    pops = [m for m in got if m["type"] == "pop"]
    assert [p["phase"] for p in pops] == ["alerting", "accepted"]
    pop = pops[0]
    assert pop["interaction_id"] == INTERACTION
    assert pop["direction"] == "inbound"
    assert pop["media"] == "call"
    assert pop["number"] == {"raw": "+4930123456", "e164": "+4930123456", "kind": "e164"}
    assert pop["caller_name"] == "Max Mustermann"
    assert pop["match"] == {"kind": "none", "records": []}
    assert pop["queue"] == "support"
    assert pop["why"] == "inbound"

    activities = [m for m in got if m["type"] == "activity"]
    assert len(activities) == 1
    activity = activities[0]
    assert activity["topic"] == "ctid/v1/agents/alice/activity"
    assert activity["agent"] == "alice"
    assert activity["interaction_id"] == INTERACTION
    assert activity["media"] == "call"
    assert activity["direction"] == "inbound"
    assert activity["customer"] == {"number": "+4930123456", "e164": "+4930123456"}
    assert activity["queue"] == "support"
    assert activity["outcome"] == "answered"
    # From the events' Timestamps: ringing 162.281, answer 165.286, hangup 168.309.
    assert activity["offered_at"] == "2026-11-22T00:42:42.274Z"
    assert activity["answered_at"] == "2026-11-22T00:42:45.286Z"
    assert activity["ended_at"] == "2026-11-22T00:42:48.308Z"
    assert activity["ring_s"] == pytest.approx(3.0, abs=0.05)
    assert activity["talk_s"] == pytest.approx(3.0, abs=0.05)
    assert activity["hold_s"] == 0

    # Per-agent sequence numbers never repeat and only grow.
    seqs = [m["seq"] for m in got]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)

    await _assert_rows(config.store.path, expected_outbox_pending=0)

    # A restart of the daemon keeps the rows and adds none.
    async with AmiSimulator(secret=SECRET) as sim2:
        sim2.set_list("QueueStatus", sim_members)
        async with running_daemon(daemon_config(mosquitto, sim2), sim2):
            pass
    await _assert_rows(config.store.path, expected_outbox_pending=0)


async def _assert_rows(path: Path, *, expected_outbox_pending: int) -> None:
    async with Store.open(path) as store:
        activities = await store.list_activities(interaction_id=INTERACTION)
        assert [(a.agent, a.outcome, a.direction, a.media) for a in activities] == [
            ("alice", "answered", "inbound", "call")
        ]
        act = activities[0]
        assert act.customer_e164 == "+4930123456"
        assert act.answered_at is not None
        assert act.offered_at < act.answered_at < act.ended_at
        assert act.talk_s == pytest.approx(3.0, abs=0.05)
        call = await store.get_call(INTERACTION)
        assert call is not None
        assert call.direction == "inbound"
        assert call.queue == "support"
        assert call.outcome == "answered"
        assert call.customer_e164 == "+4930123456"
        assert call.wait_s == pytest.approx(3.0, abs=0.05)
        assert call.talk_s == pytest.approx(3.0, abs=0.05)
        assert call.agents == ("alice",)
        assert len(await store.outbox_pending()) == expected_outbox_pending


def dedup_runs(values: list[Any]) -> list[Any]:
    """``values`` with each run of equal neighbours kept once (a timeline of changes)."""
    out: list[Any] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out
