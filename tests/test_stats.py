"""Statistics in SQLite: per-queue counters kept by triggers, agent state intervals with the phone.

Real SQLite files in ``tmp_path``. ``recount`` is the counters' definition written
again in Python, independent of the triggers: after every change the stored
``queue_intervals`` must equal what it computes from the ``calls`` rows. The real
captures are replayed through the model and stored as the daemon stores them, and
checked against their truth files (``tests/truth.py``'s tolerance).
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ctid.adapters.store import (
    DEFAULT_SERVICE_LEVEL_S,
    MIGRATIONS,
    QUEUE_INTERVAL_COLS,
    QUEUE_INTERVAL_S,
    Store,
)
from ctid.config import Config, load_config
from ctid.core.agents import Presence
from ctid.core.effects import EmitActivity, RecordInterval
from ctid.core.records import AgentStateInterval, CallRecord
from ctid.replay import DurableEffect, replay, store_replayed
from tests.command_rig import command_rig, commands_config
from tests.test_model import events, feed, model
from tests.truth import ANON_ANSWERS, CAPTURES, CONFIG, TOL, all_captures, load_truth

Row = dict[str, Any]
T = 1_795_307_400.0  # the start of a 15-minute interval
FLOATS = (
    "wait_total_s",
    "wait_max_s",
    "talk_total_s",
    "hold_total_s",
    "answered_wait_total_s",
    "abandoned_wait_total_s",
)


def call(n: float, **changes: Any) -> CallRecord:
    """A queue call answered after 10 s that started ``n`` seconds after T."""
    record = CallRecord(
        interaction_id=f"c{n}",
        media="call",
        direction="inbound",
        customer_number="+4930123456",
        customer_e164="+4930123456",
        queue="support",
        started_at=T + n,
        ended_at=T + n + 60.0,
        answered_at=T + n + 10.0,
        wait_s=10.0,
        talk_s=40.0,
        hold_s=5.0,
        outcome="answered",
        agents=("1001",),
    )
    return replace(record, **changes)


def abandoned(n: float, **changes: Any) -> CallRecord:
    """A queue call whose caller gave up after 30 s."""
    given: dict[str, Any] = {
        "answered_at": None,
        "wait_s": 30.0,
        "talk_s": 0.0,
        "hold_s": 0.0,
        "outcome": "abandoned",
        "agents": (),
    }
    return call(n, **(given | changes))


def recount(calls: Iterable[Row], service_level_s: float) -> dict[tuple[str, int], Row]:
    """The counters of every (queue, interval) as their definition says, from call rows."""
    out: dict[tuple[str, int], Row] = {}
    for c in calls:
        if not c["queue"]:
            continue
        start = int(c["started_at"]) // QUEUE_INTERVAL_S * QUEUE_INTERVAL_S
        row = out.setdefault(
            (c["queue"], start),
            {"queue": c["queue"], "interval_start": start}
            | dict.fromkeys(QUEUE_INTERVAL_COLS[2:7], 0)
            | dict.fromkeys(FLOATS, 0.0),
        )
        answered = c["outcome"] == "answered"
        row["offered"] += 1
        row["answered"] += answered
        row["abandoned"] += c["outcome"] == "abandoned"
        row["answered_within_sl"] += answered and c["wait_s"] <= service_level_s
        row["transferred"] += c["transfers"] > 0
        row["wait_total_s"] += c["wait_s"]
        row["wait_max_s"] = max(row["wait_max_s"], c["wait_s"])
        row["talk_total_s"] += c["talk_s"]
        row["hold_total_s"] += c["hold_s"]
        row["answered_wait_total_s"] += c["wait_s"] if answered else 0.0
        row["abandoned_wait_total_s"] += c["wait_s"] if c["outcome"] == "abandoned" else 0.0
    return out


async def counters(store: Store) -> dict[tuple[str, int], Row]:
    """The stored counters by (queue, interval_start), with their seq."""
    return {(r["queue"], r["interval_start"]): r for r in await store.export(0, "queue-intervals")}


async def assert_exact(store: Store) -> dict[tuple[str, int], Row]:
    """The stored counters equal ``recount`` of the stored calls (rows left at zero
    by calls that moved away stay, with zeros); returns them."""
    stored = await counters(store)
    want = recount(await store.export(0, "calls"), await store.service_level_s())
    for key, row in stored.items():
        expected = want.get(key) or dict.fromkeys(QUEUE_INTERVAL_COLS[2:], 0)
        for col in QUEUE_INTERVAL_COLS[2:]:
            assert row[col] == pytest.approx(expected[col]), (key, col)
    assert set(want) <= set(stored)
    return stored


def counts(row: Row) -> tuple[int, int, int, int, int]:
    """offered, answered, abandoned, answered_within_sl, transferred."""
    return (
        row["offered"],
        row["answered"],
        row["abandoned"],
        row["answered_within_sl"],
        row["transferred"],
    )


def opened(path: Path, **options: Any) -> Any:
    return Store.open(path, batch_wait_s=0.0, **options)


# --------------------------------------------------------------------------- queue counters


async def test_each_call_counts_once_in_the_interval_it_started_in(tmp_path: Path) -> None:
    """Answered within and beyond the service level, abandoned, transferred, queue-less,
    the last instant of an interval and the first of the next."""
    async with opened(tmp_path / "s.db") as store:
        await store.save_call(call(1))
        await store.save_call(call(2, wait_s=25.0, talk_s=30.0, hold_s=0.0, transfers=1))
        await store.save_call(abandoned(3))
        await store.save_call(call(4, queue="", outcome="ivr", answered_at=None))
        await store.save_call(call(899.999))  # still the first interval
        await store.save_call(call(900, wait_s=20.0))  # the next; exactly the service level
        await store.save_call(call(5, queue="sales"))
        stored = await assert_exact(store)
    assert sorted(stored) == [("sales", int(T)), ("support", int(T)), ("support", int(T) + 900)]
    first = stored["support", int(T)]
    assert counts(first) == (4, 3, 1, 2, 1)
    assert first["wait_total_s"] == 10.0 + 25.0 + 30.0 + 10.0
    assert first["wait_max_s"] == 30.0
    assert first["talk_total_s"] == 40.0 + 30.0 + 0.0 + 40.0
    assert first["hold_total_s"] == 5.0 + 5.0
    assert first["answered_wait_total_s"] == 10.0 + 25.0 + 10.0  # average speed of answer
    assert first["abandoned_wait_total_s"] == 30.0  # average time to abandon
    assert counts(stored["support", int(T) + 900]) == (1, 1, 0, 1, 0)
    assert counts(stored["sales", int(T)]) == (1, 1, 0, 1, 0)
    assert all(key[1] % QUEUE_INTERVAL_S == 0 for key in stored)


async def test_an_updated_call_moves_its_counts(tmp_path: Path) -> None:
    """A changed outcome, queue, start or wait moves the call's contribution; the maximum
    wait goes down again; a queue removed uncounts it. Always exact."""
    async with opened(tmp_path / "s.db") as store:
        await store.save_call(call(1))
        await store.save_call(call(2, wait_s=25.0))
        await store.save_call(abandoned(3, wait_s=50.0))
        before = await assert_exact(store)
        assert counts(before["support", int(T)]) == (3, 2, 1, 1, 0)
        assert before["support", int(T)]["wait_max_s"] == 50.0

        await store.save_call(call(1, outcome="abandoned", answered_at=None))
        assert counts((await assert_exact(store))["support", int(T)]) == (3, 1, 2, 0, 0)

        await store.save_call(call(2, wait_s=25.0, queue="sales"))
        stored = await assert_exact(store)
        assert counts(stored["support", int(T)])[:3] == (2, 0, 2)
        assert counts(stored["sales", int(T)]) == (1, 1, 0, 0, 0)

        await store.save_call(abandoned(3, wait_s=5.0))  # the longest wait was corrected
        assert (await assert_exact(store))["support", int(T)]["wait_max_s"] == 10.0

        await store.save_call(call(1, started_at=T + 1000.0, outcome="abandoned", answered_at=None))
        stored = await assert_exact(store)
        assert counts(stored["support", int(T)])[:3] == (1, 0, 1)
        assert counts(stored["support", int(T) + 900])[:3] == (1, 0, 1)

        await store.save_call(call(2, queue=""))
        stored = await assert_exact(store)
        assert counts(stored["sales", int(T)]) == (0, 0, 0, 0, 0)  # kept: a CRM sees the change
        assert stored["sales", int(T)]["seq"] > before["support", int(T)]["seq"]


async def test_counters_take_a_seq_only_when_they_change(tmp_path: Path) -> None:
    """The call's own seq update, a second identical save and a change of a column the
    counters do not use leave the counters' row and seq alone; export after a cursor
    gives exactly the counters that changed."""
    path = tmp_path / "s.db"
    async with opened(path) as store:
        await store.save_call(call(1))
        await store.save_call(call(2, queue="sales"))
        first = await counters(store)
        await store.save_call(call(1))  # identical: the call takes a new seq, counters not
        assert await counters(store) == first
        await store.save_call(call(1, customer_number="030 123456", ended_at=T + 500.0))
        assert await counters(store) == first
        cursor = await store.max_seq()
        await store.save_call(call(1, talk_s=41.0))
        changed = await store.export(cursor, "queue-intervals")
        assert [(r["queue"], r["talk_total_s"]) for r in changed] == [("support", 41.0)]
        assert changed[0]["seq"] > cursor
        assert await store.export(await store.max_seq(), "queue-intervals") == []
    with sqlite3.connect(path) as db:  # by hand, as an administrator might
        db.execute("UPDATE calls SET ended_while_disconnected = 1")
        db.execute("UPDATE calls SET seq = seq + 100")
        rows = db.execute("SELECT seq FROM queue_intervals ORDER BY queue").fetchall()
    assert [r[0] for r in rows] == [first["sales", int(T)]["seq"], changed[0]["seq"]]


async def test_deleting_a_call_uncounts_it(tmp_path: Path) -> None:
    """ctid never deletes calls, but if someone does the counters stay exact."""
    path = tmp_path / "s.db"
    async with opened(path) as store:
        await store.save_call(call(1))
        await store.save_call(call(2))
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM calls WHERE interaction_id = 'c1'")
    async with opened(path) as store:
        assert counts((await assert_exact(store))["support", int(T)]) == (1, 1, 0, 1, 0)


async def test_saving_the_same_calls_twice_with_save_once_changes_nothing(tmp_path: Path) -> None:
    """A replay of the same rows: counters, their seqs and the sequence stay as they were."""
    rows = [call(1), call(2, wait_s=40.0), abandoned(3), call(4, queue="sales", transfers=2)]
    items: list[tuple[Any, list[Any]]] = [(r, []) for r in rows]
    async with opened(tmp_path / "s.db") as store:
        assert (await store.save_once(items))["calls"] == 4
        first, last = await assert_exact(store), await store.max_seq()
        assert counts(first["support", int(T)]) == (3, 2, 1, 1, 0)
        assert (await store.save_once(items)).get("calls_unchanged") == 4
        assert await counters(store) == first
        assert await store.max_seq() == last


async def test_a_new_service_level_recounts_answered_within_it(tmp_path: Path) -> None:
    """Store.open(service_level_s=...) writes the threshold; a new one recounts (with new
    seqs), the same one writes nothing, None keeps what is stored."""
    path = tmp_path / "s.db"
    async with opened(path) as store:
        assert await store.service_level_s() == DEFAULT_SERVICE_LEVEL_S == 20.0
        for n, wait in enumerate((5.0, 20.0, 25.0)):
            await store.save_call(call(n, wait_s=wait))
        await store.save_call(call(5, queue="sales", wait_s=1.0))
        assert (await assert_exact(store))["support", int(T)]["answered_within_sl"] == 2
        last = await store.max_seq()
    async with opened(path, service_level_s=10.0) as store:
        stored = await assert_exact(store)
        assert stored["support", int(T)]["answered_within_sl"] == 1
        assert stored["support", int(T)]["seq"] == last + 1  # recounted
        assert stored["sales", int(T)]["seq"] < last  # unchanged: 1 s is within 10 s too
        last = await store.max_seq()
    async with opened(path, service_level_s=10.0) as store:
        assert await store.max_seq() == last
    async with opened(path, service_level_s=30) as store:
        assert (await assert_exact(store))["support", int(T)]["answered_within_sl"] == 3
    async with opened(path) as store:
        assert await store.service_level_s() == 30.0


def at_schema(path: Path, version: int) -> Path:
    """A new database file at schema ``version`` (the first migrations only)."""
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:version]:
            for statement in script:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {version}")
    return path


async def test_migration_5_counts_the_calls_stored_before_it(tmp_path: Path) -> None:
    """A database of schema 4 with calls and presence intervals: after the upgrade its
    calls are counted once (with seqs), its intervals have phone '' (not recorded)."""
    path = at_schema(tmp_path / "s.db", 4)
    with sqlite3.connect(path) as db:
        for r in (call(1), call(2, wait_s=30.0, transfers=1), abandoned(3), call(4, queue="")):
            db.execute(
                "INSERT INTO calls (interaction_id, media, direction, customer_number, "
                "customer_e164, queue, started_at, ended_at, answered_at, wait_s, talk_s, hold_s, "
                "outcome, agents, transfers, ended_while_disconnected) "
                "VALUES (?, 'call', 'inbound', '', '', ?, ?, ?, ?, ?, ?, ?, ?, '[]', ?, 0)",
                (
                    r.interaction_id,
                    r.queue,
                    r.started_at,
                    r.ended_at,
                    r.answered_at,
                    r.wait_s,
                    r.talk_s,
                    r.hold_s,
                    r.outcome,
                    r.transfers,
                ),
            )
        db.execute(
            "INSERT INTO agent_states (agent, presence, reason, started_at, ended_at) "
            "VALUES ('1001', 'not_ready', 'Lunch', 1.0, 2.0)"
        )
        before = db.execute("SELECT value FROM seq_counter").fetchone()[0]
    async with opened(path) as store:
        stored = await assert_exact(store)
        assert counts(stored["support", int(T)]) == (3, 2, 1, 1, 1)
        assert stored["support", int(T)]["seq"] > before
        states = await store.export(0, "agent-states")
        assert [(s["reason"], s["phone"]) for s in states] == [("Lunch", "")]


async def test_migration_6_splits_the_waits_of_the_counters_stored_before_it(
    tmp_path: Path,
) -> None:
    """A database of schema 5 with counted calls: after the upgrade the waits of answered
    and abandoned calls are there; rows whose new counters stay 0 keep their seq."""
    path = at_schema(tmp_path / "s.db", 5)
    async with opened(path) as store:  # the rows are written as schema 6 writes them ...
        for r in (call(1), call(2, wait_s=30.0), abandoned(3, wait_s=12.0), call(4, queue="")):
            await store.save_call(r)
        await store.save_call(call(5, queue="sales", outcome="ivr", answered_at=None))
    with sqlite3.connect(path) as db:  # ... then taken back to schema 5's counters
        db.execute(
            "UPDATE queue_intervals SET answered_wait_total_s = 0, abandoned_wait_total_s = 0"
        )
        db.execute("PRAGMA user_version = 5")
        for name in (
            "calls_queue_insert",
            "calls_queue_update_old",
            "calls_queue_update_new",
            "calls_queue_delete",
        ):
            db.execute(f"DROP TRIGGER {name}")
        for statement in MIGRATIONS[4]:  # schema 5's own triggers
            if statement.startswith("CREATE TRIGGER calls_queue_"):
                db.execute(statement)
        db.execute("ALTER TABLE queue_intervals DROP COLUMN answered_wait_total_s")
        db.execute("ALTER TABLE queue_intervals DROP COLUMN abandoned_wait_total_s")
        db.execute("DROP TABLE model_checkpoint")  # migration 7's
        seqs = dict(db.execute("SELECT queue, seq FROM queue_intervals").fetchall())
        before = db.execute("SELECT value FROM seq_counter").fetchone()[0]
    async with opened(path) as store:
        stored = await assert_exact(store)
        support, sales = stored["support", int(T)], stored["sales", int(T)]
        assert support["answered_wait_total_s"] == 10.0 + 30.0
        assert support["abandoned_wait_total_s"] == 12.0
        assert support["seq"] > before  # changed: the CRM takes it again
        assert sales["seq"] == seqs["sales"]  # an IVR call's wait is neither: unchanged
        await store.save_call(abandoned(6, wait_s=8.0))  # schema 6's triggers count it
        assert (await assert_exact(store))["support", int(T)]["abandoned_wait_total_s"] == 20.0


# --------------------------------------------------------------------------- state intervals


def state(start: float, end: float, phone: str, presence: str = "ready") -> AgentStateInterval:
    return AgentStateInterval("1001", presence, "", start, end, phone)


async def test_intervals_never_overlap_a_stored_one(tmp_path: Path) -> None:
    """After a restart the model resumes the open interval from the presence's start: the
    store cuts it to where the agent's stored intervals end, or drops it if nothing is left."""
    async with opened(tmp_path / "s.db") as store:
        await store.save_state_interval(state(1000.0, 1010.0, "idle"))
        await store.save_state_interval(state(1010.0, 1020.0, "talking"))
        await store.save_state_interval(state(1000.0, 1030.0, "idle"))  # restarted daemon
        await store.save_state_interval(state(1005.0, 1015.0, "ringing"))  # inside: dropped
        await store.save_state_interval(state(1030.0, 1040.0, "talking"))
        # Another agent is not affected by 1001's intervals.
        await store.save_state_interval(replace(state(1000.0, 1040.0, "idle"), agent="1002"))
        rows = await store.export(0, "agent-states")
    assert [(r["agent"], r["started_at"], r["ended_at"], r["phone"]) for r in rows] == [
        ("1001", 1000.0, 1010.0, "idle"),
        ("1001", 1010.0, 1020.0, "talking"),
        ("1001", 1020.0, 1030.0, "idle"),
        ("1001", 1030.0, 1040.0, "talking"),
        ("1002", 1000.0, 1040.0, "idle"),
    ]


async def test_save_once_skips_intervals_already_stored(tmp_path: Path) -> None:
    """The same intervals twice are stored once; a cut one is not stored again either."""
    items: list[tuple[Any, list[Any]]] = [
        (state(1000.0, 1010.0, "idle"), []),
        (state(1010.0, 1020.0, "talking"), []),
        (state(1000.0, 1030.0, "held"), []),  # overlaps: cut to 1020-1030
    ]
    async with opened(tmp_path / "s.db") as store:
        assert (await store.save_once(items))["agent_states"] == 3
        first = await store.export(0, "agent-states")
        again = await store.save_once(items)
        assert (again["agent_states"], again["agent_states_unchanged"]) == (0, 3)
        assert await store.export(0, "agent-states") == first
    assert [(r["started_at"], r["phone"]) for r in first] == [
        (1000.0, "idle"),
        (1010.0, "talking"),
        (1020.0, "held"),
    ]


def intervals_of(effects: Iterable[Any]) -> list[AgentStateInterval]:
    return [e.interval for e in effects if isinstance(e, RecordInterval)]


def test_talk_and_wrap_up_are_intervals_of_their_own() -> None:
    """inbound_answered with wrap-up: ringing, talking and wrap-up are three intervals
    whose lengths are the activity's ring, talk and wrap-up times."""
    m = model(wrapup_s=10.0)
    out = [e for _, e in feed(m, events("inbound_answered"))]
    activity = next(e.record for e in out if isinstance(e, EmitActivity))
    out += m.tick(activity.ended_at + 10.0)
    got = [
        (i.agent, i.presence, i.reason, i.phone, round(i.ended_at - i.started_at, 3))
        for i in intervals_of(out)
    ]
    assert got == [
        ("1001", "ready", "", "ringing", round(activity.ring_s, 3)),
        ("1001", "ready", "", "talking", round(activity.talk_s, 3)),
        ("1001", "wrap_up", "wrap-up", "idle", 10.0),
    ]
    assert m.agents["1001"].presence == Presence.READY


def test_a_restored_presence_starts_the_first_interval() -> None:
    """After a restart the open interval goes on from the stored presence's start."""
    m = model()
    first = next(e.timestamp for e in events("inbound_answered") if e.timestamp is not None)
    m.restore_presence("1001", "ready", "", first - 100.0)
    got = intervals_of(e for _, e in feed(m, events("inbound_answered")))
    assert [(i.agent, i.phone) for i in got] == [
        ("1001", "idle"),
        ("1001", "ringing"),
        ("1001", "talking"),
    ]
    assert got[0].started_at == first - 100.0
    assert all(a.ended_at == b.started_at for a, b in itertools.pairwise(got))


def test_nothing_is_recorded_before_the_presence_is_known() -> None:
    """blind_transfer's agents ring before any queue event names their presence (its
    session has no resync): their intervals start at the first queue event, not before
    as a "logged_out" the model merely assumed."""
    got = intervals_of(e for _, e in feed(model(), events("blind_transfer")))
    assert [(i.agent, i.presence, i.phone) for i in got] == [
        ("1001", "ready", "ringing"),
        ("1001", "ready", "talking"),
        ("1002", "ready", "ringing"),
        ("1002", "ready", "talking"),
    ]


# --------------------------------------------------------------------------- real captures


@cache
def config() -> Config:
    return load_config(CONFIG)


@cache
def durable_of(name: str) -> tuple[DurableEffect, ...]:
    durable: list[DurableEffect] = []
    for _ in replay(config(), CAPTURES / f"{name}.ami", durable=durable):
        pass
    return tuple(durable)


async def stored(name: str, path: Path) -> tuple[dict[tuple[str, int], Row], list[Row]]:
    """Replay ``name`` into a new store as ``ctid replay`` does: its counters and intervals."""
    async with Store.open(path, service_level_s=config().stats.service_level_s) as store:
        await store_replayed(store, list(durable_of(name)))
        return await assert_exact(store), await store.export(0, "agent-states")


def expected_counters(truth: Row) -> dict[str, defaultdict[str, float]]:
    """Per queue, what the truth file says: calls offered, answered, transferred, abandoned
    at least, talk and hold with their tolerance (TOL per agent's part and per hold)."""
    want: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    ambiguous: set[str] = set()
    for c in truth["customers"]:
        if not c.get("queue"):
            continue
        q = want[c["queue"]]
        q["offered"] += 1
        q["answered"] += bool(c.get("answered_by"))
        q["flagged"] += bool(c.get("abandoned"))
        q["transferred"] += bool(c.get("transferred"))
        holds = len(c.get("holds") or [])
        q["talk"] += sum(c.get("talk_s", {}).values())
        q["talk_tol"] += TOL * (len(c.get("talk_s", {})) + holds)
        q["hold"] += sum(c.get("hold_s", {}).values())
        q["hold_tol"] += TOL * (len(c.get("hold_s", {})) + holds)
        if c.get("answered_by") is None and c.get("e164") is None:
            ambiguous.add(c["queue"])
    # Which anonymous caller an agent answered is unknown (burst); only the answers are.
    for note in truth.get("notes", []):
        if m := ANON_ANSWERS.search(note):
            (queue,) = ambiguous  # they all waited in one queue
            for answer in ast.literal_eval(m.group(1)):
                want[queue]["answered"] += 1
                want[queue]["talk"] += float(answer["talk_s"])
                want[queue]["talk_tol"] += TOL
    return dict(want)


CAPTURE_NAMES = [p.stem for p in all_captures()]


@pytest.mark.parametrize("name", CAPTURE_NAMES)
async def test_queue_counters_of_a_capture_agree_with_its_truth(name: str, tmp_path: Path) -> None:
    """Offered, answered, abandoned and transferred exactly, talk and hold within the truth
    harness's tolerance; a capture without queue callers has no counters."""
    got, _ = await stored(name, tmp_path / "s.db")
    want = expected_counters(load_truth(CAPTURES / f"{name}.ami"))
    per_queue: dict[str, Row] = defaultdict(Counter)
    for (queue, _), row in got.items():
        per_queue[queue].update({k: row[k] for k in QUEUE_INTERVAL_COLS[2:]})
    assert sorted(per_queue) == sorted(want)
    for queue, w in want.items():
        g = per_queue[queue]
        assert (g["offered"], g["answered"], g["transferred"]) == (
            w["offered"],
            w["answered"],
            w["transferred"],
        ), queue
        # Every queue caller of the truth was answered or gave up.
        assert g["abandoned"] == w["offered"] - w["answered"] >= w["flagged"], queue
        assert abs(g["talk_total_s"] - w["talk"]) <= w["talk_tol"] + 1e-9, queue
        assert abs(g["hold_total_s"] - w["hold"]) <= w["hold_tol"] + 1e-9, queue


async def test_burst_counts_50_calls_36_answered_14_abandoned(tmp_path: Path) -> None:
    """The burst's 50 sales callers in one interval; stored twice, counted once."""
    path = tmp_path / "s.db"
    got, _ = await stored("burst", path)
    assert [counts(r)[:3] for r in got.values()] == [(50, 36, 14)]
    again, _ = await stored("burst", path)
    assert again == got


def talk_by_agent(
    effects: Sequence[DurableEffect], seen_from: dict[str, float]
) -> defaultdict[str, float]:
    """Each agent's time on the phone with a call by its activities: talk, hold and
    consultation, from when ctid saw the agent's state (``reconnect``: a call answered
    before ctid connected counts in the activity from its answer, backdated by the
    channel's age, and in the intervals from the connection)."""
    last = {e.record.id: e.record for e in effects if isinstance(e, EmitActivity)}
    talk: defaultdict[str, float] = defaultdict(float)
    for a in last.values():
        if a.answered_at is None:
            continue
        unseen = max(0.0, seen_from.get(a.agent, a.answered_at) - a.answered_at)
        talk[a.agent] += a.talk_s + a.hold_s + float(a.extra.get("consult_s", 0.0)) - unseen
    return talk


@pytest.mark.parametrize("name", CAPTURE_NAMES)
async def test_talking_intervals_of_a_capture_add_up_to_its_activities(
    name: str, tmp_path: Path
) -> None:
    """Stored intervals with phone talking or held sum to each agent's talk (held: hold) in
    its activities within TOL; no interval is empty and one agent's never overlap."""
    _, rows = await stored(name, tmp_path / "s.db")
    by_agent: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_agent[r["agent"]].append(r)
    for agent_rows in by_agent.values():
        agent_rows.sort(key=lambda r: r["started_at"])
        assert all(r["ended_at"] > r["started_at"] for r in agent_rows)
        assert all(a["ended_at"] <= b["started_at"] for a, b in itertools.pairwise(agent_rows))
        assert {r["phone"] for r in agent_rows} <= {"idle", "ringing", "dialing", "talking", "held"}
    seen_from = {agent: agent_rows[0]["started_at"] for agent, agent_rows in by_agent.items()}
    effects = durable_of(name)
    talk = talk_by_agent(effects, seen_from)
    hold: defaultdict[str, float] = defaultdict(float)
    for a in {e.record.id: e.record for e in effects if isinstance(e, EmitActivity)}.values():
        hold[a.agent] += a.hold_s
    on_phone: defaultdict[str, float] = defaultdict(float)
    held: defaultdict[str, float] = defaultdict(float)
    for r in rows:
        if r["phone"] in ("talking", "held"):
            on_phone[r["agent"]] += r["ended_at"] - r["started_at"]
        if r["phone"] == "held":
            held[r["agent"]] += r["ended_at"] - r["started_at"]
    # Not vacuous: whoever talked in an activity has talking intervals, and only they.
    assert {a for a, t in on_phone.items() if t} == {a for a, t in talk.items() if t}
    for agent in set(talk) | set(on_phone):
        assert abs(on_phone[agent] - talk[agent]) <= TOL, agent
        assert abs(held[agent] - hold[agent]) <= TOL, agent


async def test_the_daemon_stores_the_configured_service_level(tmp_path: Path) -> None:
    """``[stats] service_level_s`` reaches the store's stats_settings when ctid runs."""
    config = commands_config(tmp_path)

    def thirty(c: Config) -> Config:
        return dataclasses.replace(c, stats=dataclasses.replace(c.stats, service_level_s=30.0))

    async with command_rig(config, adjust=thirty):
        db = sqlite3.connect(config.store.path, timeout=30)
        try:
            assert db.execute("SELECT service_level_s FROM stats_settings").fetchall() == [(30.0,)]
        finally:
            db.close()
