"""The resumable per-agent stream (issue 6): ``seq``, the message log and ``replay``.

Every message on an agent's topics carries a per-agent ``seq``. The daemon logs
each one in SQLite before publishing it, so the ``replay {since}`` command can
re-send what a page missed (up to ``commands.replay_window``), and a restarted
daemon goes on after the last seq instead of starting again at 1. All through a
real Mosquitto, the AMI simulator and a real SQLite file.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from ctid.adapters.store import AgentMessage, Store
from ctid.config import Config
from tests.command_rig import (
    CAPTURES,
    Rig,
    command_rig,
    commands_config,
    fast_client,
    logged_in,
    until,
)

STREAM = "ctid/v1/agents/alice/"


@pytest.fixture
def ctid_config(tmp_path: Path) -> Config:
    return commands_config(tmp_path)


def stream(rig: Rig, start: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """alice's sequenced messages (not replies), live ones only, in arrival order."""
    return [
        (t, p)
        for t, p in rig.users["alice"].got[start:]
        if t.startswith(STREAM) and isinstance(p, dict) and "seq" in p and not p.get("replayed")
    ]


async def caught_up(rig: Rig) -> None:
    """Wait until alice's page has every message the model has given a seq so far."""

    def done() -> bool:
        live = stream(rig)
        return bool(live) and live[-1][1]["seq"] == rig.daemon.model.agents["alice"].seq

    await until(done, what="alice's page caught up")


async def a_whole_call(rig: Rig) -> None:
    """Replay inbound_answered to its end; wait for alice's activity and what follows it."""
    await rig.sim.replay(CAPTURES / "inbound_answered.ami", None)
    await rig.users["alice"].wait_for(lambda t, p: t == STREAM + "activity")
    await caught_up(rig)


async def replay(rig: Rig, since: int, command_id: str = "r") -> tuple[dict[str, Any], list[Any]]:
    """Send ``replay``; its reply and the re-sent messages that came before it."""
    start = len(rig.users["alice"].got)
    reply, actions = await rig.command({"id": command_id, "cmd": "replay", "since": since})
    assert actions == []
    resent = [
        (t, p)
        for t, p in rig.users["alice"].got[start:]
        if isinstance(p, dict) and p.get("replayed") is True
    ]
    return reply, resent


async def test_replay_resends_exactly_what_was_published_after_since(
    ctid_config: Config,
) -> None:
    """A page that last saw seq N asks for the rest: it gets every later message, in order,
    on its own topic, with the same payload (plus ``replayed: true``), and then the reply."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await a_whole_call(rig)
        live = stream(rig)
        seqs = [p["seq"] for _, p in live]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gap, no repeat"
        leaves = {t.removeprefix(STREAM) for t, _ in live}
        assert {"state", "pop", "call", "activity", "snapshot"} <= leaves

        since = live[2][1]["seq"]
        reply, resent = await replay(rig, since)
        expected = [(t, {**p, "replayed": True}) for t, p in live[3:]]
        assert resent == expected
        assert reply["ok"] is True, reply
        assert reply["result"] == {
            "since": since,
            "resent": len(expected),
            "first_seq": since + 1,
            "last_seq": seqs[-1],
            "seq": seqs[-1],
            "lost": 0,
            "more": False,
        }
        # The reply is the last of it: every re-sent message arrived before it.
        got = rig.users["alice"].got
        reply_at = max(i for i, (t, _) in enumerate(got) if t == STREAM + "reply")
        assert all(not (isinstance(p, dict) and p.get("replayed")) for _, p in got[reply_at:])

        # Nothing missed: nothing re-sent.
        reply, resent = await replay(rig, seqs[-1], "r2")
        assert resent == []
        assert reply["result"]["resent"] == 0
        assert reply["result"]["seq"] == seqs[-1]
        # A seq from the future (a page older than the store): nothing, and the real seq.
        reply, resent = await replay(rig, seqs[-1] + 1000, "r3")
        assert (resent, reply["result"]["seq"], reply["result"]["lost"]) == ([], seqs[-1], 0)


async def test_replayed_retained_topics_stay_the_latest(ctid_config: Config) -> None:
    """Re-sent states and snapshots are never retained: a page that connects after a replay
    still gets the latest state, not an old one."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await a_whole_call(rig)
        latest = [p for t, p in stream(rig) if t == STREAM + "state"][-1]
        _, resent = await replay(rig, 0)
        assert any(t == STREAM + "state" for t, _ in resent)
        async with fast_client(rig.broker, "alice") as page:
            await page.subscribe(STREAM + "state", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(page.messages))
        assert message.retain
        assert isinstance(message.payload, bytes)
        assert orjson.loads(message.payload) == latest


async def test_replay_window_bounds_the_log_and_says_what_is_lost(tmp_path: Path) -> None:
    """Only the last ``replay_window`` messages are kept per agent; asking for older ones
    re-sends what is kept and says how many are lost (the page then reloads its snapshot)."""
    config = commands_config(tmp_path)
    window = 4

    def small(c: Config) -> Config:
        return dataclasses.replace(
            c, commands=dataclasses.replace(c.commands, replay_window=window)
        )

    async with command_rig(config, members=logged_in("alice"), adjust=small) as rig:
        await a_whole_call(rig)
        seqs = [p["seq"] for _, p in stream(rig)]
        assert len(seqs) > window
        last = seqs[-1]
        reply, resent = await replay(rig, 0)
        assert [p["seq"] for _, p in resent] == list(range(last - window + 1, last + 1))
        assert reply["result"]["lost"] == last - window
        assert reply["result"]["more"] is False
    async with Store.open(config.store) as store:
        kept = await store.agent_messages("alice", 0, 100)
    # (Stopping published alice's state once more: "pbx down".)
    assert kept.last_seq > last
    assert [m.seq for m in kept.messages] == list(
        range(kept.last_seq - window + 1, kept.last_seq + 1)
    )


async def test_replay_refuses_a_bad_since(ctid_config: Config) -> None:
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        for since in (-1, "7", None, 2**60):
            reply, _ = await rig.command({"id": "b", "cmd": "replay", "since": since})
            assert reply["ok"] is False
            assert reply["error"]["code"] == "bad_request", reply


async def test_seq_goes_on_after_a_restart(ctid_config: Config) -> None:
    """A restarted daemon continues each agent's stream after its last seq (a page that
    kept running must not see a seq again), and replay covers both runs."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await a_whole_call(rig)
        first = [p["seq"] for _, p in stream(rig)]
    async with Store.open(ctid_config.store) as store:
        # Stopping published alice's state once more ("pbx down"), after the page's copy.
        last = (await store.agent_seqs())["alice"]
    assert last > first[-1]
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await caught_up(rig)
        second = [p["seq"] for _, p in stream(rig)]
        # Not necessarily last + 1: a state published before the broker connected is
        # replaced by a later one (the page gets the retained latest, and replays the gap).
        assert second[0] > last, (first, last, second)
        reply, resent = await replay(rig, first[-2])
        assert [p["seq"] for _, p in resent] == list(range(first[-1], second[-1] + 1))
        assert reply["result"]["lost"] == 0


async def test_store_log_keeps_the_last_seq_when_messages_are_pruned(tmp_path: Path) -> None:
    """The store's side: pruning never lowers an agent's last seq, and a message logged twice
    (the same seq) is kept once, the first time."""
    async with Store.open(tmp_path / "s.sqlite3") as store:
        msgs = [AgentMessage("a", s, "v1/agents/a/call", b'{"seq":%d}' % s, 1.0) for s in (1, 2, 3)]
        await store.log_agent_messages(msgs, keep=2)
        await store.log_agent_messages(
            [AgentMessage("a", 3, "v1/agents/a/call", b"{}", 2.0)], keep=2
        )
        await store.log_agent_messages(
            [AgentMessage("b", 1, "v1/agents/b/pop", b"{}", 2.0)], keep=2
        )
        assert await store.agent_seqs() == {"a": 3, "b": 1}
        found = await store.agent_messages("a", 0, 10)
        assert [(m.seq, m.payload) for m in found.messages] == [
            (2, b'{"seq":2}'),
            (3, b'{"seq":3}'),
        ]
        assert (found.lost, found.more, found.last_seq) == (1, False, 3)
        page = await store.agent_messages("a", 1, 1)
        assert ([m.seq for m in page.messages], page.lost, page.more) == ([2], 0, True)
        assert (await store.agent_messages("nobody", 0, 10)).last_seq == 0
