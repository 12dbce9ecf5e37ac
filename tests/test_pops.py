"""Screen pops with the contact directory, end to end on real parts.

A directory is imported into the daemon's directory file so that the caller of a
real capture matches each way the CIC seed lists (none, single, multiple, a
contact within an organization, an organization with its contacts; no ANI
from ``inbound_no_ani``). The capture is replayed by the simulator into the
daemon, and the test reads alice's pops from a real Mosquitto as alice.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from ctid.adapters.directory import Directory
from ctid.app import Daemon
from ctid.config import CallsConfig, Config
from ctid.directory_import import SourceRow
from ctid.sim.capture import load_capture
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


async def load_directory(config: Config, entries: list[dict[str, Any]]) -> None:
    async with Directory.open(config.store) as directory:
        rows = [SourceRow(line=n + 1, fields=entry(e)) for n, e in enumerate(entries)]
        report = await directory.import_rows(rows)
        assert report.error_count == 0, report.errors


async def pops_for(
    broker: MosquittoBroker,
    capture: str,
    entries: list[dict[str, Any]],
    *,
    adjust: Any = None,
    until_phase: str = "accepted",
    before_call: Callable[[Config, Daemon], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """alice's pops for a capture with the directory ``entries``, until one in ``until_phase``
    has come and the lookup has answered (``before_call`` runs once the daemon is up)."""
    async with AmiSimulator(secret=SECRET) as sim:
        sim.set_list("QueueStatus", [queue_member("PJSIP/1001", "support")])
        config = daemon_config(broker, sim)
        if adjust is not None:
            config = adjust(config)
        await load_directory(config, entries)
        got: list[dict[str, Any]] = []
        async with broker.client("alice") as alice:
            await alice.subscribe("ctid/v1/agents/alice/pop", qos=1)
            async with running_daemon(config, sim) as daemon:
                if before_call is not None:
                    await before_call(config, daemon)
                # At twice the recorded pace: the phone rings 1.5 s, the call lasts
                # 3 s, time enough for a lookup even on a loaded machine.
                await sim.replay(CAPTURES / f"{capture}.ami", 2.0)
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


async def test_no_ani(mosquitto: MosquittoBroker) -> None:
    """A caller without a number pops ``no_ani`` at once: nothing to look up."""
    pops = await pops_for(mosquitto, "inbound_no_ani", [PERSON])
    assert pops[0]["number"]["kind"] == "no_ani"
    assert pops[0]["match"] == {"kind": "no_ani", "records": []}
    assert {p["lookup"] for p in pops} == {"done"}


async def test_a_slow_lookup_does_not_hold_the_pop_back(mosquitto: MosquittoBroker) -> None:
    """With a deadline shorter than the lookup, the pop is out before the deadline, marked
    ``timeout`` at it, and updated with the match when the directory answers."""

    def zero_deadline(config: Config) -> Config:
        # A deadline of 0: it fires on the loop's next turn, before an answer from
        # SQLite's worker thread can.
        return dataclasses.replace(config, calls=CallsConfig(lookup_deadline_s=0.0))

    async def cold_cache(config: Config, daemon: Daemon) -> None:
        # Once warm, lookups run inline and answer at once. A commit by another
        # connection (an import) makes the next lookup go through the worker thread.
        directory = daemon._directory
        assert directory is not None
        await until(lambda: directory.inline, what="the daemon's directory warm")
        await load_directory(config, [COLLEAGUE])

    pops = await pops_for(
        mosquitto, "inbound_answered", [PERSON], adjust=zero_deadline, before_call=cold_cache
    )
    alerting = [p for p in pops if p["phase"] == "alerting"]
    assert [p["lookup"] for p in alerting][:2] == ["pending", "timeout"]
    assert alerting[0]["match"] == {"kind": "none", "records": []}  # only the number yet
    assert settled(pops)["kind"] == "single"  # the late answer still arrives


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
