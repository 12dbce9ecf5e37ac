"""SQLite store: calls, activities, agent states, queue counters, presences, the outbox, cursors.

One aiosqlite connection, one writer task. Every write is queued; the writer
commits whatever is queued (up to ``batch_max``, waiting at most
``batch_wait_s`` for more) in one transaction, and a write call returns only
once its batch is committed, so ``await store.save_activity(...)`` means durable.

Rows of ``calls``, ``activities``, ``agent_states`` and ``queue_intervals``
carry ``seq``, one sequence across the four tables, bumped by triggers on every
insert and every update. A CRM exports rows with ``seq`` above its cursor and
acknowledges.

``queue_intervals`` holds per-queue counters per ``QUEUE_INTERVAL_S`` interval.
ctid never writes it: triggers on ``calls`` recount the (queue, interval) of
every call inserted, changed or deleted, so the counters always equal what the
``calls`` rows add up to. Agent state intervals of one agent never overlap: one
that starts before the end of the agent's latest stored interval is cut to
start there (``save_state_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
import orjson

from ctid.config import StoreConfig
from ctid.core.records import (
    ActivityRecord,
    AgentStateInterval,
    CallbackRecord,
    CallRecord,
    ExportKind,
)
from ctid.errors import StoreError

SavedPresence = tuple[str, str, float]  # (presence, reason, since)
_R = TypeVar("_R", CallRecord, ActivityRecord)


def _seq_triggers(table: str) -> tuple[str, ...]:
    """Triggers giving every insert and update of ``table`` the next ``seq``.

    Part of migration 1: never change the text, add a migration instead.
    """
    # SQL here is built from this module's table and column names, never from input.
    seq = f"UPDATE {table} SET seq = (SELECT value FROM seq_counter) WHERE rowid = NEW.rowid;"  # noqa: S608
    bump = f"UPDATE seq_counter SET value = value + 1; {seq}"  # noqa: S608
    # The WHEN guard stops the trigger's own seq update from firing it again.
    return (
        f"CREATE TRIGGER {table}_seq_insert AFTER INSERT ON {table} BEGIN {bump} END",
        f"CREATE TRIGGER {table}_seq_update AFTER UPDATE ON {table} "
        f"WHEN NEW.seq IS OLD.seq BEGIN {bump} END",
    )


# The length of one ``queue_intervals`` row, in seconds: 15 minutes, the contact
# centre's reporting interval. Built into migration 5's triggers: a different length
# needs a new migration that recreates them and rebuilds the table.
QUEUE_INTERVAL_S: Final = 900
# The service level threshold until a ``[stats] service_level_s`` is written (seconds).
DEFAULT_SERVICE_LEVEL_S: Final = 20.0
# The columns of one (queue, interval) row as migration 5 made it: history, never change.
_QUEUE_INTERVAL_COLS_5: Final = (
    "queue",
    "interval_start",
    "offered",
    "answered",
    "abandoned",
    "answered_within_sl",
    "transferred",
    "wait_total_s",
    "wait_max_s",
    "talk_total_s",
    "hold_total_s",
)
# The counters of one (queue, interval) row, in table order (``export`` adds ``seq``):
# migration 6 added the waits of answered and of abandoned calls (average speed of
# answer, average time to abandon).
QUEUE_INTERVAL_COLS: Final = (
    *_QUEUE_INTERVAL_COLS_5,
    "answered_wait_total_s",
    "abandoned_wait_total_s",
)


# The SQL of migration 5 below is built from this module's constants and column
# names, never from input. Part of migration 5: never change what it builds, add a
# migration instead.


def _interval_of(started_at: str) -> str:
    """SQL: the start of the interval a call that started at ``started_at`` counts in."""
    return f"(CAST({started_at} AS INTEGER) / {QUEUE_INTERVAL_S}) * {QUEUE_INTERVAL_S}"


def _in_interval(start: str, call: str = "") -> str:
    """SQL: the call's ``started_at`` lies in the interval that begins at ``start``."""
    return f"{call}started_at >= {start} AND {call}started_at < {start} + {QUEUE_INTERVAL_S}"


# SQL: each counter of a group of ``calls`` rows.
_COUNTER_SQL: Final = {
    "offered": "count(*)",
    "answered": "count(*) FILTER (WHERE outcome = 'answered')",
    "abandoned": "count(*) FILTER (WHERE outcome = 'abandoned')",
    "answered_within_sl": "count(*) FILTER (WHERE outcome = 'answered' "
    "AND wait_s <= (SELECT service_level_s FROM stats_settings))",
    "transferred": "count(*) FILTER (WHERE transfers > 0)",
    "wait_total_s": "total(wait_s)",
    "wait_max_s": "coalesce(max(wait_s), 0.0)",
    "talk_total_s": "total(talk_s)",
    "hold_total_s": "total(hold_s)",
    "answered_wait_total_s": "total(wait_s) FILTER (WHERE outcome = 'answered')",
    "abandoned_wait_total_s": "total(wait_s) FILTER (WHERE outcome = 'abandoned')",
}


def _counters(cols: tuple[str, ...]) -> str:
    """SQL: the counters ``cols[2:]`` (after queue, interval_start) of a group of calls."""
    return ", ".join(_COUNTER_SQL[c] for c in cols[2:])


def _count_queue_interval(row: str, cols: tuple[str, ...]) -> str:
    """SQL upserting the counters of the (queue, interval) of ``row`` (``NEW`` or ``OLD``).

    The counters are recounted from ``calls`` rather than adjusted by the change,
    so they are exact whatever the change was (a call moving to another queue or
    interval, a second save of the same call, a maximum that went down) and can
    never count a call twice. The calls of one queue and interval are few and
    reached by the ``calls_queue`` index. A row whose counters come out unchanged
    is not written, so its ``seq`` only moves when the numbers do.
    """
    start = _interval_of(f"{row}.started_at")
    counters = cols[2:]
    changed = f"({', '.join(counters)}) IS NOT ({', '.join(f'excluded.{c}' for c in counters)})"
    return (
        f"INSERT INTO queue_intervals ({', '.join(cols)}) "  # noqa: S608
        f"SELECT {row}.queue, {start}, {_counters(cols)} "
        f"FROM calls WHERE queue = {row}.queue AND {_in_interval(start)} "
        "ON CONFLICT (queue, interval_start) DO UPDATE SET "
        f"{', '.join(f'{c} = excluded.{c}' for c in counters)} WHERE {changed};"
    )


# The columns of ``calls`` that queue_intervals counts: an update of others (seq) counts nothing.
_COUNTED = ("queue", "started_at", "outcome", "wait_s", "talk_s", "hold_s", "transfers")
_COUNTED_CHANGED = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _COUNTED)
# ``answered_within_sl`` of one queue_intervals row under the threshold NEW.service_level_s.
_WITHIN_SL = (
    "(SELECT count(*) FROM calls c WHERE c.queue = queue_intervals.queue "  # noqa: S608
    f"AND {_in_interval('queue_intervals.interval_start', 'c.')} "
    "AND c.outcome = 'answered' AND c.wait_s <= NEW.service_level_s)"
)
# A new threshold recounts answered_within_sl everywhere (rows that change get a seq).
_RECOUNT_WITHIN_SL = (
    "CREATE TRIGGER stats_settings_service_level AFTER UPDATE OF service_level_s "  # noqa: S608
    "ON stats_settings WHEN NEW.service_level_s IS NOT OLD.service_level_s "
    f"BEGIN UPDATE queue_intervals SET answered_within_sl = {_WITHIN_SL} "
    f"WHERE answered_within_sl IS NOT {_WITHIN_SL}; END"
)
# Calls stored before migration 5: counted once, as the triggers would have.
_COUNT_STORED_CALLS = (
    f"INSERT INTO queue_intervals ({', '.join(_QUEUE_INTERVAL_COLS_5)}) "  # noqa: S608
    f"SELECT queue, {_interval_of('started_at')} AS start, {_counters(_QUEUE_INTERVAL_COLS_5)} "
    "FROM calls WHERE queue <> '' GROUP BY queue, start"
)


def _queue_interval_triggers(cols: tuple[str, ...]) -> tuple[str, ...]:
    """The triggers on ``calls`` that keep the counters ``cols`` of queue_intervals."""
    return (
        f"""CREATE TRIGGER calls_queue_insert AFTER INSERT ON calls WHEN NEW.queue <> ''
            BEGIN {_count_queue_interval("NEW", cols)} END""",
        # Columns listed: the seq triggers' own update of calls does not fire these.
        # Old and new (queue, interval) are both recounted: a call may have moved.
        f"""CREATE TRIGGER calls_queue_update_old AFTER UPDATE OF {", ".join(_COUNTED)} ON calls
            WHEN OLD.queue <> '' AND ({_COUNTED_CHANGED})
            BEGIN {_count_queue_interval("OLD", cols)} END""",
        f"""CREATE TRIGGER calls_queue_update_new AFTER UPDATE OF {", ".join(_COUNTED)} ON calls
            WHEN NEW.queue <> '' AND ({_COUNTED_CHANGED})
            BEGIN {_count_queue_interval("NEW", cols)} END""",
        f"""CREATE TRIGGER calls_queue_delete AFTER DELETE ON calls WHEN OLD.queue <> ''
            BEGIN {_count_queue_interval("OLD", cols)} END""",
    )


_QUEUE_INTERVAL_TRIGGERS = (
    "calls_queue_insert",
    "calls_queue_update_old",
    "calls_queue_update_new",
    "calls_queue_delete",
)
# Migration 6's new counters of the rows stored before it (a changed row gets a seq).
_NEW_COUNTERS_6 = QUEUE_INTERVAL_COLS[len(_QUEUE_INTERVAL_COLS_5) :]
_RECOUNTED_WAITS = (
    f"(SELECT {_counters(('', '', *_NEW_COUNTERS_6))} FROM calls c "  # noqa: S608
    "WHERE c.queue = queue_intervals.queue "
    f"AND {_in_interval('queue_intervals.interval_start', 'c.')})"
)
_COUNT_STORED_WAITS = (
    f"UPDATE queue_intervals SET ({', '.join(_NEW_COUNTERS_6)}) = {_RECOUNTED_WAITS} "  # noqa: S608
    f"WHERE ({', '.join(_NEW_COUNTERS_6)}) IS NOT {_RECOUNTED_WAITS}"
)


# Migration n (1-based) is MIGRATIONS[n - 1]; PRAGMA user_version holds the last applied.
# Append only: an applied migration is history.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE seq_counter (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            value INTEGER NOT NULL) STRICT""",
        "INSERT INTO seq_counter (id, value) VALUES (1, 0)",
        """CREATE TABLE calls (
            pos INTEGER PRIMARY KEY,  -- insert order; an upsert keeps it
            interaction_id TEXT NOT NULL UNIQUE,
            media TEXT NOT NULL, direction TEXT NOT NULL,
            customer_number TEXT NOT NULL, customer_e164 TEXT NOT NULL, queue TEXT NOT NULL,
            started_at REAL NOT NULL, ended_at REAL NOT NULL, answered_at REAL,
            wait_s REAL NOT NULL, talk_s REAL NOT NULL, hold_s REAL NOT NULL,
            outcome TEXT NOT NULL,
            agents TEXT NOT NULL CHECK (json_valid(agents)),
            transfers INTEGER NOT NULL,
            ended_while_disconnected INTEGER NOT NULL CHECK (ended_while_disconnected IN (0, 1)),
            seq INTEGER UNIQUE) STRICT""",
        """CREATE TABLE activities (
            pos INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            agent TEXT NOT NULL, interaction_id TEXT NOT NULL,
            media TEXT NOT NULL, direction TEXT NOT NULL,
            customer_number TEXT NOT NULL, customer_e164 TEXT NOT NULL, queue TEXT NOT NULL,
            offered_at REAL NOT NULL, ended_at REAL NOT NULL, answered_at REAL,
            ring_s REAL NOT NULL, talk_s REAL NOT NULL, hold_s REAL NOT NULL,
            wrapup_s REAL NOT NULL, outcome TEXT NOT NULL, notes TEXT NOT NULL,
            wrapup_code TEXT NOT NULL, transfer_to TEXT NOT NULL, customer_record TEXT NOT NULL,
            ended_while_disconnected INTEGER NOT NULL CHECK (ended_while_disconnected IN (0, 1)),
            extra TEXT NOT NULL CHECK (json_valid(extra)),
            seq INTEGER UNIQUE) STRICT""",
        "CREATE INDEX activities_interaction ON activities (interaction_id)",
        "CREATE INDEX activities_agent ON activities (agent, offered_at)",
        """CREATE TABLE agent_states (
            id INTEGER PRIMARY KEY,
            agent TEXT NOT NULL, presence TEXT NOT NULL, reason TEXT NOT NULL,
            started_at REAL NOT NULL, ended_at REAL NOT NULL,
            seq INTEGER UNIQUE) STRICT""",
        "CREATE INDEX agent_states_agent ON agent_states (agent, started_at)",
        *_seq_triggers("calls"),
        *_seq_triggers("activities"),
        *_seq_triggers("agent_states"),
        """CREATE TABLE agent_presence (
            agent TEXT PRIMARY KEY,
            presence TEXT NOT NULL, reason TEXT NOT NULL, since REAL NOT NULL) STRICT""",
        # AUTOINCREMENT: after a purge empties the table a new row must not get an
        # old id, or a late outbox_mark_delivered would mark an undelivered message.
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            topic TEXT NOT NULL CHECK (topic <> '' AND topic NOT GLOB '*[+#]*'),
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
            retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
            created_at REAL NOT NULL, delivered_at REAL) STRICT""",
        "CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_at IS NULL",
        """CREATE TABLE sync_cursors (
            consumer TEXT PRIMARY KEY,
            seq INTEGER NOT NULL CHECK (seq >= 0), acked_at REAL NOT NULL) STRICT""",
        # An ack beyond the last seq would silently skip rows written later.
        """CREATE TRIGGER sync_cursors_bound_insert BEFORE INSERT ON sync_cursors
            WHEN NEW.seq > (SELECT value FROM seq_counter)
            BEGIN SELECT RAISE(ABORT, 'ack beyond the last seq'); END""",
        """CREATE TRIGGER sync_cursors_bound_update BEFORE UPDATE ON sync_cursors
            WHEN NEW.seq > (SELECT value FROM seq_counter)
            BEGIN SELECT RAISE(ABORT, 'ack beyond the last seq'); END""",
    ),
    (
        # Callback requests (seed 002): one row per request, upserted by id.
        """CREATE TABLE callbacks (
            pos INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            number TEXT NOT NULL, e164 TEXT NOT NULL, reason TEXT NOT NULL,
            queue TEXT NOT NULL, requested_at REAL NOT NULL, preferred_time TEXT NOT NULL,
            partner TEXT NOT NULL, source TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('open', 'assigned', 'done', 'returned')),
            agent TEXT NOT NULL, interaction_id TEXT NOT NULL) STRICT""",
        "CREATE INDEX callbacks_open ON callbacks (agent, pos) "
        "WHERE status IN ('open', 'assigned')",
    ),
    (
        # The contact directory (issue 4), used by ctid.adapters.directory. Entries are
        # keyed by the CRM's record id; numbers and addresses by their normalised value,
        # so a lookup is one primary-key range. No foreign keys: a contact may arrive
        # before its organization, and an import replaces an entry's numbers wholesale.
        """CREATE TABLE directory_entries (
            id TEXT PRIMARY KEY CHECK (id <> ''),
            kind TEXT NOT NULL CHECK (kind IN ('person', 'organization', 'contact')),
            name TEXT NOT NULL,
            name_key TEXT NOT NULL,  -- case-folded name: quick search and ordering
            organization TEXT NOT NULL,  -- the organization's id, contacts only
            digest BLOB NOT NULL,  -- content fingerprint: an unchanged re-import writes nothing
            updated_at REAL NOT NULL,
            CHECK ((kind = 'contact') = (organization <> ''))) STRICT, WITHOUT ROWID""",
        "CREATE INDEX directory_entries_name ON directory_entries (name_key)",
        "CREATE INDEX directory_entries_organization ON directory_entries (organization)",
        """CREATE TABLE directory_numbers (
            e164 TEXT NOT NULL,  -- E.164, or an internal extension's digits
            entry TEXT NOT NULL,
            type TEXT NOT NULL,  -- work, mobile, home, ...
            raw TEXT NOT NULL,  -- as the CRM wrote it
            PRIMARY KEY (e164, entry, type)) STRICT, WITHOUT ROWID""",
        "CREATE INDEX directory_numbers_entry ON directory_numbers (entry)",
        """CREATE TABLE directory_emails (
            email TEXT NOT NULL,  -- lower-cased
            entry TEXT NOT NULL,
            PRIMARY KEY (email, entry)) STRICT, WITHOUT ROWID""",
        "CREATE INDEX directory_emails_entry ON directory_emails (entry)",
        # The record an agent chose among several matches, by number or address.
        """CREATE TABLE directory_choices (
            key TEXT PRIMARY KEY,
            record_id TEXT NOT NULL,
            chosen_at REAL NOT NULL) STRICT""",
        # Bumped by every import that changed something: other processes' caches see it.
        """CREATE TABLE directory_meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL) STRICT""",
        "INSERT INTO directory_meta (id, generation) VALUES (1, 0)",
    ),
    (
        # The per-agent stream (issue 6): every message published on an agent's
        # topics with its seq, so ``replay {since}`` can re-send what a page missed.
        # Only the last ``commands.replay_window`` per agent are kept.
        """CREATE TABLE agent_messages (
            agent TEXT NOT NULL,
            seq INTEGER NOT NULL CHECK (seq > 0),
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (agent, seq)) STRICT, WITHOUT ROWID""",
        # The last seq given per agent: a restarted daemon goes on from it, so a
        # page never sees a seq twice (pruning agent_messages must not lower it).
        """CREATE TABLE agent_seq (
            agent TEXT PRIMARY KEY,
            seq INTEGER NOT NULL CHECK (seq >= 0)) STRICT""",
    ),
    (
        # Statistics (issue 6). State intervals also end when the phone changes, so
        # talking, ringing and idle time add up like presences ('' = older rows).
        "ALTER TABLE agent_states ADD COLUMN phone TEXT NOT NULL DEFAULT ''",
        # The service level threshold: a call answered within it counts in
        # answered_within_sl. Written from [stats] service_level_s (Store.open).
        """CREATE TABLE stats_settings (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            service_level_s REAL NOT NULL CHECK (service_level_s >= 0)) STRICT""",
        f"INSERT INTO stats_settings VALUES (1, {DEFAULT_SERVICE_LEVEL_S})",  # noqa: S608
        # Per queue and 15-minute interval (of the call's start): what the calls with
        # that queue add up to, kept by the triggers below, never written by ctid itself.
        """CREATE TABLE queue_intervals (
            queue TEXT NOT NULL CHECK (queue <> ''),
            interval_start INTEGER NOT NULL,  -- epoch seconds, a multiple of QUEUE_INTERVAL_S
            offered INTEGER NOT NULL,  -- calls whose (first) queue this is
            answered INTEGER NOT NULL,  -- outcome 'answered'
            abandoned INTEGER NOT NULL,  -- outcome 'abandoned'
            answered_within_sl INTEGER NOT NULL,  -- answered with wait_s <= service_level_s
            transferred INTEGER NOT NULL,  -- transfers > 0
            wait_total_s REAL NOT NULL, wait_max_s REAL NOT NULL,  -- wait_s of every call
            talk_total_s REAL NOT NULL, hold_total_s REAL NOT NULL,
            seq INTEGER UNIQUE,
            PRIMARY KEY (queue, interval_start)) STRICT""",
        "CREATE INDEX calls_queue ON calls (queue, started_at)",
        *_seq_triggers("queue_intervals"),
        *_queue_interval_triggers(_QUEUE_INTERVAL_COLS_5),
        _RECOUNT_WITHIN_SL,
        _COUNT_STORED_CALLS,
    ),
    (
        # The waits of answered and of abandoned calls apart (issue 6): wait_total_s
        # mixes them, and a CRM wants the average speed of answer and time to abandon.
        *(f"DROP TRIGGER {name}" for name in _QUEUE_INTERVAL_TRIGGERS),
        "ALTER TABLE queue_intervals ADD COLUMN answered_wait_total_s REAL NOT NULL DEFAULT 0.0",
        "ALTER TABLE queue_intervals ADD COLUMN abandoned_wait_total_s REAL NOT NULL DEFAULT 0.0",
        *_queue_interval_triggers(QUEUE_INTERVAL_COLS),
        _COUNT_STORED_WAITS,
    ),
    (
        # The model's checkpoint (ctid.checkpoint): the calls and agents a restarted
        # daemon takes up, so its resync can close the calls that ended meanwhile.
        """CREATE TABLE model_checkpoint (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            fingerprint TEXT NOT NULL,  -- ctid version and model shape that wrote it
            taken_at REAL NOT NULL,
            state BLOB NOT NULL) STRICT""",
    ),
)

_JSON_COLS = frozenset({"agents", "extra"})
_BOOL_COLS = frozenset({"ended_while_disconnected"})
_CALL_COLS = tuple(f.name for f in fields(CallRecord))
_ACTIVITY_COLS = tuple(f.name for f in fields(ActivityRecord))
_STATE_COLS = tuple(f.name for f in fields(AgentStateInterval))
_CALLBACK_COLS = tuple(f.name for f in fields(CallbackRecord))


def _upsert(table: str, cols: tuple[str, ...], key: str) -> str:
    # ON CONFLICT DO UPDATE (not INSERT OR REPLACE) keeps the row's pos: its insert order.
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c != key)
    marks = ", ".join("?" for _ in cols)
    insert = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"  # noqa: S608
    return f"{insert} ON CONFLICT ({key}) DO UPDATE SET {sets}"


_UPSERT_CALL = _upsert("calls", _CALL_COLS, "interaction_id")
_SAVE_CHECKPOINT = (
    "INSERT INTO model_checkpoint (id, fingerprint, taken_at, state) VALUES (1, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, "
    "taken_at = excluded.taken_at, state = excluded.state"
)
_UPSERT_CALLBACK = _upsert("callbacks", _CALLBACK_COLS, "id")
_UPSERT_ACTIVITY = _upsert("activities", _ACTIVITY_COLS, "id")
# Parameters: the interval's columns in _STATE_COLS order (agent ?1, started_at ?4,
# ended_at ?5). Its start is cut to the end of the agent's stored interval that began
# last before its end, if that one ends later: intervals never overlap (a restarted
# daemon resumes the open interval from the presence's start, not knowing the phone
# intervals stored since). Stored intervals do not overlap, so the one that began last
# also ends last: one index lookup. If nothing is left, nothing is inserted.
_INSERT_STATE = (
    f"INSERT INTO agent_states ({', '.join(_STATE_COLS)}) "  # noqa: S608
    "SELECT ?1, ?2, ?3, start, ?5, ?6 FROM (SELECT max(?4, coalesce((SELECT ended_at "
    "FROM agent_states WHERE agent = ?1 AND started_at < ?5 ORDER BY started_at DESC LIMIT 1), "
    "?4)) AS start) WHERE start < ?5"
)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (topic, payload, qos, retain, created_at) VALUES (?, ?, ?, ?, ?)"
)
_UPSERT_PRESENCE = (
    "INSERT INTO agent_presence (agent, presence, reason, since) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (agent) DO UPDATE SET "
    "presence = excluded.presence, reason = excluded.reason, since = excluded.since"
)
_EXPORT_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "calls": ("calls", _CALL_COLS),
    "activities": ("activities", _ACTIVITY_COLS),
    "agent-states": ("agent_states", ("id", *_STATE_COLS)),
    "queue-intervals": ("queue_intervals", QUEUE_INTERVAL_COLS),
}

# As _INSERT_STATE, and an interval already stored identically (a capture replayed
# twice) is not inserted again. (Cutting alone would skip it too, as it ends where
# the stored one does; the explicit check says what is meant.)
_INSERT_STATE_ONCE = (
    f"{_INSERT_STATE} AND NOT EXISTS (SELECT 1 FROM agent_states "  # noqa: S608
    "WHERE agent = ?1 AND presence = ?2 AND reason = ?3 AND started_at = ?4 AND ended_at = ?5 "
    "AND phone = ?6)"
)
# The rows of every interaction with a call or activity row written after a seq (reconcile).
_TOUCHED_CALLS = (
    "WITH touched AS (SELECT interaction_id FROM calls WHERE seq > ?1 "
    "UNION SELECT interaction_id FROM activities WHERE seq > ?1) "
    "SELECT * FROM calls WHERE interaction_id IN touched ORDER BY seq"
)
_TOUCHED_ACTIVITIES = (
    "WITH touched AS (SELECT interaction_id FROM calls WHERE seq > ?1 "
    "UNION SELECT interaction_id FROM activities WHERE seq > ?1) "
    "SELECT * FROM activities WHERE interaction_id IN touched ORDER BY seq"
)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish once the row it belongs to is committed."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """An outbox message not yet marked delivered."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class AgentMessage:
    """A message of an agent's stream as it was published: relative topic, JSON bytes."""

    agent: str
    seq: int
    topic: str
    payload: bytes
    at: float


@dataclass(frozen=True, slots=True)
class AgentMessages:
    """What ``agent_messages`` found after a seq: the messages, and what is gone or left."""

    messages: list[AgentMessage]
    last_seq: int  # the agent's last seq given (0: none yet)
    lost: int  # messages after ``since`` no longer kept (pruned): the page must reload
    more: bool  # more messages after the last one returned (ask again from it)


_INSERT_AGENT_MESSAGE = (
    "INSERT OR IGNORE INTO agent_messages (agent, seq, topic, payload, at) VALUES (?, ?, ?, ?, ?)"
)
_UPSERT_AGENT_SEQ = (
    "INSERT INTO agent_seq (agent, seq) VALUES (?, ?) "
    "ON CONFLICT (agent) DO UPDATE SET seq = max(seq, excluded.seq)"
)
_PRUNE_AGENT_MESSAGES = "DELETE FROM agent_messages WHERE agent = ? AND seq <= ?"


@dataclass(frozen=True, slots=True)
class PresenceRow:
    """An agent's current presence, as ``save_presence`` records it."""

    agent: str
    presence: str
    reason: str
    since: float


# What ``save_once`` writes: each with the outbox messages that go with it.
StoredRow = CallRecord | ActivityRecord | AgentStateInterval | CallbackRecord | PresenceRow


Statement = tuple[str, list[tuple[Any, ...]]]  # SQL and its parameter rows (executemany)


@dataclass(slots=True)
class _Write:
    statements: list[Statement]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _encode(record: CallRecord | ActivityRecord | AgentStateInterval) -> tuple[Any, ...]:
    values = ((f.name, getattr(record, f.name)) for f in fields(record))
    return tuple(
        orjson.dumps(v).decode() if n in _JSON_COLS else int(v) if n in _BOOL_COLS else v
        for n, v in values
    )


def _decode(row: sqlite3.Row, cols: Iterable[str]) -> dict[str, Any]:
    return {
        c: orjson.loads(row[c]) if c in _JSON_COLS else bool(row[c]) if c in _BOOL_COLS else row[c]
        for c in cols
    }


def _to_record(cls: type[_R], row: sqlite3.Row) -> _R:
    values = _decode(row, (f.name for f in fields(cls)))
    if "agents" in values:
        values["agents"] = tuple(values["agents"])
    return cls(**values)


class Store:
    """The SQLite store; open it with ``async with Store.open(config) as store``."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        batch_max: int,
        batch_wait_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._batch_max = max(1, batch_max)
        self._batch_wait_s = max(0.0, batch_wait_s)
        self._clock = clock
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        # Held by the writer for a whole transaction and by every read, so a read
        # on the shared connection never sees a batch that is not committed yet.
        self._lock = asyncio.Lock()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0  # committed write batches (tests check batching with it)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        config: StoreConfig | str | Path,
        *,
        batch_max: int = 500,
        batch_wait_s: float = 0.05,
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        service_level_s: float | None = None,
    ) -> AsyncIterator[Store]:
        """Open (creating and migrating as needed) the database; close it on exit.

        With a ``StoreConfig``, its path and batch settings are used. On exit the
        writer commits everything already queued before the connection closes.
        ``service_level_s`` (``[stats] service_level_s``) is stored as the
        service level threshold of ``queue_intervals`` (a new value recounts
        ``answered_within_sl``); ``None`` keeps the stored one (readers).
        """
        if isinstance(config, StoreConfig):
            path, batch_max, batch_wait_s = config.path, config.batch_max, config.batch_wait_s
        else:
            path = Path(config)
        if sqlite3.sqlite_version_info < (3, 37):  # STRICT tables
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old: ctid needs 3.37+")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open: {exc}") from exc
        # try/finally rather than `async with`, so that errors raised by the caller's
        # block are not mistaken for ours; either way the connection is always closed.
        try:
            db.row_factory = sqlite3.Row
            store = cls(db, batch_max=batch_max, batch_wait_s=batch_wait_s, clock=clock)
            try:
                await store._setup(busy_timeout_s, service_level_s)
            except sqlite3.Error as exc:
                raise StoreError(f"{path}: cannot prepare the database: {exc}") from exc
            store._writer = asyncio.create_task(store._write_loop(), name="ctid-store-writer")
            try:
                yield store
            finally:
                store._closed = True
                store._queue.put_nowait(None)  # the writer drains what is queued, then stops
                try:
                    await store._writer
                finally:
                    store._writer.cancel()
        finally:
            await db.close()

    async def _setup(self, busy_timeout_s: float, service_level_s: float | None) -> None:
        db = self._db
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("BEGIN IMMEDIATE")  # read the version under the write lock: one migrator
        try:
            async with db.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"database schema version {version} is newer than this ctid "
                    f"(knows up to {len(MIGRATIONS)}): upgrade ctid or use another store.path"
                )
            for script in MIGRATIONS[version:]:
                for statement in script:
                    await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            if service_level_s is not None:
                # Only a different value writes (and recounts): same config, no new seqs.
                await db.execute(
                    "UPDATE stats_settings SET service_level_s = ?1 "
                    "WHERE service_level_s IS NOT ?1",
                    (float(service_level_s),),
                )
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    # -- writing ------------------------------------------------------------------

    async def _submit(self, statements: list[Statement]) -> None:
        if self._closed or self._writer is None or self._writer.done():
            raise StoreError("the store is closed")
        write = _Write([(sql, rows) for sql, rows in statements if rows])
        if not write.statements:
            return
        self._queue.put_nowait(write)
        await write.done

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        batch: list[_Write] = []
        try:
            while not stopping:
                first = await self._queue.get()
                if first is None:
                    break
                batch = [first]
                deadline = loop.time() + self._batch_wait_s
                while len(batch) < self._batch_max:
                    try:
                        if self._queue.empty():
                            async with asyncio.timeout_at(deadline):
                                item = await self._queue.get()
                        else:
                            item = self._queue.get_nowait()
                    except TimeoutError:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                await self._commit_batch(batch)
        finally:
            # Cancelled: nobody may wait forever. The batch in flight may or may not
            # have committed; the queued writes certainly did not.
            for write in batch:
                _fail(write, StoreError("the store closed during the write; outcome unknown"))
            while not self._queue.empty():
                if (item := self._queue.get_nowait()) is not None:
                    _fail(item, StoreError("the store closed before the write"))

    async def _commit_batch(self, batch: list[_Write]) -> None:
        # Fast path: one executemany per distinct statement. Grouping reorders only
        # statements of different kinds, which touch different rows; rows of one kind
        # keep their queue order, so a later save of the same key still wins.
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for write in batch:
            for sql, rows in write.statements:
                grouped.setdefault(sql, []).extend(rows)
        try:
            await self._transaction([list(grouped.items())])
            errors: list[sqlite3.Error | None] = [None] * len(batch)
        except sqlite3.Error as exc:
            if len(batch) == 1:
                errors = [exc]
            else:
                # Redo the batch one savepoint per write: only the bad write fails.
                try:
                    errors = await self._transaction([w.statements for w in batch])
                except sqlite3.Error as exc2:
                    errors = [exc2] * len(batch)
        for write, error in zip(batch, errors, strict=True):
            if error is None:
                _succeed(write)
            else:
                _fail(write, error)

    async def _transaction(self, parts: list[list[Statement]]) -> list[sqlite3.Error | None]:
        """Run ``parts`` in one transaction; several parts each get a savepoint.

        One part raises its error; of several parts, each one's error is returned.
        """
        errors: list[sqlite3.Error | None] = []
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for part in parts:
                    if len(parts) > 1:
                        await self._db.execute("SAVEPOINT part")
                    try:
                        for sql, rows in part:
                            await self._db.executemany(sql, rows)
                        errors.append(None)
                    except sqlite3.Error as exc:
                        if len(parts) == 1:
                            raise
                        await self._db.execute("ROLLBACK TO part")
                        errors.append(exc)
                    if len(parts) > 1:
                        await self._db.execute("RELEASE part")
                await self._db.execute("COMMIT")
            except BaseException:
                await _rollback(self._db)
                raise
            self.commits += 1
        return errors

    def _outbox_rows(self, outbox: Sequence[OutboxMessage]) -> list[tuple[Any, ...]]:
        now = self._clock()
        return [(m.topic, m.payload, m.qos, int(m.retain), now) for m in outbox]

    async def save_call(
        self, call: CallRecord, outbox: Sequence[OutboxMessage] = (), *, only_new: bool = False
    ) -> bool:
        """Insert or replace the call and queue its messages, in one transaction.

        ``only_new``: not if a row of the interaction is stored already (then nothing
        is written and False returned). For a call ctid closes itself after a
        resync: a restarted daemon may take up a call from its checkpoint that the
        previous run closed and stored after the checkpoint was taken; what Asterisk
        told that run is better than what the resync can guess, and the CRM has it.
        (The caller is the daemon's only writer of calls: nothing comes in between.)
        """
        if only_new and (await self.stored_ids([call.interaction_id], []))[0]:
            return False
        await self._submit(
            [(_UPSERT_CALL, [_encode(call)]), (_INSERT_OUTBOX, self._outbox_rows(outbox))]
        )
        return True

    async def save_activity(
        self,
        activity: ActivityRecord,
        outbox: Sequence[OutboxMessage] = (),
        *,
        only_new: bool = False,
    ) -> bool:
        """Insert or replace the activity and queue its messages, in one transaction
        (``only_new``: as ``save_call``'s, by the activity's id)."""
        if only_new and (await self.stored_ids([], [activity.id]))[1]:
            return False
        await self._submit(
            [(_UPSERT_ACTIVITY, [_encode(activity)]), (_INSERT_OUTBOX, self._outbox_rows(outbox))]
        )
        return True

    async def save_checkpoint(self, fingerprint: str, taken_at: float, state: bytes) -> None:
        """Replace the model's checkpoint (``ctid.checkpoint``)."""
        await self._submit([(_SAVE_CHECKPOINT, [(fingerprint, taken_at, state)])])

    async def load_checkpoint(self) -> tuple[str, float, bytes] | None:
        """The model's last checkpoint: (fingerprint, taken_at, state), or None."""
        rows = await self._fetch("SELECT fingerprint, taken_at, state FROM model_checkpoint")
        return (str(rows[0][0]), float(rows[0][1]), bytes(rows[0][2])) if rows else None

    async def save_callback(self, callback: CallbackRecord) -> None:
        """Insert or update a callback request (by its id: a repeat is not a new request)."""
        await self._submit(
            [(_UPSERT_CALLBACK, [tuple(getattr(callback, c) for c in _CALLBACK_COLS)])]
        )

    async def open_callbacks(self, agent: str = "") -> list[CallbackRecord]:
        """The open callbacks of an inbox (``""`` = the general inbox), oldest first."""
        rows = await self._fetch(
            "SELECT * FROM callbacks WHERE agent = ? AND status IN ('open', 'assigned') "
            "ORDER BY pos",
            (agent,),
        )
        return [CallbackRecord(**{c: r[c] for c in _CALLBACK_COLS}) for r in rows]

    async def save_state_interval(self, interval: AgentStateInterval) -> None:
        """Append a closed agent state interval.

        Its start is cut to the end of the agent's latest stored interval when
        that ends later (nothing left: not stored), so one agent's intervals
        never overlap, even across a restart.
        """
        await self._submit([(_INSERT_STATE, [_encode(interval)])])

    async def save_presence(self, agent: str, presence: str, reason: str, since: float) -> None:
        """Record the agent's current presence and reason (replacing the previous one)."""
        await self._submit([(_UPSERT_PRESENCE, [(agent, presence, reason, since)])])

    async def log_agent_messages(self, messages: Sequence[AgentMessage], *, keep: int) -> None:
        """Append messages to their agents' streams, keeping the last ``keep`` per agent.

        Called before the messages are published, so whatever a page saw can be
        re-sent; the agent's last seq is kept apart and only ever grows.
        """
        if not messages:
            return
        last: dict[str, int] = {}
        for m in messages:
            last[m.agent] = max(last.get(m.agent, 0), m.seq)
        await self._submit(
            [
                (
                    _INSERT_AGENT_MESSAGE,
                    [(m.agent, m.seq, m.topic, m.payload, m.at) for m in messages],
                ),
                (_UPSERT_AGENT_SEQ, list(last.items())),
                (_PRUNE_AGENT_MESSAGES, [(a, seq - keep) for a, seq in last.items() if seq > keep]),
            ]
        )

    async def agent_seqs(self) -> dict[str, int]:
        """Every agent's last seq given (for a restarted daemon to go on from)."""
        rows = await self._fetch("SELECT agent, seq FROM agent_seq")
        return {r[0]: int(r[1]) for r in rows}

    async def agent_messages(self, agent: str, since: int, limit: int) -> AgentMessages:
        """The agent's messages with ``seq > since``, oldest first, at most ``limit``."""
        # One statement, one snapshot: the last seq and the rows agree even while
        # the publisher logs and prunes.
        rows = await self._fetch(
            "SELECT s.last, m.seq, m.topic, m.payload, m.at "
            "FROM (SELECT coalesce((SELECT seq FROM agent_seq WHERE agent = ?1), 0) AS last) s "
            "LEFT JOIN (SELECT seq, topic, payload, at FROM agent_messages "
            "WHERE agent = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3) m ORDER BY m.seq",
            (agent, since, limit + 1),
        )
        last_seq = int(rows[0][0])
        messages = [
            AgentMessage(agent, int(r[1]), r[2], bytes(r[3]), float(r[4]))
            for r in rows
            if r[1] is not None
        ]
        first = messages[0].seq if messages else last_seq + 1
        return AgentMessages(
            messages=messages[:limit],
            last_seq=last_seq,
            lost=max(0, first - (min(since, last_seq) + 1)),
            more=len(messages) > limit,
        )

    async def outbox_mark_delivered(self, ids: Iterable[int]) -> None:
        """Mark outbox messages as published (already delivered ones keep their time)."""
        now = self._clock()
        sql = "UPDATE outbox SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL"
        await self._submit([(sql, [(now, i) for i in ids])])

    async def outbox_purge(self, older_than_s: float) -> None:
        """Delete delivered messages delivered more than ``older_than_s`` ago."""
        sql = "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?"
        await self._submit([(sql, [(self._clock() - older_than_s,)])])

    async def ack(self, consumer: str, seq: int) -> None:
        """Set ``consumer``'s cursor: it has every exported row up to ``seq``.

        Use one consumer name per export kind: the sequence is shared, so one
        cursor for two kinds exported with limits would skip rows.
        """
        sql = (
            "INSERT INTO sync_cursors (consumer, seq, acked_at) VALUES (?, ?, ?) "
            "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq, acked_at = excluded.acked_at"
        )
        await self._submit([(sql, [(consumer, seq, self._clock())])])

    async def save_once(
        self, items: Sequence[tuple[StoredRow, Sequence[OutboxMessage]]]
    ) -> dict[str, int]:
        """Write ``items`` as the daemon's save_* calls would, but never twice.

        For a re-run of the same input (``ctid replay`` of a capture already
        stored): a call or activity whose stored row already equals its *last*
        version in ``items`` is skipped with all its versions and their outbox
        messages, so it keeps its ``seq`` and nothing is published again; any
        other is upserted version by version, each with its messages, as the
        daemon does. A state interval is inserted unless an identical one
        (agent, presence, reason, start, end, phone) is stored (and cut as
        ``save_state_interval`` cuts it). Callbacks and
        presences are upserts without ``seq``. One transaction; rows of one
        kind and the outbox keep the order of ``items``. Returns the number of
        rows written and skipped, by table.
        """
        last: dict[tuple[str, str], CallRecord | ActivityRecord] = {}
        for row, _ in items:
            if isinstance(row, CallRecord):
                last["calls", row.interaction_id] = row
            elif isinstance(row, ActivityRecord):
                last["activities", row.id] = row
        same = await self._stored_equal(last)
        counts: dict[str, int] = {}
        statements: list[Statement] = []

        def add(sql: str, values: tuple[Any, ...], counter: str) -> None:
            counts[counter] = counts.get(counter, 0) + 1
            if statements and statements[-1][0] == sql:
                statements[-1][1].append(values)
            else:
                statements.append((sql, [values]))

        for row, outbox in items:
            if isinstance(row, CallRecord | ActivityRecord):
                table = "calls" if isinstance(row, CallRecord) else "activities"
                key = row.interaction_id if isinstance(row, CallRecord) else row.id
                if (table, key) in same:
                    counts[f"{table}_unchanged"] = counts.get(f"{table}_unchanged", 0) + 1
                    continue
                add(_UPSERT_CALL if table == "calls" else _UPSERT_ACTIVITY, _encode(row), table)
                for message in self._outbox_rows(outbox):
                    add(_INSERT_OUTBOX, message, "outbox")
            elif isinstance(row, AgentStateInterval):
                add(_INSERT_STATE_ONCE, _encode(row), "agent_states_offered")
            elif isinstance(row, CallbackRecord):
                add(_UPSERT_CALLBACK, tuple(getattr(row, c) for c in _CALLBACK_COLS), "callbacks")
            else:
                add(_UPSERT_PRESENCE, (row.agent, row.presence, row.reason, row.since), "presences")
        before = await self.max_seq()
        await self._submit(statements)
        # Intervals are inserted or not by SQL; count what the sequence moved for them.
        if "agent_states_offered" in counts:
            rows = await self._fetch("SELECT count(*) FROM agent_states WHERE seq > ?", (before,))
            offered = counts.pop("agent_states_offered")
            counts["agent_states"] = int(rows[0][0])
            counts["agent_states_unchanged"] = offered - int(rows[0][0])
        return counts

    async def _stored_equal(
        self, last: dict[tuple[str, str], CallRecord | ActivityRecord]
    ) -> set[tuple[str, str]]:
        """The keys of ``last`` whose stored row equals the given record."""
        same: set[tuple[str, str]] = set()
        call_keys = [key for table, key in last if table == "calls"]
        if call_keys:
            for r in await self._fetch(
                "SELECT * FROM calls WHERE interaction_id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(call_keys).decode(),),
            ):
                if _to_record(CallRecord, r) == last["calls", r["interaction_id"]]:
                    same.add(("calls", r["interaction_id"]))
        activity_keys = [key for table, key in last if table == "activities"]
        if activity_keys:
            for r in await self._fetch(
                "SELECT * FROM activities WHERE id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(activity_keys).decode(),),
            ):
                if _to_record(ActivityRecord, r) == last["activities", r["id"]]:
                    same.add(("activities", r["id"]))
        return same

    # -- reading ------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            async with self._lock:
                return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc

    async def load_presences(self) -> dict[str, SavedPresence]:
        """Every agent's last recorded (presence, reason, since)."""
        rows = await self._fetch("SELECT agent, presence, reason, since FROM agent_presence")
        return {r["agent"]: (r["presence"], r["reason"], r["since"]) for r in rows}

    async def outbox_pending(self, limit: int = 1000) -> list[PendingMessage]:
        """Undelivered messages, oldest first."""
        rows = await self._fetch(
            "SELECT id, topic, payload, qos, retain FROM outbox "
            "WHERE delivered_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        )
        return [PendingMessage(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    async def stored_ids(
        self, interaction_ids: Iterable[str], activity_ids: Iterable[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """Which of these calls (by interaction id) and activities (by id) are stored."""

        async def stored(sql: str, ids: Iterable[str]) -> frozenset[str]:
            wanted = list(ids)
            if not wanted:  # no query for nothing
                return frozenset()
            rows = await self._fetch(sql, (orjson.dumps(wanted).decode(),))
            return frozenset(str(r[0]) for r in rows)

        return (
            await stored(
                "SELECT interaction_id FROM calls "
                "WHERE interaction_id IN (SELECT value FROM json_each(?))",
                interaction_ids,
            ),
            await stored(
                "SELECT id FROM activities WHERE id IN (SELECT value FROM json_each(?))",
                activity_ids,
            ),
        )

    async def get_call(self, interaction_id: str) -> CallRecord | None:
        """The call with this interaction id, if stored."""
        rows = await self._fetch("SELECT * FROM calls WHERE interaction_id = ?", (interaction_id,))
        return _to_record(CallRecord, rows[0]) if rows else None

    async def list_activities(
        self, interaction_id: str | None = None, agent: str | None = None
    ) -> list[ActivityRecord]:
        """Activities matching the given filters, in insert order."""
        rows = await self._fetch(
            "SELECT * FROM activities WHERE (?1 IS NULL OR interaction_id = ?1) "
            "AND (?2 IS NULL OR agent = ?2) ORDER BY pos",
            (interaction_id, agent),
        )
        return [_to_record(ActivityRecord, r) for r in rows]

    async def recent_interactions(self, agent: str, limit: int = 20) -> list[ActivityRecord]:
        """The agent's last ``limit`` interactions, newest offer first: of each, the
        agent's latest activity (an agent rung, then handed the call back by a
        transfer, has two in one interaction; it is one interaction to the agent)."""
        out: dict[str, ActivityRecord] = {}
        page = max(2 * limit, 50)
        offset = 0
        while len(out) < limit:
            rows = await self._fetch(
                "SELECT * FROM activities WHERE agent = ? "
                "ORDER BY offered_at DESC, pos DESC LIMIT ? OFFSET ?",
                (agent, page, offset),
            )
            for row in rows:
                record = _to_record(ActivityRecord, row)
                out.setdefault(record.interaction_id, record)
                if len(out) == limit:
                    break
            if len(rows) < page:
                break
            offset += page
        return list(out.values())

    async def export(
        self, since_seq: int, kind: ExportKind, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Rows of ``kind`` with ``seq > since_seq`` in seq order, as dicts with ``seq``."""
        if kind not in _EXPORT_TABLES:
            raise ValueError(f"unknown export kind {kind!r}")
        table, cols = _EXPORT_TABLES[kind]
        # The table name comes from the fixed map above, never from the caller.
        rows = await self._fetch(
            f"SELECT * FROM {table} WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
            (since_seq, -1 if limit is None else limit),
        )
        return [_decode(r, (*cols, "seq")) for r in rows]

    async def cursor(self, consumer: str) -> int:
        """The last seq ``consumer`` acknowledged (0 if never)."""
        rows = await self._fetch("SELECT seq FROM sync_cursors WHERE consumer = ?", (consumer,))
        return int(rows[0][0]) if rows else 0

    async def max_seq(self) -> int:
        """The last seq given to any row (0 when none)."""
        rows = await self._fetch("SELECT value FROM seq_counter")
        return int(rows[0][0])

    async def service_level_s(self) -> float:
        """The service level threshold ``queue_intervals.answered_within_sl`` counts with."""
        rows = await self._fetch("SELECT service_level_s FROM stats_settings")
        return float(rows[0][0])

    async def interaction_rows(
        self, since_seq: int = 0
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Calls and activities (as ``export`` gives them) of every interaction that
        has a call or activity row with ``seq > since_seq``: all of its rows, old ones too.
        """
        calls = await self._fetch(_TOUCHED_CALLS, (since_seq,))
        activities = await self._fetch(_TOUCHED_ACTIVITIES, (since_seq,))
        return (
            [_decode(r, (*_CALL_COLS, "seq")) for r in calls],
            [_decode(r, (*_ACTIVITY_COLS, "seq")) for r in activities],
        )


def _succeed(write: _Write) -> None:
    if not write.done.done():  # the caller may have been cancelled meanwhile
        write.done.set_result(None)


def _fail(write: _Write, exc: BaseException) -> None:
    if not write.done.done():
        error = StoreError(f"write failed: {exc}")
        error.__cause__ = exc
        write.done.set_exception(error)


async def _rollback(db: aiosqlite.Connection) -> None:
    # SQLite may already have rolled back (e.g. on SQLITE_FULL), or a second
    # cancellation may have closed the connection (aiosqlite's ValueError): both fine.
    with contextlib.suppress(sqlite3.Error, ValueError):
        await db.execute("ROLLBACK")
