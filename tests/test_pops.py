"""Screen pops with the contact directory, end to end on real parts.

A directory is imported into the daemon's directory file so that the caller of a
real capture matches each way the CIC seed lists (none, single, multiple, a
contact within an organization, an organization with its contacts; no ANI
from ``inbound_no_ani``; an account id the IVR attached). The capture is replayed
by the simulator into the daemon, and the test reads alice's pops from a real
Mosquitto as alice, with their arrival times where the deadline matters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from ctid.adapters.directory import Directory
from ctid.config import Config
from ctid.core.ami import AmiMessage
from ctid.directory_import import SourceRow
from ctid.sim.capture import Capture, load_capture
from ctid.sim.server import AmiSimulator
from tests.broker import MosquittoBroker
from tests.command_rig import until
from tests.test_slice_inbound import (
    CAPTURES,
    SECRET,
    daemon_config,
    queue_member,
    running_daemon,
)

MAX = "+4930123456"  # the caller of inbound_answered ("Max Mustermann")

PERSON = {"id": "crm-1", "kind": "person", "name": "Max Mustermann", "numbers": [MAX]}
TWIN = {"id": "crm-2", "kind": "person", "name": "Moritz Mustermann", "numbers": [MAX]}
ORG = {"id": "org-1", "kind": "organization", "name": "Muster GmbH", "numbers": ["+4930999000"]}
ORG_WITH_NUMBER = {**ORG, "numbers": [MAX]}
CONTACT = {
    "id": "crm-7",
    "kind": "contact",
    "name": "Max Mustermann",
    "organization": "org-1",
    "numbers": [MAX],
}
COLLEAGUE = {
    "id": "crm-8",
    "kind": "contact",
    "name": "Erika Musterfrau",
    "organization": "org-1",
    "numbers": ["+4930999001"],
}


def entry(obj: dict[str, Any]) -> dict[str, Any]:
    """An entry in the DESIGN's import format (numbers typed as work numbers)."""
    out = dict(obj)
    out["numbers"] = [{"type": "work", "number": n} for n in obj.get("numbers", [])]
    return out


def source_rows(entries: list[dict[str, Any]]) -> list[SourceRow]:
    return [SourceRow(line=n + 1, fields=entry(e)) for n, e in enumerate(entries)]


async def load_directory(config: Config, entries: list[dict[str, Any]]) -> None:
    async with Directory.open(config.store) as directory:
        report = await directory.import_rows(source_rows(entries))
        assert report.error_count == 0, report.errors


async def pops_for(
    broker: MosquittoBroker,
    capture: str | Sequence[AmiMessage],
    entries: list[dict[str, Any]],
    *,
    until_phase: str = "accepted",
) -> list[dict[str, Any]]:
    """alice's pops for a capture (its name, or its events) with the directory ``entries``,
    until one in ``until_phase`` has come and the lookup has answered."""
    source = CAPTURES / f"{capture}.ami" if isinstance(capture, str) else capture
    async with AmiSimulator(secret=SECRET) as sim:
        sim.set_list("QueueStatus", [queue_member("PJSIP/1001", "support")])
        config = daemon_config(broker, sim)
        await load_directory(config, entries)
        got: list[dict[str, Any]] = []
        async with broker.client("alice") as alice:
            await alice.subscribe("ctid/v1/agents/alice/pop", qos=1)
            async with running_daemon(config, sim):
                # At twice the recorded pace: the phone rings 1.5 s, the call lasts
                # 3 s, time enough for a lookup even on a loaded machine.
                await sim.replay(source, 2.0)
                async with asyncio.timeout(15):
                    async for message in alice.messages:
                        assert isinstance(message.payload, bytes)
                        pop = orjson.loads(message.payload)
                        got.append(pop)
                        phases = {p["phase"] for p in got}
                        if until_phase in phases and any(p["lookup"] == "done" for p in got):
                            break
    return got


def settled(pops: list[dict[str, Any]]) -> dict[str, Any]:
    """The match of the last pop whose lookup finished."""
    done = [p for p in pops if p["lookup"] == "done"]
    assert done, pops
    return dict(done[-1]["match"])


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([], {"kind": "none", "records": []}),
        (
            [PERSON],
            {
                "kind": "single",
                "records": [{"id": "crm-1", "kind": "person", "name": "Max Mustermann"}],
            },
        ),
        (
            [PERSON, TWIN],
            {
                "kind": "multiple",
                "records": [
                    {"id": "crm-1", "kind": "person", "name": "Max Mustermann"},
                    {"id": "crm-2", "kind": "person", "name": "Moritz Mustermann"},
                ],
            },
        ),
        (
            [ORG, CONTACT, COLLEAGUE],
            {
                "kind": "org_contact",
                "records": [
                    {
                        "id": "crm-7",
                        "kind": "contact",
                        "name": "Max Mustermann",
                        "organization": {"id": "org-1", "name": "Muster GmbH"},
                    }
                ],
            },
        ),
    ],
    ids=["none", "single", "multiple", "org_contact"],
)
async def test_match_kinds(
    mosquitto: MosquittoBroker, entries: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    """The pop's match is what the directory says for the caller's number."""
    pops = await pops_for(mosquitto, "inbound_answered", entries)
    # Two steps: the pop goes out at once with the number, the match follows.
    assert pops[0]["phase"] == "alerting"
    assert pops[0]["number"]["e164"] == MAX
    assert pops[0]["lookup"] in ("pending", "done")
    assert settled(pops) == expected
    assert any(p["phase"] == "accepted" for p in pops)


async def test_organization_with_its_contacts(mosquitto: MosquittoBroker) -> None:
    """A number of an organization pops the organization and lists its contacts."""
    pops = await pops_for(mosquitto, "inbound_answered", [ORG_WITH_NUMBER, COLLEAGUE])
    match = settled(pops)
    assert match["kind"] == "organization"
    assert [r["id"] for r in match["records"]] == ["org-1"]
    assert [c["id"] for c in match["contacts"]] == ["crm-8"]


def identified_by_ivr(variable: str, value: str) -> list[AmiMessage]:
    """inbound_answered with the IVR having set ``variable`` on the caller's channel before
    the call queued (``Set(CTI_ACCOUNT=...)`` in the dialplan: a ``VarSet`` event)."""
    events = list(load_capture(CAPTURES / "inbound_answered.ami").replay_events)
    queued = next(i for i, e in enumerate(events) if e.event == "QueueCallerJoin")
    caller = events[queued].get("Channel")
    last = max(
        i
        for i in range(queued)
        if events[i].event == "VarSet" and events[i].get("Channel") == caller
    )
    changed = {"Variable": variable, "Value": value}
    varset = AmiMessage(tuple((k, changed.get(k, v)) for k, v in events[last].headers))
    return [*events[: last + 1], varset, *events[last + 1 :]]


@pytest.mark.parametrize(
    ("variable", "account", "expected"),
    [
        (
            "ACCOUNT",
            "org-1",
            {
                "kind": "organization",
                "records": [{"id": "org-1", "kind": "organization", "name": "Muster GmbH"}],
                "contacts": [{"id": "crm-8", "kind": "contact", "name": "Erika Musterfrau"}],
            },
        ),
        (
            "ACCOUNT_ID",
            "crm-8",
            {
                "kind": "org_contact",
                "records": [
                    {
                        "id": "crm-8",
                        "kind": "contact",
                        "name": "Erika Musterfrau",
                        "organization": {"id": "org-1", "name": "Muster GmbH"},
                    }
                ],
            },
        ),
    ],
    ids=["organization", "org_contact"],
)
async def test_an_account_from_the_ivr_pops_its_record(
    mosquitto: MosquittoBroker, variable: str, account: str, expected: dict[str, Any]
) -> None:
    """An IVR that identified the caller (``CTI_ACCOUNT`` or ``CTI_ACCOUNT_ID``) pops that
    record with its match kind, not what the caller's number would match."""
    prefix = mosquitto.config.calls.attached_prefix
    # The caller's number (MAX) is crm-1's: a lookup by number would pop crm-1 (single).
    capture = identified_by_ivr(prefix + variable, account)
    pops = await pops_for(mosquitto, capture, [PERSON, ORG, COLLEAGUE])
    assert pops[0]["phase"] == "alerting"
    assert pops[0]["number"]["e164"] == MAX  # the pop still shows the number
    assert pops[0]["attached"][variable] == account
    assert settled(pops) == expected
    shown = {r["id"] for p in pops for r in p["match"]["records"]}
    assert "crm-1" not in shown
    assert any(p["phase"] == "accepted" for p in pops)


async def test_no_ani(mosquitto: MosquittoBroker) -> None:
    """A caller without a number pops ``no_ani`` at once: nothing to look up."""
    pops = await pops_for(mosquitto, "inbound_no_ani", [PERSON])
    assert pops[0]["number"]["kind"] == "no_ani"
    assert pops[0]["match"] == {"kind": "no_ani", "records": []}
    assert {p["lookup"] for p in pops} == {"done"}


DEADLINE_S = 0.5  # calls.lookup_deadline_s for the slow lookup
LOCK_HELD_S = 3.0  # how long the slow lookup waits (below the directory's 5 s busy timeout)


def ringing_at(capture: Capture) -> int:
    """The event that rings alice's phone: her first pop and the lookup go out on it."""
    return next(
        i
        for i, e in enumerate(capture.replay_events)
        if e.event == "Newstate"
        and e.get("ChannelStateDesc") == "Ringing"
        and e.get("Channel").startswith("PJSIP/1001-")
    )


def epoch_s(iso: str) -> float:
    """A payload's ``ts`` (ISO-8601 UTC, milliseconds) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def timed_pops(
    client: aiomqtt.Client,
    done: Callable[[list[tuple[float, dict[str, Any]]]], bool],
    within_s: float = 15.0,
) -> list[tuple[float, dict[str, Any]]]:
    """Pops as they arrive, each with its arrival (``time.monotonic()``), until ``done``."""
    got: list[tuple[float, dict[str, Any]]] = []
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            arrived = time.monotonic()
            assert isinstance(message.payload, bytes)
            got.append((arrived, orjson.loads(message.payload)))
            if done(got):
                break
    return got


async def release_after(lock: sqlite3.Connection, at: float) -> float:
    """End ``lock``'s write transaction at ``at`` (monotonic); when it began to end."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    released = time.monotonic()
    lock.execute("ROLLBACK")
    return released


async def test_a_slow_lookup_does_not_hold_the_pop_back(mosquitto: MosquittoBroker) -> None:
    """A lookup held up for seconds: the pop is out at once (``pending``), says ``timeout``
    at the deadline, and gets the match when the directory answers.

    What holds the lookup up is real. The daemon looks up on the event loop's thread
    while SQLite's page cache holds the directory, and otherwise through its aiosqlite
    connection's thread, one statement after the other. A read in WAL mode never
    waits for a lock, so it is made to wait behind a write on that connection: an
    agent's choice being remembered while another connection (an import) holds the
    write lock; and an import by another connection has just emptied the page cache.
    """
    capture = load_capture(CAPTURES / "inbound_answered.ami")
    ringing = ringing_at(capture)
    async with AmiSimulator(secret=SECRET) as sim:
        sim.set_list("QueueStatus", [queue_member("PJSIP/1001", "support")])
        config = daemon_config(mosquitto, sim)
        config = dataclasses.replace(
            config, calls=dataclasses.replace(config.calls, lookup_deadline_s=DEADLINE_S)
        )
        await load_directory(config, [PERSON])
        lock = sqlite3.connect(config.store.directory_file, isolation_level=None, timeout=5.0)
        try:
            async with mosquitto.client("alice") as alice:
                await alice.subscribe("ctid/v1/agents/alice/pop", qos=1)
                async with (
                    running_daemon(config, sim) as daemon,
                    Directory.open(config.store) as other,  # `ctid directory import`
                ):
                    directory = daemon._directory
                    assert directory is not None
                    await until(lambda: directory.inline, what="the daemon's directory warm")
                    await sim.replay(capture, None, stop=ringing)  # the call, until alice rings

                    # The daemon's tick checks the directory every revalidate_s (1 s),
                    # and a check that finds the page cache emptied warms it again. An
                    # import, and the check that follows it: the next check is 1 s away.
                    warmups = directory.warmups
                    await other.import_rows(source_rows([ORG]))
                    await until(
                        lambda: directory.warmups > warmups and directory.inline,
                        what="the daemon's tick to warm the directory again",
                    )
                    # Within that second: another import empties the cache, the lookup
                    # cannot run inline; another import's batch holds the write lock,
                    # and the daemon's thread waits for it, remembering a choice.
                    await other.import_rows(source_rows([COLLEAGUE]))
                    lock.execute("BEGIN IMMEDIATE")
                    release = asyncio.create_task(
                        release_after(lock, time.monotonic() + LOCK_HELD_S)
                    )
                    choice = asyncio.create_task(  # for COLLEAGUE's number
                        directory.remember_choice("+4930999001", "crm-8")
                    )
                    await asyncio.sleep(0)  # the choice is queued on the thread first
                    collect = asyncio.create_task(
                        timed_pops(alice, lambda got: got[-1][1]["lookup"] == "done")
                    )
                    # Only the ringing now, and nothing after it until the match is in:
                    # the pop and the timeout are stamped on this one event's clock.
                    await sim.replay(capture, None, start=ringing, stop=ringing + 1)
                    pops = await collect
                    released = await release
                    await choice  # it waited for the lock, then was written
                    # The rest of the call: the match stays on the later pops.
                    await sim.replay(capture, None, start=ringing + 1)
                    rest = await timed_pops(alice, lambda got: got[-1][1]["phase"] == "accepted")
        finally:
            if lock.in_transaction:
                lock.execute("ROLLBACK")
            lock.close()

    assert [(p["phase"], p["lookup"]) for _, p in pops] == [
        ("alerting", "pending"),
        ("alerting", "timeout"),
        ("alerting", "done"),
    ]
    (pending_at, pending), (timeout_at, timeout), (done_at, done) = pops
    # The pop is out before the deadline: the number, no match yet.
    assert pending["number"]["e164"] == MAX
    assert pending["match"] == {"kind": "none", "records": []}
    # The timeout marker comes at the deadline (not sooner), while the lookup still
    # waits for the lock (long before it could answer).
    assert timeout_at - pending_at >= 0.9 * DEADLINE_S
    assert timeout_at < released
    assert timeout["match"] == {"kind": "none", "records": []}
    # Stamped when the deadline fired, not when the lookup began or answered.
    stamped = epoch_s(timeout["ts"]) - epoch_s(pending["ts"])
    assert 0.9 * DEADLINE_S <= stamped < LOCK_HELD_S
    # The match follows once the lookup could run.
    assert done_at >= released
    assert done["match"] == {
        "kind": "single",
        "records": [{"id": "crm-1", "kind": "person", "name": "Max Mustermann"}],
    }
    assert [(p["lookup"], p["match"]) for _, p in rest] == [("done", done["match"])]


async def test_select_is_offered_first_next_time(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """After alice picks one of several matches, that record comes first for the number."""
    async with AmiSimulator(secret=SECRET) as sim:
        config = daemon_config(mosquitto, sim)
        await load_directory(config, [PERSON, TWIN])
        async with Directory.open(config.store) as directory:
            await directory.remember_choice(MAX, "crm-2")
            match = (await directory.lookup(MAX)).as_payload()
    assert match["kind"] == "multiple"
    assert match["remembered"] == "crm-2"
    assert match["records"][0]["id"] == "crm-2"


async def search_reply(client: aiomqtt.Client, payload: dict[str, Any]) -> dict[str, Any]:
    await client.publish("ctid/v1/agents/alice/cmd", orjson.dumps(payload), qos=1)
    async with asyncio.timeout(10):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            reply = orjson.loads(message.payload)
            if reply.get("id") == payload["id"]:
                return dict(reply)
    raise AssertionError("no reply")


async def test_quick_search_command(mosquitto: MosquittoBroker) -> None:
    """``search`` with ``=`` and ``like`` (``%`` wildcards) over the directory, limited."""
    async with AmiSimulator(secret=SECRET) as sim:
        config = daemon_config(mosquitto, sim)
        await load_directory(config, [PERSON, TWIN, ORG, COLLEAGUE])
        async with mosquitto.client("alice") as alice, running_daemon(config, sim):
            await alice.subscribe("ctid/v1/agents/alice/reply", qos=1)
            like = await search_reply(
                alice, {"id": "s1", "cmd": "search", "field": "name", "op": "like", "value": "M%"}
            )
            exact = await search_reply(
                alice,
                {"id": "s2", "cmd": "search", "field": "name", "op": "=", "value": "Muster GmbH"},
            )
            limited = await search_reply(
                alice,
                {
                    "id": "s3",
                    "cmd": "search",
                    "field": "name",
                    "op": "like",
                    "value": "M%",
                    "limit": 2,
                },
            )
            bad = await search_reply(
                alice, {"id": "s4", "cmd": "search", "field": "salary", "op": "=", "value": "1"}
            )
    assert like["ok"] is True
    assert sorted(r["id"] for r in like["result"]["records"]) == ["crm-1", "crm-2", "org-1"]
    assert [r["id"] for r in exact["result"]["records"]] == ["org-1"]
    assert len(limited["result"]["records"]) == 2
    assert bad["ok"] is False
    assert bad["error"]["code"] == "bad_request"


async def test_select_command_is_remembered_for_the_next_call(mosquitto: MosquittoBroker) -> None:
    """alice picks crm-2 among two matches during a call; the next call from that number
    pops with crm-2 first and ``remembered: crm-2``."""
    capture = load_capture(CAPTURES / "inbound_answered.ami")
    talking = next(i for i, e in enumerate(capture.replay_events) if e.event == "BridgeEnter")
    async with AmiSimulator(secret=SECRET) as sim:
        sim.set_list("QueueStatus", [queue_member("PJSIP/1001", "support")])
        config = daemon_config(mosquitto, sim)
        await load_directory(config, [PERSON, TWIN])
        async with mosquitto.client("alice") as alice, running_daemon(config, sim):
            await alice.subscribe("ctid/v1/agents/alice/#", qos=1)
            await sim.replay(capture, 5.0, stop=talking + 1)
            select = {
                "id": "pick",
                "cmd": "select",
                "interaction": "1795308161.0",
                "record": "crm-2",
            }
            await alice.publish("ctid/v1/agents/alice/cmd", orjson.dumps(select), qos=1)
            async with asyncio.timeout(10):
                async for message in alice.messages:
                    if message.topic.value.endswith("/reply"):
                        assert isinstance(message.payload, bytes)
                        reply = orjson.loads(message.payload)
                        break
            assert (reply["id"], reply["ok"]) == ("pick", True), reply
            await sim.replay(capture, None, start=talking + 1)
            # The same caller again (the capture replayed once more).
            await sim.replay(capture, 5.0)
            async with asyncio.timeout(15):
                async for message in alice.messages:
                    assert isinstance(message.payload, bytes)
                    pop = orjson.loads(message.payload)
                    if pop.get("type") == "pop" and pop["match"].get("remembered") == "crm-2":
                        break
    assert [r["id"] for r in pop["match"]["records"]] == ["crm-2", "crm-1"]
