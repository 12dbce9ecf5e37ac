"""The AMI simulator speaks AMI like Asterisk 22: checked on the wire with a raw client."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ctid.core.ami import AmiMessage
from ctid.sim import (
    AmiSimulator,
    RawAmiClient,
    event_list,
    load_capture,
    response,
    success_handler,
)

CAPTURE_DIR = Path(os.environ.get("CTID_CAPTURES", "/work/shared/ami-captures"))
needs_captures = pytest.mark.skipif(
    not (CAPTURE_DIR / "reconnect.ami").is_file(), reason=f"no captures in {CAPTURE_DIR}"
)

USER = "ctid"
SECRET = "s3cret-Ü"

Connect = Callable[[], Awaitable[RawAmiClient]]


@pytest.fixture
async def sim() -> AsyncIterator[AmiSimulator]:
    async with AmiSimulator(username=USER, secret=SECRET) as server:
        yield server


@pytest.fixture
async def connect(sim: AmiSimulator) -> AsyncIterator[Connect]:
    clients: list[RawAmiClient] = []

    async def open_client() -> RawAmiClient:
        client = await RawAmiClient.connect("127.0.0.1", sim.port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


async def logged_in(connect: Connect, events: str | None = None) -> RawAmiClient:
    """A client past Login, FullyBooted and its own SuccessfulAuth."""
    client = await connect()
    reply = await client.login(USER, SECRET, events=events)
    assert reply.get("Message") == "Authentication accepted"
    if events is None:
        booted, auth = await client.collect(2)
        assert (booted.event, auth.event) == ("FullyBooted", "SuccessfulAuth")
    return client


def event(name: str, *fields: tuple[str, str], privilege: str = "call,all") -> AmiMessage:
    return AmiMessage((("Event", name), ("Privilege", privilege), *fields))


# --------------------------------------------------------------------------- login


async def test_banner_is_the_protocol_version(connect: Connect) -> None:
    client = await connect()
    assert client.banner == "11.0.0"


async def test_banner_version_is_configurable() -> None:
    async with AmiSimulator(username=USER, secret=SECRET, version="9.9.9") as sim:
        client = await RawAmiClient.connect("127.0.0.1", sim.port)
        async with client:
            assert client.banner == "9.9.9"


async def test_plain_login_is_accepted_then_fullybooted(
    sim: AmiSimulator, connect: Connect
) -> None:
    client = await connect()
    await client.send("Login", [("ActionID", "cti-1"), ("Username", USER), ("Secret", SECRET)])
    accepted, booted, auth = await client.collect(3)
    assert accepted.headers == (
        ("Response", "Success"),
        ("ActionID", "cti-1"),
        ("Message", "Authentication accepted"),
    )
    assert [k for k, _ in booted.headers] == [
        "Event",
        "Privilege",
        "Uptime",
        "LastReload",
        "Status",
    ]
    assert booted.event == "FullyBooted"
    assert booted.get("Privilege") == "system,all"
    assert booted.get("Status") == "Fully Booted"
    assert booted.timestamp is None
    assert int(booted.get("Uptime")) >= 3600
    assert auth.event == "SuccessfulAuth"
    assert auth.get("Service") == "AMI"
    assert auth.get("AccountID") == USER
    assert auth.headers[2][0] == "Timestamp"
    assert sim.logins == 1
    assert sim.connections == 1


async def test_low_uptime_simulates_a_restarted_pbx(sim: AmiSimulator, connect: Connect) -> None:
    sim.uptime = 3
    client = await connect()
    await client.login(USER, SECRET)
    booted = await client.wait_for(lambda m: m.event == "FullyBooted")
    assert 3 <= int(booted.get("Uptime")) <= 4
    assert 3 <= int(booted.get("LastReload")) <= 4


@pytest.mark.parametrize(
    ("username", "secret"),
    [(USER, "wrong"), ("nobody", SECRET), (USER, ""), ("", "")],
)
async def test_bad_plain_login_fails_and_closes(
    sim: AmiSimulator, connect: Connect, username: str, secret: str
) -> None:
    client = await connect()
    await client.send("Login", [("ActionID", "x1"), ("Username", username), ("Secret", secret)])
    reply = await client.next()
    assert reply.headers == (
        ("Response", "Error"),
        ("ActionID", "x1"),
        ("Message", "Authentication failed"),
    )
    assert await client.closed_by_server()
    assert sim.failed_logins == 1
    assert sim.logins == 0


async def test_md5_login(sim: AmiSimulator, connect: Connect) -> None:
    client = await connect()
    challenge = await client.request("Challenge", [("AuthType", "MD5")])
    assert [k for k, _ in challenge.headers] == ["Response", "ActionID", "Challenge"]
    assert challenge.get("Challenge").isdigit()
    # The client helper computes md5(challenge + secret) itself.
    reply = await client.request(
        "Login",
        [
            ("AuthType", "MD5"),
            ("Username", USER),
            ("Key", _md5(challenge.get("Challenge") + SECRET)),
        ],
    )
    assert reply.get("Message") == "Authentication accepted"
    assert sim.logins == 1


async def test_md5_login_helper_and_uppercase_key(connect: Connect) -> None:
    client = await connect()
    assert (await client.login(USER, SECRET, md5=True)).response == "Success"
    other = await connect()
    challenge = await other.request("Challenge", [("AuthType", "MD5")])
    key = _md5(challenge.get("Challenge") + SECRET).upper()
    reply = await other.request("Login", [("AuthType", "MD5"), ("Username", USER), ("Key", key)])
    assert reply.response == "Success"


async def test_md5_login_with_wrong_key_fails(sim: AmiSimulator, connect: Connect) -> None:
    client = await connect()
    challenge = await client.request("Challenge", [("AuthType", "MD5")])
    key = _md5(challenge.get("Challenge") + "wrong")
    reply = await client.request("Login", [("AuthType", "MD5"), ("Username", USER), ("Key", key)])
    assert reply.get("Message") == "Authentication failed"
    assert await client.closed_by_server()
    assert sim.failed_logins == 1


async def test_md5_login_without_challenge_fails(connect: Connect) -> None:
    client = await connect()
    key = _md5("123" + SECRET)
    reply = await client.request("Login", [("AuthType", "MD5"), ("Username", USER), ("Key", key)])
    assert reply.response == "Error"


async def test_challenge_needs_authtype(connect: Connect) -> None:
    client = await connect()
    reply = await client.request("Challenge")
    assert reply.response == "Error"
    assert reply.get("Message") == "Must specify AuthType"


async def test_refuse_logins(sim: AmiSimulator, connect: Connect) -> None:
    sim.refuse_logins = True
    client = await connect()
    reply = await client.login(USER, SECRET)
    assert reply.get("Message") == "Authentication failed"
    sim.refuse_logins = False
    client = await connect()
    assert (await client.login(USER, SECRET)).response == "Success"
    assert sim.failed_logins == 1
    assert sim.logins == 1
    assert sim.connections == 2


async def test_second_login_on_a_session(connect: Connect) -> None:
    client = await logged_in(connect)
    reply = await client.request("Login", [("Username", USER), ("Secret", SECRET)])
    assert reply.get("Message") == "Already authenticated"


async def test_actions_before_login_are_denied_without_closing(
    sim: AmiSimulator, connect: Connect
) -> None:
    client = await connect()
    for action in ("Ping", "CoreShowChannels", "QueueStatus", "NoSuchAction"):
        reply = await client.request(action)
        assert reply.response == "Error"
        assert reply.get("Message") == "Permission denied"
    assert (await client.login(USER, SECRET)).response == "Success"
    assert [a.get("Action") for a in sim.actions][:4] == [
        "Ping",
        "CoreShowChannels",
        "QueueStatus",
        "NoSuchAction",
    ]


async def test_logoff_says_goodbye_and_closes(connect: Connect) -> None:
    client = await logged_in(connect)
    await client.send("Logoff", [("ActionID", "bye")])
    reply = await client.wait_for(lambda m: bool(m.response))
    assert reply.headers == (
        ("Response", "Goodbye"),
        ("ActionID", "bye"),
        ("Message", "Thanks for all the fish."),
    )
    assert await client.closed_by_server()


# --------------------------------------------------------------------------- actions


async def test_ping(connect: Connect) -> None:
    client = await logged_in(connect)
    before = time.time()
    reply = await client.request("Ping")
    assert [k for k, _ in reply.headers] == ["Response", "ActionID", "Ping", "Timestamp"]
    assert reply.response == "Success"
    assert reply.get("Ping") == "Pong"
    stamp = reply.timestamp
    assert stamp is not None
    assert before - 1 <= stamp <= time.time() + 1


async def test_unanswered_pings(sim: AmiSimulator, connect: Connect) -> None:
    client = await logged_in(connect)
    sim.answer_pings = False
    await client.send("Ping", [("ActionID", "p1")])
    # The session still works: the next action is answered, the Ping never is.
    settings = await client.request("CoreSettings")
    assert settings.get("AMIversion") == "11.0.0"
    assert await client.quiet(0.2) == []
    assert len(sim.actions_named("ping")) == 1
    sim.answer_pings = True
    assert (await client.request("Ping")).get("Ping") == "Pong"


async def test_unknown_action(connect: Connect) -> None:
    client = await logged_in(connect)
    await client.send("FrobnicateChannel", [("ActionID", "u-1")])
    reply = await client.next()
    assert reply.response == "Error"
    assert reply.action_id == "u-1"
    assert reply.get("Message").startswith("Invalid/unknown command")


async def test_missing_action_header(connect: Connect) -> None:
    client = await logged_in(connect)
    await client.send_raw(b"ActionID: m-1\r\nFoo: bar\r\n\r\n")
    reply = await client.next()
    assert reply.headers == (
        ("Response", "Error"),
        ("ActionID", "m-1"),
        ("Message", "Missing action in request"),
    )


@pytest.mark.parametrize(
    "action", ["Ping", "Events", "CoreSettings", "CoreStatus", "QueueStatus", "Nope", "Logoff"]
)
async def test_every_response_echoes_the_action_id(connect: Connect, action: str) -> None:
    client = await logged_in(connect)
    await client.send(action, [("ActionID", "echo-42"), ("EventMask", "on")])
    reply = await client.wait_for(lambda m: bool(m.response))
    assert reply.action_id == "echo-42"
    assert reply.headers[1] == ("ActionID", "echo-42")


async def test_no_action_id_no_echo(connect: Connect) -> None:
    client = await logged_in(connect)
    await client.send("Ping")
    reply = await client.next()
    assert "ActionID" not in reply


async def test_actions_are_recorded_and_awaitable(sim: AmiSimulator, connect: Connect) -> None:
    client = await logged_in(connect)

    async def later() -> None:
        await asyncio.sleep(0.05)
        await client.send("QueuePause", [("Interface", "PJSIP/1001"), ("Paused", "true")])

    task = asyncio.create_task(later())
    action = await sim.wait_for_action("queuepause", timeout=2)
    await task
    assert action.headers == (
        ("Action", "QueuePause"),
        ("Interface", "PJSIP/1001"),
        ("Paused", "true"),
    )
    assert sim.actions[0].get("Action") == "Login"
    with pytest.raises(TimeoutError, match="QueuePause #2"):
        await sim.wait_for_action("QueuePause", timeout=0.05, count=2)


# --------------------------------------------------------------------------- event lists


@needs_captures
@pytest.mark.parametrize(
    ("action_id", "action"),
    [
        ("cti-2", "CoreShowChannels"),
        ("cti-3", "QueueStatus"),
        ("cti-4", "QueueSummary"),
        ("cti-5", "Status"),
        ("cti-6", "BridgeList"),
        ("cti-7", "ExtensionStateList"),
        ("cti-8", "DeviceStateList"),
    ],
)
async def test_list_answers_are_byte_identical_to_asterisk(
    sim: AmiSimulator, connect: Connect, action_id: str, action: str
) -> None:
    capture = load_capture(CAPTURE_DIR / "reconnect.ami")
    recorded = [m for m in capture.messages if m.action_id == action_id]
    items = [
        AmiMessage(tuple(h for h in m.headers if h[0] != "ActionID"))
        for m in recorded[1:-1]  # without the Response and the …Complete event
    ]
    sim.set_list(action, items)
    client = await logged_in(connect)
    await client.send(action, [("ActionID", action_id)])
    answer = await client.collect(len(recorded))
    assert [m.to_bytes() for m in answer] == [m.to_bytes() for m in recorded]


@pytest.mark.parametrize(
    ("action", "message", "complete"),
    [
        ("CoreShowChannels", "Channels will follow", "CoreShowChannelsComplete"),
        ("BridgeList", "Bridge listing will follow", "BridgeListComplete"),
        ("QueueStatus", "Queue status will follow", "QueueStatusComplete"),
        ("Status", "Channel status will follow", "StatusComplete"),
        ("DeviceStateList", "Device State Changes will follow", "DeviceStateListComplete"),
    ],
)
async def test_resync_lists_are_empty_by_default(
    connect: Connect, action: str, message: str, complete: str
) -> None:
    client = await logged_in(connect)
    await client.send(action, [("ActionID", "r-1")])
    start, done = await client.collect(2)
    assert start.headers == (
        ("Response", "Success"),
        ("ActionID", "r-1"),
        ("EventList", "start"),
        ("Message", message),
    )
    assert done.headers[:4] == (
        ("Event", complete),
        ("ActionID", "r-1"),
        ("EventList", "Complete"),
        ("ListItems", "0"),
    )


async def test_status_of_an_unknown_channel(connect: Connect) -> None:
    client = await logged_in(connect)
    reply = await client.request("Status", [("Channel", "PJSIP/1001-00000001")])
    assert reply.response == "Error"
    assert reply.get("Message") == "No such channel"


async def test_queue_status_filters_queue_and_member(sim: AmiSimulator, connect: Connect) -> None:
    sim.set_list(
        "QueueStatus",
        [
            AmiMessage.build([("Event", "QueueParams"), ("Queue", "support")]),
            AmiMessage.build(
                [("Event", "QueueMember"), ("Queue", "support"), ("Location", "PJSIP/1001")]
            ),
            AmiMessage.build(
                [("Event", "QueueMember"), ("Queue", "support"), ("Location", "PJSIP/1002")]
            ),
            AmiMessage.build([("Event", "QueueParams"), ("Queue", "sales")]),
        ],
    )
    client = await logged_in(connect)
    await client.send(
        "QueueStatus", [("ActionID", "q"), ("Queue", "support"), ("Member", "PJSIP/1002")]
    )
    _, params, member, done = await client.collect(4)
    assert (params.event, params.get("Queue")) == ("QueueParams", "support")
    assert member.get("Location") == "PJSIP/1002"
    assert member.headers[-1] == ("ActionID", "q")
    assert done.get("ListItems") == "2"


def test_event_list_helper_shape() -> None:
    action = AmiMessage.build([("Action", "PJSIPShowEndpoints"), ("ActionID", "a1")])
    items = [AmiMessage.build([("Event", "EndpointList"), ("ObjectName", "1001")])]
    out = event_list(
        action,
        items,
        complete_event="EndpointListComplete",
        message="A listing of Endpoints follows, presented as EndpointList events",
    )
    assert [m.to_bytes() for m in out] == [
        b"Response: Success\r\nActionID: a1\r\nEventList: start\r\n"
        b"Message: A listing of Endpoints follows, presented as EndpointList events\r\n\r\n",
        b"Event: EndpointList\r\nActionID: a1\r\nObjectName: 1001\r\n\r\n",
        b"Event: EndpointListComplete\r\nActionID: a1\r\n"
        b"EventList: Complete\r\nListItems: 1\r\n\r\n",
    ]


# --------------------------------------------------------------------------- handlers


async def test_custom_handlers(sim: AmiSimulator, connect: Connect) -> None:
    sim.set_handler("QueuePause", success_handler("Interface paused successfully"))

    def endpoints(action: AmiMessage) -> list[AmiMessage]:
        item = AmiMessage.build([("Event", "EndpointList"), ("ObjectName", "1001")])
        return event_list(action, [item], complete_event="EndpointListComplete", message="x")

    async def slow_originate(action: AmiMessage) -> list[AmiMessage]:
        await asyncio.sleep(0.01)
        # No ActionID here on purpose: the simulator adds it to a Response.
        return [AmiMessage.build([("Response", "Success"), ("Message", "Originate queued")])]

    sim.set_handler("PJSIPShowEndpoints", endpoints)
    sim.set_handler("Originate", slow_originate)
    sim.set_handler("QueueAdd", lambda action: None)  # never answers (panoramisk defect 8)

    client = await logged_in(connect)
    paused = await client.request("QueuePause", [("Interface", "PJSIP/1001")])
    assert paused.get("Message") == "Interface paused successfully"

    await client.send("PJSIPShowEndpoints", [("ActionID", "e")])
    start, item, done = await client.collect(3)
    assert start.get("EventList") == "start"
    assert item.headers[1] == ("ActionID", "e")
    assert done.get("ListItems") == "1"

    await client.send("QueueAdd", [("ActionID", "qa"), ("Interface", "PJSIP/1001")])
    originate = await client.request("Originate", [("Channel", "PJSIP/1001")])
    assert originate.headers[:2] == (("Response", "Success"), ("ActionID", originate.action_id))
    assert await client.quiet(0.1) == []

    sim.set_handler("QueuePause", None)
    reply = await client.request("QueuePause")
    assert reply.get("Message").startswith("Invalid/unknown command")


def test_protocol_actions_cannot_be_replaced(sim: AmiSimulator) -> None:
    with pytest.raises(ValueError, match="Login"):
        sim.set_handler("Login", lambda action: [response(action)])


# --------------------------------------------------------------------------- events


async def test_events_only_reach_logged_in_sessions_with_events_on(
    sim: AmiSimulator, connect: Connect
) -> None:
    listening = await logged_in(connect)
    anonymous = await connect()
    muted = await logged_in(connect, events="off")
    await sim.push(event("Newchannel", ("Channel", "PJSIP/1001-00000001")))
    got = await listening.wait_for(lambda m: m.event == "Newchannel")
    assert got.get("Channel") == "PJSIP/1001-00000001"
    assert await anonymous.quiet(0.1) == []
    assert [m.event for m in await muted.quiet(0.1)] == []


async def test_events_action_switches_the_flow(sim: AmiSimulator, connect: Connect) -> None:
    client = await logged_in(connect)
    off = await client.request("Events", [("EventMask", "off")])
    assert off.get("Events") == "Off"
    await sim.push(event("Hangup"))
    assert await client.quiet(0.1) == []
    on = await client.request("Events", [("EventMask", "on")])
    assert on.get("Events") == "On"
    await sim.push(event("Hangup"))
    assert (await client.next()).event == "Hangup"


async def test_login_with_events_off_gets_no_fullybooted(connect: Connect) -> None:
    client = await connect()
    reply = await client.login(USER, SECRET, events="off")
    assert reply.response == "Success"
    assert await client.quiet(0.1) == []


async def test_event_mask_filters_by_privilege(sim: AmiSimulator, connect: Connect) -> None:
    client = await logged_in(connect, events="agent")
    await sim.push(
        event("Newchannel"),
        event("AgentCalled", privilege="agent,all"),
        event("Hangup"),
    )
    assert [m.event for m in await client.quiet(0.2)] == ["AgentCalled"]


async def test_push_raw_splits_a_utf8_character(sim: AmiSimulator, connect: Connect) -> None:
    client = await logged_in(connect)
    reads_before = client.reads
    raw = "Event: Newchannel\r\nCallerIDName: Jürgen Müller\r\n\r\n".encode()
    # Read while the bytes trickle in, as ctid would.
    reading = asyncio.create_task(client.next())
    await sim.push_raw(raw, chunk_size=1, delay=0.002)
    got = await reading
    assert got.get("CallerIDName") == "Jürgen Müller"
    assert client.reads - reads_before > 1


async def test_drop_clients(sim: AmiSimulator, connect: Connect) -> None:
    first = await logged_in(connect)
    second = await connect()
    await sim.drop_clients()
    assert await first.closed_by_server(2)
    assert await second.closed_by_server(2)
    assert sim.clients == []
    again = await logged_in(connect)
    await sim.push(event("Hangup"))
    assert (await again.next()).event == "Hangup"
    assert sim.connections == 3
    assert sim.logins == 2


async def test_close_with_clients_connected(connect: Connect) -> None:
    sim = AmiSimulator(username=USER, secret=SECRET)
    await sim.start()
    client = await RawAmiClient.connect("127.0.0.1", sim.port)
    await client.login(USER, SECRET)
    await sim.close()
    assert await client.closed_by_server(2)
    await client.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", sim.port)


async def test_wait_for_clients(sim: AmiSimulator, connect: Connect) -> None:
    with pytest.raises(TimeoutError):
        await sim.wait_for_clients(1, timeout=0.05)
    waiter = asyncio.create_task(sim.wait_for_clients(1, timeout=2))
    await logged_in(connect)
    await waiter


# --------------------------------------------------------------------------- replay


@needs_captures
@pytest.mark.parametrize("name", ["inbound_answered", "callback_userevent", "reconnect"])
async def test_replay_sends_the_capture_events_in_order(
    sim: AmiSimulator, connect: Connect, name: str
) -> None:
    capture = load_capture(CAPTURE_DIR / f"{name}.ami")
    client = await logged_in(connect)
    sent = await sim.replay(capture, speed=None)
    assert sent == len(capture.replay_events)
    got = await client.collect(sent)
    assert [m.to_bytes() for m in got] == [m.to_bytes() for m in capture.replay_events]
    assert await client.quiet(0.05) == []


@needs_captures
async def test_replay_keeps_duplicate_headers(sim: AmiSimulator, connect: Connect) -> None:
    client = await logged_in(connect)
    await sim.replay(CAPTURE_DIR / "callback_userevent.ami", speed=None)
    userevent = await client.wait_for(lambda m: m.get("UserEvent") == "CallbackRequest")
    assert len(userevent.get_all("Uniqueid")) == 2


@needs_captures
async def test_replay_skips_the_recorded_login(sim: AmiSimulator, connect: Connect) -> None:
    capture = load_capture(CAPTURE_DIR / "inbound_answered.ami")
    events = [m.event for m in capture.replay_events]
    assert "FullyBooted" not in events
    # The recorded session's own SuccessfulAuth is gone, the carrier's stays.
    auths = [m for m in capture.replay_events if m.event == "SuccessfulAuth"]
    assert [m.get("Service") for m in auths] == ["PJSIP"]
    assert all(not m.response for m in capture.replay_events)


@needs_captures
async def test_replay_follows_the_recorded_pace(sim: AmiSimulator, connect: Connect) -> None:
    """A paced replay takes at least the recorded span / speed (it does not dump at once).

    Only the lower bound is asserted: on a loaded machine any replay may take
    longer, and a timed upper bound would only measure the machine.
    """
    capture = load_capture(CAPTURE_DIR / "inbound_answered.ami")
    stamps = [m.timestamp for m in capture.replay_events if m.timestamp is not None]
    span = stamps[-1] - stamps[0]
    client = await logged_in(connect)
    speed = 25.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    await sim.replay(capture, speed=speed)
    elapsed = loop.time() - start
    assert span / speed * 0.9 <= elapsed
    got = await client.collect(len(capture.replay_events))
    assert got[-1].to_bytes() == capture.replay_events[-1].to_bytes()


async def test_replay_messages_without_timestamp_go_in_sequence(
    sim: AmiSimulator, connect: Connect
) -> None:
    client = await logged_in(connect)
    stream = [
        event("A", ("Timestamp", "100.0")),
        event("B"),
        event("C", ("Timestamp", "100.05")),
        event("D"),
    ]
    await sim.replay(stream, speed=1.0)
    assert [m.event for m in await client.collect(4)] == ["A", "B", "C", "D"]


async def test_replay_retime(sim: AmiSimulator, connect: Connect) -> None:
    client = await logged_in(connect)
    await sim.replay([event("Hangup", ("Timestamp", "1.000000"), ("Cause", "16"))], retime=True)
    got = await client.next()
    stamp = got.timestamp
    assert stamp is not None
    assert abs(stamp - time.time()) < 5
    assert [k for k, _ in got.headers] == ["Event", "Privilege", "Timestamp", "Cause"]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


async def test_a_failing_handler_answers_an_error_and_is_recorded(
    sim: AmiSimulator, connect: Connect
) -> None:
    def broken(action: AmiMessage) -> list[AmiMessage]:
        raise RuntimeError("boom")

    sim.set_handler("Redirect", broken)
    client = await logged_in(connect)
    reply = await client.request("Redirect", [("Channel", "PJSIP/1001-00000001")])
    assert reply.response == "Error"
    assert "boom" in reply.get("Message")
    assert [str(e) for e in sim.handler_errors] == ["boom"]
    assert (await client.request("Ping")).get("Ping") == "Pong"


async def test_restart_on_the_same_port(sim: AmiSimulator, connect: Connect) -> None:
    client = await logged_in(connect)
    port = sim.port
    await sim.close()
    assert await client.closed_by_server(2)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    sim.uptime = 1  # the PBX came back: FullyBooted reports a fresh boot
    await sim.start()
    assert sim.port == port
    again = await connect()
    await again.login(USER, SECRET)
    booted = await again.next()
    assert booted.event == "FullyBooted"
    assert int(booted.get("Uptime")) <= 2
    assert sim.logins == 2
