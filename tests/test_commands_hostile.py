"""Hostile input on the command topic: nothing unchecked reaches AMI, every message is answered.

Hypothesis draws payloads (random bytes, invalid UTF-8, deep or broken JSON,
payloads around the size limit, wrong types, unicode, and command-shaped objects
whose fields carry CR/LF, NUL and whole injected AMI actions such as
``\\r\\nAction: Command``) and publishes each as alice on her own cmd topic of a
real Mosquitto, into the real daemon, against the AMI simulator. alice is
logged in and talking to a customer (inbound_answered), so valid commands among
them do reach Asterisk. For each payload:

* exactly one reply comes back (a marker command sent right behind it delimits
  its replies: one agent's commands are answered in order), with the payload's
  own id whenever the contract says it is readable;
* every action the simulator receives is one a command may send, with only the
  fields that action has, no CR/LF/NUL or ``$`` anywhere, touching only alice's own
  device and channels (never ``Command``, never bob's handset);
* the daemon keeps running: a valid command afterwards is carried out.

A fast pure property covers ``parse_command`` itself: any bytes give a
``Command`` or a ``CommandError``, nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ctid.config import Config
from ctid.core.agents import Presence
from ctid.core.ami import AmiMessage
from ctid.core.commands import (
    ERROR_CODES,
    MAX_PAYLOAD,
    SCHEMAS,
    Command,
    CommandError,
    parse_command,
    readable_id,
)
from tests.command_rig import (
    ALICE_LEG,
    CALL,
    CAPTURES,
    CUSTOMER,
    Rig,
    bridge_enter,
    command_rig,
    commands_config,
    cut_after,
    expect,
    fields_of,
    logged_in,
    until,
)

ALICE_DEVICE = "PJSIP/1001"

# The fields each action a command may send can carry, besides Action and ActionID.
COMMAND_ACTIONS: dict[str, frozenset[str]] = {
    "QueueAdd": frozenset(
        {"Queue", "Interface", "MemberName", "StateInterface", "Paused", "Reason"}
    ),
    "QueueRemove": frozenset({"Queue", "Interface"}),
    "QueuePause": frozenset({"Interface", "Paused", "Reason"}),
    "QueueLog": frozenset({"Queue", "Event", "Interface", "Message"}),
    "Originate": frozenset(
        {"Channel", "Context", "Exten", "Priority", "Async", "Timeout", "Variable", "CallerID"}
    ),
    "Hangup": frozenset({"Channel"}),
    "Redirect": frozenset(
        {
            "Channel",
            "Context",
            "Exten",
            "Priority",
            "ExtraChannel",
            "ExtraContext",
            "ExtraExten",
            "ExtraPriority",
        }
    ),
    "Bridge": frozenset({"Channel1", "Channel2", "Tone"}),
    "BlindTransfer": frozenset({"Channel", "Context", "Exten"}),
    "Atxfer": frozenset({"Channel", "Context", "Exten"}),
    "CancelAtxfer": frozenset({"Channel"}),
    "PlayDTMF": frozenset({"Channel", "Digit", "Receive"}),
}
HOUSEKEEPING = frozenset({"Ping"})
# Where a header names a channel or device, it must be alice's (or her customer's leg).
CHANNEL_FIELDS = frozenset({"Channel", "Interface", "StateInterface", "Channel1", "Channel2"})
ALICE_CHANNELS = frozenset({ALICE_DEVICE, ALICE_LEG, CUSTOMER})
# No line breaks or NUL (header injection), no "$" (a ${SHELL(...)} that a dialplan might
# expand one day).
SAFE_VALUE = re.compile(r"[^\r\n\x00$]*")
EXTEN = re.compile(r"\+?[0-9]{1,20}|[A-Za-z0-9._-]{1,64}|s")

# ---------------------------------------------------------------- strategies

INJECTIONS = (
    "\r\nAction: Command\r\nCommand: core stop now\r\n",
    "\r\n\r\nAction: Originate\r\nChannel: PJSIP/1002\r\nApplication: System\r\nData: id\r\n\r\n",
    "Lunch\r\nAction: Command\r\nCommand: module unload manager",
    "\nAction: Command",
    "\r",
    "\n",
    "\x00",
    "Lunch\x00",
    "\u2028",
    "\x85",
    "\u202e",
    "Müller 🙂",
    "%s%n",
    "${SHELL(id)}",
    "PJSIP/1002",
    "PJSIP/1002-0000000b",
    "Local/1002@internal",
    "../../etc/passwd",
    "",
    " ",
)
GOOD = (
    "Lunch",
    "EndOfShift",
    "Sale",
    "+4930999888",
    "089 101555",
    "1002",
    "bob",
    "support",
    CALL,
    "crm-17",
    "name",
    "like",
)


def _glue(parts: list[str]) -> str:
    return "".join(parts)


hostile_text = st.one_of(
    st.sampled_from(INJECTIONS),
    st.sampled_from(GOOD),
    st.lists(st.sampled_from(GOOD + INJECTIONS), min_size=2, max_size=4).map(_glue),
    st.text(max_size=40),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["a", "9", "\r\n", "é", "🙂"]), st.integers(1, 20_000)
    ),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)
command_id = st.one_of(
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
    st.sampled_from([2**53, -(2**53), 2**64, 1.5, True, False, None, "", "a" * 65, [1], {"id": 1}]),
    hostile_text,
)
FIELDS = sorted({f for schema in SCHEMAS.values() for f in schema} | {"queue", "Action", "channel"})
command_name = st.one_of(
    st.sampled_from(sorted(SCHEMAS)),
    st.sampled_from(["Command", "Originate", "login\r\nAction: Command", "", "LOGIN"]),
    json_value,
)


@st.composite
def command_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Command-shaped objects: a real or bogus name, known or unknown fields, any values."""
    obj: dict[str, Any] = {}
    if draw(st.booleans()) or draw(st.booleans()):
        obj["id"] = draw(command_id)
    if draw(st.integers(0, 9)):
        obj["cmd"] = draw(command_name)
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        obj[key] = draw(st.one_of(st.sampled_from(GOOD), hostile_text, json_value))
    if not draw(st.integers(0, 9)):
        obj[draw(hostile_text)] = draw(json_value)
    return obj


# Plausible values per field (some valid, some refused later: unknown reason, bad number).
PLAUSIBLE: dict[str, tuple[Any, ...]] = {
    "reason": ("Lunch", "EndOfShift", "Sale", "Coffee"),
    "code": ("Sale", "Lunch"),
    "notes": ("done", "two\nlines"),
    "number": ("+4930999888", "089 101555", "1002", "*97", "+0"),
    "interaction": (CALL, "1795308161.99", "cb-17"),
    "to": ("bob", "support", "+4930999888", "1003", "nobody"),
    "text": ("note", "multi\nline"),
    "record": ("crm-17",),
    "field": ("name", "number", "email", "id"),
    "op": ("=", "like"),
    "value": ("Mül%",),
    "limit": (1, 5, 100),
    "since": (0, 5),
}


def _inject(value: Any, injection: str, at: int) -> Any:
    if not isinstance(value, str):
        return injection
    at %= len(value) + 1
    return value[:at] + injection + value[at:]


@st.composite
def schema_shaped(draw: st.DrawFn) -> bytes:
    """A real command with its own fields: each value plausible, or with an injection
    spliced in, or replaced by anything at all. Many of these reach Asterisk."""
    name = draw(st.sampled_from(sorted(SCHEMAS)))
    good_id = st.integers(0, 2**53 - 1) | st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
    obj: dict[str, Any] = {"id": draw(good_id if draw(st.integers(0, 4)) else command_id)}
    obj["cmd"] = name
    for field, spec in SCHEMAS[name].items():
        if not (spec.required or draw(st.booleans())):
            continue
        value = draw(st.sampled_from(PLAUSIBLE[field]))
        how = draw(st.integers(0, 5))
        if how == 4:
            value = _inject(value, draw(st.sampled_from(INJECTIONS)), draw(st.integers(0, 40)))
        elif how == 5:
            value = draw(st.one_of(hostile_text, json_value))
        obj[field] = value
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


def contract_id(payload: bytes) -> object:
    """The id the contract says the reply to ``payload`` carries: the object's ``id`` if it
    is a safe string or an integer (and the payload is JSON within the size limit), else null.
    """
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -(2**53) < value < 2**53:
        return value
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", value):
        return value
    return None


@st.composite
def objects_as_json(draw: st.DrawFn) -> bytes:
    """JSON text of command-shaped objects or any values, ASCII-escaped or raw UTF-8.

    The standard library writes what orjson would refuse to: integers beyond 64
    bits and lone surrogates (escaped, or raw as invalid UTF-8).
    """
    obj = draw(st.one_of(command_objects(), json_value))
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def around_the_size_limit(draw: st.DrawFn) -> bytes:
    """A valid ``notes`` command padded to a size just below or above MAX_PAYLOAD."""
    size = draw(st.integers(MAX_PAYLOAD - 3, MAX_PAYLOAD + 3))
    head = b'{"id": "big", "cmd": "notes", "interaction": "%s", "text": "' % CALL.encode()
    payload = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(payload) == size
    return payload


@st.composite
def broken_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, a valid command with bytes spliced in, or JSON nested thousands deep."""
    kind = draw(st.sampled_from(["random", "spliced", "deep", "deep_object"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "spliced":
        base = b'{"id": "s1", "cmd": "not_ready", "reason": "Lunch"}'
        at = draw(st.integers(0, len(base)))
        junk = draw(st.sampled_from([b"\r\nAction: Command\r\n", b"\xff", b"\x00", b"\xc3", b'"']))
        return base[:at] + junk + base[at:]
    depth = draw(st.integers(1, 5000))
    if kind == "deep":
        return b"[" * depth + b"]" * depth
    inner = b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"id": "deep", "cmd": "notes", "text": ' + inner + b"}"


hostile_payloads = st.one_of(
    schema_shaped(), schema_shaped(), objects_as_json(), around_the_size_limit(), broken_bytes()
)


# ---------------------------------------------------------------- the daemon under attack


@pytest.fixture
def ctid_config(tmp_path: Path) -> Config:
    """alice (support, sales) and bob (support); reasons Lunch, EndOfShift and Sale."""
    return commands_config(tmp_path)


def generous(config: Config) -> Config:
    """A rate limit that the few hundred payloads of this test do not reach."""
    commands = replace(config.commands, burst=10_000, rate_per_minute=100_000)
    return replace(config, commands=commands)


@pytest.fixture
async def attacked(ctid_config: Config) -> AsyncIterator[Rig]:
    """The daemon with alice logged in and talking to a customer (one rig for all examples)."""
    async with command_rig(ctid_config, members=logged_in("alice"), adjust=generous) as rig:
        stop = cut_after("inbound_answered", bridge_enter(CUSTOMER))
        await rig.sim.replay(CAPTURES / "inbound_answered.ami", None, stop=stop)
        model = rig.daemon.model
        await until(
            lambda: (p := model.part_of(CALL, "alice")) is not None and p.answered_at is not None
        )
        await until(lambda: model.agents["alice"].presence == Presence.READY)
        yield rig
        # Still up and still obeying: a valid command is carried out.
        assert rig.daemon.ami.ready.is_set()
        assert rig.daemon.bus.connected.is_set()
        reply, actions = await rig.command({"id": "after", "cmd": "not_ready", "reason": "Lunch"})
        assert reply == {
            "type": "reply",
            "v": 1,
            "id": "after",
            "ok": True,
            "result": {"reason": "Lunch"},
        }
        assert fields_of(actions[0]) == expect(
            "QueuePause", ("Interface", ALICE_DEVICE), ("Paused", "true"), ("Reason", "Lunch")
        )


def check_action(action: AmiMessage) -> None:
    """An action a command may send, with its own fields only, safe, and alice's only."""
    name = action.get("Action")
    assert name in COMMAND_ACTIONS or name in HOUSEKEEPING, f"unexpected action {action}"
    assert action.get_all("Action") == [name]
    allowed = COMMAND_ACTIONS.get(name, frozenset()) | {"Action", "ActionID"}
    for key, value in action.headers:
        assert key in allowed, f"{name}: unexpected field {key!r}"
        assert SAFE_VALUE.fullmatch(value), f"{name}: {key} carries {value!r}"
        if key in CHANNEL_FIELDS or key == "ExtraChannel":
            assert value in ALICE_CHANNELS, f"{name}: {key} {value!r} is not alice's"
        if key in {"Exten", "ExtraExten"}:
            assert EXTEN.fullmatch(value), f"{name}: odd {key} {value!r}"


_markers = iter(range(10**9))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=hostile_payloads)
async def test_every_hostile_payload_gets_one_reply_and_nothing_unchecked_reaches_ami(
    attacked: Rig, payload: bytes
) -> None:
    """One reply per payload (with its readable id), only expected, clean actions, and the
    daemon keeps serving (checked by the fixture at the end)."""
    rig = attacked
    alice = rig.users["alice"]
    marker = f"zz-marker-{next(_markers)}"
    start = len(alice.got)
    mark = len(rig.sim.actions)
    await rig.publish("alice", "ctid/v1/agents/alice/cmd", payload)
    reply, _ = await rig.command({"id": marker, "cmd": "wrapup_done"}, within_s=10)
    assert reply["error"]["code"] == "not_in_wrapup"

    replies = alice.on("ctid/v1/agents/alice/reply", start)
    assert replies[-1] == reply
    answers = replies[:-1]
    assert len(answers) == 1, answers
    answer = answers[0]
    event(f"reply {answer['error']['code'] if not answer['ok'] else 'ok'}")
    assert answer["type"] == "reply"
    assert answer["v"] == 1
    assert answer["id"] == contract_id(payload)
    if answer["ok"]:
        assert set(answer) == {"type", "v", "id", "ok", "result"}
    else:
        assert set(answer) == {"type", "v", "id", "ok", "error"}
        assert answer["error"]["code"] in ERROR_CODES
        assert not re.search(r"[\x00-\x1f\x7f]", answer["error"]["message"])
    if len(payload) > MAX_PAYLOAD:
        assert answer["error"]["code"] == "too_large"
    for action in rig.sim.actions[mark:]:
        check_action(action)


# ---------------------------------------------------------------- the parser alone


@settings(max_examples=500, deadline=None)
@given(
    payload=st.one_of(st.binary(max_size=300), schema_shaped(), objects_as_json(), broken_bytes())
)
def test_parse_command_gives_a_command_or_a_command_error(payload: bytes) -> None:
    """Any bytes: a validated Command (known name, schema fields, clean strings) or a
    CommandError with a documented code; never another exception."""
    outcome: Command | CommandError
    try:
        outcome = parse_command(payload)
    except CommandError as exc:
        outcome = exc
    if isinstance(outcome, CommandError):
        assert outcome.code in ERROR_CODES
        assert outcome.command_id is None or outcome.command_id == readable_id(payload)
        return
    command = outcome
    assert isinstance(command, Command)
    schema = SCHEMAS[command.name]
    assert set(command.args) <= set(schema)
    assert all(k in command.args for k, f in schema.items() if f.required)
    for key, value in command.args.items():
        if isinstance(value, str) and key not in {"text", "notes"}:
            assert not re.search(r"[\x00-\x1f\x7f]", value), (key, value)
    assert command.id == readable_id(payload)
