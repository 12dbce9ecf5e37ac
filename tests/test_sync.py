"""``ctid sync export/ack/reconcile`` and ``ctid replay`` storing what it replays.

Real SQLite files in ``tmp_path``. The CLI runs as ``python -m ctid`` where its
contract (stdout, stderr, exit code) is the point (``spawn``), otherwise
in-process through ``ctid.cli.main`` (``run``: the same code, without the
interpreter start-up, so the file stays fast).
"""

from __future__ import annotations

import contextlib
import csv
import io
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from ctid.cli import main
from ctid.sync import COLUMNS, reconcile

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT.parent / "shared" / "ami-captures"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The captures' config with its store in ``tmp_path``."""
    text = (ROOT / "tests" / "data" / "captures.toml").read_text()
    assert 'path = "captures.sqlite3"' in text
    path = tmp_path / "ctid.toml"
    path.write_text(text.replace('path = "captures.sqlite3"', 'path = "ctid.sqlite3"'))
    return path


def spawn(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """``python -m ctid ARGS`` in a child process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "ctid", *map(str, args)],
        capture_output=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )


def run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """``ctid ARGS`` in this process (``ctid.cli.main``), output captured."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", newline="")
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    out.flush()
    return subprocess.CompletedProcess(list(args), code, raw.getvalue(), err.getvalue().encode())


def ok(*args: str | Path, child: bool = False) -> bytes:
    """Run ctid (in a child process with ``child``), expect exit 0, return stdout."""
    proc = spawn(*args) if child else run(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def replay(config: Path, name: str, *, child: bool = False) -> bytes:
    """Replay a capture (storing it), return what it printed."""
    return ok("replay", "-c", config, CAPTURES / f"{name}.ami", child=child)


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


def db(config: Path) -> sqlite3.Connection:
    return sqlite3.connect(config.parent / "ctid.sqlite3")


def test_export_ack_more_traffic_export_gives_exactly_the_new_rows(config: Path) -> None:
    """Replay, export, ack the last seq, replay another capture: the next export is its rows."""
    replay(config, "blind_transfer", child=True)
    first = jsonl(ok("sync", "export", "-c", config, child=True))
    assert [r["agent"] for r in first] == ["1001", "1002"]  # one activity per transfer party
    assert [r["seq"] for r in first] == sorted(r["seq"] for r in first)
    calls = jsonl(ok("sync", "export", "-c", config, "--kind", "calls", child=True))
    assert len(calls) == 1
    assert calls[0]["agents"] == ["1001", "1002"]

    last = first[-1]["seq"]
    assert b"up to seq" in ok("sync", "ack", "-c", config, str(last), child=True)
    assert ok("sync", "export", "-c", config, child=True) == b""  # nothing new since the ack

    replay(config, "inbound_answered", child=True)
    second = jsonl(ok("sync", "export", "-c", config, child=True))
    with db(config) as conn:
        want = conn.execute("SELECT id FROM activities WHERE seq > ? ORDER BY seq", (last,))
        assert [r["id"] for r in second] == [row[0] for row in want]
    assert second
    assert all(r["seq"] > last for r in second)
    assert {r["interaction_id"] for r in second}.isdisjoint(r["interaction_id"] for r in first)
    # The calls cursor is its own: both calls are still unacknowledged there.
    assert len(jsonl(ok("sync", "export", "-c", config, "--kind", "calls", child=True))) == 2


def test_export_is_idempotent_and_since_overrides_the_cursor(config: Path) -> None:
    """The same export prints the same bytes; after an ack, --since 0 gives every row again."""
    replay(config, "attended_transfer")
    first = ok("sync", "export", "-c", config)
    assert ok("sync", "export", "-c", config) == first
    last = jsonl(first)[-1]["seq"]
    ok("sync", "ack", "-c", config, str(last))
    assert ok("sync", "export", "-c", config, "--since", "0") == first
    assert (
        ok("sync", "export", "-c", config, "--since", "0", "--limit", "1")
        == (first.splitlines(keepends=True)[0])
    )


def test_limit_pages_through_every_row_once(config: Path) -> None:
    """Paging with --limit and acking each page exports every row exactly once."""
    replay(config, "outbound_busy_noanswer_failed")
    every = jsonl(ok("sync", "export", "-c", config, "--kind", "calls"))
    assert len(every) == 5
    seen: list[dict[str, Any]] = []
    while page := jsonl(ok("sync", "export", "-c", config, "--kind", "calls", "--limit", "2")):
        seen += page
        ok("sync", "ack", "-c", config, "--kind", "calls", str(page[-1]["seq"]))
    assert seen == every


def test_replaying_a_capture_twice_stores_its_rows_once(config: Path) -> None:
    """Same rows, same seqs, no outbox message queued again; the printed output is unchanged."""
    printed = replay(config, "agent_pause_unpause")

    def snapshot() -> dict[str, Any]:
        with db(config) as conn:
            return {
                table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in (
                    "calls",
                    "activities",
                    "agent_states",
                    "queue_intervals",
                    "agent_presence",
                    "outbox",
                )
            } | {"seq": conn.execute("SELECT value FROM seq_counter").fetchone()}

    before = snapshot()
    assert before["activities"]
    assert before["agent_states"]  # the capture's pauses end in state intervals
    assert before["queue_intervals"]  # its backoffice caller
    assert len(before["outbox"]) >= len(before["activities"]) + len(before["calls"])
    # For the CRM only: a page must not get the replay's old messages, with its own seqs.
    with db(config) as conn:
        topics = {row[0] for row in conn.execute("SELECT topic FROM outbox")}
    assert topics == {"v1/crm/activity", "v1/crm/calls"}  # the bus adds the prefix
    assert replay(config, "agent_pause_unpause") == printed
    assert snapshot() == before


def test_replay_stores_callbacks_and_no_store_only_prints(config: Path, tmp_path: Path) -> None:
    """Callback requests land in the store; --no-store prints the same and writes nothing."""
    printed = ok("replay", "--no-store", "-c", config, CAPTURES / "callback_userevent.ami")
    assert not (tmp_path / "ctid.sqlite3").exists()
    assert replay(config, "callback_userevent") == printed
    with db(config) as conn:
        assert conn.execute("SELECT count(*) FROM callbacks").fetchone()[0] == 2
    assert printed == (ROOT / "tests" / "golden" / "callback_userevent.jsonl").read_bytes()


def test_csv_export_parses_with_the_csv_module(config: Path) -> None:
    """A header row, then the same values as the JSON lines (nested values as JSON)."""
    replay(config, "blind_transfer")
    for kind in ("activities", "calls"):
        rows = jsonl(ok("sync", "export", "-c", config, "--kind", kind))
        text = ok("sync", "export", "-c", config, "--kind", kind, "--format", "csv").decode()
        parsed = list(csv.DictReader(io.StringIO(text, newline="")))
        assert list(parsed[0]) == list(COLUMNS[kind]) == list(rows[0])
        assert len(parsed) == len(rows)
        for got, want in zip(parsed, rows, strict=True):
            assert int(got["seq"]) == want["seq"]
            assert got["interaction_id"] == want["interaction_id"]
            assert float(got["ended_at"]) == want["ended_at"]
            assert orjson.loads(got["ended_while_disconnected"]) is want["ended_while_disconnected"]
            nested = "agents" if kind == "calls" else "extra"
            assert orjson.loads(got[nested]) == want[nested]
    for kind in ("agent-states", "queue-intervals"):
        rows = jsonl(ok("sync", "export", "-c", config, "--kind", kind))
        text = ok("sync", "export", "-c", config, "--kind", kind, "--format", "csv").decode()
        assert text.splitlines()[0] == ",".join(COLUMNS[kind])
        parsed = list(csv.DictReader(io.StringIO(text, newline="")))
        assert rows
        assert [list(r) for r in rows] == [list(COLUMNS[kind])] * len(rows)
        assert [{k: str(v) for k, v in r.items()} for r in rows] == parsed
    phones = [
        r["phone"] for r in jsonl(ok("sync", "export", "-c", config, "--kind", "agent-states"))
    ]
    assert phones == ["ringing", "talking", "ringing", "talking"]  # 1001, then 1002


def test_ack_beyond_the_last_seq_fails_clearly(config: Path) -> None:
    """Exit 1, the reason on stderr, and the cursor does not move."""
    replay(config, "inbound_answered")
    with db(config) as conn:
        last = conn.execute("SELECT value FROM seq_counter").fetchone()[0]
    proc = spawn("sync", "ack", "-c", config, str(last + 1))
    assert proc.returncode == 1
    assert f"seq {last + 1} is beyond the last seq written ({last})".encode() in proc.stderr
    assert proc.stdout == b""
    assert len(jsonl(ok("sync", "export", "-c", config))) == 1  # still from the start


def test_usage_and_missing_store_errors(config: Path) -> None:
    """A negative seq is a usage error (2); a store that does not exist is a failure (1)."""
    assert spawn("sync", "export", "-c", config, "--since", "-1").returncode == 2
    assert spawn("sync", "ack", "-c", config, "x").returncode == 2
    proc = spawn("sync", "export", "-c", config)
    assert proc.returncode == 1
    assert b"no store at" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not (config.parent / "ctid.sqlite3").exists()  # export never creates one


def test_reconcile_clean_store_then_a_lost_activity(config: Path) -> None:
    """Nothing on a clean store; a deleted activity row names its call and agent."""
    replay(config, "blind_transfer")
    replay(config, "inbound_answered")
    proc = spawn("sync", "reconcile", "-c", config)
    assert proc.returncode == 0
    assert proc.stdout == b""
    assert b"0 problems" in proc.stderr

    with db(config) as conn:
        interaction, agent = conn.execute(
            "SELECT interaction_id, agent FROM activities WHERE agent = '1002'"
        ).fetchone()
        conn.execute("DELETE FROM activities WHERE agent = '1002'")
    problems = jsonl(ok("sync", "reconcile", "-c", config))
    assert [(p["problem"], p["interaction_id"]) for p in problems] == [
        ("agent_without_activity", interaction)
    ]
    assert agent in problems[0]["detail"]

    with db(config) as conn:
        conn.execute("DELETE FROM activities WHERE interaction_id = ?", (interaction,))
    problems = jsonl(ok("sync", "reconcile", "-c", config))
    assert [(p["problem"], p["interaction_id"]) for p in problems] == [
        ("call_without_activity", interaction)
    ]
    assert problems[0]["agents"] == ["1001", "1002"]
    # --since past every row of that call: it is not checked.
    with db(config) as conn:
        (call_seq,) = conn.execute(
            "SELECT seq FROM calls WHERE interaction_id = ?", (interaction,)
        ).fetchone()
    assert ok("sync", "reconcile", "-c", config, "--since", str(call_seq)) == b""


def _activity(seq: int, agent: str, offered: float, **more: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"c1/{agent}/{seq}",
        "agent": agent,
        "interaction_id": "c1",
        "offered_at": offered,
        "answered_at": None,
        "ended_at": offered + 5,
        "seq": seq,
    }
    return row | more


def test_reconcile_rules() -> None:
    """Two parts of one agent are fine; the same part twice, a stranger's part and an
    old activity without its call are reported; a young one without its call is not."""
    call = {"interaction_id": "c1", "agents": ["1001", "1002"], "seq": 10}
    rung_twice = [_activity(1, "1001", 100.0), _activity(2, "1001", 130.0), _activity(3, "1002", 1)]
    (note,) = reconcile([call], rung_twice, now=200, max_call_age_s=60)
    assert (note["problem"], note["severity"]) == ("more_activities_than_agents", "info")
    assert note["detail"].startswith("3 activities, 2 agent(s) involved: 3 distinct parts")

    doubled = [*rung_twice, _activity(4, "1001", 130.0), _activity(5, "1003", 140.0)]
    problems = reconcile([call], doubled, now=200, max_call_age_s=60)
    assert [(p["problem"], p["severity"]) for p in problems] == [
        ("activity_of_uninvolved_agent", "error"),
        ("more_activities_than_agents", "error"),
        ("duplicate_activity", "error"),
    ]
    assert problems[0]["activities"][0]["agent"] == "1003"
    assert [a["id"] for a in problems[2]["activities"]] == ["c1/1001/2", "c1/1001/4"]

    orphan = [_activity(1, "1001", 100.0)]
    assert reconcile([], orphan, now=150, max_call_age_s=60) == []
    late = reconcile([], orphan, now=1000, max_call_age_s=60)
    assert [p["problem"] for p in late] == ["activity_without_call"]
    assert late[0]["call_seq"] is None

    nobody = {"interaction_id": "c2", "agents": [], "seq": 11}
    assert reconcile([nobody], [], now=200, max_call_age_s=60) == []  # abandoned in the IVR
