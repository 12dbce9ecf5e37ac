"""A directory import while the daemon runs shows in the next pop, not 30 s later.

The daemon answers a caller it has looked up before from the model's own cache
of matches, without asking the directory. An import by ``ctid directory
import`` (another process: here another connection to the directory file) must
clear that cache too, or a known caller pops with the record as it was.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ctid.adapters.directory import Directory
from ctid.directory_import import SourceRow
from ctid.sim.server import AmiSimulator
from tests.broker import MosquittoBroker
from tests.command_rig import until
from tests.fuzz_support import slot_events
from tests.test_pops import PERSON, entry, load_directory
from tests.test_slice_inbound import SECRET, daemon_config, queue_member, running_daemon


async def test_an_import_reaches_the_next_pop_of_a_known_caller(
    mosquitto: MosquittoBroker,
) -> None:
    async with AmiSimulator(secret=SECRET) as sim:
        sim.set_list("QueueStatus", [queue_member("PJSIP/1001", "support")])
        config = daemon_config(mosquitto, sim)
        await load_directory(config, [PERSON])
        pops: list[dict[str, Any]] = []

        async def settled_pop(interaction: str | None) -> dict[str, Any]:
            """The first pop whose lookup is done, of ``interaction`` or of a new one."""
            async with asyncio.timeout(15):
                async for message in alice.messages:
                    assert isinstance(message.payload, bytes)
                    pop = orjson.loads(message.payload)
                    pops.append(pop)
                    new = interaction is None or pop["interaction_id"] != interaction
                    if new and pop["lookup"] == "done":
                        return dict(pop)
            raise AssertionError("no pop")

        async with mosquitto.client("alice") as alice:
            await alice.subscribe("ctid/v1/agents/alice/pop", qos=1)
            async with running_daemon(config, sim) as daemon:
                # The same caller twice (inbound_answered re-keyed), in wall-clock time.
                first_call = [m for m, _ in slot_events("inbound_answered", 0)]
                await sim.replay(first_call, 4.0, retime=True)
                first = await settled_pop(None)
                assert first["match"]["records"][0]["name"] == "Max Mustermann"
                assert daemon.model.match_cache  # the model now answers this caller itself

                async with Directory.open(config.store) as other:
                    rows = [{**entry(PERSON), "name": "Max Neumann"}]
                    report = await other.import_rows(
                        [SourceRow(line=1, fields=row) for row in rows]
                    )
                    assert report.updated == 1
                # The daemon notices within revalidate_s (1 s) and a tick (0.5 s).
                await until(lambda: not daemon.model.match_cache, 5.0, "the cache cleared")

                second_call = [m for m, _ in slot_events("inbound_answered", 1)]
                await sim.replay(second_call, 4.0, retime=True)
                second = await settled_pop(first["interaction_id"])
    assert second["interaction_id"] != first["interaction_id"]
    assert second["match"]["records"][0]["name"] == "Max Neumann"
    stale = [
        p
        for p in pops
        if p["interaction_id"] == second["interaction_id"]
        and any(r["name"] == "Max Mustermann" for r in p["match"]["records"])
    ]
    assert stale == []
