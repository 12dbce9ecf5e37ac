"""Benchmark: the contact directory with a million entries (issue 4).

Generates ENTRIES directory rows (persons, organizations with contacts; one to
three typed numbers in mixed national/international formats; half with an
e-mail address) as JSON lines in a temporary folder, imports them through
``Directory.import_file`` into a fresh SQLite database, re-imports to show that
an unchanged import writes nothing, then measures lookups one at a time through
the real aiosqlite adapter (CPU time per lookup is printed beside wall time: on
a loaded machine the wall-time tail is mostly waiting for a CPU):

* the first lookups after opening, SQLite's page cache cold (these go through
  aiosqlite's worker thread); then ``warm_up()``, after which lookups run on the
  event loop's thread (``Directory.inline``);

* uncached hits and misses: every lookup a different number (written the way a
  trunk sends it, not as stored), so neither the match cache nor the number
  normaliser's cache helps;
* cached hits and misses: a small set looked up again and again;
* e-mail hits, and a few quick searches.

No assertions: a benchmark reports. Target (issue 4): p99 <= 1 ms uncached.

    .venv/bin/python scripts/bench_directory.py [--entries N] [--lookups N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from ctid.adapters.directory import Directory
from ctid.core.numbers import NumberNormalizer

FIRST = ["Maria", "Karl", "Anna", "Paul", "Petra", "Jonas", "Lea", "Ömer", "Zoë", "Lukas"]
LAST = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker"]
AREAS = ["30", "40", "89", "221", "69", "711", "211", "341"]


def national(n: int) -> tuple[str, str]:
    """A unique German landline for ``n``: (as a CRM might write it, E.164 digits)."""
    area = AREAS[n % len(AREAS)]
    local = f"{1_000_000 + n // len(AREAS):07d}"
    styles = (f"0{area} {local}", f"+49 {area} {local}", f"0049{area}{local}", f"0{area}/{local}")
    return styles[n % 4], f"+49{area}{local}"


def mobile(n: int) -> tuple[str, str]:
    local = f"{n:08d}"
    return f"0171 {local}", f"+49171{local}"


def generate(path: Path, entries: int, rng: random.Random) -> dict[str, list[str]]:
    """Write the rows; return sample e164 numbers and addresses that exist."""
    samples: dict[str, list[str]] = {"number": [], "email": []}
    with path.open("wb") as out:
        n = 0
        while n < entries:
            if rng.random() < 0.06:  # an organization with 0-7 contacts
                org_id = f"crm-{n}"
                raw, e164 = national(n)
                if rng.random() < 0.05:
                    samples["number"].append(e164)
                row = {
                    "id": org_id,
                    "kind": "organization",
                    "name": f"{rng.choice(LAST)} {rng.choice(['GmbH', 'AG', 'KG'])} {n}",
                    "numbers": [{"type": "work", "number": raw}],
                }
                out.write(orjson.dumps(row) + b"\n")
                n += 1
                for _ in range(rng.randrange(8)):
                    if n >= entries:
                        break
                    contact = person(n, rng, org_id, samples)
                    if rng.random() < 0.3:  # the switchboard, copied onto the contact
                        contact["numbers"].append({"type": "switchboard", "number": raw})  # type: ignore[attr-defined]
                    out.write(orjson.dumps(contact) + b"\n")
                    n += 1
            else:
                out.write(orjson.dumps(person(n, rng, "", samples)) + b"\n")
                n += 1
    return samples


def person(
    n: int, rng: random.Random, org_id: str, samples: dict[str, list[str]]
) -> dict[str, object]:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    raw, e164 = national(n)
    numbers = [{"type": "work", "number": raw}]
    if rng.random() < 0.6:
        numbers.append({"type": "mobile", "number": mobile(n)[0]})
    if rng.random() < 0.1:
        numbers.append({"type": "home", "number": national(entries_offset + n)[0]})
    row: dict[str, object] = {
        "id": f"crm-{n}",
        "kind": "contact" if org_id else "person",
        "name": name,
        "numbers": numbers,
    }
    if org_id:
        row["organization"] = org_id
    if rng.random() < 0.5:
        address = f"{name.split(maxsplit=1)[0].lower()}.{n}@example.com"
        row["emails"] = [address]
        if rng.random() < 0.05:
            samples["email"].append(address)
    if rng.random() < 0.05:
        samples["number"].append(e164)
    return row


entries_offset = 50_000_000  # home numbers never collide with work numbers


def percentiles(samples: list[float]) -> str:
    samples.sort()
    q = statistics.quantiles(samples, n=100)
    return (
        f"p50 {q[49] * 1e3:7.3f} ms  p90 {q[89] * 1e3:7.3f} ms  p99 {q[98] * 1e3:7.3f} ms  "
        f"max {samples[-1] * 1e3:7.3f} ms  (n={len(samples)})"
    )


CPU: list[float] = []  # CPU time of the last timed() run's calls (all threads)


async def timed(call: Callable[[str], Awaitable[object]], args: list[str]) -> list[float]:
    """The latency of each ``call(arg)``, one at a time (CPU time of each goes to ``CPU``)."""
    out = []
    CPU.clear()
    for arg in args:
        c0 = time.process_time()
        t0 = time.perf_counter()
        await call(arg)
        out.append(time.perf_counter() - t0)
        CPU.append(time.process_time() - c0)
    return out


async def bench(
    entries: int, lookups: int, folder: Path, *, reimport: bool, skip_import: bool = False
) -> None:
    rng = random.Random(4)
    source = folder / "directory.jsonl"
    db = folder / "ctid.sqlite3"
    t0 = time.perf_counter()
    samples = generate(source, entries, rng)
    print(
        f"generated {entries} rows ({source.stat().st_size / 1e6:.0f} MB JSON lines) "
        f"in {time.perf_counter() - t0:.1f} s"
    )

    async with Directory.open(db) as directory:
        t0 = time.perf_counter()
        if skip_import:  # --keep'ed database from an earlier run, same seed: same rows
            print("import skipped (--skip-import)")
        else:
            report = await directory.import_file(source)
            took = time.perf_counter() - t0
            print(f"import: {took:.1f} s ({entries / took:,.0f} rows/s): {report.summary()}")
        t0 = time.perf_counter()
        if reimport:
            report = await directory.import_file(source)
            print(f"re-import (unchanged): {time.perf_counter() - t0:.1f} s: {report.summary()}")
        print(f"directory: {await directory.counts()}, file {db.stat().st_size / 1e6:.0f} MB")

    def trunk_form(e164: str) -> str:  # how a DE trunk presents it: national format
        return "0" + e164[3:] if e164.startswith("+49") else e164

    hits = [trunk_form(rng.choice(samples["number"])) for _ in range(lookups)]
    misses = [f"0{rng.choice(AREAS)} 9{rng.randrange(10**6):06d}" for _ in range(lookups)]
    emails = [rng.choice(samples["email"]).upper() for _ in range(lookups)]
    hot_hits, hot_misses = hits[:500], misses[:500]

    # Uncached: no match cache; a fresh normaliser so every number is parsed for real.
    async with Directory.open(db, cache_size=0, normalizer=NumberNormalizer()) as directory:
        cold = await timed(directory.lookup_number, hits[-2000:])
        print(f"uncached hit, cold, through aiosqlite's thread  {percentiles(cold)}")
        t0 = time.perf_counter()
        await directory.warm_up()
        print(
            f"warm_up: {time.perf_counter() - t0:.1f} s; "
            f"lookups inline from now on: {directory.inline}"
        )
        kinds: dict[str, int] = {}
        for n in [trunk_form(rng.choice(samples["number"])) for _ in range(2000)]:
            kind = (await directory.lookup_number(n)).kind
            kinds[kind] = kinds.get(kind, 0) + 1
        print(f"match kinds of 2000 hits: {kinds}")
        hit_t = await timed(directory.lookup_number, hits)
        cpu_hit = list(CPU)
        miss_t = await timed(directory.lookup_number, misses)
        cpu_miss = list(CPU)
        mail_t = await timed(directory.lookup_email, emails)
        print(f"uncached hit    {percentiles(hit_t)}")
        print(f"  (CPU time     {percentiles(cpu_hit)})")
        print(f"uncached miss   {percentiles(miss_t)}")
        print(f"  (CPU time     {percentiles(cpu_miss)})")
        print(f"uncached e-mail {percentiles(mail_t)}")
        for field, op, value in (
            ("name", "like", "Maria M"),
            ("name", "=", "Zoë Becker"),
            ("number", "like", "030 1000%"),
            ("email", "like", "lea.12%"),
            ("name", "like", "%GmbH 99%"),
        ):

            async def search(value: str, field: str = field, op: str = op) -> object:
                return await directory.search(field, op, value)

            runs = await timed(search, [value] * 20)
            print(f"search {field} {op} {value!r}: median {statistics.median(runs) * 1e3:.2f} ms")

    async with Directory.open(db, cache_size=100_000) as directory:
        await timed(directory.lookup_number, hot_hits + hot_misses)  # fill the cache
        cached_hit = await timed(directory.lookup_number, hot_hits * 40)
        cached_miss = await timed(directory.lookup_number, hot_misses * 40)
        print(f"cached hit      {percentiles(cached_hit)}")
        print(f"cached miss     {percentiles(cached_miss)}")
        print(f"cache: {directory.cache_stats}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=20_000)
    ap.add_argument("--keep", type=Path, default=None, help="use this folder and keep it")
    ap.add_argument("--no-reimport", action="store_true", help="skip the unchanged re-import")
    ap.add_argument(
        "--skip-import", action="store_true", help="with --keep: reuse the imported database"
    )
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        asyncio.run(
            bench(
                args.entries,
                args.lookups,
                args.keep,
                reimport=not args.no_reimport,
                skip_import=args.skip_import,
            )
        )
    else:
        with tempfile.TemporaryDirectory(prefix="ctid-bench-") as folder:
            asyncio.run(
                bench(args.entries, args.lookups, Path(folder), reimport=not args.no_reimport)
            )
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
