"""The daemon's view of its links, on real parts: status and agent states follow the PBX link,
and ``ctid run`` as a real process starts, logs JSON and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from ctid.adapters.store import OutboxMessage, Store
from ctid.core.ami import AmiMessage
from ctid.core.records import ActivityRecord
from ctid.sim.server import AmiSimulator
from tests.broker import MosquittoBroker
from tests.test_slice_inbound import (
    SECRET,
    daemon_config,
    queue_member,
    running_daemon,
)


async def next_matching(client: Any, check: Any, within_s: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            payload = orjson.loads(message.payload)
            if check(message.topic.value, payload):
                return dict(payload)
    raise AssertionError("unreachable")


async def test_pbx_link_loss_shows_in_status_and_agent_state(mosquitto: MosquittoBroker) -> None:
    """Link lost: status and every agent's state say ``reconnecting``; back: ``up`` again."""
    async with AmiSimulator(secret=SECRET) as sim:
        sim.set_list("QueueStatus", [queue_member("PJSIP/1001", "support")])
        async with (
            mosquitto.client("alice") as alice,
            running_daemon(daemon_config(mosquitto, sim), sim),
        ):
            await alice.subscribe("ctid/v1/status", qos=1)
            await alice.subscribe("ctid/v1/agents/alice/state", qos=1)
            await next_matching(alice, lambda t, p: t == "ctid/v1/status" and p["pbx"] == "up")

            await sim.drop_clients()
            status = await next_matching(
                alice, lambda t, p: t == "ctid/v1/status" and p["pbx"] != "up"
            )
            assert status["pbx"] == "reconnecting"
            assert status["daemon"] == "running"
            state = await next_matching(
                alice, lambda t, p: t.endswith("/state") and p["pbx"] != "up"
            )
            assert state["pbx"] == "reconnecting"
            assert state["presence"] == "ready"  # what the agent chose is not forgotten

            state = await next_matching(
                alice, lambda t, p: t.endswith("/state") and p["pbx"] == "up"
            )
            assert state["presence"] == "ready"
            assert sim.logins == 2


def _toml_config(tmp_path: Path, broker: MosquittoBroker, sim_port: int) -> Path:
    secret_file = tmp_path / "ami.secret"
    secret_file.write_text(SECRET + "\n")
    password_file = tmp_path / "mqtt.password"
    password_file.write_text(broker.credentials["ctid"] + "\n")
    path = tmp_path / "ctid.toml"
    path.write_text(
        f"""
[ami]
host = "127.0.0.1"
port = {sim_port}
username = "ctid"
secret_file = "ami.secret"

[mqtt]
host = "{broker.host}"
port = {broker.port}
websockets_port = {broker.ws_port}
username = "ctid"
password_file = "mqtt.password"

[store]
path = "ctid.sqlite3"

[log]
format = "json"

[[agents]]
id = "alice"
name = "Alice Example"
devices = ["PJSIP/1001"]
extension = "1001"
queues = ["support"]
"""
    )
    return path


async def test_ctid_run_process_logs_json_and_stops_on_sigterm(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """``ctid run`` connects to both links, logs JSON lines, exits 0 on SIGTERM, and says so."""
    async with AmiSimulator(secret=SECRET) as sim:
        config = _toml_config(tmp_path, mosquitto, sim.port)
        async with mosquitto.client("crm") as crm:
            await crm.subscribe("ctid/v1/status", qos=1)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ctid",
                "run",
                "-c",
                str(config),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                await next_matching(crm, lambda t, p: p["pbx"] == "up")
                await sim.wait_for_clients(1)
                proc.send_signal(signal.SIGTERM)
                final = await next_matching(crm, lambda t, p: p["daemon"] != "running")
                assert final["daemon"] == "stopped"
                async with asyncio.timeout(20):
                    out, err = await proc.communicate()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    assert proc.returncode == 0, err.decode()
    events = [orjson.loads(line)["event"] for line in out.splitlines()]
    assert "ctid.started" in events
    assert "ami.ready" in events
    assert "bus.connected" in events
    assert events[-1] == "ctid.stopped"
    assert SECRET.encode() not in out + err
    assert mosquitto.credentials["ctid"].encode() not in out + err


async def test_outbox_left_by_a_crash_is_sent_after_restart(mosquitto: MosquittoBroker) -> None:
    """A message stored but never acknowledged by the broker is sent at the next start, once."""
    config = mosquitto.config
    payload = {"type": "activity", "v": 1, "id": "crash-test/alice/1", "agent": "alice", "seq": 7}
    async with Store.open(config.store) as store:
        # What a crash between "stored" and "PUBACK" leaves behind.
        await store.save_activity(
            _activity("crash-test"),
            outbox=[OutboxMessage("v1/agents/alice/activity", orjson.dumps(payload), qos=1)],
        )
        assert len(await store.outbox_pending()) == 1
    async with AmiSimulator(secret=SECRET) as sim, mosquitto.client("alice") as alice:
        await alice.subscribe("ctid/v1/agents/alice/activity", qos=1)
        async with running_daemon(daemon_config(mosquitto, sim), sim):
            got = await next_matching(alice, lambda t, p: p.get("id") == "crash-test/alice/1")
            assert got == payload
    async with Store.open(config.store) as store:
        assert await store.outbox_pending() == []


def _activity(interaction: str) -> ActivityRecord:
    return ActivityRecord(
        id=f"{interaction}/alice/1",
        agent="alice",
        interaction_id=interaction,
        media="call",
        direction="inbound",
        customer_number="+4930123456",
        customer_e164="+4930123456",
        queue="support",
        offered_at=1795308162.0,
        answered_at=1795308165.0,
        ended_at=1795308168.0,
    )


async def test_not_ready_reason_survives_a_pbx_restart(mosquitto: MosquittoBroker) -> None:
    """Asterisk restarts and forgets that alice was paused for Lunch: ctid pauses her again.

    The reason was learnt from the PBX (QueueMemberPause), stored in SQLite,
    and is re-applied with QueuePause after the reconnect sees a fresh boot
    (FullyBooted with a low Uptime) and alice unpaused.
    """
    async with AmiSimulator(secret=SECRET, uptime=7200) as sim, mosquitto.client("alice") as alice:
        sim.set_list("QueueStatus", [queue_member("PJSIP/1001", "support")])
        await alice.subscribe("ctid/v1/agents/alice/state", qos=1)
        async with running_daemon(daemon_config(mosquitto, sim), sim) as daemon:
            await sim.push(
                AmiMessage.build(
                    [
                        ("Event", "QueueMemberPause"),
                        ("Privilege", "agent,all"),
                        ("Timestamp", f"{time.time():.6f}"),
                        ("Queue", "support"),
                        ("Interface", "PJSIP/1001"),
                        ("StateInterface", "PJSIP/1001"),
                        ("Paused", "1"),
                        ("PausedReason", "Lunch"),
                    ]
                )
            )
            state = await next_matching(alice, lambda t, p: p["presence"] == "not_ready")
            assert state["reason"] == "Lunch"
            # Asterisk restarts: it comes back with alice as an unpaused static member.
            await sim.stop_accepting()
            sim.uptime = 3
            await sim.start_accepting()
            pause = await sim.wait_for_action("QueuePause", timeout=15)
            assert (pause.get("Interface"), pause.get("Paused"), pause.get("Reason")) == (
                "PJSIP/1001",
                "true",
                "Lunch",
            )
            assert daemon.model.agents["alice"].reason == "Lunch"
    async with Store.open(mosquitto.config.store) as store:
        presence, reason, _ = (await store.load_presences())["alice"]
    assert (presence, reason) == ("not_ready", "Lunch")
