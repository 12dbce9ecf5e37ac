"""The AMI adapter against the AMI simulator over real TCP.

One regression test (at least) per panoramisk defect listed in DESIGN.md,
"AMI adapter"; each test's docstring names the defect it guards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from structlog.testing import capture_logs

from ctid.adapters.ami import ActionSender, AmiClient
from ctid.config import AmiConfig
from ctid.core.agents import Link
from ctid.core.ami import AmiMessage, UnsafeActionError
from ctid.errors import AmiActionFailedError, AmiActionTimeoutError, AmiNotConnectedError
from ctid.sim.server import AmiSimulator, success_handler

SECRET = "s3cret-für-tests"


def _config(port: int, **overrides: object) -> AmiConfig:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "username": "ctid",
        "secret": SECRET,
        "connect_timeout_s": 2.0,
        "login_timeout_s": 2.0,
        "action_timeout_s": 2.0,
        "ping_interval_s": 5.0,
        "ping_timeout_s": 2.0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    base.update(overrides)
    return AmiConfig(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(
    client: AmiClient, *, wait_ready: bool = True
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.run(), name="test.ami")
    try:
        if wait_ready:
            async with asyncio.timeout(5):
                await client.ready.wait()
        yield task
    finally:
        client.close()
        async with asyncio.timeout(5):
            await task


async def next_event(client: AmiClient, name: str) -> AmiMessage:
    """The next event called ``name`` from the client's queue (skipping others)."""
    async with asyncio.timeout(5):
        while True:
            item, _ = await client.events.get()
            if isinstance(item, AmiMessage) and item.event == name:
                return item


async def links(client: AmiClient, until: Link) -> list[Link]:
    """Link changes from the client's queue up to and including ``until``."""
    seen: list[Link] = []
    async with asyncio.timeout(5):
        while True:
            item, _ = await client.events.get()
            if isinstance(item, Link):
                seen.append(item)
                if item == until:
                    return seen


async def eventually(check: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll ``check`` until true; the simulator's counters have no event to wait on."""
    async with asyncio.timeout(within_s):
        while not check():  # noqa: ASYNC110 - polling a plain counter
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("auth", ["md5", "plain"])
async def test_login_then_up(auth: str) -> None:
    """ctid logs in with md5 challenge or plain secret and the link goes up."""
    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port, auth=auth))
        async with running(client):
            assert client.link == Link.UP
            assert sim.logins == 1
            login = sim.actions_named("Login")[0]
            if auth == "md5":
                assert login.get("AuthType").lower() == "md5"
                assert "Secret" not in login
                assert sim.actions_named("Challenge")
            else:
                assert login.get("Secret") == SECRET


async def test_split_utf8_and_empty_trailing_header_arrive_intact() -> None:
    """Defect 4: a UTF-8 character split across reads, and an empty last header, are kept."""
    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port))
        async with running(client):
            raw = (
                "Event: Newchannel\r\nPrivilege: call,all\r\nChannel: PJSIP/carrier-00000001\r\n"
                "CallerIDName: Jürgen Müller-Lüdenscheidt\r\nUniqueid: 1.1\r\n\r\n"
                "Event: ChallengeSent\r\nPrivilege: security,all\r\nChallenge: \r\n\r\n"
            ).encode()
            await sim.push_raw(raw, chunk_size=1, delay=0)
            chan = await next_event(client, "Newchannel")
            assert chan.get("CallerIDName") == "Jürgen Müller-Lüdenscheidt"
            challenge = await next_event(client, "ChallengeSent")
            assert challenge.headers[-1] == ("Challenge", "")


async def test_consumer_failure_does_not_touch_the_link() -> None:
    """Defect 1: whatever the consumer of events does, the connection stays up.

    Events are only enqueued by the protocol; a consumer that raises on one
    event (here: the test itself) loses nothing and causes no reconnect.
    """
    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port))
        async with running(client):
            await sim.push(AmiMessage.build({"Event": "Boom", "Privilege": "call,all"}))
            await sim.push(b"this is not AMI at all\r\n\r\n")
            await sim.push(AmiMessage.build({"Event": "After", "Privilege": "call,all"}))
            evt = await next_event(client, "Boom")
            with pytest.raises(ZeroDivisionError):
                _ = 1 / len(evt.get("Missing"))
            after = await next_event(client, "After")
            assert after.event == "After"
            assert client.link == Link.UP
            assert sim.connections == 1


async def test_close_cancels_a_scheduled_reconnect() -> None:
    """Defect 2: close() during the reconnect backoff really stops; nothing reconnects later."""
    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port, reconnect_initial_s=0.3, reconnect_max_s=0.3))
        task = asyncio.create_task(client.run())
        async with asyncio.timeout(5):
            await client.ready.wait()
        await sim.drop_clients()
        await eventually(lambda: client.link == Link.RECONNECTING)
        client.close()
        async with asyncio.timeout(2):
            await task
        await asyncio.sleep(0.6)  # longer than the backoff that was scheduled
        assert sim.connections == 1
        assert client.link == Link.DOWN


async def test_unanswered_ping_aborts_and_reconnects() -> None:
    """Defect 3: keepalive replies are checked; silence means reconnect."""
    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port, ping_interval_s=0.1, ping_timeout_s=0.2))
        async with running(client):
            assert await links(client, Link.UP) == [Link.UP]
            sim.answer_pings = False
            assert await links(client, Link.UP) == [Link.RECONNECTING, Link.UP]
            sim.answer_pings = True
            assert sim.connections == 2
            assert sim.logins == 2


async def test_refused_login_is_an_error_and_backs_off() -> None:
    """Defect 5: a refused login is logged clearly and retried with backoff, never "up"."""
    async with AmiSimulator(secret="another-secret") as sim:
        client = AmiClient(_config(sim.port))
        with capture_logs() as logs:
            async with running(client, wait_ready=False):
                await eventually(lambda: sim.failed_logins >= 2)
                assert client.link != Link.UP
                assert not client.ready.is_set()
        failures = [entry for entry in logs if entry["event"] == "ami.login_failed"]
        assert failures
        assert "refused" in failures[0]["error"]
        assert SECRET not in repr(logs)


async def test_up_only_after_login_and_resync() -> None:
    """Defect 6: the link counts as up only after login and the resync hook finished."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def resync(send: ActionSender) -> None:
        await send("Ping")  # the hook may talk to Asterisk before the link is up
        entered.set()
        await release.wait()

    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port), on_connected=resync)
        async with running(client, wait_ready=False):
            async with asyncio.timeout(5):
                await entered.wait()
            assert sim.logins == 1
            assert client.link != Link.UP
            with pytest.raises(AmiNotConnectedError):
                await client.send("Ping")
            release.set()
            async with asyncio.timeout(5):
                await client.ready.wait()
            assert client.link.value == "up"  # (mypy narrowed link above)


async def test_actions_fail_fast_when_down_and_time_out_when_unanswered() -> None:
    """Defect 7: no action waits forever: down → at once; no answer → timeout; link lost → error."""
    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port, action_timeout_s=0.3))
        with pytest.raises(AmiNotConnectedError):
            await client.send("Ping")
        sim.set_handler("Silence", lambda action: [])
        async with running(client):
            with pytest.raises(AmiActionTimeoutError):
                await client.send("Silence")
            pending = asyncio.create_task(client.send("Silence", timeout_s=5))
            await sim.wait_for_action("Silence", count=2)
            await sim.drop_clients()
            with pytest.raises(AmiNotConnectedError):
                await pending


async def test_queueadd_resolves() -> None:
    """Defect 8: awaiting QueueAdd returns (panoramisk 1.4 waits for a list that never comes)."""
    async with AmiSimulator(secret=SECRET) as sim:
        # Asterisk 22's exact reply (agent_pause_unpause capture).
        sim.set_handler("QueueAdd", success_handler("Added interface to queue"))
        client = AmiClient(_config(sim.port))
        async with running(client):
            reply = await client.send(
                "QueueAdd", [("Queue", "support"), ("Interface", "PJSIP/1001")]
            )
            assert reply[0].response == "Success"
            action = await sim.wait_for_action("QueueAdd")
            assert action.get("Interface") == "PJSIP/1001"


async def test_list_action_returns_items_and_error_is_raised() -> None:
    """An event-list action returns its items; ``Response: Error`` raises with the message."""
    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port))
        async with running(client):
            items = await client.send("QueueStatus")
            assert items[0].response == "Success"
            assert items[-1].event == "QueueStatusComplete"
            with pytest.raises(AmiActionFailedError):
                await client.send("NoSuchAction")


@pytest.mark.parametrize(
    ("key", "value"),
    [("Channel", "PJSIP/1001\r\nAction: Command"), ("Context", "x\ny"), ("Bad Key", "v")],
)
async def test_injection_never_reaches_the_wire(key: str, value: str) -> None:
    """CR/LF in a value, or a malformed header name, is refused before anything is sent."""
    async with AmiSimulator(secret=SECRET) as sim:
        client = AmiClient(_config(sim.port))
        async with running(client):
            before = len(sim.actions)
            with pytest.raises(UnsafeActionError):
                await client.send("Originate", [(key, value)])
            await client.send("Ping")
            assert [a.get("Action") for a in sim.actions[before:]] == ["Ping"]
