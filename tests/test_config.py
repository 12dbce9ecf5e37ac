"""Configuration loading: the shipped example, every error message, render_effective."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ctid.config import (
    AgentConfig,
    AmiConfig,
    CallsConfig,
    Config,
    LogConfig,
    MqttConfig,
    NumbersConfig,
    ReasonConfig,
    StatsConfig,
    StoreConfig,
    config_from_mapping,
    load_config,
    render_effective,
)
from ctid.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SHIPPED = CONFIG_DIR / "ctid.toml"

# Every case below is appended to this, so bare "key = value" lines land in [ami].
BASE = '[ami]\nsecret = "s3cret-value"\n'


def write(directory: Path, text: str, name: str = "ctid.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(directory: Path, text: str) -> Config:
    return load_config(write(directory, text))


def error_of(directory: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(directory, text)
    return str(info.value)


# --------------------------------------------------------------------------- shipped files


def test_shipped_config_loads() -> None:
    """config/ctid.toml loads and holds the documented agents and reasons."""
    config = load_config(SHIPPED)

    assert config.source == SHIPPED
    assert config.ami.secret == "change-me"
    assert config.store.path == Path("/var/lib/ctid/ctid.sqlite3")
    assert [a.id for a in config.agents] == ["alice", "bob"]
    alice = config.agents[0]
    assert alice == AgentConfig(
        id="alice",
        name="Alice Example",
        devices=("PJSIP/1001",),
        extension="1001",
        queues=("support", "sales"),
    )
    assert config.agents[1].devices == ("PJSIP/1002",)
    kinds = {r.code: r.kind for r in config.reasons}
    assert kinds["Break"] == "not_ready"
    assert kinds["wrap-up"] == "wrapup"
    assert kinds["EndOfShift"] == "logout"


def test_shipped_config_documents_every_key() -> None:
    """Every schema key appears in config/ctid.toml (set or commented out)."""
    text = SHIPPED.read_text(encoding="utf-8")
    schema = {
        "ami": AmiConfig,
        "mqtt": MqttConfig,
        "store": StoreConfig,
        "numbers": NumbersConfig,
        "calls": CallsConfig,
        "log": LogConfig,
        "stats": StatsConfig,
        "reasons": ReasonConfig,
        "agents": AgentConfig,
    }
    missing = [
        f"{section}.{f.name}"
        for section, cls in schema.items()
        for f in dataclasses.fields(cls)
        if f"{f.name} =" not in text
    ]
    assert missing == []


def test_shipped_values_equal_schema_defaults() -> None:
    """The values the shipped file sets for the plain sections are the dataclass defaults."""
    config = load_config(SHIPPED)
    assert config.ami == dataclasses.replace(AmiConfig(), secret="change-me")
    assert config.mqtt == MqttConfig()
    assert config.store == StoreConfig()
    assert config.numbers == NumbersConfig()
    assert config.calls == CallsConfig()
    assert config.log == LogConfig()
    assert config.stats == StatsConfig()


def test_stats_service_level(tmp_path: Path) -> None:
    """[stats] service_level_s: default 20 s, an integer or a float, rendered back."""
    assert load_text(tmp_path, BASE).stats.service_level_s == 20.0
    config = load_text(tmp_path, BASE + "[stats]\nservice_level_s = 30\n")
    assert config.stats == StatsConfig(service_level_s=30.0)
    assert "[stats]\nservice_level_s = 30.0" in render_effective(config)


def test_minimal_example_loads(tmp_path: Path) -> None:
    """config/example-minimal.toml loads once its secret file exists; the rest is default."""
    secret = write(tmp_path, "hunter2\n", "ami.secret")
    text = (CONFIG_DIR / "example-minimal.toml").read_text(encoding="utf-8")
    config = load_text(tmp_path, text.replace("/etc/ctid/ami.secret", str(secret)))

    assert config.ami.secret == "hunter2"
    assert config.mqtt == MqttConfig()
    assert [a.id for a in config.agents] == ["alice"]


def test_empty_file_needs_only_the_secret(tmp_path: Path) -> None:
    """Without any key but the secret every section takes its defaults."""
    config = load_text(tmp_path, BASE)
    assert config == Config(
        ami=AmiConfig(secret="s3cret-value"), source=(tmp_path / "ctid.toml").absolute()
    )


# --------------------------------------------------------------------------- render_effective


def test_render_effective_round_trip(tmp_path: Path) -> None:
    """The rendering parses as TOML, masks the secret, and loads back to the same config."""
    config = load_config(SHIPPED)
    text = render_effective(config)

    assert "change-me" not in text
    data = tomllib.loads(text)
    assert data["ami"]["secret"] == "***"
    assert data["ami"]["port"] == 5038
    assert [a["id"] for a in data["agents"]] == ["alice", "bob"]

    again = load_text(tmp_path, text)
    masked = dataclasses.replace(config.ami, secret="***")
    assert dataclasses.replace(config, ami=masked, source=again.source) == again


def test_render_effective_shows_secret_files_not_their_content(tmp_path: Path) -> None:
    """A secret read from a file renders as the file's path; neither value appears."""
    write(tmp_path, "ami-pass-42\n", "ami.secret")
    write(tmp_path, "mqtt-pass-43\n", "mqtt.password")
    config = load_text(
        tmp_path,
        '[ami]\nsecret_file = "ami.secret"\n[mqtt]\npassword_file = "mqtt.password"\n',
    )
    text = render_effective(config)

    assert "ami-pass-42" not in text
    assert "mqtt-pass-43" not in text
    data = tomllib.loads(text)
    assert data["ami"]["secret_file"] == str(tmp_path / "ami.secret")
    assert data["mqtt"]["password_file"] == str(tmp_path / "mqtt.password")
    assert "secret" not in data["ami"]
    # What check-config prints loads back to the same configuration.
    assert load_text(tmp_path, text) == config


def test_render_effective_masks_inline_password(tmp_path: Path) -> None:
    """An inline MQTT password renders as "***"."""
    config = load_text(tmp_path, BASE + '[mqtt]\npassword = "pw-in-line"\n')
    text = render_effective(config)
    assert "pw-in-line" not in text
    assert "s3cret-value" not in text
    assert tomllib.loads(text)["mqtt"]["password"] == "***"


def test_render_effective_of_defaults() -> None:
    """A Config built in code renders too, every key of every section present."""
    data = tomllib.loads(render_effective(Config()))
    assert data["numbers"] == {
        "default_region": "DE",
        "max_extension_length": 6,
        "cache_size": 100000,
    }
    assert set(data["ami"]) == {f.name for f in dataclasses.fields(AmiConfig)} - {"secret_file"}


# --------------------------------------------------------------------------- values


def test_relative_secret_file_is_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """secret_file and other relative paths are relative to the config file, not the cwd."""
    etc = tmp_path / "etc"
    (etc / "secrets").mkdir(parents=True)
    write(etc / "secrets", "pa ss\r\n\n", "ami.secret")
    path = write(etc, '[ami]\nsecret_file = "secrets/ami.secret"\n[store]\npath = "db.sqlite3"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(path)

    assert config.ami.secret_file == etc / "secrets" / "ami.secret"
    assert config.ami.secret == "pa ss"  # trailing newlines stripped, inner space kept
    assert config.store.path == etc / "db.sqlite3"
    # The directory's own file: beside the store unless configured (relative to the config).
    assert config.store.directory_file == etc / "directory.sqlite3"
    moved = load_config(
        write(etc, BASE + '[store]\ndirectory_path = "dir/contacts.sqlite3"\n', "b.toml")
    )
    assert moved.store.directory_file == etc / "dir" / "contacts.sqlite3"


def test_relative_config_path_resolves_against_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config given by a relative path still resolves paths against its own directory."""
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", BASE + '[store]\npath = "x.sqlite3"\n')
    monkeypatch.chdir(tmp_path)

    config = load_config("conf/ctid.toml")

    assert config.store.path == tmp_path / "conf" / "x.sqlite3"
    assert config.source == tmp_path / "conf" / "ctid.toml"


def test_floats_accept_integers_and_lists_become_tuples(tmp_path: Path) -> None:
    """An integer is a valid number of seconds; arrays load as tuples."""
    config = load_text(
        tmp_path,
        BASE
        + "connect_timeout_s = 3\n"
        + '[numbers]\ndefault_region = "us"\n'
        + '[[agents]]\nid = "a.b-c_1"\ndevices = ["Local/1001@agents", "IAX2/1001"]\n'
        + 'extension = "*12#"\n',
    )
    assert config.ami.connect_timeout_s == 3.0
    assert isinstance(config.ami.connect_timeout_s, float)
    assert config.numbers.default_region == "US"
    assert config.agents[0].devices == ("Local/1001@agents", "IAX2/1001")
    assert config.agents[0].queues == ()
    assert config.agents[0].name == "a.b-c_1"


def test_reason_label_defaults_to_code(tmp_path: Path) -> None:
    """A reason without label and kind is a Not Ready reason labelled with its code."""
    config = load_text(tmp_path, BASE + '[[reasons]]\ncode = "Coffee break"\n')
    assert config.reasons == (ReasonConfig(code="Coffee break", label="Coffee break"),)


# --------------------------------------------------------------------------- error messages

ERRORS = [
    ('port = "x"', 'ami.port: expected an integer 1-65535, got "x"'),
    ("port = 0", "ami.port: expected an integer 1-65535, got 0"),
    ("port = 65536", "ami.port: expected an integer 1-65535, got 65536"),
    ("port = true", "ami.port: expected an integer 1-65535, got true"),
    ("port = 5038.0", "ami.port: expected an integer 1-65535, got 5038.0"),
    (
        "connect_timeout_s = 0",
        "ami.connect_timeout_s: expected a number of seconds > 0 (at most 86400), got 0",
    ),
    (
        "ping_interval_s = -1.5",
        "ami.ping_interval_s: expected a number of seconds > 0 (at most 86400), got -1.5",
    ),
    (
        "ping_interval_s = nan",
        "ami.ping_interval_s: expected a number of seconds > 0 (at most 86400), got nan",
    ),
    (
        "ping_interval_s = false",
        "ami.ping_interval_s: expected a number of seconds > 0 (at most 86400), got false",
    ),
    (
        "ping_interval_s = " + "9" * 400,
        "ami.ping_interval_s: expected a number of seconds > 0 (at most 86400), "
        "got a very large integer",
    ),
    ('auth = "sha1"', 'ami.auth: expected one of "md5", "plain", got "sha1"'),
    ('host = ""', 'ami.host: expected a host name or IP address like "127.0.0.1", got ""'),
    (
        'username = "a b"',
        'ami.username: expected a non-empty user name without spaces, got "a b"',
    ),
    ("hots = 1", 'ami.hots: unknown key (did you mean "host"?)'),
    (
        "reconnect_initial_s = 10\nreconnect_max_s = 5",
        "ami.reconnect_max_s: must be >= ami.reconnect_initial_s (10), got 5",
    ),
    (
        "secret_file = 'x'",
        "ami.secret_file: ami.secret and ami.secret_file are mutually exclusive; keep one",
    ),
    ('[mqtt]\nhostt = "x"', 'mqtt.hostt: unknown key (did you mean "host"?)'),
    (
        '[mqtt]\nxyzzy = "x"',
        "mqtt.xyzzy: unknown key (known: host, port, username, password, password_file, "
        "client_id, topic_prefix, keepalive_s, tls, tls_ca_file, websockets_port, "
        "reconnect_initial_s, reconnect_max_s)",
    ),
    (
        '[mqtt]\n"a b" = 1',
        'mqtt."a b": unknown key (known: host, port, username, password, '
        "password_file, client_id, topic_prefix, keepalive_s, tls, tls_ca_file, websockets_port, "
        "reconnect_initial_s, reconnect_max_s)",
    ),
    ("[mqtt]\nkeepalive_s = 0", "mqtt.keepalive_s: expected an integer 1-65535, got 0"),
    ("[mqtt]\ntls = 1", "mqtt.tls: expected true or false, got 1"),
    ("[mqtt]\nwebsockets_port = 1883", "mqtt.websockets_port: must differ from mqtt.port (1883)"),
    (
        '[mqtt]\ntopic_prefix = "ctid/v2"',
        'mqtt.topic_prefix: expected a topic segment like "ctid": letters, digits, ".", "_", "-" '
        '(1-64), got "ctid/v2"',
    ),
    (
        '[mqtt]\ntopic_prefix = "#"',
        'mqtt.topic_prefix: expected a topic segment like "ctid": letters, digits, ".", "_", "-" '
        '(1-64), got "#"',
    ),
    ('[mqtt]\nusername = ""\npassword = "pw"', "mqtt.password: set, but mqtt.username is empty"),
    (
        '[mqtt]\npassword = "pw"\npassword_file = "pw.txt"',
        "mqtt.password_file: mqtt.password and mqtt.password_file are mutually exclusive; keep one",
    ),
    ("[store]\nbatch_max = 1.5", "store.batch_max: expected an integer 1-100000, got 1.5"),
    ('[store]\npath = ""', 'store.path: expected a file path, got ""'),
    (
        '[numbers]\ndefault_region = "XX"',
        "numbers.default_region: expected a 2-letter region code that phonenumbers knows, "
        'like "DE" or "US", got "XX"',
    ),
    (
        '[calls]\npop_on = "ringing"',
        'calls.pop_on: expected one of "alerting", "accepted", got "ringing"',
    ),
    (
        '[calls]\nattached_prefix = ""',
        'calls.attached_prefix: expected a channel variable prefix like "CTI_": letters, '
        'digits, "_", got ""',
    ),
    (
        '[log]\nlevel = "warn"',
        'log.level: expected one of "debug", "info", "warning", "error", got "warn"',
    ),
    ('[log]\nformat = "xml"', 'log.format: expected one of "json", "console", "auto", got "xml"'),
    (
        '[dialplan]\ndial_context = "out bound"',
        "dialplan.dial_context: expected a dialplan context name: letters, digits, _ and - "
        '(1-79), got "out bound"',
    ),
    (
        '[dialplan]\ncaller_id = "Sales\\r\\nAction: Command"',
        "dialplan.caller_id: expected a caller id like '\"Sales\" <+4930123456>', "
        'got "Sales\\r\\nAction: Command"',
    ),
    (
        '[dialplan]\nthreeway_dtmf = "x"',
        'dialplan.threeway_dtmf: expected DTMF digits like "*3", got "x"',
    ),
    ("[commands]\nburst = 0", "commands.burst: expected an integer 1-10000, got 0"),
    (
        "[stats]\nservice_level_s = 0",
        "stats.service_level_s: expected a number of seconds > 0 (at most 3600), got 0",
    ),
    (
        '[stats]\nservice_level_s = "20"',
        'stats.service_level_s: expected a number of seconds > 0 (at most 3600), got "20"',
    ),
    ("[stats]\nsl = 20", "stats.sl: unknown key (known: service_level_s)"),
    ("[amii]", 'amii: unknown section (did you mean "ami"?)'),
    (
        "[amqp]",
        "amqp: unknown section (known: ami, mqtt, store, numbers, calls, log, dialplan, "
        "commands, stats, reasons, agents)",
    ),
    ("[agent]", 'agent: unknown section (did you mean "agents"?)'),
    ("[agents]", "agents: expected an array of tables [[agents]], got a table"),
    ("[[mqtt]]", "mqtt: expected a table [mqtt], got [a table]"),
    (
        '[[agents]]\nid = "alice"',
        'agents[0].devices: expected a non-empty list of strings like "PJSIP/1001"',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001"]\n[[agents]]\nid = "bob"\ndevices = []',
        'agents[1].devices: expected a non-empty list of strings like "PJSIP/1001", got []',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = "PJSIP/1001"',
        'agents[0].devices: expected a non-empty list of strings like "PJSIP/1001", '
        'got "PJSIP/1001"',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["1001"]',
        'agents[0].devices[0]: expected a device "TECH/resource" like "PJSIP/1001" or '
        '"Local/1001@agents", got "1001"',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001", "PJSIP/1001"]',
        'agents[0].devices[1]: duplicate "PJSIP/1001"',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001"]\n'
        '[[agents]]\nid = "bob"\ndevices = ["PJSIP/1002", "pjsip/1001"]',
        'agents[1].devices[1]: "pjsip/1001" is already a device of agent "alice"',
    ),
    (
        '[[agents]]\ndevices = ["PJSIP/1001"]',
        'agents[0].id: expected an agent id like "alice": letters, digits, ".", "_", "-" (1-64)',
    ),
    (
        '[[agents]]\nid = "al/ice"\ndevices = ["PJSIP/1001"]',
        'agents[0].id: expected an agent id like "alice": letters, digits, ".", "_", "-" '
        '(1-64), got "al/ice"',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001"]\n'
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1002"]',
        'agents[1].id: duplicate agent id "alice" (also agents[0])',
    ),
    (
        '[[agents]]\nid = "ctid"\ndevices = ["PJSIP/1001"]',
        'agents[0].id: "ctid" is ctid\'s own broker user (mqtt.username)',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001"]\nqueues = ["sup port"]',
        'agents[0].queues[0]: expected a queue name like "support": letters, digits, ".", "_", '
        '"-", got "sup port"',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001"]\nextension = "10a1"',
        'agents[0].extension: expected an extension like "1001": digits, "*", "#", "+", got "10a1"',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001"]\nextension = "1234567"',
        'agents[0].extension: "1234567" is longer than numbers.max_extension_length (6)',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001"]\nextension = "1001"\n'
        '[[agents]]\nid = "bob"\ndevices = ["PJSIP/1002"]\nextension = "1001"',
        'agents[1].extension: "1001" is already the extension of agent "alice"',
    ),
    (
        '[[agents]]\nid = "alice"\ndevices = ["PJSIP/1001"]\nqueue = ["support"]',
        'agents[0].queue: unknown key (did you mean "queues"?)',
    ),
    (
        '[[reasons]]\ncode = "Lunch"\nkind = "lunch"',
        'reasons[0].kind: expected one of "not_ready", "logout", "wrapup", got "lunch"',
    ),
    (
        '[[reasons]]\ncode = "Lunch"\n[[reasons]]\ncode = "lunch"',
        'reasons[1].code: duplicate reason code "lunch" (also reasons[0])',
    ),
    (
        '[[reasons]]\ncode = "Lunch!"',
        'reasons[0].code: expected a reason code like "Lunch": letters, digits, " ._-" (1-32), '
        'got "Lunch!"',
    ),
    (
        '[[reasons]]\ncode = " Lunch"',
        'reasons[0].code: must not start or end with a space, got " Lunch"',
    ),
    ('[[reasons]]\nlabel = "Lunch"', 'reasons[0].code: expected a reason code like "Lunch"'),
    (
        '[[reasons]]\ncode = "Lunch"\nlabel = ""',
        'reasons[0].label: expected a non-empty one-line string of at most 64 characters, got ""',
    ),
]


@pytest.mark.parametrize(("case", "message"), ERRORS)
def test_error_messages(tmp_path: Path, case: str, message: str) -> None:
    """Each invalid value gives exactly this one-line message naming the dotted key."""
    assert error_of(tmp_path, BASE + case + "\n") == message


@pytest.mark.parametrize(("case", "message"), ERRORS)
def test_errors_carry_key_and_problem(tmp_path: Path, case: str, message: str) -> None:
    """ConfigError.key is the dotted key and .problem the rest of the line."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, BASE + case + "\n")
    assert f"{info.value.key}: {info.value.problem}" == message


FULL_DOCUMENT_ERRORS = [
    ("ami = 5\n", "ami: expected a table [ami], got 5"),
    ("", "ami.secret: required: set ami.secret_file (recommended) or ami.secret"),
    (
        '[ami]\nsecret = ""\n',
        "ami.secret: required: set ami.secret_file (recommended) or ami.secret",
    ),
    ("[ami]\nsecret = 123456\n", "ami.secret: expected a string, got a number"),
    (
        '[ami]\nsecret = "abc\\r\\nAction: Originate"\n',
        "ami.secret: must not contain control characters (line breaks, tabs, …)",
    ),
]


@pytest.mark.parametrize(("text", "message"), FULL_DOCUMENT_ERRORS)
def test_secret_errors(tmp_path: Path, text: str, message: str) -> None:
    """A missing or malformed secret is an error that never shows the secret."""
    assert error_of(tmp_path, text) == message


def test_secret_file_errors(tmp_path: Path) -> None:
    """An unreadable, empty or multi-line secret file is an error naming the file."""
    missing = tmp_path / "nope.secret"
    assert error_of(tmp_path, '[ami]\nsecret_file = "nope.secret"\n') == (
        f'ami.secret_file: cannot read "{missing}": No such file or directory'
    )
    write(tmp_path, "\n", "empty.secret")
    assert error_of(tmp_path, '[ami]\nsecret_file = "empty.secret"\n') == (
        f'ami.secret_file: "{tmp_path / "empty.secret"}" is empty'
    )
    write(tmp_path, "one\ntwo\n", "two.secret")
    assert error_of(tmp_path, '[ami]\nsecret_file = "two.secret"\n') == (
        f'ami.secret_file: "{tmp_path / "two.secret"}" must hold one line without control '
        "characters"
    )
    (tmp_path / "dir.secret").mkdir()
    assert error_of(tmp_path, '[ami]\nsecret_file = "dir.secret"\n').startswith(
        f'ami.secret_file: cannot read "{tmp_path / "dir.secret"}": '
    )
    write(tmp_path, "", "empty.password")
    assert error_of(tmp_path, BASE + '[mqtt]\npassword_file = "empty.password"\n') == (
        f'mqtt.password_file: "{tmp_path / "empty.password"}" is empty'
    )


def test_tls_ca_file_must_exist_when_tls_is_on(tmp_path: Path) -> None:
    """With tls = true a CA file that is not there is an error at load, not at connect."""
    assert error_of(tmp_path, BASE + '[mqtt]\ntls = true\ntls_ca_file = "ca.pem"\n') == (
        f'mqtt.tls_ca_file: "{tmp_path / "ca.pem"}" is not a readable file'
    )


def test_missing_file(tmp_path: Path) -> None:
    """A config file that does not exist is a ConfigError naming the path."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: cannot read the configuration: No such file or directory")


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error is a ConfigError with the line and column."""
    path = write(tmp_path, BASE + "port = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: invalid TOML: Invalid value (at line 3, column 8)"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe[ami]\n",
        b"x = " + b"9" * 5000 + b"\n",  # tomllib lets int()'s digit limit escape as ValueError
        b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n",  # RecursionError inside tomllib
    ],
    ids=["not-utf8", "huge-integer", "deep-nesting"],
)
def test_unparsable_bytes_are_config_errors(tmp_path: Path, raw: bytes) -> None:
    """Bytes tomllib cannot take still give a one-line ConfigError, nothing else."""
    path = tmp_path / "ctid.toml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_errors_never_show_a_secret(tmp_path: Path) -> None:
    """However the secret is wrong, its value is not in the message."""
    for value in ["1234567", '"hunter2\\n"', '["hunter2"]', '{ x = "hunter2" }']:
        message = error_of(tmp_path, f"[ami]\nsecret = {value}\n")
        assert message.startswith("ami.secret: ")
        assert "hunter2" not in message
        assert "1234567" not in message


# --------------------------------------------------------------------------- fuzz

SCHEMA = {
    "ami": AmiConfig,
    "mqtt": MqttConfig,
    "store": StoreConfig,
    "numbers": NumbersConfig,
    "calls": CallsConfig,
    "log": LogConfig,
}
SHIPPED_DOC = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))

# Where a junk value may go: (section, index in an array of tables or None, key or None
# for the whole table). "bogus" stands for an unknown key.
Spot = tuple[str, int | None, str | None]
SPOTS: list[Spot] = [
    *((section, None, None) for section in [*SCHEMA, "agents", "reasons"]),
    *((section, None, f.name) for section, cls in SCHEMA.items() for f in dataclasses.fields(cls)),
    *((s, None, "bogus") for s in SCHEMA),
    *(("agents", i, f.name) for i in (0, 1) for f in dataclasses.fields(AgentConfig)),
    *(("reasons", i, f.name) for i in (0, 4) for f in dataclasses.fields(ReasonConfig)),
    ("agents", 0, None),
    ("reasons", 0, None),
]

# Plausible values mixed into the junk, so that examples get past the first key.
GOOD = [
    "127.0.0.1", 5038, 1883, 9001, 1.5, 0, True, False, "md5", "plain", "DE", "de", "ctid",
    "alice", "bob", "PJSIP/1001", ["PJSIP/1001"], ["PJSIP/1002", "SIP/x"], ["support"], "1001",
    "info", "json", "accepted", "Break", "wrapup", "logout", "secret.txt", "", "CTI_",
]  # fmt: skip

scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
values = st.one_of(st.sampled_from(GOOD), junk)


def toml_value(value: object) -> str:
    """A TOML literal for anything tomllib can return."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "-inf" if value < 0 else "inf"
        return repr(value)  # "nan" included
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def document_text(doc: Mapping[str, object]) -> str:
    """A TOML document: a top-level key per section, each as an inline value."""
    return "".join(f"{name} = {toml_value(body)}\n" for name, body in doc.items())


def mutate(doc: dict[str, object], spot: Spot, value: object) -> None:
    section, index, key = spot
    if key is None and index is None:
        doc[section] = value
        return
    body = doc.setdefault(section, {})
    if index is not None:
        if not isinstance(body, list) or index >= len(body):
            return  # an earlier mutation replaced the array
        body = body[index]
    if not isinstance(body, dict):
        return
    if key is None:
        body.clear()
        body.update(value if isinstance(value, dict) else {"bogus": value})
    else:
        body[key] = value


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz")
    write(directory, "fuzz-secret\n", "secret.txt")
    return directory


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(SPOTS), values), min_size=1, max_size=3))
def test_junk_loads_or_raises_config_error(
    fuzz_dir: Path, changes: list[tuple[Spot, object]]
) -> None:
    """Any TOML-able values for known keys either load or raise a one-line ConfigError."""
    doc = copy.deepcopy(SHIPPED_DOC)
    for spot, value in changes:
        mutate(doc, spot, value)
    text = document_text(doc)
    # The generator itself writes faithful TOML (compared as text: nan != nan).
    assert document_text(tomllib.loads(text)) == text

    error: ConfigError | None = None
    try:
        config = load_text(fuzz_dir, text)
    except ConfigError as exc:
        error = exc
    if error is not None:
        event(f"error at {error.key.partition('[')[0].partition('.')[0] or 'file'}")
        assert "\n" not in str(error)
        assert str(error).startswith(error.key)
    else:
        event("loaded")
        # Whatever loads renders as TOML that loads back the same (secrets aside).
        rendered = render_effective(config)
        assert "fuzz-secret" not in rendered
        assert "change-me" not in rendered
        again = config_from_mapping(tomllib.loads(rendered), base_dir=fuzz_dir)
        assert dataclasses.replace(again, ami=config.ami, mqtt=config.mqtt) == dataclasses.replace(
            config, source=None
        )
