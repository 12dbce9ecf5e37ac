"""``ctid sync``: incremental export to a CRM, acknowledgement, reconciliation.

Every row of ``calls``, ``activities``, ``agent_states`` and ``queue_intervals``
carries ``seq``, one sequence across the four tables, given on every insert and
every update (an updated row comes again, with a higher ``seq``). A CRM exports
the rows of one kind after its cursor, stores them (upsert by ``id`` /
``interaction_id`` / ``(queue, interval_start)``: a queue interval's counters
come again whenever a call changes them) and acknowledges the last ``seq`` it
took. Export only reads: the same command gives the same rows until something
new is written, so re-exporting after a crash on either side loses and
duplicates nothing. Writers commit one transaction at a time, so no row with a
lower ``seq`` can appear after one with a higher ``seq`` has been seen: a cursor
never skips a row.

Reconciliation checks what a CRM administrator needs to trust the numbers
(``reconcile``; each finding is one JSON line with ``severity`` ``error``, or
``info`` for what is worth a look but can be right):

- ``call_without_activity``: a call with agents involved but no activity at all.
- ``agent_without_activity``: an agent the call lists has no activity in it
  (activities are one per agent per part, so every involved agent has one).
- ``activity_of_uninvolved_agent``: an activity of an agent the call does not list.
- ``duplicate_activity``: two or more activities of one interaction with the same
  agent, offer time and answer time: one part recorded twice under different ids.
  Raw counts are not compared: an agent may legitimately have several parts in
  one call (rung twice, or taken back after a transfer), each with its own id
  and its own offer time, so "more activities than agents" is not an error by
  itself; the same part twice is.
- ``more_activities_than_agents``: the issue's count rule, kept so a CRM that
  compares counts sees why they differ: ``info`` when every activity is a part
  of its own (different offer or answer time), ``error`` when some part repeats
  (then ``duplicate_activity`` names them).
- ``activity_without_call``: activities whose call row is missing although the
  last of them ended more than ``calls.max_call_age_s`` ago (by then the daemon
  has closed the call, even one whose hangup it never saw). Younger ones may
  belong to a call still going on and are not reported.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import IO, Any, Final

import orjson

from ctid.adapters.store import QUEUE_INTERVAL_COLS, Store
from ctid.core.records import ActivityRecord, AgentStateInterval, CallRecord, ExportKind

FORMATS: Final = ("jsonl", "csv")

# The columns of each kind, in the order ``Store.export`` gives them.
COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "calls": (*(f.name for f in fields(CallRecord)), "seq"),
    "activities": (*(f.name for f in fields(ActivityRecord)), "seq"),
    "agent-states": ("id", *(f.name for f in fields(AgentStateInterval)), "seq"),
    "queue-intervals": (*QUEUE_INTERVAL_COLS, "seq"),
}


def default_consumer(kind: str) -> str:
    """The cursor's name when none is given: one per kind (the sequence is shared)."""
    return f"crm/{kind}"


async def export_rows(
    store: Store, since: int, kind: ExportKind, limit: int | None
) -> tuple[list[dict[str, Any]], bool]:
    """Rows of ``kind`` after ``since`` (at most ``limit``), and whether more follow."""
    rows = await store.export(since, kind, None if limit is None else limit + 1)
    if limit is not None and len(rows) > limit:
        return rows[:limit], True
    return rows, False


def write_jsonl(rows: Iterable[dict[str, Any]], out: IO[bytes]) -> None:
    """One JSON object per row and line."""
    for row in rows:
        out.write(orjson.dumps(row) + b"\n")


def csv_cell(value: Any) -> str:
    """A CSV cell: null is empty, booleans and nested values are JSON, the rest as is."""
    if value is None:
        return ""
    if isinstance(value, bool | dict | list | tuple):
        return orjson.dumps(value).decode()
    return str(value)


def write_csv(rows: Iterable[dict[str, Any]], kind: str, out: IO[str]) -> None:
    """A header row (always, even with no rows), then one row per record (RFC 4180)."""
    columns = COLUMNS[kind]
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])


def reconcile(
    calls: Sequence[dict[str, Any]],
    activities: Sequence[dict[str, Any]],
    *,
    now: float,
    max_call_age_s: float,
) -> list[dict[str, Any]]:
    """The problems of these interactions (see the module's docstring).

    In the order of each interaction's newest row (seq), and per interaction in
    the order of the checks.

    ``calls`` and ``activities`` are export rows (with ``seq``) holding every row
    of each interaction to check.
    """
    call_of = {c["interaction_id"]: c for c in calls}
    parts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in activities:
        parts[a["interaction_id"]].append(a)
    found: list[tuple[int, dict[str, Any]]] = []

    def report(
        problem: str,
        interaction: str,
        rows: Sequence[dict[str, Any]],
        detail: str,
        severity: str = "error",
    ) -> None:
        call = call_of.get(interaction)
        newest = max(r["seq"] for r in [*parts.get(interaction, []), *([call] if call else [])])
        found.append(
            (
                newest,
                {
                    "problem": problem,
                    "severity": severity,
                    "interaction_id": interaction,
                    "call_seq": call["seq"] if call else None,
                    "agents": list(call["agents"]) if call else [],
                    "activities": [
                        {"id": r["id"], "agent": r["agent"], "seq": r["seq"]} for r in rows
                    ],
                    "detail": detail,
                },
            )
        )

    for interaction in sorted(call_of.keys() | parts.keys()):
        call = call_of.get(interaction)
        rows = parts.get(interaction, [])
        if call is None:
            ended = max(r["ended_at"] for r in rows)
            if now - ended > max_call_age_s:
                report(
                    "activity_without_call",
                    interaction,
                    rows,
                    f"no call row, and its last activity ended {now - ended:.0f} s ago",
                )
            continue
        agents = list(dict.fromkeys(call["agents"]))
        if agents and not rows:
            report(
                "call_without_activity",
                interaction,
                [],
                f"{len(agents)} agent(s) involved, no activity",
            )
            continue
        with_parts = {r["agent"] for r in rows}
        for agent in agents:
            if agent not in with_parts:
                report(
                    "agent_without_activity",
                    interaction,
                    [],
                    f"agent {agent} is involved but has no activity",
                )
        for agent in sorted(with_parts - set(agents)):
            mine = [r for r in rows if r["agent"] == agent]
            report(
                "activity_of_uninvolved_agent",
                interaction,
                mine,
                f"agent {agent} has {len(mine)} activity(ies) but is not among the call's agents",
            )
        same_part: dict[tuple[str, float, float | None], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            same_part[r["agent"], r["offered_at"], r["answered_at"]].append(r)
        if agents and len(rows) > len(agents):
            repeated = any(len(dups) > 1 for dups in same_part.values())
            report(
                "more_activities_than_agents",
                interaction,
                rows,
                f"{len(rows)} activities, {len(agents)} agent(s) involved: "
                + (
                    "some part recorded more than once"
                    if repeated
                    else f"{len(same_part)} distinct parts (an agent rung again or taken back)"
                ),
                "error" if repeated else "info",
            )
        for (agent, _, _), dups in same_part.items():
            if len(dups) > 1:
                report(
                    "duplicate_activity",
                    interaction,
                    dups,
                    f"{len(dups)} activities of agent {agent} for one part "
                    "(same offer and answer time)",
                )
    found.sort(key=lambda item: item[0])
    return [problem for _, problem in found]
