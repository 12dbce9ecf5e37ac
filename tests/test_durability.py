"""Store before publish under failure (issue 6, "Done when"): a broker outage and a SIGKILL.

Both tests replay the same generated traffic (5 agents, 40 callers, seeded:
answers, rings nobody answers, abandons, blind transfers) through the AMI
simulator at ``SPEED`` times real time, into a real ctid, a real Mosquitto and
a real SQLite file, and compare three views: what SQLite holds (calls,
activities, outbox), what a subscriber (user ``crm``, QoS 1) received, and what
the pure model produces for the same events when nothing fails (the reference).

Messages are counted raw, (topic, payload bytes), and by activity id: a
duplicate is a failure, never folded away by a dedupe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from ctid.adapters.store import Store
from ctid.app import Daemon, build_model
from ctid.config import AgentConfig, AmiConfig, Config, StoreConfig
from ctid.core.ami import AmiMessage
from ctid.core.effects import Effect, EmitActivity, EmitCall
from ctid.core.records import ActivityRecord, CallRecord
from ctid.sim.server import AmiSimulator
from ctid.sim.traffic import generate, queue_status_items
from tests.broker import running_mosquitto
from tests.daemon_process import (
    SECRET,
    DaemonProcess,
    Recorder,
    TcpGate,
    db_rows,
    write_config,
)
from tests.test_slice_inbound import running_daemon

AGENTS = 5
CALLERS = 40
SEED = 3  # 63 activities: 35 answered, 18 missed, 10 transferred; 40 calls
SPEED = 150.0  # the 1385 s of traffic in about 9 s
# ctid publishes its durable effects one at a time, each after its commit and before the
# next one's (store, drain the outbox, mark delivered: two batched commits), so the default
# 50 ms batch window caps it near 10 activities or call rows a second: less than this
# accelerated traffic makes, and much less on a loaded 2-core machine. A shorter window
# keeps the test short; every write still returns only once committed.
BATCH_WAIT_S = 0.005
EXTENSIONS = [str(1001 + i) for i in range(AGENTS)]
PREFIX = "ctid/"
CRM_ACTIVITY = "ctid/v1/crm/activity"
CRM_CALLS = "ctid/v1/crm/calls"
# Every topic the outbox publishes on: the CRM streams and the agents' activity topics.
OUTBOX_TOPICS = (CRM_ACTIVITY, CRM_CALLS, "ctid/v1/agents/+/activity")

Received = list[tuple[str, bytes]]


# --------------------------------------------------------------------------- traffic and reference


def traffic() -> list[AmiMessage]:
    """The test's traffic, starting now: a daemon (re)started mid-traffic resyncs at the
    wall-clock time, and its calls must not look hours old to the events that follow."""
    return list(
        generate(
            agents=AGENTS,
            callers=CALLERS,
            seed=SEED,
            transfer=0.3,
            abandon=0.15,
            start_ts=round(time.time(), 2),
        )
    )


def index_at(msgs: list[AmiMessage], fraction: float) -> int:
    """The index of the first event at ``fraction`` of the traffic's duration."""
    first, last = msgs[0].timestamp, msgs[-1].timestamp
    assert first is not None
    assert last is not None
    at = first + fraction * (last - first)
    return next(i for i, m in enumerate(msgs) if m.timestamp is not None and m.timestamp >= at)


def agents_config(tmp_path: Path) -> Config:
    return Config(
        store=StoreConfig(path=tmp_path / "ctid.sqlite3"),
        agents=tuple(
            AgentConfig(
                id=f"a{ext}",
                name=f"Agent {ext}",
                devices=(f"PJSIP/{ext}",),
                extension=ext,
                queues=("support",),
            )
            for ext in EXTENSIONS
        ),
    )


@dataclasses.dataclass(frozen=True)
class Reference:
    """What the model produces for the traffic when nothing fails."""

    activities: dict[str, ActivityRecord]
    calls: dict[str, CallRecord]


def reference(config: Config, msgs: list[AmiMessage]) -> Reference:
    """The traffic through the pure model, time from the events (as ``ctid replay`` does)."""
    model = build_model(config)
    activities: dict[str, ActivityRecord] = {}
    calls: dict[str, CallRecord] = {}

    def take(effects: Iterable[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, EmitActivity):
                activities[effect.record.id] = effect.record
            elif isinstance(effect, EmitCall):
                calls[effect.record.interaction_id] = effect.record

    first, last = msgs[0].timestamp, msgs[-1].timestamp
    assert first is not None
    assert last is not None
    take(model.resync(queue_status_items(AGENTS), first - 1))
    for msg in msgs:
        assert msg.timestamp is not None
        take(model.tick(msg.timestamp))
        take(model.apply(msg, msg.timestamp))
    take(model.tick(last + 60))
    return Reference(activities, calls)


def call_spans(msgs: list[AmiMessage]) -> dict[str, tuple[int, int]]:
    """Each interaction (Linkedid) → indexes of its first ``Newchannel`` and last ``Hangup``."""
    spans: dict[str, tuple[int, int]] = {}
    for i, m in enumerate(msgs):
        linked = m.get("Linkedid")
        if m.event == "Newchannel" and linked not in spans:
            spans[linked] = (i, i)
        elif m.event == "Hangup":
            spans[linked] = (spans[linked][0], i)
    return spans


# --------------------------------------------------------------------------- observations


def outbox_messages(path: Path) -> list[dict[str, Any]]:
    """Every outbox row, with its full topic."""
    rows = db_rows(path, "SELECT id, topic, payload, delivered_at FROM outbox ORDER BY id")
    for row in rows:
        row["topic"] = PREFIX + row["topic"]
    return rows


def missing_from(received: Received, rows: list[dict[str, Any]]) -> Counter[tuple[str, bytes]]:
    """The outbox messages (as a multiset) that ``received`` lacks."""
    wanted = Counter((r["topic"], bytes(r["payload"])) for r in rows)
    return wanted - Counter(received)


def describe(messages: Iterable[tuple[str, bytes]]) -> list[str]:
    return [
        f"{topic} {orjson.loads(payload).get('id', orjson.loads(payload).get('interaction_id'))}"
        for topic, payload in messages
    ]


async def quiesce(
    daemon: Daemon, path: Path, recorders: Iterable[Recorder], within_s: float = 15.0
) -> None:
    """Wait until nothing durable is in flight in the (in-process) daemon.

    The AMI feed must be paused. Then: every event applied, no agent part left
    to settle (a tick would close it), every effect stored and published, the
    outbox drained and each of its messages received. After this nothing can
    produce an activity until more events come.
    """
    try:
        async with asyncio.timeout(within_s):
            while True:
                await daemon.ami.events.join()
                if not any(p.left_at is not None for p in daemon.model.parts.values()):
                    await daemon._publishes.join()
                    rows = outbox_messages(path)
                    if (
                        all(r["delivered_at"] is not None for r in rows)
                        and not missing_from(received_by(recorders), rows)
                        and daemon.ami.events.empty()
                        and daemon._publishes.empty()
                        and not daemon._outbox_lock.locked()
                    ):
                        return
                await asyncio.sleep(0.05)
    except TimeoutError:
        rows = outbox_messages(path)
        missing = missing_from(received_by(recorders), rows)
        times = [
            (r["id"], r["delivered_at"]) for r in rows if (r["topic"], r["payload"]) in missing
        ]
        raise AssertionError(
            f"ctid did not settle within {within_s} s (at {time.time():.3f}): "
            f"outbox ids and delivery times of what was not received: {times}; "
            f"{sum(r['delivered_at'] is None for r in rows)} outbox messages undelivered, "
            f"not received: {describe(missing.elements())[:10]}; "
            f"parts settling: {[k for k, p in daemon.model.parts.items() if p.left_at]}, "
            f"AMI events queued: {daemon.ami.events.qsize()}, "
            f"effects queued: {daemon._publishes.qsize()}"
        ) from None


async def wait_until(what: str, check: Any, within_s: float = 10.0) -> None:
    try:
        async with asyncio.timeout(within_s):
            while not check():  # noqa: ASYNC110 - conditions over SQLite and MQTT, no event
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {within_s} s: {what}") from None


def received_by(recorders: Iterable[Recorder]) -> Received:
    return [m for r in recorders for m in r.got]


def assert_exactly_once(received: Received, outbox: list[dict[str, Any]]) -> None:
    """Every outbox message received once: no more, no less, nothing else."""
    sent = Counter((r["topic"], bytes(r["payload"])) for r in outbox)
    got = Counter(received)
    twice = {k: n for k, n in got.items() if n > 1}
    assert not twice, f"received more than once: {describe(twice)}"
    missing = sent - got
    assert not missing, f"stored but never received: {describe(missing.elements())}"
    extra = got - sent
    assert not extra, f"received but not in the outbox (published unstored?): {describe(extra)}"


def payloads(received: Received, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(p) for t, p in received if t == topic]


# --------------------------------------------------------------------------- broker outage


async def test_broker_outage_delivers_every_stored_activity_exactly_once(tmp_path: Path) -> None:
    """Mosquitto stops for a few seconds mid-traffic: every activity arrives once, none twice.

    ctid runs in-process and reaches the broker through a ``TcpGate``; the
    subscriber (``crm``) connects directly. Because the test broker has no
    persistence, the observation is made deterministic in two places:

    * the broker stops at a moment when nothing durable is in flight (AMI feed
      paused, no part left to settle, outbox drained and every message
      received), so no message can be lost or doubled *by the broker* in its
      last instant; calls are still in progress (ringing and talking) and the
      traffic goes on while the broker is down;
    * after the restart the subscriber is back (SUBACK received) before the gate
      lets ctid reconnect, so whatever ctid drains from its outbox has a reader.

    Then: the messages received before the outage plus those received after it
    are exactly the outbox (each once); on ``ctid/v1/crm/activity`` the number of
    messages equals the number of distinct activity ids equals the number of
    activities in SQLite, and the same for the call rows on ``ctid/v1/crm/calls``;
    the activities are those of the reference run.
    """
    msgs = traffic()
    cut, back = index_at(msgs, 0.35), index_at(msgs, 0.65)
    config = agents_config(tmp_path)
    path = config.store.path
    ref = reference(config, msgs)
    outage_pending: list[dict[str, Any]] = []
    async with (
        running_mosquitto(config, websockets=False) as broker,
        AmiSimulator(secret=SECRET, track_state=True) as sim,
    ):
        assert sim.state is not None
        sim.state.seed(queue_status_items(AGENTS))
        gate = TcpGate(broker.port)
        await gate.open()
        try:
            daemon_config = dataclasses.replace(
                broker.config,
                ami=AmiConfig(
                    port=sim.port, secret=SECRET, reconnect_initial_s=0.05, reconnect_max_s=0.2
                ),
                store=dataclasses.replace(broker.config.store, batch_wait_s=BATCH_WAIT_S),
                mqtt=dataclasses.replace(
                    broker.config.mqtt,
                    port=gate.port,
                    reconnect_initial_s=0.05,
                    reconnect_max_s=0.2,
                ),
            )
            async with (
                Recorder(broker, OUTBOX_TOPICS) as before,
                running_daemon(daemon_config, sim) as daemon,
            ):
                await sim.replay(msgs[:cut], SPEED)
                await quiesce(daemon, path, [before])
                in_progress = len(daemon.model.calls)
                assert in_progress > 0, "the outage must begin while calls are in progress"

                await gate.shut()
                await broker.stop()
                await wait_until(
                    "ctid sees the broker gone", lambda: not daemon.bus.connected.is_set()
                )
                await wait_until("the subscriber sees the broker gone", before.disconnected.is_set)

                await sim.replay(msgs[cut:back], SPEED)  # calls go on, ctid stores, cannot publish
                await daemon.ami.events.join()
                await asyncio.sleep(0.3)  # the publisher stores what the last events produced
                outage_pending = [r for r in outbox_messages(path) if r["delivered_at"] is None]

                await broker.start()
                async with Recorder(broker, OUTBOX_TOPICS) as after:
                    await gate.open()
                    await wait_until("ctid reconnects", daemon.bus.connected.is_set)
                    await sim.replay(msgs[back:], SPEED)
                    await wait_until("every call over", lambda: not daemon.model.calls, 15.0)
                    await quiesce(daemon, path, [before, after])
                    await asyncio.sleep(1.0)  # a duplicate would arrive now
                    received = before.got + after.got
                    during = len(before.got)
        finally:
            await gate.aclose()

    async with Store.open(path) as store:
        activities = await store.list_activities()
        calls = await store.export(0, "calls")
        assert await store.outbox_pending() == []
    outbox = outbox_messages(path)

    # The outage mattered: activities were stored while the broker was down and
    # reached the subscriber only after it was back.
    pending_activities = {
        orjson.loads(r["payload"])["id"] for r in outage_pending if r["topic"] == CRM_ACTIVITY
    }
    assert len(pending_activities) >= 3, f"only {len(pending_activities)} stored during the outage"
    assert len(payloads(received[:during], CRM_ACTIVITY)) >= 5
    assert pending_activities <= {p["id"] for p in payloads(received[during:], CRM_ACTIVITY)}

    # Raw: each stored message once, nothing else.
    assert_exactly_once(received, outbox)

    # Counted: messages = distinct ids = rows, for activities and for calls.
    crm_activities = payloads(received, CRM_ACTIVITY)
    ids = [p["id"] for p in crm_activities]
    assert len(ids) == len(set(ids)) == len(activities), (
        f"{len(ids)} messages, {len(set(ids))} distinct ids, {len(activities)} stored; "
        f"repeated: {[i for i, n in Counter(ids).items() if n > 1]}"
    )
    assert set(ids) == {a.id for a in activities}
    for agent in (a.id for a in config.agents):
        mine = [p["id"] for p in payloads(received, f"ctid/v1/agents/{agent}/activity")]
        assert sorted(mine) == sorted(a.id for a in activities if a.agent == agent), agent
    call_ids = [p["interaction_id"] for p in payloads(received, CRM_CALLS)]
    assert len(call_ids) == len(set(call_ids)) == len(calls) == CALLERS
    assert set(call_ids) == {c["interaction_id"] for c in calls}

    # And they are the activities the traffic has: none lost before reaching SQLite.
    assert {a.id: a for a in activities} == ref.activities


# --------------------------------------------------------------------------- SIGKILL


def snapshot(path: Path) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every activity, call and agent-state row (with its seq), and the outbox, by key."""
    return {
        "activities": {r["id"]: r for r in db_rows(path, "SELECT * FROM activities")},
        "calls": {r["interaction_id"]: r for r in db_rows(path, "SELECT * FROM calls")},
        "agent_states": {r["id"]: r for r in db_rows(path, "SELECT * FROM agent_states")},
        "outbox": {r["id"]: r for r in outbox_messages(path)},
    }


def status_up_since(rec: Recorder, mark: int, daemon: DaemonProcess) -> bool:
    """A ``running`` status with the PBX link ``up`` among the messages from index ``mark``."""
    assert not daemon.exited, f"ctid exited; its log:\n{daemon.log()[-4000:]}"
    return any(
        topic == "ctid/v1/status"
        and (p := orjson.loads(payload))["pbx"] == "up"
        and p["daemon"] == "running"
        for topic, payload in rec.got[mark:]
    )


async def test_sigkill_mid_traffic_loses_and_duplicates_no_row(tmp_path: Path) -> None:
    """``ctid run`` is SIGKILLed mid-traffic and started again on the same SQLite file.

    The kill comes right after a burst of events went out, with calls in
    progress; the PBX goes on while ctid is dead (the simulator keeps its state
    and answers the restarted daemon's resync from it), then the traffic goes on.
    A subscriber (``crm``) stays connected to the broker throughout.

    Expected:
    * every row written before the kill (activities, calls, agent states) is
      still there at the end, unchanged, with its seq;
    * every interaction that ended after the restart has its call row once, no
      agent has more activities in it than the reference run gives, and an
      interaction entirely after the restart has exactly the reference rows;
    * ``export`` seqs strictly increase without duplicates, within and across kinds,
      and the rows written after the kill all come after the cursor of the kill;
    * the outbox drains, every outbox message is delivered at least once, nothing
      unstored is published, and a message delivered twice (QoS 1 after a crash
      between PUBACK and marking) is one that was unmarked at the kill, byte for byte
      the same, so the same activity id never carries two payloads.
    """
    await sigkill_and_restart(tmp_path, kill_at=0.4, back=0.5)


async def test_sigkill_keeps_the_activity_of_an_agent_rung_again_after_the_restart(
    tmp_path: Path,
) -> None:
    """The kill falls between two parts of one agent in one call: both activities survive.

    In call ``….28`` of the traffic a1001 is rung first and does not answer (a
    ``missed`` activity, stored before the kill: the kill comes 2 s after the
    last event, so the part has settled), a1003 answers and blind-transfers the
    customer to a1001 after the restart. The second part must get its own
    activity; the first must stay as it was.
    """
    await sigkill_and_restart(tmp_path, kill_at=0.2503, back=0.2555, pause_s=2.0)


async def test_sigkill_then_calls_open_at_the_kill_get_their_rows(tmp_path: Path) -> None:
    """Calls in progress at the kill that end while ctid is dead still get their rows.

    Asterisk tells the restarted daemon only what is up then; ctid's checkpoint of
    its model (taken at most 0.2 s after a change, stored after the rows emitted
    before it) tells it which calls were open, and the resync closes those gone
    (``ended_while_disconnected``), each once. The kill comes 1 s after the last
    event, so the checkpoint holds everything before it (a kill sooner after a
    change loses the calls that began in those last 0.2 s, if they end unseen).
    Calls that begin and end while ctid is dead are never seen by it: AMI has no
    history to ask. Also checks everything ``test_sigkill_during_traffic`` does.
    """
    await sigkill_and_restart(tmp_path, kill_at=0.4, back=0.5, pause_s=1.0, checkpointed=True)


async def sigkill_and_restart(
    tmp_path: Path,
    *,
    kill_at: float,
    back: float,
    pause_s: float = 0.0,
    checkpointed: bool = False,
) -> None:
    """Kill ctid at fraction ``kill_at`` of the traffic (``pause_s`` after its last event),
    start it again at ``back``, and check. ``checkpointed``: the kill came long enough
    after the last event for the checkpoint to hold it: every call open at the kill has
    its row at the end, and every agent part begun before the kill its activity."""
    msgs = traffic()
    kill_i, back_i = index_at(msgs, kill_at), index_at(msgs, back)
    spans = call_spans(msgs)
    config = agents_config(tmp_path)
    path = config.store.path
    ref = reference(config, msgs)
    last_call = max(spans, key=lambda c: spans[c][1])
    async with (
        running_mosquitto(config, websockets=False) as broker,
        AmiSimulator(secret=SECRET, track_state=True) as sim,
        Recorder(broker, (*OUTBOX_TOPICS, "ctid/v1/status")) as rec,
    ):
        assert sim.state is not None
        sim.state.seed(queue_status_items(AGENTS))
        toml = write_config(
            tmp_path, broker, sim.port, EXTENSIONS, store=path, batch_wait_s=BATCH_WAIT_S
        )
        first = DaemonProcess(toml, tmp_path / "ctid-1.log")
        async with first:
            await wait_until("the first ctid is up", lambda: status_up_since(rec, 0, first), 20.0)
            await sim.replay(msgs[:kill_i], SPEED)
            await asyncio.sleep(pause_s)
            await first.kill()
        before = snapshot(path)
        open_at_kill = [c for c, (s, e) in spans.items() if s < kill_i <= e]
        assert open_at_kill, "the kill must come while calls are in progress"
        assert len(before["activities"]) >= 5, "rows must have been written before the kill"

        await sim.replay(msgs[kill_i:back_i], SPEED)  # the PBX goes on; nobody listens

        mark = len(rec.got)
        second = DaemonProcess(toml, tmp_path / "ctid-2.log")
        async with second:
            await wait_until(
                "the second ctid is up", lambda: status_up_since(rec, mark, second), 20.0
            )
            await sim.replay(msgs[back_i:], SPEED)

            def done() -> bool:
                rows = outbox_messages(path)
                got = {orjson.loads(p)["interaction_id"] for t, p in rec.got if t == CRM_CALLS}
                return (
                    last_call in got
                    and all(r["delivered_at"] is not None for r in rows)
                    and not missing_from(rec.got, rows)
                )

            await wait_until("the last call's row is published, the outbox drained", done, 20.0)
            await asyncio.sleep(1.0)  # a late duplicate would arrive now
            status = await second.terminate()
            assert status == 0, second.log()[-4000:]
        received = list(rec.got)

    after = snapshot(path)
    async with Store.open(path) as store:
        assert await store.outbox_pending() == []
        exported = {
            kind: await store.export(0, kind) for kind in ("activities", "calls", "agent-states")
        }
        max_seq = await store.max_seq()

    # Rows written before the kill are still there, unchanged (same content, same seq).
    for table in ("activities", "calls", "agent_states"):
        changed = [k for k, row in before[table].items() if after[table].get(k) != row]
        assert not changed, f"{table} written before the kill, changed or gone: {changed}"

    # Every interaction that ended after the restart: its call row, once (interaction_id is
    # unique in the table; it must be there), no agent with more activities than in the
    # reference, and those entirely after the restart exactly as in the reference.
    ended_after = [c for c, (_, e) in spans.items() if e >= back_i]
    started_after = [c for c, (s, _) in spans.items() if s >= back_i]
    assert len(started_after) >= 5
    assert len(ended_after) > len(started_after), "some calls must span the restart"
    missing_calls = [c for c in ended_after if c not in after["calls"]]
    assert not missing_calls, f"calls ended after the restart without a row: {missing_calls}"
    stored = {a["id"]: a for a in after["activities"].values()}
    per_part = Counter((a["interaction_id"], a["agent"]) for a in stored.values())
    ref_part = Counter((a.interaction_id, a.agent) for a in ref.activities.values())
    extra = {k: n for k, n in per_part.items() if n > ref_part[k]}
    assert not extra, f"more activities than agent parts (interaction, agent): {extra}"
    restart_ts = msgs[back_i].timestamp
    assert restart_ts is not None
    unseen = sorted(
        a.id
        for a in ref.activities.values()
        if a.ended_at > restart_ts and (a.interaction_id, a.agent) not in per_part
    )
    assert not unseen, f"agents' parts that ended after the restart without an activity: {unseen}"
    if checkpointed:
        kill_ts = msgs[kill_i - 1].timestamp
        assert kill_ts is not None
        gone = [c for c in open_at_kill if c not in after["calls"]]
        assert not gone, f"calls open at the kill without a row: {gone}"
        unseen_down = [c for c in open_at_kill if spans[c][1] < back_i]
        assert unseen_down, "some calls must end while ctid is dead"
        assert all(after["calls"][c]["ended_while_disconnected"] for c in unseen_down)
        parts_at_kill = {
            (a.interaction_id, a.agent)
            for a in ref.activities.values()
            if a.interaction_id in open_at_kill and a.offered_at < kill_ts
        }
        assert parts_at_kill <= set(per_part), (
            f"parts begun before the kill without an activity: {parts_at_kill - set(per_part)}"
        )
    async with Store.open(path) as store:
        for call_id in started_after:
            assert await store.get_call(call_id) == ref.calls[call_id], call_id
            mine = {a.id: a for a in await store.list_activities(interaction_id=call_id)}
            want = {i: a for i, a in ref.activities.items() if a.interaction_id == call_id}
            assert mine == want, call_id

    # Export: one strictly increasing sequence across kinds; nothing new below the kill's cursor.
    seqs = [row["seq"] for rows in exported.values() for row in rows]
    for kind, rows in exported.items():
        kind_seqs = [row["seq"] for row in rows]
        assert kind_seqs == sorted(set(kind_seqs)), f"{kind}: seqs not strictly increasing"
    assert len(seqs) == len(set(seqs)), "a seq given to two rows"
    assert max(seqs) <= max_seq
    cursor = max(
        (
            row["seq"]
            for table in ("activities", "calls", "agent_states")
            for row in before[table].values()
        ),
        default=0,
    )
    keys = (
        ("activities", "activities", "id"),
        ("calls", "calls", "interaction_id"),
        ("agent-states", "agent_states", "id"),
    )
    new = {
        (kind, row[key])
        for kind, table, key in keys
        for row in exported[kind]
        if row[key] not in before[table]
    }
    past_cursor = {
        (kind, row[key]) for kind, _, key in keys for row in exported[kind] if row["seq"] > cursor
    }
    assert past_cursor == new, "export --since <the kill's last seq> must give exactly the new rows"

    # The outbox: everything delivered at least once, nothing unstored published; a
    # duplicate only for a message not yet marked at the kill, and byte-identical.
    outbox = list(after["outbox"].values())
    sent = Counter((r["topic"], bytes(r["payload"])) for r in outbox)
    got = Counter(received)
    never = sent - got
    assert not never, f"stored but never delivered: {describe(never.elements())}"
    unstored = {k: n for k, n in got.items() if k[0] != "ctid/v1/status" and k not in sent}
    assert not unstored, f"published but not in the outbox: {describe(unstored)}"
    unmarked_at_kill = {
        (r["topic"], bytes(r["payload"]))
        for r in before["outbox"].values()
        if r["delivered_at"] is None
    }
    twice = {k: n for k, n in got.items() if k in sent and n > 1}
    assert all(n == 2 for n in twice.values()), f"delivered more than twice: {describe(twice)}"
    assert set(twice) <= unmarked_at_kill, (
        "delivered twice though marked delivered before the kill: "
        f"{describe(set(twice) - unmarked_at_kill)}"
    )
    by_id: dict[str, set[bytes]] = {}
    for topic, payload in received:
        if topic == CRM_ACTIVITY:
            by_id.setdefault(orjson.loads(payload)["id"], set()).add(payload)
    assert all(len(p) == 1 for p in by_id.values()), "an activity id with two payloads"
    assert set(by_id) == set(stored)
    # A page's stream survives the restart: the restarted daemon goes on after each agent's
    # last seq, so no seq names two different messages (a QoS 1 redelivery is the same bytes).
    by_seq: dict[tuple[str, int], set[bytes]] = {}
    for topic, payload in received:
        if topic.startswith("ctid/v1/agents/"):
            message = orjson.loads(payload)
            by_seq.setdefault((message["agent"], message["seq"]), set()).add(payload)
    reused = sorted(k for k, p in by_seq.items() if len(p) > 1)
    assert not reused, f"a per-agent seq given to two different messages: {reused}"
    print(
        f"SIGKILL: {len(before['activities'])} activities before the kill, "
        f"{len(stored)} at the end, "
        f"{len(unmarked_at_kill)} outbox messages unmarked at the kill, "
        f"{len(twice)} delivered twice: {describe(twice)}"
    )
