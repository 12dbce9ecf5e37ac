"""Generate a Mosquitto 2 configuration for ctid: listeners, users, passwords and ACL.

``write_broker_config`` writes four files into a directory:

- ``mosquitto.conf``: an MQTT listener on ``mqtt.host:mqtt.port``, a websockets
  listener for the agents' browsers, no anonymous access, Nagle off, a
  deliberately sized per-client queue.
- ``passwd``: one ``user:$7$…`` line per user (PBKDF2-SHA512, Mosquitto 2's
  own format, hashed here so that no password ever appears on a command line).
- ``acl``: one ``user`` block per user (never ``pattern``, so each user name is
  fixed text and cannot be widened by substitution).
- ``credentials.json``: ``{"user": "password"}`` in clear for whoever hands the
  passwords out (mode 0600; Mosquitto does not need it).

Users: ctid itself (``mqtt.username``), one per agent (user name = agent id)
and ``crm`` for the CRM backend. Under ``{prefix}/v1/``:

- ctid reads and writes ``#``;
- an agent reads ``agents/{self}/#``, ``queues/+/state``, ``inbox/general``
  and ``status``, and writes only ``agents/{self}/cmd``;
- crm reads ``#`` and writes ``intake/#``.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import json
import os
import pwd
import secrets
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ctid.config import Config
from ctid.errors import ConfigError

CRM_USER = "crm"
"""The CRM backend's broker user name."""

MOSQUITTO_USER = "mosquitto"
"""The account Mosquitto switches to when it is started as root (its default ``user``)."""

PBKDF2_ITERATIONS = 101
"""mosquitto_passwd's default. The passwords are 192-bit random tokens, so the
iteration count adds nothing against guessing; a higher one would only cost the
broker CPU on every CONNECT, where it hashes the offered password again."""

SALT_BYTES = 12  # what mosquitto_passwd uses
HASH_BYTES = 64  # the full SHA-512 output, as mosquitto_passwd writes it

MAX_PACKET_SIZE = 1024 * 1024
MAX_QUEUED_MESSAGES = 10_000
MAX_USER_NAME_LENGTH = 128

# Characters that would break a topic segment (+ # /), a passwd line (:) or an
# ACL line (# starts a comment there, whitespace splits it).
_FORBIDDEN_IN_NAME = frozenset("+#/:")
# Control, format (zero-width, bidi overrides), separators and unassigned code points.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The files ``write_broker_config`` wrote, and the passwords it chose or kept."""

    outdir: Path
    conf: Path
    acl: Path
    passwd: Path
    credentials_file: Path
    # Never in a repr: a logged BrokerFiles must not leak passwords.
    credentials: Mapping[str, str] = field(repr=False)
    ctid_user: str
    crm_user: str = CRM_USER

    def password(self, user: str) -> str:
        """The password of ``user``; KeyError if there is no such broker user."""
        return self.credentials[user]


def write_broker_config(
    config: Config,
    outdir: Path,
    *,
    reuse: Path | None = None,
    websockets_bind: str | None = None,
    persistence: bool = False,
) -> BrokerFiles:
    """Write mosquitto.conf, acl, passwd and credentials.json for ``config`` into ``outdir``.

    Passwords: a password configured for a user (``mqtt.password`` or
    ``mqtt.password_file`` for ctid, ``agents[i].password_file`` for an agent)
    is used as is, since that user will log in with it; otherwise an entry of
    ``reuse`` (an earlier credentials.json) is kept if that file exists;
    otherwise a new random one is made. ``reuse`` may be
    ``outdir / "credentials.json"`` itself.

    ``mqtt.websockets_port = 0`` means no websockets listener.
    ``websockets_bind`` restricts the websockets listener to one network
    interface, by NAME (``"lo"``, ``"eth0"``; default: all interfaces, since the
    agents' browsers are on other machines). Mosquitto 2.0.11 hands it to
    libwebsockets, which ignores an IP address and listens on all interfaces
    (eclipse-mosquitto/mosquitto#3045).
    ``persistence`` keeps retained messages across broker restarts in
    ``outdir/data``.

    Raises ConfigError naming the key for an unsafe user name, agent id or
    topic prefix, duplicate users, or an unreadable password or reuse file.
    """
    prefix = _check_prefix(config.mqtt.topic_prefix)
    if config.mqtt.websockets_port and config.mqtt.websockets_port == config.mqtt.port:
        raise ConfigError(
            "mqtt.websockets_port", f"{config.mqtt.port} is already the MQTT listener's port"
        )
    if websockets_bind is not None and (
        not websockets_bind.isprintable() or any(c in websockets_bind for c in " #/")
    ):
        raise ConfigError("websockets_bind", f"not an interface name: {websockets_bind!r}")
    users = _check_users(config)
    configured = _configured_passwords(config)
    previous = _read_reuse(reuse) if reuse is not None else {}
    credentials = {
        user: configured.get(user) or previous.get(user) or secrets.token_urlsafe(24)
        for user in users
    }

    outdir = outdir.absolute()
    if not outdir.exists():
        outdir.mkdir(parents=True)
        # Explicitly, not through mkdir's mode: a umask of 027 or 077 (common
        # for services and root shells) would keep the mosquitto user out.
        outdir.chmod(0o755)
    conf = outdir / "mosquitto.conf"
    acl = outdir / "acl"
    passwd = outdir / "passwd"
    credentials_file = outdir / "credentials.json"
    data_dir = outdir / "data" if persistence else None

    owner = _mosquitto_owner()
    if data_dir is not None:
        data_dir.mkdir(exist_ok=True)
        data_dir.chmod(0o750 if owner is not None else 0o700)
        if owner is not None:
            os.chown(data_dir, *owner)

    # Only credentials.json is fsynced: the other files derive from it, and a
    # run with reuse= rewrites them with the same passwords after a crash.
    _write(
        credentials_file,
        json.dumps(credentials, indent=2, sort_keys=True) + "\n",
        0o600,
        None,
        durable=True,
    )
    # Mosquitto (2.0) reads these after dropping root, as the `mosquitto` user:
    # owned by that user when we can arrange it, readable by all otherwise (the
    # hashes are of 192-bit random tokens, so reading them gains nobody a password).
    private_mode = 0o640 if owner is not None else 0o644
    _write(passwd, render_passwd(credentials), private_mode, owner)
    _write(
        acl, render_acl(prefix, config.mqtt.username, [a.id for a in config.agents]), 0o644, owner
    )
    _write(
        conf,
        render_conf(
            config,
            acl=acl,
            passwd=passwd,
            websockets_bind=websockets_bind,
            data_dir=data_dir,
        ),
        0o644,
        None,
    )
    return BrokerFiles(
        outdir=outdir,
        conf=conf,
        acl=acl,
        passwd=passwd,
        credentials_file=credentials_file,
        credentials=MappingProxyType(dict(credentials)),
        ctid_user=config.mqtt.username,
    )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Hash ``password`` the way mosquitto_passwd 2.x does: ``$7$iterations$salt$hash``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS, HASH_BYTES
    )
    b64 = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${b64(salt).decode('ascii')}${b64(digest).decode('ascii')}"


def verify_password(password: str, hashed: str) -> bool:
    """True if ``hashed`` (a ``$7$`` passwd entry, without the user) matches ``password``."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, iterations, len(expected)
    )
    return secrets.compare_digest(digest, expected)


def render_passwd(credentials: Mapping[str, str]) -> str:
    """The passwd file: one ``user:$7$…`` line per user, sorted."""
    return "".join(f"{user}:{hash_password(pw)}\n" for user, pw in sorted(credentials.items()))


def render_acl(prefix: str, ctid_user: str, agent_ids: list[str]) -> str:
    """The ACL file: ctid, crm, then one block per agent."""
    root = f"{prefix}/v1"
    lines = [
        "# Generated by ctid (ctid broker-config). Edits are overwritten.",
        "# One `user` block per broker user; no `pattern` lines, so no user name",
        "# is ever substituted into a topic filter.",
        "",
        f"user {ctid_user}",
        f"topic readwrite {root}/#",
        "",
        f"user {CRM_USER}",
        f"topic read {root}/#",
        f"topic write {root}/intake/#",
    ]
    for agent in agent_ids:
        lines += [
            "",
            f"user {agent}",
            f"topic read {root}/agents/{agent}/#",
            f"topic read {root}/queues/+/state",
            f"topic read {root}/inbox/general",
            f"topic read {root}/status",
            f"topic write {root}/agents/{agent}/cmd",
        ]
    return "\n".join(lines) + "\n"


def render_conf(
    config: Config,
    *,
    acl: Path,
    passwd: Path,
    websockets_bind: str | None = None,
    data_dir: Path | None = None,
) -> str:
    """mosquitto.conf for ``config``, naming ``acl`` and ``passwd`` by absolute path."""
    mqtt = config.mqtt
    ws_listener = f"listener {mqtt.websockets_port}"
    if websockets_bind:
        ws_listener += f" {websockets_bind}"
    websockets = (
        [
            "",
            "# The agents' browsers (MQTT over WebSockets). Mosquitto 2.0's websockets",
            "# listener binds to an interface NAME; an IP address here is ignored.",
            ws_listener,
            "protocol websockets",
        ]
        if mqtt.websockets_port
        else []
    )
    persistence = (
        ["persistence true", f"persistence_location {data_dir}/"]
        if data_dir is not None
        else [
            "# Nothing on disk: after a broker restart ctid republishes the retained",
            "# state (status, agent states, snapshots) rather than the broker serving",
            "# a stale copy.",
            "persistence false",
        ]
    )
    lines = [
        "# Generated by ctid (ctid broker-config). Edits are overwritten.",
        "",
        "# One set of users and ACL for both listeners.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwd.absolute()}",
        f"acl_file {acl.absolute()}",
        "",
        "# Screen pops are latency-sensitive: without this Nagle holds small",
        "# packets back (measured pop latency tail up to 44 ms).",
        "set_tcp_nodelay true",
        "",
        "# Per-client queue of QoS 1/2 messages beyond the in-flight window.",
        "# Mosquitto's default of 1000 silently DROPS further QoS 1 messages to a",
        "# slow subscriber (the CRM backend reading every agent's topics during a",
        "# burst, or ctid itself catching up after a stall).",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "",
        "# Refuse oversized packets before they reach ctid: a command is at most",
        "# 16 KiB; Mosquitto's default would let an agent push 256 MB at ctid.",
        "# ctid's own largest messages (inboxes, snapshots) stay far below 1 MiB.",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "",
        *persistence,
        "",
        "# Log to stderr: journald (or the test harness) collects and timestamps it.",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp false",
        "connection_messages true",
        "",
        "# ctid, and the CRM backend if local.",
        f"listener {mqtt.port} {mqtt.host}",
        "protocol mqtt",
        *websockets,
    ]
    return "\n".join(lines) + "\n"


def check_name(key: str, name: str) -> str:
    """Return ``name`` if it is safe as a broker user name and a topic segment, else raise.

    Safe: 1-128 characters, none of ``+ # / :``, not starting with ``$``, no
    whitespace, control, format (zero-width, bidi) or unassigned characters.
    """
    if not name:
        raise ConfigError(key, "must not be empty")
    if len(name) > MAX_USER_NAME_LENGTH:
        raise ConfigError(key, f"longer than {MAX_USER_NAME_LENGTH} characters: {name[:20]!r}…")
    if name.startswith("$"):
        raise ConfigError(key, f"{name!r} starts with $ (reserved for the broker's own topics)")
    for ch in name:
        if ch in _FORBIDDEN_IN_NAME:
            raise ConfigError(
                key,
                f"{name!r} contains {ch!r}; an agent id or broker user must not contain "
                "+ # / or : (it becomes an MQTT topic segment and a passwd entry)",
            )
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            raise ConfigError(
                key,
                f"{name!r} contains U+{ord(ch):04X} (whitespace, control or invisible "
                "characters are not allowed in an agent id or broker user)",
            )
    return name


def mosquitto_cannot_reach(path: Path) -> Path | None:
    """The first directory above ``path`` that the mosquitto user cannot traverse, if any.

    Only meaningful when we are root and the ``mosquitto`` account exists, since
    only then does Mosquitto switch to that user; otherwise returns None.
    """
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return None
    gids = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if MOSQUITTO_USER in g.gr_mem}
    for directory in reversed(path.absolute().parents):
        st = directory.stat()
        if st.st_uid == account.pw_uid:
            allowed = bool(st.st_mode & 0o100)
        elif st.st_gid in gids:
            allowed = bool(st.st_mode & 0o010)
        else:
            allowed = bool(st.st_mode & 0o001)
        if not allowed:
            return directory
    return None


def _check_prefix(prefix: str) -> str:
    key = "mqtt.topic_prefix"
    if not prefix:
        raise ConfigError(key, "must not be empty")
    if prefix.startswith("$"):
        raise ConfigError(key, f"{prefix!r}: topics starting with $ are reserved for the broker")
    for segment in prefix.split("/"):
        if not segment:
            raise ConfigError(key, f"{prefix!r}: empty topic level (leading, trailing or //)")
        for ch in segment:
            if ch in "+#" or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
                raise ConfigError(
                    key, f"{prefix!r}: wildcards, whitespace and control characters not allowed"
                )
    return prefix


def _check_users(config: Config) -> list[str]:
    """All broker users in ACL order, each validated and unique."""
    ctid_user = check_name("mqtt.username", config.mqtt.username)
    if ctid_user == CRM_USER:
        raise ConfigError("mqtt.username", f"{CRM_USER!r} is reserved for the CRM backend")
    # Which key claimed each user, for the duplicate message. crm is not
    # configurable; an agent called crm would get the CRM backend's rights.
    seen = {ctid_user: "mqtt.username", CRM_USER: "the CRM backend"}
    for i, agent in enumerate(config.agents):
        key = f"agents[{i}].id"
        check_name(key, agent.id)
        if agent.id in seen:
            raise ConfigError(key, f"{agent.id!r} is already the broker user of {seen[agent.id]}")
        seen[agent.id] = key
    return list(seen)


def _configured_passwords(config: Config) -> dict[str, str]:
    found: dict[str, str] = {}
    mqtt = config.mqtt
    if mqtt.password:
        found[mqtt.username] = mqtt.password
    elif mqtt.password_file is not None:
        found[mqtt.username] = _read_secret("mqtt.password_file", mqtt.password_file)
    for i, agent in enumerate(config.agents):
        if agent.password_file is not None:
            found[agent.id] = _read_secret(f"agents[{i}].password_file", agent.password_file)
    return found


def _read_secret(key: str, path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from exc
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret


def _read_reuse(path: Path) -> dict[str, str]:
    key = "reuse"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}  # first run: nothing to keep
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(key, f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
    ):
        raise ConfigError(key, f"{path}: expected an object of user name to password strings")
    return data


def _mosquitto_owner() -> tuple[int, int] | None:
    """(uid, gid) of the mosquitto account if we are root and it exists."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return None
    return account.pw_uid, account.pw_gid


def _write(
    path: Path, text: str, mode: int, owner: tuple[int, int] | None, *, durable: bool = False
) -> None:
    """Replace ``path`` atomically; the file has ``mode`` (and ``owner``) before it has content.

    ``durable`` fsyncs the content before the rename (costly on a busy disk).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
