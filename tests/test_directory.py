"""The directory on real SQLite files: import, match kinds, cache, choices, search, CLI."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from ctid.adapters.directory import Directory
from ctid.adapters.store import MIGRATIONS, Store
from ctid.cli import main
from ctid.core.directory import NO_ANI, SearchQueryError
from ctid.directory_import import SourceRow
from tests.command_rig import until

ROOT = Path(__file__).resolve().parents[1]

# One directory that makes every match kind happen (numbers in DE formats).
ROWS: list[dict[str, Any]] = [
    {
        "id": "o1",
        "kind": "organization",
        "name": "ACME GmbH",
        "numbers": [{"type": "work", "number": "030 1000000"}],
        "emails": ["info@acme.example"],
    },
    {
        "id": "c1",
        "kind": "contact",
        "name": "Maria Muster",
        "organization": "o1",
        "numbers": [
            {"type": "work", "number": "030 1000001"},
            {"type": "switchboard", "number": "+49 30 1000000"},
        ],
        "emails": ["Maria@ACME.example"],
    },
    {
        "id": "c2",
        "kind": "contact",
        "name": "Karl Muster",
        "organization": "o1",
        "numbers": [{"type": "work", "number": "030 1000002"}],
    },
    {
        "id": "p1",
        "kind": "person",
        "name": "Paul Privat",
        "numbers": [
            {"type": "home", "number": "089 2000000"},
            {"type": "mobile", "number": "0171 3000000"},
        ],
        "emails": ["paul@example.com"],
    },
    {
        "id": "p2",
        "kind": "person",
        "name": "Petra Privat",
        "numbers": [{"type": "home", "number": "0049 89 2000000"}],
        "emails": ["paul@example.com"],
    },
    {
        "id": "c3",
        "kind": "contact",
        "name": "Otto Orphan",
        "organization": "o-missing",
        "numbers": [{"type": "work", "number": "040 5000000"}],
    },
    {
        "id": "x1",
        "kind": "person",
        "name": "Operator",
        "numbers": [{"type": "work", "number": "100"}],
    },
]


def source(rows: list[dict[str, Any]]) -> list[SourceRow]:
    return [SourceRow(i + 1, dict(r)) for i, r in enumerate(rows)]


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


async def loaded(db: Path) -> None:
    async with Directory.open(db) as directory:
        await directory.import_rows(source(ROWS))


def ids(match_records: Any) -> list[str]:
    return [r.id for r in match_records]


# -- schema -----------------------------------------------------------------------


async def test_directory_is_migration_3_of_the_store(tmp_path: Path) -> None:
    """Opening the directory creates the store's schema (all migrations); the store opens it too."""
    db = tmp_path / "sub" / "ctid.sqlite3"
    async with Directory.open(db) as directory:
        assert (await directory.counts()) == {
            "person": 0,
            "organization": 0,
            "contact": 0,
            "numbers": 0,
            "emails": 0,
        }
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Migration 3 made the directory's tables: history, never to be edited.
    assert any("CREATE TABLE directory_entries" in sql for sql in MIGRATIONS[2])
    async with Store.open(db) as store:
        assert await store.max_seq() == 0


async def test_directory_beside_a_running_store(tmp_path: Path) -> None:
    """The daemon's store and the directory share one file: both work at the same time."""
    db = tmp_path / "ctid.sqlite3"
    async with Store.open(db) as store, Directory.open(db) as directory:
        report = await directory.import_rows(source(ROWS))
        await store.save_presence("alice", "ready", "", 1.0)
        assert report.inserted == len(ROWS)
        assert (await directory.lookup_number("0301000002")).kind == "org_contact"
        assert await store.load_presences() == {"alice": ("ready", "", 1.0)}


# -- match kinds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "kind", "records", "contacts"),
    [
        ("anonymous", "no_ani", [], None),
        ("", "no_ani", [], None),
        ("<unknown>", "no_ani", [], None),
        ("030 9999999", "none", [], None),
        ("+491713000000", "single", ["p1"], None),
        ("sip:+4989 2000000@carrier.example", "multiple", ["p1", "p2"], None),
        ("004930 1000001", "org_contact", ["c1"], None),
        ("030 1000000", "organization", ["o1"], ["c2", "c1"]),
        ("100", "single", ["x1"], None),
        ("040 5000000", "org_contact", ["c3"], None),
        ("info@ACME.example", "organization", ["o1"], ["c2", "c1"]),
        ("maria@acme.example", "org_contact", ["c1"], None),
        ("PAUL@example.com", "multiple", ["p1", "p2"], None),
        ("nobody@example.com", "none", [], None),
    ],
)
async def test_lookup_match_kinds(
    tmp_path: Path, query: str, kind: str, records: list[str], contacts: list[str] | None
) -> None:
    """Each CIC pop case comes out of a lookup by number or by e-mail address."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        match = await directory.lookup(query)
    payload = match.as_payload()
    assert (kind, records) == (payload["kind"], [r["id"] for r in payload["records"]])
    assert contacts == (
        None if "contacts" not in payload else [c["id"] for c in payload["contacts"]]
    )


async def test_org_contact_carries_its_organization(tmp_path: Path) -> None:
    """org_contact names the contact and its organization; an unknown organization has no name."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        maria = await directory.lookup_number("030 1000001")
        orphan = await directory.lookup_number("040 5000000")
    assert maria.as_payload() == {
        "kind": "org_contact",
        "records": [
            {
                "id": "c1",
                "kind": "contact",
                "name": "Maria Muster",
                "organization": {"id": "o1", "name": "ACME GmbH"},
            }
        ],
    }
    assert orphan.as_payload()["records"][0]["organization"] == {"id": "o-missing", "name": ""}


async def test_lookup_by_record_id_gives_the_records_match_kind(tmp_path: Path) -> None:
    """An IVR-given account id: a person is single, a contact org_contact with its
    organization, an organization comes with its contacts; unknown or empty is none;
    an import clears what was cached for an id."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        person = (await directory.lookup_id("p1")).as_payload()
        contact = (await directory.lookup_id(" c1 ")).as_payload()
        org = (await directory.lookup_id("o1")).as_payload()
        assert (person["kind"], [r["id"] for r in person["records"]]) == ("single", ["p1"])
        assert contact["kind"] == "org_contact"
        assert contact["records"][0]["organization"] == {"id": "o1", "name": "ACME GmbH"}
        assert (org["kind"], [r["id"] for r in org["records"]]) == ("organization", ["o1"])
        assert [c["id"] for c in org["contacts"]] == ["c2", "c1"]  # by name: Karl, Maria
        assert (await directory.lookup_id("nope")).kind == "none"
        assert (await directory.lookup_id("")).kind == "none"
        await directory.import_rows(source([{**ROWS[3], "name": "Paul Neu"}]))
        assert (await directory.lookup_id("p1")).records[0].name == "Paul Neu"


async def test_lookup_email_and_number_are_separate(tmp_path: Path) -> None:
    """lookup_email never reads a number and lookup_number never an address."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        assert (await directory.lookup_email("030 1000001")) == NO_ANI
        assert (await directory.lookup_number("maria@acme.example")).kind == "no_ani"
        assert (await directory.lookup_email("Maria@ACME.example")).kind == "org_contact"


async def test_limits_bound_records_and_contacts(tmp_path: Path) -> None:
    """A number shared by many records lists max_records; an organization max_contacts."""
    rows = [{"id": "o", "kind": "organization", "name": "Big", "numbers": ["030 1234567"]}]
    rows += [
        {"id": f"c{i:02d}", "kind": "contact", "name": f"C{i:02d}", "organization": "o"}
        for i in range(10)
    ]
    rows += [
        {"id": f"p{i}", "kind": "person", "name": f"P{i}", "numbers": ["040 7654321"]}
        for i in range(10)
    ]
    async with Directory.open(tmp_path / "d.sqlite3", max_records=3, max_contacts=4) as d:
        await d.import_rows(source(rows))
        assert ids((await d.lookup("030 1234567")).contacts) == ["c00", "c01", "c02", "c03"]
        assert ids((await d.lookup("040 7654321")).records) == ["p0", "p1", "p2"]


# -- import -----------------------------------------------------------------------


async def test_import_counts_and_reimport_changes_nothing(tmp_path: Path) -> None:
    """A first import inserts; the same file again is all unchanged and bumps nothing."""
    db = tmp_path / "ctid.sqlite3"
    async with Directory.open(db) as directory:
        first = await directory.import_rows(source(ROWS), batch_size=3)
        assert (first.rows, first.inserted, first.updated, first.unchanged) == (7, 7, 0, 0)
        generation = sqlite3.connect(db).execute("SELECT generation FROM directory_meta")
        before = generation.fetchone()[0]
        again = await directory.import_rows(source(ROWS), batch_size=3)
        assert (again.inserted, again.updated, again.unchanged, again.deleted) == (0, 0, 7, 0)
        with sqlite3.connect(db) as conn:
            assert before == conn.execute("SELECT generation FROM directory_meta").fetchone()[0]
        assert (await directory.counts()) == {
            "person": 3,
            "organization": 1,
            "contact": 3,
            "numbers": 9,
            "emails": 4,
        }


async def test_upsert_replaces_numbers_and_addresses(tmp_path: Path) -> None:
    """An updated record loses its old numbers and addresses and gains the new ones."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    changed = {
        "id": "p1",
        "kind": "person",
        "name": "Paul Neu",
        "numbers": [{"type": "work", "number": "030 7777777"}],
    }
    async with Directory.open(db) as directory:
        report = await directory.import_rows(source([changed]))
        assert (report.updated, report.inserted) == (1, 0)
        assert ids((await directory.lookup("089 2000000")).records) == ["p2"]
        assert (await directory.lookup("0171 3000000")).kind == "none"
        assert ids((await directory.lookup("030 7777777")).records) == ["p1"]
        assert ids((await directory.lookup("paul@example.com")).records) == ["p2"]
        assert (await directory.search("id", "=", "p1"))[0].name == "Paul Neu"


async def test_deleted_flag_deletes(tmp_path: Path) -> None:
    """A row with deleted: true removes the record; deleting an unknown id is no change."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        report = await directory.import_rows(
            source([{"id": "p2", "deleted": True}, {"id": "nope", "deleted": "yes"}])
        )
        assert (report.deleted, report.unchanged) == (1, 1)
        assert ids((await directory.lookup("089 2000000")).records) == ["p1"]


async def test_delete_missing_is_a_full_sync(tmp_path: Path) -> None:
    """--delete-missing deletes records the file does not name; a broken row keeps its record."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    keep = [ROWS[0], ROWS[1], {"id": "p1", "kind": "alien", "name": "broken"}]
    async with Directory.open(db) as directory:
        report = await directory.import_rows(source(keep), delete_missing=True)
        assert (report.unchanged, report.deleted, report.error_count) == (2, 4, 1)
        assert {
            k: v
            for k, v in (await directory.counts()).items()
            if k in ("person", "organization", "contact")
        } == {"person": 1, "organization": 1, "contact": 1}
        empty = await directory.import_rows([], delete_missing=True)
        assert empty.deleted == 0
        assert empty.notes == ["no rows: --delete-missing deleted nothing"]
        assert (empty.deletions_skipped, report.deletions_skipped) == (True, False)


# Each file updates p1 (to "Paul Neu") and has rows whose id is unknown.
PAUL_NEU = b'{"id": "p1", "kind": "person", "name": "Paul Neu"}'


@pytest.mark.parametrize(
    ("name", "content", "unidentified"),
    [
        ("d.jsonl", b'{"id": "c2", "kind": "contact", "name": "Karl M\n' + PAUL_NEU, 1),
        ("d.csv", b'id,kind,name\nc2,contact,"Karl\np1,person,Paul Neu\n', 1),
        ("d.csv", b"id,kind,name\nc2,contact,Karl,extra\np1,person,Paul Neu\n", 1),
        ("d.csv", b"id,kind,name\nc2,contact,Karl \xff\np1,person,Paul Neu\n", 1),
        ("d.csv", b"id,kind,name\n,contact,Karl\np1,person,Paul Neu\n", 1),  # no id
        ("d.json", b"[" + PAUL_NEU + b", 7]", 1),
        ("d.jsonl", b'{"kind": "person"}\n[1]\n' + PAUL_NEU, 2),
    ],
)
async def test_delete_missing_deletes_nothing_when_a_row_names_no_id(
    tmp_path: Path, name: str, content: bytes, unidentified: int
) -> None:
    """A full sync with a row whose id is unknown keeps every entry, imports the rest, says why."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    path = tmp_path / name
    path.write_bytes(content)
    async with Directory.open(db) as directory:
        report = await directory.import_file(path, delete_missing=True)
        assert (report.updated, report.deleted, report.error_count) == (1, 0, unidentified)
        assert (report.unidentified, report.deletions_skipped) == (unidentified, True)
        rows = "1 row" if unidentified == 1 else f"{unidentified} rows"
        assert report.notes[-1].startswith(f"deletions skipped: {rows} could not be read")
        assert "so the file may not name every entry" in report.notes[-1]
        assert (await directory.counts())["contact"] == 3  # c2 (and all others) kept
        assert ids((await directory.lookup("030 1000002")).records) == ["c2"]
        assert [r.name for r in await directory.search("id", "=", "p1")] == ["Paul Neu"]


async def test_delete_missing_keeps_explicit_deletions_when_a_row_names_no_id(
    tmp_path: Path,
) -> None:
    """Skipping the full sync's deletions leaves a row's own "deleted": true in force."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    rows = [SourceRow(1, {"id": "p2", "deleted": True}), SourceRow(2, error="not valid JSON")]
    async with Directory.open(db) as directory:
        report = await directory.import_rows(rows, delete_missing=True)
        assert (report.deleted, report.deletions_skipped) == (1, True)
        assert (await directory.counts())["person"] == 2  # p1 and x1 kept; p2 deleted


async def test_row_errors_have_lines_and_the_rest_imports(tmp_path: Path) -> None:
    """Bad rows are reported with their line; good rows around them are imported."""
    path = tmp_path / "d.csv"
    path.write_text(
        "id,kind,name,organization,numbers,emails\n"
        "p1,person,Paul,,work=030 1234567,paul@x.de\n"
        "p2,alien,Bad,,,\n"
        "p3,person,Petra,,home=n/a;work=040 1234567,not-mail\n"
        ",person,NoId,,,\n"
        "c1,contact,Carla,,,\n",
        encoding="utf-8",
    )
    async with Directory.open(tmp_path / "ctid.sqlite3") as directory:
        report = await directory.import_file(path)
        assert report.errors == [
            (3, "kind: 'alien' is not one of person, organization, contact"),
            (5, "id: missing"),
            (6, "organization: a contact needs its organization's id"),
        ]
        assert report.warnings == [
            (4, "numbers[0]: 'n/a' is not a phone number; skipped"),
            (4, "emails[0]: 'not-mail' is not an e-mail address; skipped"),
        ]
        assert (report.rows, report.inserted) == (5, 2)
        assert ids((await directory.lookup("040 1234567")).records) == ["p3"]


async def test_later_row_wins_within_a_file(tmp_path: Path) -> None:
    """The same id twice in one file: the later row is what stays."""
    rows = [
        {"id": "p", "kind": "person", "name": "First"},
        {"id": "p", "kind": "person", "name": "Second"},
    ]
    async with Directory.open(tmp_path / "d.sqlite3") as directory:
        await directory.import_rows(source(rows))
        assert [r.name for r in await directory.search("id", "=", "p")] == ["Second"]


async def test_import_in_batches_commits_each(tmp_path: Path) -> None:
    """Every batch is its own transaction: an error in a late batch keeps earlier ones."""
    rows: list[SourceRow] = [
        SourceRow(i + 1, {"id": f"p{i}", "kind": "person", "name": f"P{i}"}) for i in range(5)
    ]

    def failing() -> Any:
        yield from rows
        raise RuntimeError("the source broke")

    db = tmp_path / "d.sqlite3"
    async with Directory.open(db) as directory:
        with pytest.raises(RuntimeError):
            await directory.import_rows(failing(), batch_size=2)
        assert (await directory.counts())["person"] == 4  # batches p0-p1 and p2-p3


# -- cache and choices ------------------------------------------------------------


async def test_cache_holds_hits_and_misses_and_import_clears_it(tmp_path: Path) -> None:
    """Lookups (found or not) are cached; an import in this process invalidates at once."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        assert directory.cached("030 5555555") is None
        assert (await directory.lookup("030 5555555")).kind == "none"
        assert (await directory.lookup("0301000001")).kind == "org_contact"
        assert directory.cached("+49305555555") == (await directory.lookup("030 5555555"))
        assert directory.cached("anonymous") == NO_ANI
        assert (directory.cache_stats.hits, directory.cache_stats.size) == (1, 2)
        await directory.import_rows(
            source([{"id": "n", "kind": "person", "name": "New", "numbers": ["030 5555555"]}])
        )
        assert directory.cached("030 5555555") is None
        assert ids((await directory.lookup("030 5555555")).records) == ["n"]


async def test_import_by_another_process_invalidates_after_revalidate(tmp_path: Path) -> None:
    """Another process's import bumps the generation; the cache notices at the next check."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    now = [0.0]
    async with Directory.open(db, revalidate_s=1.0, clock=lambda: now[0]) as daemon:
        assert (await daemon.lookup("030 5555555")).kind == "none"
        async with Directory.open(db) as cli:
            await cli.import_rows(
                source([{"id": "n", "kind": "person", "name": "New", "numbers": ["030 5555555"]}])
            )
        now[0] = 0.5
        assert (await daemon.lookup("030 5555555")).kind == "none"  # still within revalidate_s
        now[0] = 1.5
        assert (await daemon.lookup("030 5555555")).kind == "single"


async def test_agent_choice_is_remembered(tmp_path: Path) -> None:
    """The record an agent chose among several is offered first next time, across restarts."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        assert ids((await directory.lookup("089 2000000")).records) == ["p1", "p2"]
        await directory.remember_choice("+49 89 2000000", "p2")
        match = await directory.lookup("0892000000")
        assert (ids(match.records), match.remembered) == (["p2", "p1"], "p2")
    async with Directory.open(db) as directory:
        assert await directory.remembered("089 2000000") == "p2"
        assert ids((await directory.lookup("089 2000000")).records) == ["p2", "p1"]
        await directory.remember_choice("paul@example.com", "p2")
        assert ids((await directory.lookup("PAUL@example.com")).records) == ["p2", "p1"]
        await directory.remember_choice("030 1000000", "c1")  # a contact of an organization
        assert ids((await directory.lookup("030 1000000")).contacts) == ["c1", "c2"]


# -- quick search -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("name", "=", "maria muster", ["c1"]),
        ("name", "=", "Maria", []),
        ("name", "like", "Pa", ["p1"]),  # no % = starts with
        ("name", "like", "P%", ["p1", "p2"]),
        ("name", "like", "%muster", ["c2", "c1"]),
        ("name", "like", "%riva%", ["p1", "p2"]),
        ("name", "like", "%a_m%", []),  # _ is literal, not SQL's any-character
        ("number", "=", "+4989 2000000", ["p1", "p2"]),
        ("number", "like", "030 100000%", ["o1", "c2", "c1"]),
        ("number", "like", "%3000000", ["p1"]),
        ("email", "like", "%@acme.example", ["o1", "c1"]),
        ("email", "=", "PAUL@example.com", ["p1", "p2"]),
        ("id", "like", "c", ["c2", "c1", "c3"]),
        ("name", "like", "'; DROP TABLE directory_entries; --", []),
    ],
)
async def test_quick_search(
    tmp_path: Path, field: str, op: str, value: str, expected: list[str]
) -> None:
    """The CRM.COM quick search: = and like with % wildcards, ordered by name."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        assert expected == ids(await directory.search(field, op, value))
        assert (await directory.counts())["person"] == 3


async def test_quick_search_limit_and_errors(tmp_path: Path) -> None:
    """Results are limited; bad fields and operators raise SearchQueryError."""
    db = tmp_path / "ctid.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        assert len(await directory.search("name", "like", "%r%", limit=1)) == 1
        with pytest.raises(SearchQueryError, match="unknown field"):
            await directory.search("phone", "=", "1")


# -- CLI --------------------------------------------------------------------------


def ctid(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (fast); returns (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ctid.toml"
    path.write_text('[ami]\nsecret = "x"\n[store]\npath = "ctid.sqlite3"\n')
    return path


def test_cli_import_lookup_search(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ctid directory import` prints a summary with line numbers; lookup and search print JSON."""
    data = jsonl(tmp_path / "d.jsonl", [*ROWS, {"id": "bad", "kind": "alien", "name": "x"}])
    code, out, err = ctid(capsys, "directory", "import", "-c", str(config), str(data))
    assert (code, err) == (1, "")  # 1: a row had an error, the rest imported
    assert out.splitlines() == [
        f"{data}: 8 rows: 7 inserted, 0 updated, 0 unchanged, 0 deleted, 1 errors, 0 warnings",
        "line 8: error: kind: 'alien' is not one of person, organization, contact",
    ]
    code, out, _ = ctid(capsys, "directory", "import", "-c", str(config), str(data), "--json")
    assert (code, orjson.loads(out)["unchanged"]) == (1, 7)

    code, out, _ = ctid(capsys, "lookup", "-c", str(config), "anonymous")
    assert (code, orjson.loads(out)) == (0, {"kind": "no_ani", "records": []})

    code, out, _ = ctid(capsys, "search", "-c", str(config), "name", "like", "%privat")
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == ["p1", "p2"]
    code, out, err = ctid(capsys, "search", "-c", str(config), "phone", "=", "1")
    assert (code, out) == (2, "")
    assert "unknown field 'phone'" in err

    # The console entry point itself, once, as ops run it.
    proc = subprocess.run(
        [sys.executable, "-m", "ctid", "lookup", "-c", str(config), "004930 1000001"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == {
        "kind": "org_contact",
        "records": [
            {
                "id": "c1",
                "kind": "contact",
                "name": "Maria Muster",
                "organization": {"id": "o1", "name": "ACME GmbH"},
            }
        ],
    }


def test_cli_import_whole_file_failure(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not CSV or JSON, or is missing, exits 2 with one clear line."""
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01\x02 not a directory\n")
    code, out, err = ctid(capsys, "directory", "import", "-c", str(config), str(junk))
    assert (code, out) == (2, "")
    assert "neither JSON nor CSV" in err
    assert err.rstrip().endswith("(nothing imported)")
    broken = tmp_path / "d.json"
    broken.write_text('[\n{"id": "p1", "kind": "person", "name": "A"},\n{"id": "p2"\n]\n')
    code, out, err = ctid(capsys, "directory", "import", "-c", str(config), str(broken))
    assert (code, out) == (2, "")
    assert f"{broken}: line 4, column 1: not valid JSON" in err
    code, out, _ = ctid(capsys, "search", "-c", str(config), "id", "=", "p1")
    assert (code, out) == (0, "")  # rejected whole: not even the readable first element
    code, _, err = ctid(capsys, "directory", "import", "-c", str(config), str(tmp_path / "no.csv"))
    assert code == 2
    assert "no such file" in err


def test_cli_import_exit_status_and_full_sync_with_a_broken_row(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 clean, 1 with row errors; a full sync with an unreadable row deletes nothing."""
    header = "id,kind,name,numbers\n"
    first = tmp_path / "first.csv"
    first.write_text(header + "crm-1,person,Anna,work=030 1111111\ncrm-9,person,Nina,030 9999999\n")
    code, out, err = ctid(capsys, "directory", "import", "-c", str(config), str(first))
    assert (code, err) == (0, "")
    assert "2 inserted" in out

    # crm-9's row has a stray quote: it names no id the importer could read.
    broken = tmp_path / "broken.csv"
    broken.write_text(header + 'crm-1,person,Anna B,work=030 1111111\ncrm-9,person,"Nina\n')
    args = ("directory", "import", "-c", str(config), str(broken), "--delete-missing")
    code, out, err = ctid(capsys, *args)
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        f"{broken}: 2 rows: 0 inserted, 1 updated, 0 unchanged, 0 deleted, 1 errors, 0 warnings",
        "note: deletions skipped: 1 row could not be read or had no usable id (line 3), so "
        "the file may not name every entry; fix it and import again",
        "line 3: error: not valid CSV: unexpected end of data",
    ]
    code, out, _ = ctid(capsys, "lookup", "-c", str(config), "030 9999999")
    assert (code, [r["id"] for r in orjson.loads(out)["records"]]) == (0, ["crm-9"])
    code, out, _ = ctid(capsys, *args, "--json")
    report = orjson.loads(out)
    assert (code, report["deleted"], report["deletions_skipped"]) == (1, 0, True)

    # The same full sync with a clean file does delete crm-9.
    clean = tmp_path / "clean.csv"
    clean.write_text(header + "crm-1,person,Anna B,work=030 1111111\n")
    code, out, err = ctid(
        capsys, "directory", "import", "-c", str(config), str(clean), "--delete-missing"
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{clean}: 1 rows: 0 inserted, 0 updated, 1 unchanged, 1 deleted, 0 errors, 0 warnings"
    ]
    code, out, _ = ctid(capsys, "lookup", "-c", str(config), "030 9999999")
    assert (code, orjson.loads(out)["kind"]) == (0, "none")


def test_cli_import_help_documents_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    """`ctid directory import --help` explains the exit codes."""
    with pytest.raises(SystemExit) as info:
        main(["directory", "import", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit status:" in out
    assert "  1  some rows had errors" in out
    assert "  2  nothing imported" in out


# -- inline lookups ---------------------------------------------------------------


LOOKUPS = (
    "030 1000000",
    "030 1000001",
    "089 2000000",
    "040 5000000",
    "100",
    "030 9999999",
    "paul@example.com",
    "MARIA@acme.example",
)


async def test_inline_lookups_answer_as_the_thread_does(tmp_path: Path) -> None:
    """After warm_up lookups run on the loop's thread, with the same answers as through
    aiosqlite's thread (every match kind of ROWS)."""
    db = tmp_path / "directory.sqlite3"
    await loaded(db)
    async with Directory.open(db, cache_size=0) as directory:
        assert not directory.inline
        threaded = [(await directory.lookup(q)).as_payload() for q in LOOKUPS]
        await directory.warm_up()
        assert directory.inline
        inline = [(await directory.lookup(q)).as_payload() for q in LOOKUPS]
        assert directory.inline  # reads do not make it cold
    assert inline == threaded
    assert {m["kind"] for m in inline} == {
        "organization",
        "org_contact",
        "multiple",
        "single",
        "none",
    }


async def test_a_commit_elsewhere_sends_lookups_through_the_thread_until_warm_again(
    tmp_path: Path,
) -> None:
    """An import by another connection empties the inline connection's page cache: the next
    lookup goes through the thread (and sees the import), and the cache is warmed again
    by itself; a choice (a commit by the directory's own aiosqlite connection) too."""
    db = tmp_path / "directory.sqlite3"
    await loaded(db)
    async with Directory.open(db, cache_size=0, revalidate_s=0.0) as directory:
        await directory.warm_up()
        warmed = directory.warmups
        async with Directory.open(db) as cli:
            await cli.import_rows(
                source([{"id": "n", "kind": "person", "name": "New", "numbers": ["030 5555555"]}])
            )
        assert (await directory.lookup("030 5555555")).kind == "single"
        await until(lambda: directory.warmups > warmed and directory.inline, what="warm again")
        assert (await directory.lookup("030 5555555")).kind == "single"

        warmed = directory.warmups
        await directory.remember_choice("089 2000000", "p2")
        match = await directory.lookup("089 2000000")
        assert (ids(match.records), match.remembered) == (["p2", "p1"], "p2")
        await until(lambda: directory.warmups > warmed and directory.inline, what="warm again")


async def test_a_directory_bigger_than_the_cache_is_never_read_inline(tmp_path: Path) -> None:
    """A file that does not fit the page cache stays on the thread: an inline read could
    wait for the disk with the whole loop."""
    db = tmp_path / "directory.sqlite3"
    rows = [
        {"id": f"p{n}", "kind": "person", "name": f"Person {n:05d}", "numbers": [f"030 7{n:06d}"]}
        for n in range(20_000)
    ]
    async with Directory.open(db) as directory:
        await directory.import_rows(source(rows))
    assert db.stat().st_size > 2 * 1024 * 1024  # its tables alone are bigger than 1 MiB
    async with Directory.open(db, cache_mib=1) as directory:
        await directory.warm_up()
        assert not directory.inline
        assert ids((await directory.lookup("030 7000042")).records) == ["p42"]
        assert not directory.inline


async def test_close_stops_a_warm_up_under_way(tmp_path: Path) -> None:
    """Closing the directory during a warm-up interrupts it instead of waiting for it."""
    db = tmp_path / "directory.sqlite3"
    await loaded(db)
    async with Directory.open(db) as directory:
        warming = asyncio.create_task(directory.warm_up())
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.shield(warming), 10)  # done, one way or the other
