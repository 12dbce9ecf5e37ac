"""The SQLite store on real files: migrations, durability, batching, seq and the outbox."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctid.adapters.store import MIGRATIONS, OutboxMessage, Store
from ctid.config import StoreConfig
from ctid.core.records import ActivityRecord, AgentStateInterval, CallbackRecord, CallRecord
from ctid.errors import StoreError


def call(n: int, **changes: object) -> CallRecord:
    record = CallRecord(
        interaction_id=f"call-{n}",
        media="call",
        direction="inbound",
        customer_number="0301234567",
        customer_e164="+49301234567",
        queue="support",
        started_at=1000.0 + n,
        ended_at=1100.0 + n,
        answered_at=1010.0 + n,
        wait_s=10.0,
        talk_s=90.0,
        agents=("alice", "bob"),
        transfers=1,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def activity(n: int, agent: str = "alice", **changes: object) -> ActivityRecord:
    record = ActivityRecord(
        id=f"call-{n}/{agent}/1",
        agent=agent,
        interaction_id=f"call-{n}",
        media="call",
        direction="inbound",
        customer_number="0301234567",
        customer_e164="+49301234567",
        queue="support",
        offered_at=1000.0 + n,
        ended_at=1100.0 + n,
        answered_at=1005.0 + n,
        ring_s=5.0,
        talk_s=95.0,
        notes="Müller called about the invoice",
        customer_record="crm-17",
        ended_while_disconnected=True,
        extra={"attached": {"CTI_ACCOUNT": "42"}, "tags": ["vip"]},
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def interval(n: int) -> AgentStateInterval:
    """The agent's n-th interval: 100 s each, one after the other (intervals never overlap)."""
    return AgentStateInterval("alice", "not_ready", "lunch", 2000.0 + 100 * n, 2100.0 + 100 * n)


def msg(
    topic: str = "ctid/v1/crm/activity", payload: bytes = b'{"type":"activity"}'
) -> OutboxMessage:
    return OutboxMessage(topic=topic, payload=payload)


def opened(path: Path, **options: Any) -> AbstractAsyncContextManager[Store]:
    """The store at ``path``; without batch_wait_s a lone save commits at once (fast tests)."""
    return Store.open(path, **{"batch_wait_s": 0.0, **options})


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


async def test_open_creates_dirs_applies_and_records_migrations(tmp_path: Path) -> None:
    """Opening a new path creates its folders, the tables and WAL, and records the version."""
    path = tmp_path / "a" / "b" / "ctid.sqlite3"
    async with Store.open(StoreConfig(path=path)) as store:
        assert await store.max_seq() == 0
    assert user_version(path) == len(MIGRATIONS)
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert {
        "calls",
        "activities",
        "agent_states",
        "agent_presence",
        "outbox",
        "sync_cursors",
    } <= tables
    assert mode == "wal"


async def test_reopen_keeps_data_and_never_reuses_seq(tmp_path: Path) -> None:
    """After a restart every row is still there and new rows continue the sequence."""
    path = tmp_path / "ctid.sqlite3"
    async with opened(path) as store:
        await store.save_call(call(1))
        await store.save_activity(activity(1))
        await store.save_presence("alice", "not_ready", "lunch", 1234.5)
        before = await store.max_seq()
    async with opened(path) as store:
        assert await store.get_call("call-1") == call(1)
        assert await store.list_activities() == [activity(1)]
        assert await store.load_presences() == {"alice": ("not_ready", "lunch", 1234.5)}
        await store.save_state_interval(interval(1))
        rows = await store.export(0, "agent-states")
        assert rows[0]["seq"] == before + 1
    assert user_version(path) == len(MIGRATIONS)


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer ctid (higher user_version) is refused, not touched."""
    path = tmp_path / "ctid.sqlite3"
    async with opened(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this ctid"):
        async with opened(path):
            pass
    assert user_version(path) == len(MIGRATIONS) + 1


async def test_records_round_trip_every_field(tmp_path: Path) -> None:
    """Calls and activities come back equal, field for field (JSON, booleans, None)."""
    async with opened(tmp_path / "s.db") as store:
        c = call(1, answered_at=None, ended_while_disconnected=True, agents=())
        a = activity(2, answered_at=None, extra={})
        await store.save_call(c)
        await store.save_activity(a)
        await store.save_activity(activity(3, agent="bob"))
        assert await store.get_call("call-1") == c
        assert await store.get_call("nope") is None
        assert await store.list_activities(interaction_id="call-2") == [a]
        assert await store.list_activities(agent="bob") == [activity(3, agent="bob")]
        assert await store.list_activities(interaction_id="call-3", agent="alice") == []


async def test_upsert_replaces_but_keeps_insert_order(tmp_path: Path) -> None:
    """A second save of the same id replaces the row without moving it in insert order."""
    async with opened(tmp_path / "s.db") as store:
        for n in (1, 2, 3):
            await store.save_activity(activity(n))
        await store.save_activity(activity(1, notes="updated"))
        got = await store.list_activities()
        assert [a.id for a in got] == ["call-1/alice/1", "call-2/alice/1", "call-3/alice/1"]
        assert got[0].notes == "updated"


async def test_recent_interactions_newest_first(tmp_path: Path) -> None:
    """An agent's recent interactions: latest offers first, limited, other agents left out."""
    async with opened(tmp_path / "s.db") as store:
        for n in (3, 1, 4, 2):
            await store.save_activity(activity(n))
        await store.save_activity(activity(9, agent="bob"))
        recent = await store.recent_interactions("alice", 3)
        assert [a.interaction_id for a in recent] == ["call-4", "call-3", "call-2"]


async def test_recent_interactions_lists_an_interaction_once(tmp_path: Path) -> None:
    """An agent with two parts in one interaction (rung, then handed it back by a
    transfer) sees it once, with the latest part; the limit counts interactions, also
    when the duplicates fill more than one page of rows."""
    async with opened(tmp_path / "s.db") as store:
        for n in range(1, 4):
            await store.save_activity(activity(n))
        second_part = activity(2, id="call-2/alice/7", offered_at=1010.0, outcome="transferred")
        await store.save_activity(second_part)
        recent = await store.recent_interactions("alice", 3)
        assert [(a.interaction_id, a.id) for a in recent] == [
            ("call-2", "call-2/alice/7"),
            ("call-3", "call-3/alice/1"),
            ("call-1", "call-1/alice/1"),
        ]
        for k in range(120):  # one busy interaction with many parts, newest of all
            await store.save_activity(activity(5, id=f"call-5/alice/{k}", offered_at=2000.0 + k))
        recent = await store.recent_interactions("alice", 2)
        assert [(a.interaction_id, a.id) for a in recent] == [
            ("call-5", "call-5/alice/119"),
            ("call-2", "call-2/alice/7"),
        ]


async def test_activity_and_outbox_commit_together(tmp_path: Path) -> None:
    """save_activity writes the row and its outbox messages; both are there once it returns."""
    async with opened(tmp_path / "s.db") as store:
        await store.save_activity(activity(1), [msg(), msg("ctid/v1/agents/alice/activity")])
        pending = await store.outbox_pending()
        assert [(p.topic, p.payload, p.qos, p.retain) for p in pending] == [
            ("ctid/v1/crm/activity", b'{"type":"activity"}', 1, False),
            ("ctid/v1/agents/alice/activity", b'{"type":"activity"}', 1, False),
        ]
        assert len(await store.list_activities()) == 1


async def test_failed_save_leaves_nothing_partial(tmp_path: Path) -> None:
    """A save whose outbox message is invalid (wildcard topic) fails whole: no row, no message."""
    async with opened(tmp_path / "s.db") as store:
        with pytest.raises(StoreError, match="CHECK constraint"):
            await store.save_activity(activity(1), [msg(), msg("ctid/v1/#")])
        with pytest.raises(StoreError):
            await store.save_call(call(1), [msg(), OutboxMessage("t", b"x", qos=3)])
        assert await store.list_activities() == []
        assert await store.get_call("call-1") is None
        assert await store.outbox_pending() == []
        assert await store.max_seq() == 0
        # The writer survived the failures.
        await store.save_activity(activity(2), [msg()])
        assert len(await store.outbox_pending()) == 1


async def test_bad_write_in_a_batch_fails_only_its_caller(tmp_path: Path) -> None:
    """When one write of a batch fails, the others of the same batch still commit."""
    async with opened(tmp_path / "s.db", batch_wait_s=0.2) as store:
        results = await asyncio.gather(
            store.save_activity(activity(1), [msg()]),
            store.save_activity(activity(2), [msg("bad/+/topic")]),
            store.save_activity(activity(3), [msg()]),
            return_exceptions=True,
        )
        assert results[0] is True
        assert isinstance(results[1], StoreError)
        assert results[2] is True
        assert [a.interaction_id for a in await store.list_activities()] == ["call-1", "call-3"]
        assert len(await store.outbox_pending()) == 2
        assert store.commits == 1


async def test_a_row_closed_after_a_resync_never_replaces_a_stored_one(tmp_path: Path) -> None:
    """only_new (a record ctid closed itself, ended_while_disconnected): written with its
    messages when the row is new, skipped whole when one is stored; the stored row, its
    seq and the outbox stay as they were."""
    async with opened(tmp_path / "s.db") as store:
        assert await store.save_call(call(1), [msg("ctid/v1/crm/calls")])
        assert await store.save_activity(activity(1), [msg()])
        before = (await store.export(0, "calls"), await store.export(0, "activities"))
        guessed_call = call(1, talk_s=999.0, ended_while_disconnected=True)
        guessed_activity = activity(1, talk_s=999.0, ended_while_disconnected=True)
        assert not await store.save_call(guessed_call, [msg("ctid/v1/crm/calls")], only_new=True)
        assert not await store.save_activity(guessed_activity, [msg()], only_new=True)
        assert (await store.export(0, "calls"), await store.export(0, "activities")) == before
        assert len(await store.outbox_pending()) == 2
        assert await store.save_call(call(2, ended_while_disconnected=True), only_new=True)
        assert await store.save_activity(
            activity(2, ended_while_disconnected=True), [msg()], only_new=True
        )
        assert (await store.get_call("call-2")) == call(2, ended_while_disconnected=True)
        assert len(await store.outbox_pending()) == 3


async def test_stored_ids_names_only_what_is_stored(tmp_path: Path) -> None:
    """Which of the given calls and activities have rows (a restart's question)."""
    async with opened(tmp_path / "s.db") as store:
        await store.save_call(call(1))
        await store.save_activity(activity(2))
        assert await store.stored_ids(["call-1", "call-2", "x"], ["call-2/alice/1", "y"]) == (
            frozenset({"call-1"}),
            frozenset({"call-2/alice/1"}),
        )
        assert await store.stored_ids([], []) == (frozenset(), frozenset())


async def test_the_model_checkpoint_is_replaced_and_read_back(tmp_path: Path) -> None:
    """One checkpoint at a time: the last saved is the one read (bytes kept exactly)."""
    async with opened(tmp_path / "s.db") as store:
        assert await store.load_checkpoint() is None
        await store.save_checkpoint("v/1", 10.0, b"\x00first")
        await store.save_checkpoint("v/2", 11.5, bytes(range(256)))
    async with opened(tmp_path / "s.db") as store:
        assert await store.load_checkpoint() == ("v/2", 11.5, bytes(range(256)))


async def test_concurrent_saves_are_batched(tmp_path: Path) -> None:
    """Many concurrent saves share few commits, and every one is durable when it returns."""
    path = tmp_path / "s.db"
    async with opened(path, batch_max=100, batch_wait_s=0.05) as store:
        await asyncio.gather(*(store.save_activity(activity(n), [msg()]) for n in range(250)))
        assert 3 <= store.commits <= 10
        assert len(await store.list_activities()) == 250
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 250


async def test_lone_save_commits_without_batch_wait_when_zero(tmp_path: Path) -> None:
    """With batch_wait_s=0 each idle save commits at once (no waiting for company)."""
    async with opened(tmp_path / "s.db", batch_wait_s=0.0) as store:
        for n in range(3):
            await store.save_call(call(n))
        assert store.commits == 3


async def test_close_drains_queued_writes(tmp_path: Path) -> None:
    """Writes queued when the store closes are still committed; writes after close are refused."""
    path = tmp_path / "s.db"
    async with opened(path, batch_wait_s=0.5) as store:
        tasks = [asyncio.create_task(store.save_call(call(n))) for n in range(20)]
        await asyncio.sleep(0)  # let them queue
    await asyncio.gather(*tasks)
    with pytest.raises(StoreError, match="closed"):
        await store.save_call(call(99))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM calls").fetchone()[0] == 20


async def test_errors_in_the_block_propagate_and_the_store_closes(tmp_path: Path) -> None:
    """An exception raised inside ``async with`` comes out unchanged and the store is closed."""
    with pytest.raises(sqlite3.IntegrityError):
        async with opened(tmp_path / "s.db") as store:
            raise sqlite3.IntegrityError("the caller's own")
    with pytest.raises(StoreError, match="closed"):
        await store.max_seq()


async def test_cancelled_caller_does_not_undo_or_break_the_write(tmp_path: Path) -> None:
    """A save whose caller is cancelled while waiting is still committed; the writer goes on."""
    async with opened(tmp_path / "s.db", batch_wait_s=0.2) as store:
        task = asyncio.create_task(store.save_call(call(1)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.save_call(call(2))
        assert await store.get_call("call-1") == call(1)


async def test_seq_increases_across_tables_and_bumps_on_update(tmp_path: Path) -> None:
    """One sequence spans calls, queue counters, activities and state intervals; an update
    takes a new seq (the call's queue interval too, as its counters change)."""
    async with opened(tmp_path / "s.db") as store:
        await store.save_call(call(1))
        await store.save_activity(activity(1))
        await store.save_state_interval(interval(1))
        await store.save_call(call(1, outcome="abandoned"))
        calls = await store.export(0, "calls")
        counters = await store.export(0, "queue-intervals")
        acts = await store.export(0, "activities")
        states = await store.export(0, "agent-states")
        # Both written by the one statement (a trigger): which takes its seq first is SQLite's.
        assert sorted([calls[0]["seq"], counters[0]["seq"]]) == [5, 6]
        assert calls[0]["outcome"] == "abandoned"
        assert counters[0]["abandoned"] == 1
        assert [r["seq"] for r in acts] == [3]
        assert [r["seq"] for r in states] == [4]
        assert await store.max_seq() == 6


async def test_export_since_cursor_round_trip(tmp_path: Path) -> None:
    """export → ack → more writes → export since the cursor: exactly the new and updated rows."""
    async with opened(tmp_path / "s.db") as store:
        for n in range(5):
            await store.save_activity(activity(n))
        first = await store.export(await store.cursor("crm"), "activities")
        assert [r["id"] for r in first] == [f"call-{n}/alice/1" for n in range(5)]
        assert first[0]["extra"] == {"attached": {"CTI_ACCOUNT": "42"}, "tags": ["vip"]}
        assert first[0]["ended_while_disconnected"] is True
        await store.ack("crm", first[-1]["seq"])
        assert await store.cursor("crm") == first[-1]["seq"]

        await store.save_activity(activity(5))
        await store.save_activity(activity(1, notes="corrected"))
        await store.save_call(call(7))  # another kind: not in this export
        second = await store.export(await store.cursor("crm"), "activities")
        assert [r["id"] for r in second] == ["call-5/alice/1", "call-1/alice/1"]
        assert second[1]["notes"] == "corrected"
        assert {r["seq"] for r in first}.isdisjoint(r["seq"] for r in second)

        page = await store.export(0, "activities", limit=2)
        assert [r["seq"] for r in page] == sorted(r["seq"] for r in page)
        assert len(page) == 2
        with pytest.raises(ValueError, match="unknown export kind"):
            await store.export(0, "bogus")  # type: ignore[arg-type]


async def test_ack_beyond_last_seq_is_refused(tmp_path: Path) -> None:
    """An ack past the last seq would skip future rows, so it is refused and the cursor stays."""
    async with opened(tmp_path / "s.db") as store:
        assert await store.cursor("crm") == 0
        await store.save_call(call(1))
        last = await store.max_seq()  # the call and its queue counters
        await store.ack("crm", last)
        with pytest.raises(StoreError, match="beyond the last seq"):
            await store.ack("crm", last + 1)
        assert await store.cursor("crm") == last


async def test_outbox_pending_delivered_and_purge(tmp_path: Path) -> None:
    """Pending lists undelivered messages oldest first; purge removes only old delivered ones."""
    now = [1000.0]
    async with opened(tmp_path / "s.db", clock=lambda: now[0]) as store:
        for n in range(4):
            await store.save_call(call(n), [msg(f"t/{n}", b"%d" % n)])
        ids = [p.id for p in await store.outbox_pending()]
        assert [p.topic for p in await store.outbox_pending(limit=2)] == ["t/0", "t/1"]
        await store.outbox_mark_delivered(ids[:2])
        assert [p.topic for p in await store.outbox_pending()] == ["t/2", "t/3"]
        now[0] = 2000.0
        await store.outbox_mark_delivered([ids[2]])
        await store.outbox_purge(older_than_s=500)
        assert [p.topic for p in await store.outbox_pending()] == ["t/3"]
        await store.save_call(call(9), [OutboxMessage("t/9", b"r", qos=0, retain=True)])
        newest = (await store.outbox_pending())[-1]
        assert newest.id > max(ids)  # purged ids are never reused
        assert (newest.qos, newest.retain) == (0, True)
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert [r[0] for r in db.execute("SELECT topic FROM outbox ORDER BY id")] == [
            "t/2",
            "t/3",
            "t/9",
        ]


async def test_presence_is_replaced_per_agent(tmp_path: Path) -> None:
    """save_presence keeps the last presence and reason per agent."""
    async with opened(tmp_path / "s.db") as store:
        await store.save_presence("alice", "not_ready", "lunch", 1.0)
        await store.save_presence("bob", "ready", "", 2.0)
        await store.save_presence("alice", "not_ready", "meeting", 3.0)
        assert await store.load_presences() == {
            "alice": ("not_ready", "meeting", 3.0),
            "bob": ("ready", "", 2.0),
        }


async def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    """A path whose folder cannot be created raises StoreError."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        async with Store.open(blocker / "ctid.sqlite3"):
            pass


# Operations: ("call" | "activity", key) saves a new version of that key; ("state", n) appends.
_ops = st.lists(
    st.tuples(st.sampled_from(["call", "activity", "state"]), st.integers(0, 4)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, waves=st.integers(1, 5), batch_max=st.integers(1, 8))
def test_random_interleavings_keep_seq_unique_and_rows_whole(
    ops: list[tuple[str, int]], waves: int, batch_max: int
) -> None:
    """Random concurrent saves and updates: no duplicate seq, no lost row, last write wins."""

    async def scenario(path: Path) -> None:
        async with opened(path, batch_max=batch_max, batch_wait_s=0.001) as store:
            size = -(-len(ops) // waves)
            for start in range(0, len(ops), size):
                saves: list[Coroutine[Any, Any, object]] = []
                for i, (kind, key) in enumerate(ops[start : start + size], start):
                    if kind == "call":
                        # No queue: its counters' seqs are tested on their own.
                        saves.append(store.save_call(call(key, transfers=i, queue="")))
                    elif kind == "activity":
                        saves.append(store.save_activity(activity(key, notes=str(i))))
                    else:
                        saves.append(store.save_state_interval(interval(i)))
                await asyncio.gather(*saves)  # queued in list order
            calls = await store.export(0, "calls")
            acts = await store.export(0, "activities")
            states = await store.export(0, "agent-states")
            assert await store.max_seq() == len(ops)  # one seq per save, updates included

        rows = calls + acts + states
        seqs = [r["seq"] for r in rows]
        assert len(seqs) == len(set(seqs))
        # Expected final state: the last write of each key, and its position in ops.
        last: dict[tuple[str, int], int] = {}
        for i, (kind, key) in enumerate(ops):
            last[(kind, key if kind != "state" else i)] = i
        assert len(rows) == len(last)
        assert {r["interaction_id"]: r["transfers"] for r in calls} == {
            f"call-{k}": i for (kind, k), i in last.items() if kind == "call"
        }
        assert {r["interaction_id"]: r["notes"] for r in acts} == {
            f"call-{k}": str(i) for (kind, k), i in last.items() if kind == "activity"
        }
        # Within a table, seq order is last-write order (across tables a batch may
        # interleave kinds in any order: only commit order is promised there).
        for table, version in (
            (calls, lambda r: r["transfers"]),
            (acts, lambda r: int(r["notes"])),
            (states, lambda r: int(r["started_at"] - 2000.0) // 100),
        ):
            by_seq = sorted(table, key=lambda r: r["seq"])
            assert [version(r) for r in by_seq] == sorted(version(r) for r in table)

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "s.db"))


async def test_callbacks_upsert_by_id_and_list_per_inbox(tmp_path: Path) -> None:
    """A repeated request (same id) is one callback; open ones list per inbox, oldest first."""
    first = CallbackRecord(
        id="ivr-1.1",
        number="+4917612345678",
        e164="+4917612345678",
        reason="queue-full",
        queue="support",
        requested_at=100.0,
        preferred_time="2025-06-02T14:30:00+02:00",
    )
    second = replace(first, id="ivr-2.2", number="anonymous", e164="", requested_at=200.0)
    mine = replace(first, id="web-3", agent="alice", source="web", requested_at=300.0)
    async with Store.open(tmp_path / "ctid.sqlite3") as store:
        for record in (first, second, first, mine):
            await store.save_callback(record)
        assert await store.open_callbacks() == [first, second]
        assert await store.open_callbacks("alice") == [mine]
        await store.save_callback(replace(first, status="done"))
        assert await store.open_callbacks() == [second]
    async with Store.open(tmp_path / "ctid.sqlite3") as store:
        assert await store.open_callbacks() == [second]
