"""Agent commands: the contract of ``ctid/v1/agents/{agent}/cmd`` and its validation. Pure.

A command is a JSON object ``{"id": …, "cmd": "<name>", …fields}``. Every
message that arrives gets exactly one reply on ``…/reply``: ``{id, ok: true,
result}`` or ``{id, ok: false, error: {code, message}}`` (``id: null`` when no
id could be read). Nothing from MQTT is trusted: each command has a schema
(allowed fields, their types, lengths and characters), extra fields are
refused, and no string that may reach AMI can carry CR, LF or any other
control character.

The error codes are a stable, documented list (``ERROR_CODES``); front ends
may switch on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MAX_PAYLOAD = 16 * 1024  # bytes; a command is small, anything bigger is hostile

ERROR_CODES: Mapping[str, str] = {
    "bad_json": "the payload is not a JSON object",
    "too_large": "the payload is larger than ctid accepts",
    "bad_request": "a field is missing, unexpected, of the wrong type or not allowed",
    "unknown_command": "no such command",
    "not_logged_in": "the agent is not logged in",
    "already_logged_in": "the agent is logged in already",
    "unknown_reason": "the reason code is not configured",
    "no_such_call": "no such call of this agent",
    "invalid_number": "the number cannot be dialled",
    "limit_reached": "the agent's interaction limit is reached",
    "not_in_wrapup": "the agent is not in wrap-up",
    "pbx_down": "the PBX link is down",
    "pbx_error": "Asterisk refused the action",
    "timeout": "Asterisk did not answer in time",
    "rate_limited": "too many commands; slow down",
    "internal": "ctid failed to carry out the command (a bug: see its log)",
}


class CommandError(Exception):
    """A command that cannot be carried out; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str = "", *, command_id: object = None) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message or ERROR_CODES[code])
        self.code = code
        self.message = message or ERROR_CODES[code]
        self.command_id = command_id


@dataclass(frozen=True, slots=True)
class Command:
    """A validated command."""

    id: str | int
    name: str
    args: Mapping[str, Any]

    def get(self, field: str, default: Any = None) -> Any:
        return self.args.get(field, default)


# ---------------------------------------------------------------- field checks

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_INTERACTION = re.compile(r"[A-Za-z0-9._:/-]{1,96}")
_NUMBER = re.compile(r"[+0-9*#() ./-]{1,40}")
_TOKEN = re.compile(r"[A-Za-z0-9._ -]{1,64}")
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

Check = Callable[[str, Any], Any]


def text(max_len: int, *, multiline: bool = False) -> Check:
    """A string up to ``max_len`` characters, without control characters."""
    bad = _CONTROL_BUT_NEWLINE if multiline else _CONTROL

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str):
            raise CommandError("bad_request", f"{field}: expected a string")
        if len(value) > max_len:
            raise CommandError("bad_request", f"{field}: longer than {max_len} characters")
        if bad.search(value):
            raise CommandError("bad_request", f"{field}: control characters are not allowed")
        return value

    return check


def pattern(regex: re.Pattern[str], what: str) -> Check:
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise CommandError("bad_request", f"{field}: expected {what}")
        return value

    return check


def integer(lo: int, hi: int) -> Check:
    def check(field: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise CommandError("bad_request", f"{field}: expected an integer {lo}-{hi}")
        return value

    return check


INTERACTION = pattern(_INTERACTION, "an interaction id")
NUMBER = pattern(_NUMBER, "a phone number (digits, +, *, #, spaces)")
REASON = pattern(_TOKEN, "a reason code")
RECORD = pattern(_ID, "a record id")
TARGET = pattern(re.compile(r"[A-Za-z0-9+*#._-]{1,40}"), "an agent, queue or number")


@dataclass(frozen=True, slots=True)
class Field:
    check: Check
    required: bool = False


# Each command's fields besides ``id`` and ``cmd``. A field not listed is refused.
SCHEMAS: Mapping[str, Mapping[str, Field]] = {
    "login": {"reason": Field(REASON)},
    "logout": {"reason": Field(REASON, required=True)},
    "ready": {},
    "not_ready": {"reason": Field(REASON, required=True)},
    "wrapup_done": {"code": Field(REASON), "notes": Field(text(2000, multiline=True))},
    "dial": {"number": Field(NUMBER, required=True), "interaction": Field(INTERACTION)},
    "hangup": {"interaction": Field(INTERACTION, required=True)},
    "hold": {"interaction": Field(INTERACTION, required=True)},
    "unhold": {"interaction": Field(INTERACTION, required=True)},
    "transfer": {
        "interaction": Field(INTERACTION, required=True),
        "to": Field(TARGET, required=True),
    },
    "consult": {
        "interaction": Field(INTERACTION, required=True),
        "to": Field(TARGET, required=True),
    },
    "complete": {"interaction": Field(INTERACTION, required=True)},
    "retrieve": {"interaction": Field(INTERACTION, required=True)},
    "conference": {"interaction": Field(INTERACTION, required=True)},
    "notes": {
        "interaction": Field(INTERACTION, required=True),
        "text": Field(text(4000, multiline=True), required=True),
    },
    "select": {
        "interaction": Field(INTERACTION, required=True),
        "record": Field(RECORD, required=True),
    },
    "search": {
        "field": Field(
            pattern(re.compile(r"name|number|email|id"), "name, number, email or id"), True
        ),
        "op": Field(pattern(re.compile(r"=|like"), "= or like"), True),
        "value": Field(text(100), True),
        "limit": Field(integer(1, 100)),
    },
    "history": {"limit": Field(integer(1, 100))},
    "replay": {"since": Field(integer(0, 2**53), required=True)},
}


def parse_command(payload: bytes) -> Command:
    """Validate a raw payload into a ``Command``; else ``CommandError`` (with the id if read)."""
    if len(payload) > MAX_PAYLOAD:
        raise CommandError("too_large", f"at most {MAX_PAYLOAD} bytes")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CommandError("bad_json", f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise CommandError("bad_json", "expected a JSON object")
    raw_id = data.get("id")
    command_id = _command_id(raw_id)
    name = data.get("cmd")
    if command_id is None:
        raise CommandError(
            "bad_request", "id: expected a string (1-64 of A-Z a-z 0-9 . _ : -) or an integer"
        )
    if not isinstance(name, str):
        raise CommandError("bad_request", "cmd: expected a command name", command_id=command_id)
    schema = SCHEMAS.get(name)
    if schema is None:
        shown = name if _ID.fullmatch(name) else "?"
        raise CommandError("unknown_command", f"unknown command {shown!r}", command_id=command_id)
    args: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("id", "cmd"):
            continue
        spec = schema.get(key)
        if spec is None:
            shown = key if _ID.fullmatch(key) else "?"
            raise CommandError("bad_request", f"{shown}: unexpected field", command_id=command_id)
        try:
            args[key] = spec.check(key, value)
        except CommandError as exc:
            raise CommandError(exc.code, exc.message, command_id=command_id) from None
    for key, spec in schema.items():
        if spec.required and key not in args:
            raise CommandError("bad_request", f"{key}: required", command_id=command_id)
    return Command(id=command_id, name=name, args=args)


def _command_id(value: Any) -> str | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -(2**53) < value < 2**53:
        return value
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    return None


def readable_id(payload: bytes) -> str | int | None:
    """The ``id`` of a payload that failed validation, when one can be read safely."""
    try:
        data = orjson.loads(payload) if len(payload) <= MAX_PAYLOAD else None
    except orjson.JSONDecodeError:
        return None
    return _command_id(data.get("id")) if isinstance(data, dict) else None


def reply_ok(
    command_id: str | int | None, result: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {"type": "reply", "v": 1, "id": command_id, "ok": True, "result": dict(result or {})}


def reply_error(command_id: str | int | None, error: CommandError) -> dict[str, Any]:
    return {
        "type": "reply",
        "v": 1,
        "id": command_id,
        "ok": False,
        "error": {"code": error.code, "message": error.message},
    }


class RateLimiter:
    """Per-agent token buckets: ``burst`` commands at once, ``per_minute`` sustained."""

    def __init__(self, *, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # agent -> (tokens, at)

    def allow(self, agent: str, now: float) -> bool:
        """Take a token for ``agent`` at ``now`` (monotonic seconds); False when none is left."""
        tokens, at = self._buckets.get(agent, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[agent] = (tokens, now)
            return False
        self._buckets[agent] = (tokens - 1.0, now)
        return True
