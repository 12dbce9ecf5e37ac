"""The contact directory in SQLite: import, lookup with match kinds, quick search.

The directory has a database file of its own (``store.directory_file``,
``directory.sqlite3`` beside the store), with the store's schema (migration 3
made its tables; the store's tables stay empty there, as the directory's do in
the store's file). Its own file because a commit to a SQLite file makes every
other connection to it drop its page cache at its next read: the store's
writer commits all the time, and lookups would never find a page cached.

Connections: one aiosqlite connection for searches, choices and lookups while
the lookup cache is cold, one per import (``BEGIN IMMEDIATE`` per batch), so that
in WAL mode lookups never wait for an import and never see half of one; and one
plain ``sqlite3`` connection for lookups on the event loop's own thread
(``_InlineReader``). A lookup is one statement over a few B-tree pages: 0.02 ms
when they are in SQLite's page cache, where the hop to aiosqlite's thread and back
costs 0.03-0.25 ms (more on an idle VM, whose vCPUs wake slowly). It runs inline
only while the tables are known to be in that connection's page cache (warmed,
the cache big enough for the file, no commit by another connection since):
otherwise through the thread, while the cache is warmed again in the background,
so the loop never waits for a disk read.

Lookups are cached (LRU, keyed by the normalised number or address, negative
results too). An import in this process clears the cache at once; an import by
another process (``ctid directory import`` beside the daemon) bumps
``directory_meta.generation``, which lookups check at most every ``revalidate_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from ctid.adapters.store import MIGRATIONS, Store
from ctid.config import StoreConfig
from ctid.core.directory import (
    NO_ANI,
    NO_MATCH,
    BuiltRow,
    Deletion,
    DirectoryEntry,
    ImportReport,
    LruCache,
    Match,
    Record,
    RowError,
    build_entry,
    build_match,
    build_search,
    classify,
    looks_like_email,
    name_key,
    normalize_email,
    records_from_rows,
    row_id,
)
from ctid.core.numbers import NumberNormalizer
from ctid.directory_import import ImportFormat, SourceRow, open_source
from ctid.errors import StoreError

_CacheKey = tuple[str, str]  # ("number" | "email" | "id", normalised key)

# One statement per lookup (each statement is a hop to aiosqlite's thread, which is
# most of a lookup's cost): the candidates (part 0) and, when exactly one candidate
# is an organization, that organization's contacts (part 1), for ``classify`` to use
# if the match turns out to be ``organization``.
_SELECT_MATCH = """
    WITH cand AS MATERIALIZED (
        SELECT e.id, e.kind, e.name, e.organization, o.name AS org_name, e.name_key
        FROM {table} x
        JOIN directory_entries e ON e.id = x.entry
        LEFT JOIN directory_entries o ON o.id = e.organization
        WHERE x.{column} = ?1
        GROUP BY e.id
        ORDER BY e.name_key, e.id
        LIMIT ?2),
    org AS (
        SELECT min(id) AS id FROM cand WHERE kind = 'organization' HAVING count(*) = 1)
    SELECT 0, id, kind, name, organization, org_name,
           (SELECT record_id FROM directory_choices WHERE key = ?1), name_key
    FROM cand
    UNION ALL
    SELECT 1, id, kind, name, organization, '', NULL, name_key FROM (
        SELECT c.id, c.kind, c.name, c.organization, c.name_key FROM directory_entries c
        WHERE c.organization = (SELECT id FROM org)
        ORDER BY c.name_key, c.id
        LIMIT ?3)
    ORDER BY 1, 8, 2"""
_MATCH = {
    "number": _SELECT_MATCH.format(table="directory_numbers", column="e164"),
    "email": _SELECT_MATCH.format(table="directory_emails", column="email"),
    # A record id an IVR gave: the record itself as the only candidate, so an
    # organization comes with its contacts and a contact with its organization.
    "id": _SELECT_MATCH.format(table="(SELECT ?1 AS entry)", column="entry"),
}
_UPSERT_ENTRY = (
    "INSERT INTO directory_entries "
    "(id, kind, name, name_key, organization, digest, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, name = excluded.name, "
    "name_key = excluded.name_key, organization = excluded.organization, "
    "digest = excluded.digest, updated_at = excluded.updated_at"
)
_INSERT_NUMBER = "INSERT INTO directory_numbers (e164, entry, type, raw) VALUES (?, ?, ?, ?)"
_INSERT_EMAIL = "INSERT INTO directory_emails (email, entry) VALUES (?, ?)"
_DELETE_NUMBERS = "DELETE FROM directory_numbers WHERE entry = ?"
_DELETE_EMAILS = "DELETE FROM directory_emails WHERE entry = ?"
_DELETE_ENTRY = "DELETE FROM directory_entries WHERE id = ?"
_EXISTING = "SELECT id, digest FROM directory_entries WHERE id IN (SELECT value FROM json_each(?))"
_BUMP = "UPDATE directory_meta SET generation = generation + 1"


# What warm_up reads: each table's own b-tree (NOT INDEXED: the primary key lookups
# search, not a smaller secondary index that count(*) would prefer), and the index
# an organization's contacts are found through.
_WARM_UP = (
    "SELECT count(*) FROM directory_numbers NOT INDEXED",
    "SELECT count(*) FROM directory_emails NOT INDEXED",
    "SELECT count(*) FROM directory_entries NOT INDEXED",
    "SELECT count(*) FROM directory_entries INDEXED BY directory_entries_organization",
    "SELECT count(*) FROM directory_choices",
)
_WARM_SET = (  # the b-trees _WARM_UP reads
    "directory_numbers",
    "directory_emails",
    "directory_entries",
    "directory_entries_organization",
    "directory_choices",
)


class _InlineReader:
    """Reads on the event loop's thread, only while SQLite's page cache holds the file.

    ``fetch`` answers None (the caller goes through aiosqlite's thread) unless the
    connection was warmed, the whole file fits its page cache, and no other
    connection committed since (``PRAGMA data_version``; such a commit makes SQLite
    drop this connection's page cache at its next read). ``rewarm`` reads the
    tables again in a worker thread; the lock keeps the loop off the connection
    meanwhile (the loop never blocks on it: ``fetch`` only tries it).
    """

    def __init__(self, path: Path, busy_timeout_s: float, cache_mib: int) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0.0)
        # No busy wait on the loop's thread: a reader in WAL mode is busy only in rare
        # moments (another connection recovering or resetting the WAL); the thread waits.
        self._db.execute("PRAGMA busy_timeout = 0")
        self._busy_ms = int(busy_timeout_s * 1000)  # the warm-up, in its thread, may wait
        self._db.execute(f"PRAGMA cache_size = {-1024 * max(1, int(cache_mib))}")  # KiB
        self._db.execute("PRAGMA query_only = 1")
        self._cache_bytes = max(1, int(cache_mib)) * 1024 * 1024
        self._lock = threading.Lock()
        self._warm = False
        self._version = -1  # data_version when last warmed
        self._closed = False
        self._enabled = False  # set by the first warm_up: a one-shot CLI lookup never warms
        self._task: asyncio.Task[None] | None = None
        self.warmups = 0  # completed warm-ups (tests and the benchmark read it)
        self.too_big = False  # the file does not fit the page cache: never inline
        self.error = ""  # why the last warm-up failed

    @property
    def warm(self) -> bool:
        return self._warm

    def fetch(self, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """The rows, read right here; None when that could mean waiting for the disk."""
        if not self._warm or not self._lock.acquire(blocking=False):
            return None
        try:
            (version,) = self._db.execute("PRAGMA data_version").fetchone()
            if version != self._version:
                self._warm = False
                return None
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None
            raise
        finally:
            self._lock.release()

    def rewarm(self) -> None:
        """Warm the page cache again in the background (if not already under way)."""
        if not self._enabled or self._closed or self.too_big:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._warm_loop(), name="ctid.directory.warm_up"
            )

    async def warm_up(self) -> None:
        """Read the file's tables into the page cache (in a worker thread); wait for it.

        The first call enables inline reads for good: from then on a cold cache is
        warmed again by itself (``rewarm``). Cancelling the wait does not stop the
        warm-up; ``close`` does.
        """
        self._enabled = True
        self.rewarm()
        if self._task is not None:
            await asyncio.shield(self._task)
        if self.error:
            raise StoreError(f"directory warm-up failed: {self.error}")

    async def _warm_loop(self, retry_s: float = 5.0) -> None:
        while not self._closed:
            try:
                done = await asyncio.to_thread(self._warm_up)
            except sqlite3.Error as exc:
                # Interrupted by close(), or the file is unreadable: lookups stay on the
                # thread (whose reads report the error, if it lasts).
                self.error = "" if self._closed else str(exc)
                return
            if done or self.too_big:
                return
            await asyncio.sleep(retry_s)  # an import is committing batch after batch

    def _warm_up(self) -> bool:
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            try:
                return self._warm_up_locked()
            finally:
                self._db.execute("PRAGMA busy_timeout = 0")

    def _warm_up_locked(self) -> bool:
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if self._warm_bytes() > self._cache_bytes * 0.9:
            self.too_big = True
            return False
        for sql in _WARM_UP:
            self._db.execute(sql).fetchall()
        (after,) = self._db.execute("PRAGMA data_version").fetchone()
        if after != version:
            return False  # a commit came in between: part of what was read is gone
        self._version = version
        self._warm = True
        self.warmups += 1
        return True

    def _warm_bytes(self) -> int:
        """The size of what ``_WARM_UP`` reads (the whole file, without SQLite's dbstat)."""
        try:
            (size,) = self._db.execute(
                "SELECT sum(pgsize) FROM dbstat('main', 1) WHERE name IN (?, ?, ?, ?, ?)",
                _WARM_SET,
            ).fetchone()
            return int(size or 0)
        except sqlite3.OperationalError:  # built without SQLITE_ENABLE_DBSTAT_VTAB
            (pages,) = self._db.execute("PRAGMA page_count").fetchone()
            (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
            return int(pages) * int(page_size)

    async def close(self) -> None:
        self._closed = True
        self._warm = False
        if self._task is not None:
            if not self._task.done():
                self._db.interrupt()  # stops a warm-up's scan in its thread
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True, slots=True)
class CacheStats:
    size: int
    hits: int
    misses: int


class Directory:
    """The contact directory; open it with ``async with Directory.open(config) as d``."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        *,
        normalizer: NumberNormalizer,
        cache_size: int,
        max_records: int,
        max_contacts: int,
        revalidate_s: float,
        busy_timeout_s: float,
        cache_mib: int,
        clock: Callable[[], float],
        inline: _InlineReader,
    ) -> None:
        self._db = db
        self._path = path
        self._normalizer = normalizer
        self._cache: LruCache[_CacheKey, Match] = LruCache(cache_size)
        self._max_records = max_records
        self._max_contacts = max_contacts
        self._revalidate_s = revalidate_s
        self._busy_timeout_s = busy_timeout_s
        self._cache_mib = cache_mib
        self._clock = clock
        self._generation = -1  # directory_meta.generation when last checked
        self._epoch = 0  # bumped whenever the cache is cleared
        self._checked_at = float("-inf")
        self._import_lock = asyncio.Lock()
        self._inline = inline

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        config: StoreConfig | str | Path,
        *,
        normalizer: NumberNormalizer | None = None,
        cache_size: int = 50_000,
        max_records: int = 50,
        max_contacts: int = 50,
        revalidate_s: float = 1.0,
        busy_timeout_s: float = 5.0,
        cache_mib: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> AsyncIterator[Directory]:
        """Open the directory (creating and migrating its file as needed).

        ``config``: the store's config (the directory is ``config.directory_file``)
        or the directory file's path. ``max_records`` bounds the candidates of one
        match, ``max_contacts`` the contacts listed with an organization;
        ``revalidate_s`` is how stale the cache may be after an import by another
        process. ``cache_mib`` is SQLite's page cache of the inline lookup
        connection (used only as pages are read): a million entries take ~330 MB on
        disk, the tables lookups read ~200 MB of it; a file bigger than the cache
        is looked up through the thread only. Measured here, the OS page cache does
        not keep the file (the VM reclaims file pages), so a read that misses
        SQLite's own cache may wait for the disk. Call ``warm_up`` to start inline
        lookups (the daemon does, in the background).
        """
        if max_records < 1 or max_contacts < 0 or cache_size < 0 or revalidate_s < 0:
            raise ValueError("max_records >= 1; max_contacts, cache_size, revalidate_s >= 0")
        path = config.directory_file if isinstance(config, StoreConfig) else Path(config)
        await _migrate(path, busy_timeout_s)
        # Searches, choices and cold lookups: a smaller cache is enough for them.
        async with _connect(path, busy_timeout_s, min(cache_mib, 64)) as db:
            try:
                inline = await asyncio.to_thread(_InlineReader, path, busy_timeout_s, cache_mib)
            except sqlite3.Error as exc:
                raise StoreError(f"{path}: cannot open: {exc}") from exc
            try:
                yield cls(
                    db,
                    path,
                    normalizer=normalizer or NumberNormalizer(),
                    cache_size=cache_size,
                    max_records=max_records,
                    max_contacts=max_contacts,
                    revalidate_s=revalidate_s,
                    busy_timeout_s=busy_timeout_s,
                    cache_mib=cache_mib,
                    clock=clock,
                    inline=inline,
                )
            finally:
                await inline.close()

    # -- lookup -------------------------------------------------------------------

    def _key(self, text: str) -> _CacheKey | None:
        """The cache key for a number or an address (None: no ANI)."""
        if looks_like_email(text):
            address = normalize_email(text)
            return ("email", address) if address else None
        number = self._normalizer.normalize(text)
        return None if number.kind == "no_ani" else ("number", number.e164)

    async def lookup(self, text: str) -> Match:
        """Look up a number or an e-mail address (whichever ``text`` is)."""
        return await self._lookup(self._key(text))

    async def lookup_number(self, raw: str) -> Match:
        """Look up a calling number as the PBX gave it (``no_ani`` if it has none)."""
        number = self._normalizer.normalize(raw)
        return await self._lookup(None if number.kind == "no_ani" else ("number", number.e164))

    async def lookup_email(self, address: str) -> Match:
        """Look up the address of a chat or e-mail (``no_ani`` if it is not an address)."""
        key = normalize_email(address)
        return await self._lookup(("email", key) if key else None)

    async def lookup_id(self, record_id: str) -> Match:
        """The match for a CRM record id (an IVR identified the caller): ``single`` for a
        person, ``org_contact`` for a contact, ``organization`` with its contacts;
        ``none`` for an id the directory does not hold."""
        record_id = record_id.strip()
        return await self._lookup(("id", record_id)) if record_id else NO_MATCH

    def cached(self, text: str) -> Match | None:
        """What the cache knows about a number or address, without waiting (None: unknown).

        For the first step of a pop: publish at once with this, then the lookup's result.
        """
        key = self._key(text)
        if key is None:
            return NO_ANI
        return self._cache.peek(key)

    @property
    def cache_stats(self) -> CacheStats:
        return CacheStats(len(self._cache), self._cache.hits, self._cache.misses)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._epoch += 1

    async def _lookup(self, key: _CacheKey | None) -> Match:
        if key is None:
            return NO_ANI
        await self.revalidate()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        epoch = self._epoch
        rows = await self._read(_MATCH[key[0]], (key[1], self._max_records, self._max_contacts))
        candidates = records_from_rows(r[1:7] for r in rows if r[0] == 0)
        chosen = (rows[0][6] or "") if rows else ""
        kind, _ = classify(candidates)
        contacts: Sequence[Record] = ()
        if kind == "organization":
            contacts = [Record(r[1], r[2], r[3]) for r in rows if r[0] == 1]
        match = build_match(candidates, contacts, chosen=chosen)
        if epoch == self._epoch:  # no import cleared the cache meanwhile
            self._cache.put(key, match)
        return match

    @property
    def epoch(self) -> int:
        """Bumped whenever the cache is cleared (an import here or by another process)."""
        return self._epoch

    async def revalidate(self) -> None:
        """Clear the cache if another process imported since (checked every ``revalidate_s``)."""
        now = self._clock()
        if now - self._checked_at < self._revalidate_s:
            return
        self._checked_at = now
        rows = await self._read("SELECT generation FROM directory_meta", ())
        generation = int(rows[0][0])
        if generation != self._generation:
            if self._generation != -1:  # the first check finds what is there, no change
                self.clear_cache()
            self._generation = generation

    async def remember_choice(self, text: str, record_id: str) -> None:
        """Remember that an agent chose ``record_id`` for this number or address.

        The next match for it offers that record first (if it is still a candidate).
        """
        key = self._key(text)
        if key is None or not record_id:
            return
        await self._execute(
            "INSERT INTO directory_choices (key, record_id, chosen_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET record_id = excluded.record_id, "
            "chosen_at = excluded.chosen_at",
            (key[1], record_id, time.time()),
        )
        self._cache.discard(key)

    async def remembered(self, text: str) -> str:
        """The record an agent last chose for this number or address ("" if none)."""
        key = self._key(text)
        if key is None:
            return ""
        rows = await self._fetch("SELECT record_id FROM directory_choices WHERE key = ?", (key[1],))
        return str(rows[0][0]) if rows else ""

    async def warm_up(self) -> None:
        """Read the tables into the inline connection's page cache; lookups then run inline.

        In a worker thread: the loop goes on (lookups meanwhile go through the
        thread). Retries while another connection keeps committing (an import).
        """
        await self._inline.warm_up()

    @property
    def inline(self) -> bool:
        """Whether lookups run on the loop's thread right now (the cache is warm)."""
        return self._inline.warm

    @property
    def warmups(self) -> int:
        """How often the inline connection's page cache was warmed (first time and again)."""
        return self._inline.warmups

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """A lookup's statement: inline while the page cache is warm, else through the thread."""
        try:
            rows = self._inline.fetch(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"directory read failed: {exc}") from exc
        if rows is not None:
            return rows
        self._inline.rewarm()  # cold (a commit, or never warmed): warm it for the next ones
        return await self._fetch(sql, params)

    # -- quick search -------------------------------------------------------------

    async def search(self, field: str, op: str, value: str, *, limit: int = 20) -> list[Record]:
        """Quick search (seed 003): ``field`` name/number/email/id, ``op`` ``=`` or ``like``.

        Raises ``SearchQueryError`` for an unknown field or operator or an unusable value.
        """
        query = build_search(field, op, value, limit=limit, normalizer=self._normalizer)
        return records_from_rows(await self._fetch(query.sql, query.params))

    async def counts(self) -> dict[str, int]:
        """How many entries (by kind), numbers and addresses the directory holds."""
        rows = await self._fetch(
            "SELECT kind, count(*) FROM directory_entries GROUP BY kind "
            "UNION ALL SELECT 'numbers', count(*) FROM directory_numbers "
            "UNION ALL SELECT 'emails', count(*) FROM directory_emails"
        )
        out = {"person": 0, "organization": 0, "contact": 0}
        out.update({str(r[0]): int(r[1]) for r in rows})
        return out

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"directory read failed: {exc}") from exc

    async def _execute(self, sql: str, params: Sequence[Any]) -> None:
        try:
            await self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"directory write failed: {exc}") from exc

    # -- import -------------------------------------------------------------------

    async def import_file(
        self,
        path: Path,
        *,
        fmt: ImportFormat | None = None,
        delete_missing: bool = False,
        batch_size: int = 2000,
    ) -> ImportReport:
        """Import a CSV or JSON file (see ``ctid.directory_import``).

        Raises ``ImportFileError`` if the file as a whole is unusable; row problems are
        in the report.
        """
        source = await asyncio.to_thread(open_source, path, fmt)
        report = await self.import_rows(
            source.rows, delete_missing=delete_missing, batch_size=batch_size
        )
        report.notes[:0] = source.notes
        return report

    async def import_rows(
        self,
        rows: Iterable[SourceRow],
        *,
        delete_missing: bool = False,
        batch_size: int = 2000,
        normalizer: NumberNormalizer | None = None,
    ) -> ImportReport:
        """Upsert rows by CRM id, one transaction per batch of ``batch_size`` rows.

        Unchanged entries are not written, so a re-import changes nothing. With
        ``delete_missing`` (a full sync), entries whose id no row named are deleted at
        the end; rows with errors still count as naming their id. A full sync deletes
        nothing (the readable rows still import; a note says why) when the source has
        no row at all, or a row whose id is unknown: unreadable, or without a usable id.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        # Its own normaliser: a million imported numbers must not evict the pops' cache.
        normalizer = normalizer or NumberNormalizer(
            default_region=self._normalizer.default_region,
            max_extension_length=self._normalizer.max_extension_length,
            cache_size=4096,
        )
        report = ImportReport()
        source = iter(rows)
        async with (
            self._import_lock,
            _connect(self._path, self._busy_timeout_s, self._cache_mib) as db,
        ):
            try:
                if delete_missing:
                    await db.execute("CREATE TEMP TABLE import_seen (id TEXT PRIMARY KEY)")
                while True:
                    # Parsing and phonenumbers run in a thread: the daemon's loop stays free.
                    batch, seen, done = await asyncio.to_thread(
                        _build_batch, source, batch_size, normalizer, report
                    )
                    if batch or (seen and delete_missing):
                        await _write_batch(db, batch, seen if delete_missing else [], report)
                    if done:
                        break
                if delete_missing:
                    if report.rows == 0:
                        report.deletions_skipped = True
                        report.notes.append("no rows: --delete-missing deleted nothing")
                    elif report.unidentified:
                        # The entry an unreadable row carried is unknown: deleting what
                        # the file "misses" could delete it. Keep everything instead.
                        report.skip_deletions()
                    else:
                        await _delete_missing(db, report)
            except sqlite3.Error as exc:
                raise StoreError(f"directory import failed: {exc}") from exc
        if report.changed:
            self.clear_cache()
            self._checked_at = float("-inf")  # re-read the generation on the next lookup
        return report


def _build_batch(
    source: Iterator[SourceRow],
    size: int,
    normalizer: NumberNormalizer,
    report: ImportReport,
) -> tuple[dict[str, tuple[int, DirectoryEntry | Deletion]], list[str], bool]:
    """Up to ``size`` rows validated: {id: (line, item)} (a later row wins), the ids seen,
    and whether the source is exhausted."""
    batch: dict[str, tuple[int, DirectoryEntry | Deletion]] = {}
    seen: list[str] = []
    for row in source:
        report.rows += 1
        if row.error:
            report.error(row.line, row.error, unidentified=True)
        else:
            try:
                built: BuiltRow = build_entry(row.fields, normalizer)
            except RowError as exc:
                rid = row_id(row.fields)
                report.error(row.line, str(exc), unidentified=rid is None)
                if rid is not None:
                    seen.append(rid)  # a broken row still names a record a full sync keeps
            else:
                for warning in built.warnings:
                    report.warning(row.line, warning)
                batch.pop(built.item.id, None)  # re-insert: dict order follows the file
                batch[built.item.id] = (row.line, built.item)
                seen.append(built.item.id)
        if report.rows % size == 0:
            return batch, seen, False
    return batch, seen, True


async def _write_batch(
    db: aiosqlite.Connection,
    batch: dict[str, tuple[int, DirectoryEntry | Deletion]],
    seen: list[str],
    report: ImportReport,
) -> None:
    now = time.time()
    await db.execute("BEGIN IMMEDIATE")
    try:
        existing = {
            r[0]: r[1]
            for r in await db.execute_fetchall(_EXISTING, (orjson.dumps(list(batch)).decode(),))
        }
        cleared: list[tuple[str]] = []  # entries whose numbers and addresses are replaced
        deleted: list[tuple[str]] = []
        entries: list[tuple[Any, ...]] = []
        numbers: list[tuple[str, str, str, str]] = []
        emails: list[tuple[str, str]] = []
        for record_id, (_line, item) in batch.items():
            if isinstance(item, Deletion):
                if record_id in existing:
                    deleted.append((record_id,))
                    report.deleted += 1
                else:
                    report.unchanged += 1
                continue
            digest = item.digest()
            old = existing.get(record_id)
            if old == digest:
                report.unchanged += 1
                continue
            if old is None:
                report.inserted += 1
            else:
                report.updated += 1
                cleared.append((record_id,))
            entries.append(
                (item.id, item.kind, item.name, name_key(item.name), item.organization, digest, now)
            )
            numbers.extend((n.e164, item.id, n.type, n.raw) for n in item.numbers)
            emails.extend((e, item.id) for e in item.emails)
        for sql, params in (
            (_DELETE_NUMBERS, cleared + deleted),
            (_DELETE_EMAILS, cleared + deleted),
            (_DELETE_ENTRY, deleted),
            (_UPSERT_ENTRY, entries),
            (_INSERT_NUMBER, numbers),
            (_INSERT_EMAIL, emails),
            ("INSERT OR IGNORE INTO temp.import_seen (id) VALUES (?)", [(i,) for i in seen]),
        ):
            if params:
                await db.executemany(sql, params)
        if entries or deleted:
            await db.execute(_BUMP)
        await db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error, ValueError):
            await db.execute("ROLLBACK")
        raise


async def _delete_missing(db: aiosqlite.Connection, report: ImportReport) -> None:
    missing = "SELECT id FROM directory_entries WHERE id NOT IN (SELECT id FROM temp.import_seen)"
    await db.execute("BEGIN IMMEDIATE")
    try:
        ids = [(r[0],) for r in await db.execute_fetchall(missing)]
        if ids:
            await db.executemany(_DELETE_NUMBERS, ids)
            await db.executemany(_DELETE_EMAILS, ids)
            await db.executemany(_DELETE_ENTRY, ids)
            await db.execute(_BUMP)
        await db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error, ValueError):
            await db.execute("ROLLBACK")
        raise
    report.deleted += len(ids)


async def _migrate(path: Path, busy_timeout_s: float) -> None:
    """Bring the database to this ctid's schema, with the store's own migrator."""
    version = 0
    if await asyncio.to_thread(path.exists):
        try:
            async with aiosqlite.connect(path) as db:
                rows = list(await db.execute_fetchall("PRAGMA user_version"))
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open: {exc}") from exc
        version = int(rows[0][0])
    if version != len(MIGRATIONS):  # older: migrate; newer: Store.open refuses it
        async with Store.open(path, busy_timeout_s=busy_timeout_s):
            pass


@contextlib.asynccontextmanager
async def _connect(
    path: Path, busy_timeout_s: float, cache_mib: int = 64
) -> AsyncIterator[aiosqlite.Connection]:
    try:
        # isolation_level=None: autocommit; imports issue BEGIN/COMMIT themselves.
        db = await aiosqlite.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{path}: cannot open: {exc}") from exc
    try:
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute(f"PRAGMA cache_size = {-1024 * max(1, int(cache_mib))}")  # KiB
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot prepare the database: {exc}") from exc
        yield db
    finally:
        await db.close()
