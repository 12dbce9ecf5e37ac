"""A call that ends while ctid is stopped still gets its rows; the page is whole after.

ctid stops (cleanly) while alice talks to a customer; the call ends while it is
down; ctid starts again. Asterisk's resync lists no channel of the call, so only
ctid's checkpoint (the model's state, stored at the stop) says it was open: the
resync closes it (``ended_while_disconnected``), with the activity alice had, and
her retained snapshot and state no longer show it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ctid.sim.server import AmiSimulator
from tests.broker import running_mosquitto
from tests.command_rig import (
    ASTERISK_22,
    CALL,
    CAPTURES,
    CUSTOMER,
    bridge_enter,
    commands_config,
    cut_after,
    fast_client,
    logged_in,
)
from tests.command_rig import until as wait_for
from tests.daemon_process import db_rows
from tests.test_slice_inbound import daemon_config, running_daemon

SNAPSHOT = "ctid/v1/agents/alice/snapshot"


async def retained(
    broker: Any, topic: str, until: Callable[[dict[str, Any]], bool] = lambda _: True
) -> dict[str, Any]:
    """The message on ``topic`` as alice reads it: the retained one, or the first after it
    for which ``until`` holds."""
    async with fast_client(broker, "alice") as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                payload = dict(orjson.loads(message.payload))
                if until(payload):
                    return payload
    raise AssertionError(f"nothing on {topic}")


async def test_a_call_that_ends_while_ctid_is_stopped_gets_its_rows(tmp_path: Path) -> None:
    config = commands_config(tmp_path)
    capture = CAPTURES / "inbound_answered.ami"
    async with (
        running_mosquitto(config, websockets=False) as broker,
        AmiSimulator(secret="sim-secret") as sim,
    ):
        for name, handler in ASTERISK_22.items():
            sim.set_handler(name, handler)
        sim.set_list("QueueStatus", logged_in("alice"))
        cut = cut_after("inbound_answered", bridge_enter(CUSTOMER))
        async with running_daemon(daemon_config(broker, sim), sim) as daemon:
            # In wall-clock time, as a live PBX stamps its events (a call stamped two weeks
            # ago would be closed as expired, not as ended while ctid was down).
            await sim.replay(capture, None, stop=cut, retime=True)
            await wait_for(lambda: bool(daemon.model.agents["alice"].parts), what="alice talking")
        talking = await retained(broker, SNAPSHOT)
        assert [i["interaction_id"] for i in talking["interactions"]] == [CALL]
        assert db_rows(config.store.path, "SELECT * FROM calls") == []

        await sim.replay(capture, None, start=cut, retime=True)  # it ends; nobody listens
        await asyncio.sleep(1.0)  # ctid stays down a while

        async with running_daemon(daemon_config(broker, sim), sim) as daemon:
            await wait_for(lambda: not daemon.model.calls, what="the call closed by the resync")
            await wait_for(
                lambda: bool(db_rows(config.store.path, "SELECT * FROM activities")),
                what="the activity stored",
            )
            # The activity is stored before the snapshot that follows it is published.
            snapshot = await retained(broker, SNAPSHOT, until=lambda m: not m["interactions"])
            state = await retained(
                broker, "ctid/v1/agents/alice/state", until=lambda m: m["interactions"] == 0
            )
    assert snapshot["seq"] > talking["seq"]  # the stream went on after the restart
    assert (state["phone"], state["interactions"]) == ("idle", 0)
    calls = db_rows(config.store.path, "SELECT * FROM calls")
    activities = db_rows(config.store.path, "SELECT * FROM activities")
    assert [(c["interaction_id"], c["outcome"], c["ended_while_disconnected"]) for c in calls] == [
        (CALL, "answered", 1)
    ]
    assert [(a["agent"], a["outcome"], a["ended_while_disconnected"]) for a in activities] == [
        ("alice", "answered", 1)
    ]
    # Talking until the restart's resync found the call gone: at least the time down.
    assert activities[0]["talk_s"] >= 1.0
    assert calls[0]["talk_s"] == activities[0]["talk_s"]
