"""ctid's configuration: TOML loaded once into frozen dataclasses.

The dataclasses below are the schema. ``load_config`` validates every key and
stops start-up with one line naming the key (``ami.port: expected an integer
1-65535, got "x"``). Unknown keys are errors too: a typo must not silently fall
back to a default at 3 a.m.

Public API:

- ``load_config(path)`` reads and validates a TOML file and returns a ``Config``;
  every failure (missing file, TOML syntax, bad value) is a ``ConfigError``.
- ``config_from_mapping(data, base_dir=...)`` validates already-parsed TOML data
  (what ``tomllib`` returns); relative paths are resolved against ``base_dir``.
- ``render_effective(config)`` is the effective configuration as TOML text, every
  key with its value, defaults included, secrets masked (``ctid check-config``).

Indices in keys are 0-based: ``agents[1]`` is the second ``[[agents]]`` table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import phonenumbers

from ctid.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True, slots=True)
class AmiConfig:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "ctid"
    secret: str = field(default="", repr=False)
    secret_file: Path | None = None
    auth: str = "md5"  # "md5" (Challenge/Key) or "plain"
    connect_timeout_s: float = 5.0
    login_timeout_s: float = 5.0
    action_timeout_s: float = 5.0
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = "ctid"
    password: str = field(default="", repr=False)
    password_file: Path | None = None
    client_id: str = "ctid"
    topic_prefix: str = "ctid"
    keepalive_s: int = 30
    tls: bool = False
    tls_ca_file: Path | None = None
    websockets_port: int = 9001
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path = Path("/var/lib/ctid/ctid.sqlite3")
    batch_max: int = 500
    batch_wait_s: float = 0.0  # 0: commit at once; writes arriving meanwhile still batch
    # The contact directory's own SQLite file (None: directory.sqlite3 beside ``path``).
    # Its own file because every commit to a file makes SQLite drop the page cache of
    # the file's other connections: the store's writes would keep lookups cold.
    directory_path: Path | None = None

    @property
    def directory_file(self) -> Path:
        """Where the contact directory lives."""
        return self.directory_path or self.path.with_name("directory.sqlite3")


@dataclass(frozen=True, slots=True)
class NumbersConfig:
    default_region: str = "DE"
    max_extension_length: int = 6
    cache_size: int = 100_000


@dataclass(frozen=True, slots=True)
class CallsConfig:
    """How the model reads calls."""

    attached_prefix: str = "CTI_"  # channel variables with this prefix are IVR-attached data
    max_call_age_s: float = 4 * 3600.0  # a call never seen to hang up is expired after this
    interaction_limit: int = 6  # open interactions per agent (the CIC seed's six)
    wrapup_s: float = 0.0  # automatic wrap-up: 0 = off
    pop_on: str = "alerting"  # "alerting" | "accepted"
    lookup_deadline_s: float = 0.3  # the pop goes out at once; "lookup: timeout" after this


@dataclass(frozen=True, slots=True)
class DialplanConfig:
    """Where ctid's actions send calls (the contexts of config/asterisk/extensions_ctid.conf)."""

    dial_context: str = "ctid-outbound"  # click to dial: external numbers
    internal_context: str = "ctid-internal"  # agents' extensions and queues (transfer, consult)
    hold_context: str = "ctid-hold"  # where a held customer hears music
    hold_agent_context: str = "ctid-hold-agent"  # where the agent waits meanwhile
    dial_timeout_s: float = 30.0  # how long the agent's own phone rings for a click to dial
    caller_id: str = ""  # caller id of click to dial ("" = the endpoint's own)
    threeway_dtmf: str = (
        "*3"  # features.conf atxferthreeway: turns a consultation into a conference
    )


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """Agent commands over MQTT."""

    rate_per_minute: int = 120  # per agent, sustained
    burst: int = 20  # per agent, at once
    history_limit: int = 20  # `history`: the agent's last N interactions
    replay_window: int = 1000  # `replay`: at most this many missed messages re-sent


@dataclass(frozen=True, slots=True)
class StatsConfig:
    """Statistics in SQLite (``queue_intervals``)."""

    service_level_s: float = 20.0  # a call answered within this wait counts as within service level


@dataclass(frozen=True, slots=True)
class ReasonConfig:
    code: str
    label: str
    kind: str = "not_ready"  # "not_ready" | "logout" | "wrapup"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    id: str
    name: str
    devices: tuple[str, ...]
    extension: str = ""
    queues: tuple[str, ...] = ()
    password_file: Path | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"  # "json" | "console" | "auto" (console on a TTY)


@dataclass(frozen=True, slots=True)
class Config:
    ami: AmiConfig = AmiConfig()
    mqtt: MqttConfig = MqttConfig()
    store: StoreConfig = StoreConfig()
    numbers: NumbersConfig = NumbersConfig()
    calls: CallsConfig = CallsConfig()
    log: LogConfig = LogConfig()
    dialplan: DialplanConfig = DialplanConfig()
    commands: CommandsConfig = CommandsConfig()
    stats: StatsConfig = StatsConfig()
    reasons: tuple[ReasonConfig, ...] = ()
    agents: tuple[AgentConfig, ...] = ()
    source: Path | None = None


# --------------------------------------------------------------------------- loading

_T = TypeVar("_T")
# A validator: takes the dotted key and the raw TOML value, returns the typed value.
_Check = Callable[[str, object], _T]

_SECTIONS = ("ami", "mqtt", "store", "numbers", "calls", "log", "dialplan", "commands", "stats")
_ARRAYS = ("reasons", "agents")

# C0 and C1 control characters. None of them belongs in a configured string, and CR/LF
# in anything that reaches an AMI action would inject headers into it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# A topic segment that is also a Mosquitto user name: no "+", "#", "/" (MQTT
# wildcards and levels) and no ":" or spaces (the password and ACL file formats).
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9._:%\[\]-]{1,253}")
_LOGIN = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,128}")
# mqtt.username may be empty (anonymous broker); ":" would break Mosquitto's password file.
_MQTT_USER = re.compile(r"[^\s:\x00-\x1f\x7f-\x9f]{0,128}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Channel names are "TECH/resource-<seq>" ("PJSIP/1001-0000002a", "Local/1001@agents-…;1"),
# so a device is a technology and one resource without "/" or spaces.
_DEVICE = re.compile(r"[A-Za-z][A-Za-z0-9_]*/[A-Za-z0-9._@+*#~=-]+")
_QUEUE = re.compile(r"[A-Za-z0-9._-]+")
_EXTENSION = re.compile(r"[0-9*#+]+")
_REASON_CODE = re.compile(r"[A-Za-z0-9._ -]{1,32}")
_VAR_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")

_DAY_S = 86_400.0
_SECRET_FILE_MAX = 4096


def _key_text(key: str) -> str:
    """A TOML key as it would be written: bare if possible, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _show(value: object, depth: int = 0) -> str:
    """A short TOML-like rendering of a value for an error message."""
    if depth > 2:
        return "…"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Guarded because str() of a huge int raises (CPython's int_max_str_digits).
        return str(value) if abs(value) < 10**30 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 42 else text[:40] + "…"
    if isinstance(value, list):
        items = ", ".join(_show(item, depth + 1) for item in value[:4])
        text = f"[{items}{', …' if len(value) > 4 else ''}]"
        return text if len(text) <= 60 else text[:58] + "…]"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    return type(value).__name__


def _kind(value: object) -> str:
    """What a value is, without showing it (for secrets)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _unknown(key: str, name: str, known: Sequence[str], what: str) -> ConfigError:
    """The error for an unknown key, with the closest known one as a suggestion."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"?' if close else "known: " + ", ".join(known)
    return ConfigError(key, f"unknown {what} ({hint})")


def _fields(cls: type[DataclassInstance]) -> tuple[str, ...]:
    """The TOML keys of a schema dataclass: its field names."""
    return tuple(f.name for f in dataclasses.fields(cls))


class _Table:
    """One TOML table being read: known keys are checked, absent ones take defaults."""

    def __init__(self, prefix: str, value: object, known: Sequence[str], expected: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(prefix, f"expected {expected}, got {_show(value)}")
        for name in value:
            if name not in known:
                raise _unknown(f"{prefix}.{_key_text(name)}", name, known, "key")
        self.prefix = prefix
        self.data: Mapping[str, object] = value

    def key(self, name: str) -> str:
        """The dotted key of ``name`` in this table."""
        return f"{self.prefix}.{name}"

    def has(self, name: str) -> bool:
        """Whether the file sets ``name`` in this table."""
        return name in self.data

    def get(self, name: str, default: _T, check: _Check[_T]) -> _T:
        """The checked value of ``name``, or ``default`` when the file leaves it out."""
        if name not in self.data:
            return default
        return check(self.key(name), self.data[name])

    def require(self, name: str, check: _Check[_T], expectation: str) -> _T:
        """The checked value of ``name``, which the file must set."""
        if name not in self.data:
            raise ConfigError(self.key(name), expectation)
        return check(self.key(name), self.data[name])


def _int(lo: int, hi: int) -> _Check[int]:
    """An integer in ``lo..hi``; booleans are not integers here, though Python thinks so."""

    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(key, f"expected an integer {lo}-{hi}, got {_show(value)}")
        return value

    return check


_port = _int(1, 65535)


def _seconds(*, zero_ok: bool = False, most: float = _DAY_S) -> _Check[float]:
    """A finite number of seconds, > 0 (or >= 0) and at most ``most``; ints accepted."""
    bound = ">= 0" if zero_ok else "> 0"

    def check(key: str, value: object) -> float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # a 400-digit integer
                number = None
        if (
            number is None
            or not math.isfinite(number)
            or number > most
            or number < 0
            or (number == 0 and not zero_ok)
        ):
            raise ConfigError(
                key, f"expected a number of seconds {bound} (at most {most:g}), got {_show(value)}"
            )
        return number

    return check


def _bool(key: str, value: object) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_show(value)}")
    return value


def _choice(*choices: str) -> _Check[str]:
    """One of a fixed set of strings."""
    listed = ", ".join(f'"{c}"' for c in choices)

    def check(key: str, value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(key, f"expected one of {listed}, got {_show(value)}")
        return value

    return check


def _text(pattern: re.Pattern[str], expectation: str) -> _Check[str]:
    """A string matching ``pattern`` as a whole."""

    def check(key: str, value: object) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ConfigError(key, f"expected {expectation}, got {_show(value)}")
        return value

    return check


def _label(most: int) -> _Check[str]:
    """Free text for people to read: non-empty, one line, at most ``most`` characters."""

    def check(key: str, value: object) -> str:
        if (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > most
            or _CONTROL.search(value)
        ):
            raise ConfigError(
                key,
                f"expected a non-empty one-line string of at most {most} characters, "
                f"got {_show(value)}",
            )
        return value

    return check


def _path(base: Path) -> _Check[Path]:
    """A file path; a relative one is taken relative to the config file's directory."""

    def check(key: str, value: object) -> Path:
        if not isinstance(value, str) or not value or _CONTROL.search(value):
            raise ConfigError(key, f"expected a file path, got {_show(value)}")
        return base / value  # an absolute value replaces base

    return check


def _secret_text(key: str, value: object) -> str:
    """An inline secret; an error names its type, never its value."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {_kind(value)}")
    if _CONTROL.search(value):
        # Say which problem without showing the secret.
        raise ConfigError(key, "must not contain control characters (line breaks, tabs, …)")
    return value


def _read_secret_file(key: str, path: Path) -> str:
    """The secret held in ``path``: its text without the trailing newline."""
    try:
        # Bounded read: a mistaken "/dev/zero" must not eat the memory.
        with path.open("rb") as file:
            raw = file.read(_SECRET_FILE_MAX + 1)
    except OSError as exc:
        raise ConfigError(key, f'cannot read "{path}": {exc.strerror or exc}') from exc
    if len(raw) > _SECRET_FILE_MAX:
        raise ConfigError(key, f'"{path}" is larger than {_SECRET_FILE_MAX} bytes')
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ConfigError(key, f'"{path}" is not UTF-8 text') from exc
    if not text:
        raise ConfigError(key, f'"{path}" is empty')
    if _CONTROL.search(text):
        raise ConfigError(key, f'"{path}" must hold one line without control characters')
    return text


def _secret(
    table: _Table, name: str, file_name: str, base: Path, *, required: bool
) -> tuple[str, Path | None]:
    """A secret given inline (``name``) or, better, in a file (``file_name``)."""
    if table.has(name) and table.has(file_name):
        raise ConfigError(
            table.key(file_name),
            f"{table.key(name)} and {table.key(file_name)} are mutually exclusive; keep one",
        )
    if table.has(file_name):
        path = _path(base)(table.key(file_name), table.data[file_name])
        return _read_secret_file(table.key(file_name), path), path
    value = table.get(name, "", _secret_text)
    if required and not value:
        raise ConfigError(
            table.key(name),
            f"required: set {table.key(file_name)} (recommended) or {table.key(name)}",
        )
    return value, None


def _ami(value: object, base: Path) -> AmiConfig:
    d = AmiConfig()
    t = _Table("ami", value, _fields(AmiConfig), "a table [ami]")
    secret, secret_file = _secret(t, "secret", "secret_file", base, required=True)
    initial = t.get("reconnect_initial_s", d.reconnect_initial_s, _seconds())
    reconnect_max = t.get("reconnect_max_s", d.reconnect_max_s, _seconds())
    if reconnect_max < initial:
        raise ConfigError(
            t.key("reconnect_max_s"),
            f"must be >= ami.reconnect_initial_s ({initial:g}), got {reconnect_max:g}",
        )
    return AmiConfig(
        host=t.get("host", d.host, _text(_HOST, 'a host name or IP address like "127.0.0.1"')),
        port=t.get("port", d.port, _port),
        username=t.get(
            "username", d.username, _text(_LOGIN, "a non-empty user name without spaces")
        ),
        secret=secret,
        secret_file=secret_file,
        auth=t.get("auth", d.auth, _choice("md5", "plain")),
        connect_timeout_s=t.get("connect_timeout_s", d.connect_timeout_s, _seconds()),
        login_timeout_s=t.get("login_timeout_s", d.login_timeout_s, _seconds()),
        action_timeout_s=t.get("action_timeout_s", d.action_timeout_s, _seconds()),
        ping_interval_s=t.get("ping_interval_s", d.ping_interval_s, _seconds()),
        ping_timeout_s=t.get("ping_timeout_s", d.ping_timeout_s, _seconds()),
        reconnect_initial_s=initial,
        reconnect_max_s=reconnect_max,
    )


def _mqtt(value: object, base: Path) -> MqttConfig:
    d = MqttConfig()
    t = _Table("mqtt", value, _fields(MqttConfig), "a table [mqtt]")
    username = t.get(
        "username",
        d.username,
        _text(_MQTT_USER, 'a user name without spaces or ":" ("" for an anonymous broker)'),
    )
    password, password_file = _secret(t, "password", "password_file", base, required=False)
    if password and not username:
        # MQTT 3.1.1 (3.1 §3.1.2.9): a password flag without a user name flag is a protocol error.
        raise ConfigError(t.key("password"), "set, but mqtt.username is empty")
    port = t.get("port", d.port, _port)
    websockets_port = t.get("websockets_port", d.websockets_port, _port)
    if websockets_port == port:
        # Both are listeners of the one broker that `ctid broker-config` configures.
        raise ConfigError(t.key("websockets_port"), f"must differ from mqtt.port ({port})")
    tls = t.get("tls", d.tls, _bool)
    tls_ca_file = t.get("tls_ca_file", d.tls_ca_file, _path(base))
    if tls and tls_ca_file is not None and not tls_ca_file.is_file():
        raise ConfigError(t.key("tls_ca_file"), f'"{tls_ca_file}" is not a readable file')
    initial = t.get("reconnect_initial_s", d.reconnect_initial_s, _seconds())
    reconnect_max = t.get("reconnect_max_s", d.reconnect_max_s, _seconds())
    if reconnect_max < initial:
        raise ConfigError(
            t.key("reconnect_max_s"),
            f"must be >= mqtt.reconnect_initial_s ({initial:g}), got {reconnect_max:g}",
        )
    return MqttConfig(
        host=t.get("host", d.host, _text(_HOST, 'a host name or IP address like "127.0.0.1"')),
        port=port,
        username=username,
        password=password,
        password_file=password_file,
        client_id=t.get(
            "client_id", d.client_id, _text(_CLIENT_ID, 'letters, digits, ".", "_", "-" (1-64)')
        ),
        topic_prefix=t.get(
            "topic_prefix",
            d.topic_prefix,
            _text(_SEGMENT, 'a topic segment like "ctid": letters, digits, ".", "_", "-" (1-64)'),
        ),
        # MQTT's keep alive is a 16-bit count of seconds; 0 would switch it off.
        keepalive_s=t.get("keepalive_s", d.keepalive_s, _int(1, 65535)),
        tls=tls,
        tls_ca_file=tls_ca_file,
        websockets_port=websockets_port,
        reconnect_initial_s=initial,
        reconnect_max_s=reconnect_max,
    )


def _store(value: object, base: Path) -> StoreConfig:
    d = StoreConfig()
    t = _Table("store", value, _fields(StoreConfig), "a table [store]")
    return StoreConfig(
        path=t.get("path", d.path, _path(base)),
        batch_max=t.get("batch_max", d.batch_max, _int(1, 100_000)),
        batch_wait_s=t.get("batch_wait_s", d.batch_wait_s, _seconds(zero_ok=True, most=60)),
        directory_path=t.get("directory_path", d.directory_path, _path(base)),
    )


def _region(key: str, value: object) -> str:
    region = value.upper() if isinstance(value, str) else ""
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(
            key,
            f'expected a 2-letter region code that phonenumbers knows, like "DE" or "US", '
            f"got {_show(value)}",
        )
    return region


def _numbers(value: object) -> NumbersConfig:
    d = NumbersConfig()
    t = _Table("numbers", value, _fields(NumbersConfig), "a table [numbers]")
    return NumbersConfig(
        default_region=t.get("default_region", d.default_region, _region),
        # E.164 numbers have at most 15 digits; a longer "extension" would swallow them all.
        max_extension_length=t.get("max_extension_length", d.max_extension_length, _int(1, 15)),
        cache_size=t.get("cache_size", d.cache_size, _int(0, 10_000_000)),
    )


def _calls(value: object) -> CallsConfig:
    d = CallsConfig()
    t = _Table("calls", value, _fields(CallsConfig), "a table [calls]")
    return CallsConfig(
        attached_prefix=t.get(
            "attached_prefix",
            d.attached_prefix,
            # Not empty: an empty prefix would publish every channel variable to the CRM.
            _text(_VAR_PREFIX, 'a channel variable prefix like "CTI_": letters, digits, "_"'),
        ),
        max_call_age_s=t.get("max_call_age_s", d.max_call_age_s, _seconds(most=7 * _DAY_S)),
        interaction_limit=t.get("interaction_limit", d.interaction_limit, _int(1, 100)),
        wrapup_s=t.get("wrapup_s", d.wrapup_s, _seconds(zero_ok=True)),
        pop_on=t.get("pop_on", d.pop_on, _choice("alerting", "accepted")),
        lookup_deadline_s=t.get(
            "lookup_deadline_s", d.lookup_deadline_s, _seconds(zero_ok=True, most=10.0)
        ),
    )


_CONTEXT = re.compile(r"[A-Za-z0-9_-]{1,79}")
_DTMF = re.compile(r"[0-9*#A-D]{1,8}")
_CALLER_ID = re.compile(r"[^\x00-\x1f\x7f]{0,80}")


def _dialplan(value: object) -> DialplanConfig:
    d = DialplanConfig()
    t = _Table("dialplan", value, _fields(DialplanConfig), "a table [dialplan]")
    context = _text(_CONTEXT, "a dialplan context name: letters, digits, _ and - (1-79)")
    return DialplanConfig(
        dial_context=t.get("dial_context", d.dial_context, context),
        internal_context=t.get("internal_context", d.internal_context, context),
        hold_context=t.get("hold_context", d.hold_context, context),
        hold_agent_context=t.get("hold_agent_context", d.hold_agent_context, context),
        dial_timeout_s=t.get("dial_timeout_s", d.dial_timeout_s, _seconds(most=600.0)),
        # It reaches AMI as a header value: no control characters (CR/LF) ever.
        caller_id=t.get(
            "caller_id",
            d.caller_id,
            _text(_CALLER_ID, "a caller id like '\"Sales\" <+4930123456>'"),
        ),
        threeway_dtmf=t.get(
            "threeway_dtmf", d.threeway_dtmf, _text(_DTMF, 'DTMF digits like "*3"')
        ),
    )


def _commands(value: object) -> CommandsConfig:
    d = CommandsConfig()
    t = _Table("commands", value, _fields(CommandsConfig), "a table [commands]")
    return CommandsConfig(
        rate_per_minute=t.get("rate_per_minute", d.rate_per_minute, _int(1, 100_000)),
        burst=t.get("burst", d.burst, _int(1, 10_000)),
        history_limit=t.get("history_limit", d.history_limit, _int(1, 1000)),
        replay_window=t.get("replay_window", d.replay_window, _int(1, 1_000_000)),
    )


def _stats(value: object) -> StatsConfig:
    d = StatsConfig()
    t = _Table("stats", value, _fields(StatsConfig), "a table [stats]")
    return StatsConfig(
        service_level_s=t.get("service_level_s", d.service_level_s, _seconds(most=3600.0)),
    )


def _log(value: object) -> LogConfig:
    d = LogConfig()
    t = _Table("log", value, _fields(LogConfig), "a table [log]")
    return LogConfig(
        level=t.get("level", d.level, _choice("debug", "info", "warning", "error")),
        format=t.get("format", d.format, _choice("json", "console", "auto")),
    )


def _array_of_tables(name: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(name, f"expected an array of tables [[{name}]], got {_show(value)}")
    return value


def _reasons(value: object) -> tuple[ReasonConfig, ...]:
    reasons: list[ReasonConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(_array_of_tables("reasons", value)):
        t = _Table(f"reasons[{i}]", item, _fields(ReasonConfig), "a table [[reasons]]")
        code = t.require(
            "code",
            _text(_REASON_CODE, 'a reason code like "Lunch": letters, digits, " ._-" (1-32)'),
            'expected a reason code like "Lunch"',
        )
        if code != code.strip():
            raise ConfigError(
                t.key("code"), f"must not start or end with a space, got {_show(code)}"
            )
        # Case-insensitive: "Break" and "break" side by side would confuse agents and reports.
        folded = code.casefold()
        if folded in seen:
            raise ConfigError(
                t.key("code"), f'duplicate reason code "{code}" (also reasons[{seen[folded]}])'
            )
        seen[folded] = i
        reasons.append(
            ReasonConfig(
                code=code,
                label=t.get("label", code, _label(64)),
                kind=t.get("kind", "not_ready", _choice("not_ready", "logout", "wrapup")),
            )
        )
    return tuple(reasons)


def _string_list(
    item_pattern: re.Pattern[str], item_expectation: str, list_expectation: str, *, empty_ok: bool
) -> _Check[tuple[str, ...]]:
    """An array of distinct strings, each matching ``item_pattern``."""

    def check(key: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or (not value and not empty_ok):
            raise ConfigError(key, f"expected {list_expectation}, got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item_pattern.fullmatch(item):
                raise ConfigError(f"{key}[{i}]", f"expected {item_expectation}, got {_show(item)}")
            if item in value[:i]:
                raise ConfigError(f"{key}[{i}]", f"duplicate {_show(item)}")
        return tuple(value)

    return check


_DEVICES_EXPECTED = 'a non-empty list of strings like "PJSIP/1001"'
_devices = _string_list(
    _DEVICE,
    'a device "TECH/resource" like "PJSIP/1001" or "Local/1001@agents"',
    _DEVICES_EXPECTED,
    empty_ok=False,
)
_queues = _string_list(
    _QUEUE,
    'a queue name like "support": letters, digits, ".", "_", "-"',
    'a list of queue names like ["support", "sales"]',
    empty_ok=True,
)


def _device_identity(device: str) -> str:
    # Asterisk matches channel technologies case-insensitively ("pjsip/1001" dials
    # PJSIP/1001), while the resource part is case-sensitive.
    tech, _, resource = device.partition("/")
    return f"{tech.lower()}/{resource}"


def _agents(
    value: object, base: Path, numbers: NumbersConfig, mqtt: MqttConfig
) -> tuple[AgentConfig, ...]:
    agents: list[AgentConfig] = []
    ids: dict[str, int] = {}  # agent id -> index
    # extension or device identity -> agent id (they never collide: only devices hold "/")
    owners: dict[str, str] = {}
    id_expected = 'an agent id like "alice": letters, digits, ".", "_", "-" (1-64)'
    for i, item in enumerate(_array_of_tables("agents", value)):
        t = _Table(f"agents[{i}]", item, _fields(AgentConfig), "a table [[agents]]")
        agent_id = t.require("id", _text(_SEGMENT, id_expected), f"expected {id_expected}")
        if agent_id in ids:
            raise ConfigError(
                t.key("id"), f'duplicate agent id "{agent_id}" (also agents[{ids[agent_id]}])'
            )
        if agent_id == mqtt.username:
            # Agents log in to the broker as themselves: this one would get ctid's own rights.
            raise ConfigError(
                t.key("id"), f'"{agent_id}" is ctid\'s own broker user (mqtt.username)'
            )
        ids[agent_id] = i
        devices = t.require("devices", _devices, f"expected {_DEVICES_EXPECTED}")
        for j, device in enumerate(devices):
            owner = owners.setdefault(_device_identity(device), agent_id)
            if owner != agent_id:
                raise ConfigError(
                    t.key(f"devices[{j}]"), f'"{device}" is already a device of agent "{owner}"'
                )
        extension = t.get(
            "extension", "", _text(_EXTENSION, 'an extension like "1001": digits, "*", "#", "+"')
        )
        if len(extension) > numbers.max_extension_length:
            raise ConfigError(
                t.key("extension"),
                f'"{extension}" is longer than numbers.max_extension_length '
                f"({numbers.max_extension_length})",
            )
        if extension and owners.setdefault(extension, agent_id) != agent_id:
            raise ConfigError(
                t.key("extension"),
                f'"{extension}" is already the extension of agent "{owners[extension]}"',
            )
        agents.append(
            AgentConfig(
                id=agent_id,
                name=t.get("name", agent_id, _label(128)),
                devices=devices,
                extension=extension,
                queues=t.get("queues", (), _queues),
                password_file=t.get("password_file", None, _path(base)),
            )
        )
    return tuple(agents)


def config_from_mapping(
    data: Mapping[str, object], *, base_dir: Path, source: Path | None = None
) -> Config:
    """Validates parsed TOML data into a ``Config``; raises ``ConfigError`` on the first problem.

    Relative paths are resolved against ``base_dir`` (the config file's directory).
    """
    known = (*_SECTIONS, *_ARRAYS)
    for name in data:
        if name not in known:
            raise _unknown(_key_text(name), name, known, "section")
    ami = _ami(data.get("ami", {}), base_dir)
    mqtt = _mqtt(data.get("mqtt", {}), base_dir)
    numbers = _numbers(data.get("numbers", {}))
    return Config(
        ami=ami,
        mqtt=mqtt,
        store=_store(data.get("store", {}), base_dir),
        numbers=numbers,
        calls=_calls(data.get("calls", {})),
        log=_log(data.get("log", {})),
        dialplan=_dialplan(data.get("dialplan", {})),
        commands=_commands(data.get("commands", {})),
        stats=_stats(data.get("stats", {})),
        reasons=_reasons(data.get("reasons", [])),
        agents=_agents(data.get("agents", []), base_dir, numbers, mqtt),
        source=source,
    )


def load_config(path: Path | str) -> Config:
    """Reads and validates the TOML configuration at ``path``.

    Every problem (unreadable file, TOML syntax, unknown or bad key, unreadable
    secret file) raises ``ConfigError`` with one line naming the key.
    """
    source = Path(path).absolute()
    try:
        raw = source.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError("", f"{path}: cannot read the configuration: {reason}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line 3, column 8)"
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from exc
    except ValueError as exc:
        # tomllib lets int()'s digit limit escape on a 4300+ digit integer.
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError("", f"{path}: invalid TOML: arrays or tables nested too deeply") from exc
    return config_from_mapping(data, base_dir=source.parent, source=source)


# --------------------------------------------------------------------------- rendering

# Secret fields and the file field they may be read from; the value is never rendered.
_MASKED = {"secret": "secret_file", "password": "password_file"}


def _toml_value(value: object) -> str:
    """``value`` as a TOML literal (strings, numbers, booleans, paths, tuples of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # repr(inf) is "inf", which TOML accepts too
    if isinstance(value, Path):
        return _toml_value(str(value))
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML's basic-string escapes, except that
        # JSON leaves DEL raw where TOML forbids it.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _render_table(obj: DataclassInstance) -> list[str]:
    """The ``key = value`` lines of one table, secrets masked, unset paths as comments."""
    lines: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in _MASKED:
            if getattr(obj, _MASKED[f.name]) is not None:
                lines.append(f'# {f.name} = "***"  (read from {_MASKED[f.name]})')
            else:
                lines.append(f"{f.name} = {_toml_value('***' if value else '')}")
        elif value is None:
            lines.append(f"# {f.name} = (not set)")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return lines


def render_effective(config: Config) -> str:
    """The effective configuration as TOML: every key and its value, defaults included.

    Secrets and passwords show as ``"***"``; a secret read from a file shows the
    file's path, never its content.
    """
    origin = f" from {config.source}" if config.source is not None else ""
    lines = [f"# ctid effective configuration{origin}", '# secrets and passwords show as "***"']
    for name in _SECTIONS:
        lines += ["", f"[{name}]", *_render_table(getattr(config, name))]
    for name in _ARRAYS:
        items = getattr(config, name)
        if not items:
            lines += ["", f"# no [[{name}]]"]
        for item in items:
            lines += ["", f"[[{name}]]", *_render_table(item)]
    return "\n".join(lines) + "\n"
