"""The generated Mosquitto configuration, checked against a real Mosquitto.

With MQTT 3.1.1 Mosquitto grants a denied subscription and acknowledges a
denied publish, then silently drops the messages; so every ACL test here
checks what actually arrives, and publishes a permitted message last, from the
same publisher, as the positive control: once it has arrived, any denied
message published before it would have arrived too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from ctid.broker_config import (
    CRM_USER,
    check_name,
    hash_password,
    verify_password,
    write_broker_config,
)
from ctid.config import AgentConfig, Config, MqttConfig
from ctid.errors import ConfigError
from tests.broker import (
    BrokerStartError,
    MosquittoBroker,
    make_config,
    mqtt_connack,
    running_mosquitto,
)

V1 = "ctid/v1"


async def received_until(
    client: aiomqtt.Client, marker: str, *, within_s: float = 5.0
) -> list[str]:
    """Topics ``client`` receives, in order, up to and including ``marker``."""
    topics: list[str] = []
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            topics.append(message.topic.value)
            if message.topic.value == marker:
                return topics
    raise AssertionError("message stream ended")  # pragma: no cover


async def publish_all(client: aiomqtt.Client, topics: list[str]) -> None:
    """Publish ``{"type": "test"}`` to each topic in order, QoS 1."""
    for topic in topics:
        await client.publish(topic, b'{"type": "test"}', qos=1)


# --- against a real Mosquitto ---------------------------------------------------------


async def test_agent_receives_own_pop_but_not_another_agents(mosquitto: MosquittoBroker) -> None:
    """alice subscribed to bob's pops gets none of them, while her own arrive."""
    async with mosquitto.client("alice") as alice, mosquitto.client("ctid") as ctid:
        await alice.subscribe(f"{V1}/agents/bob/pop", qos=1)  # granted, yet filtered
        await alice.subscribe(f"{V1}/agents/alice/pop", qos=1)
        await publish_all(ctid, [f"{V1}/agents/bob/pop", f"{V1}/agents/alice/pop"])

        assert [f"{V1}/agents/alice/pop"] == await received_until(alice, f"{V1}/agents/alice/pop")


async def test_agent_wildcard_subscription_sees_only_permitted_topics(
    mosquitto: MosquittoBroker,
) -> None:
    """An agent subscribed to everything receives only its own, queue, inbox and status topics."""
    published = [
        f"{V1}/agents/bob/pop",
        f"{V1}/agents/bob/state",
        f"{V1}/agents/bob/cmd",
        f"{V1}/crm/activity",
        f"{V1}/intake/callback",
        f"{V1}/queues/support/state",
        f"{V1}/inbox/general",
        f"{V1}/status",
        f"{V1}/agents/alice/state",
        f"{V1}/agents/alice/pop",
    ]
    async with mosquitto.client("alice") as alice, mosquitto.client("ctid") as ctid:
        await alice.subscribe("#", qos=1)
        await publish_all(ctid, published)

        assert [
            f"{V1}/queues/support/state",
            f"{V1}/inbox/general",
            f"{V1}/status",
            f"{V1}/agents/alice/state",
            f"{V1}/agents/alice/pop",
        ] == await received_until(alice, f"{V1}/agents/alice/pop")


async def test_agent_can_command_only_itself(mosquitto: MosquittoBroker) -> None:
    """alice's publishes to bob's cmd, her own state or the intake never reach ctid; hers do."""
    async with mosquitto.client("ctid") as ctid, mosquitto.client("alice") as alice:
        await ctid.subscribe(f"{V1}/#", qos=1)
        await publish_all(
            alice,
            [
                f"{V1}/agents/bob/cmd",
                f"{V1}/agents/alice/state",  # an agent must not forge its own state
                f"{V1}/intake/callback",
                f"{V1}/status",
                f"{V1}/agents/alice/cmd",
            ],
        )

        assert [f"{V1}/agents/alice/cmd"] == await received_until(ctid, f"{V1}/agents/alice/cmd")


async def test_crm_reads_every_agent_and_writes_only_intake(mosquitto: MosquittoBroker) -> None:
    """crm receives both agents' pops; of its own publishes only intake/# reaches ctid."""
    async with (
        mosquitto.client(CRM_USER) as crm,
        mosquitto.client("ctid") as ctid,
    ):
        await crm.subscribe(f"{V1}/agents/+/pop", qos=1)
        await ctid.subscribe(f"{V1}/#", qos=1)
        await publish_all(ctid, [f"{V1}/agents/bob/pop", f"{V1}/agents/alice/pop"])
        assert [f"{V1}/agents/bob/pop", f"{V1}/agents/alice/pop"] == await received_until(
            crm, f"{V1}/agents/alice/pop"
        )
        # ctid's own publishes come back to it (it subscribed to v1/#): skip them.
        await received_until(ctid, f"{V1}/agents/alice/pop")

        await publish_all(
            crm,
            [f"{V1}/agents/alice/cmd", f"{V1}/status", f"{V1}/intake/callback"],
        )
        assert [f"{V1}/intake/callback"] == await received_until(ctid, f"{V1}/intake/callback")


async def test_agent_over_websockets_gets_own_pop_only(mosquitto: MosquittoBroker) -> None:
    """The websockets listener applies the same logins and ACL as the MQTT one."""
    async with (
        mosquitto.client("bob", transport="websockets") as bob,
        mosquitto.client("ctid") as ctid,
    ):
        await bob.subscribe(f"{V1}/agents/+/pop", qos=1)
        await publish_all(ctid, [f"{V1}/agents/alice/pop", f"{V1}/agents/bob/pop"])

        assert [f"{V1}/agents/bob/pop"] == await received_until(bob, f"{V1}/agents/bob/pop")


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "not-the-password"),
        ("alice", None),  # bob's password, filled in below
        ("mallory", "whatever"),
        (None, None),  # anonymous
    ],
    ids=["wrong-password", "other-users-password", "unknown-user", "anonymous"],
)
async def test_bad_logins_are_refused(
    mosquitto: MosquittoBroker, user: str | None, password: str | None
) -> None:
    """Wrong, borrowed or missing credentials get CONNACK 5 (not authorised)."""
    if user == "alice" and password is None:
        password = mosquitto.credentials["bob"]
    with pytest.raises(aiomqtt.MqttCodeError) as refused:
        async with mosquitto.client(user, password=password):
            pass
    # paho reports MQTT 3.1.1's CONNACK 5 as MQTT 5's reason code 135, "Not authorized".
    assert refused.value.rc == 135
    # And the same from the hand-written probe, so the harness can trust it.
    assert await mqtt_connack(mosquitto.host, mosquitto.port, user, password) == 5


async def test_every_generated_user_can_log_in(mosquitto: MosquittoBroker) -> None:
    """Each password in credentials.json opens a session (the $7$ hashes are Mosquitto's)."""
    codes = {
        user: await mqtt_connack(mosquitto.host, mosquitto.port, user, password)
        for user, password in mosquitto.credentials.items()
    }
    assert dict.fromkeys(["alice", "bob", "crm", "ctid"], 0) == codes


@pytest.mark.parametrize("kill", [False, True], ids=["terminate", "kill"])
async def test_broker_can_be_stopped_and_restarted_on_the_same_port(
    ctid_config: Config, kill: bool
) -> None:
    """stop() drops clients and refuses connections; start() serves the same port and logins."""
    async with running_mosquitto(ctid_config, websockets=False) as broker:
        port = broker.port
        async with broker.client("alice") as alice:
            await broker.stop(kill=kill)
            assert not broker.running
            with pytest.raises(aiomqtt.MqttError):
                await alice.publish(f"{V1}/agents/alice/cmd", b"{}", qos=1, timeout=2)
        with pytest.raises(ConnectionRefusedError):
            await mqtt_connack(broker.host, port, "ctid", broker.credentials["ctid"])

        await broker.start()
        assert port == broker.port
        async with broker.client("alice") as alice, broker.client("ctid") as ctid:
            await alice.subscribe(f"{V1}/agents/alice/pop", qos=1)
            await publish_all(ctid, [f"{V1}/agents/alice/pop"])
            assert [f"{V1}/agents/alice/pop"] == await received_until(
                alice, f"{V1}/agents/alice/pop"
            )


async def test_failed_start_reports_mosquittos_output(mosquitto: MosquittoBroker) -> None:
    """If Mosquitto cannot start, the error carries its own explanation."""
    await mosquitto.stop(kill=True)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((mosquitto.host, mosquitto.port))
        squatter.listen()
        with pytest.raises(BrokerStartError, match="Address already in use"):
            await mosquitto.start()
    assert not mosquitto.running


@pytest.mark.skipif(os.geteuid() != 0, reason="Mosquitto drops to its own user only as root")
async def test_directory_mosquitto_cannot_traverse_is_reported(tmp_path: Path) -> None:
    """Broker files under pytest's private tmp_path (0700) give a clear error, not a dead broker."""
    with pytest.raises(BrokerStartError, match="cannot traverse"):
        async with running_mosquitto(make_config(tmp_path), tmp_path / "broker"):
            pass


# --- the files themselves -------------------------------------------------------------


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """verify_password accepts mosquitto_passwd's own hash and hash_password's format."""
    passwd = tmp_path / "passwd"
    passwd.write_text("u:s3cret-ü\n", encoding="utf-8")
    # -U hashes the plain passwords of a file in place: no password on a command line.
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-U", str(passwd)], check=True, capture_output=True)
    theirs = passwd.read_text(encoding="utf-8").strip().split(":", 1)[1]
    ours = hash_password("s3cret-ü", salt=bytes(12))

    assert verify_password("s3cret-ü", theirs)
    assert not verify_password("s3cret-u", theirs)
    assert verify_password("s3cret-ü", ours)
    assert [len(p) for p in theirs.split("$")] == [len(p) for p in ours.split("$")]


def test_credentials_file_is_private_and_broker_files_readable(tmp_path: Path) -> None:
    """credentials.json is 0600; passwd and acl are readable by the mosquitto user."""
    files = write_broker_config(make_config(tmp_path), tmp_path / "broker")

    assert stat.S_IMODE(files.credentials_file.stat().st_mode) == 0o600
    assert dict(files.credentials) == json.loads(files.credentials_file.read_text())
    assert sorted(files.credentials) == ["alice", "bob", "crm", "ctid"]
    for path in (files.passwd, files.acl):
        st = path.stat()
        if os.geteuid() == 0:
            assert pwd.getpwnam("mosquitto").pw_uid == st.st_uid
            assert st.st_mode & stat.S_IRUSR
        else:
            assert st.st_mode & stat.S_IROTH
        assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def test_reuse_keeps_passwords_of_remaining_users(tmp_path: Path) -> None:
    """A second run with reuse keeps every existing user's password, adds new, drops removed."""
    outdir = tmp_path / "broker"
    config = make_config(tmp_path)
    first = write_broker_config(config, outdir)
    carol = AgentConfig(id="carol", name="Carol", devices=("PJSIP/1003",))
    second = write_broker_config(
        dataclasses.replace(config, agents=(config.agents[0], carol)),
        outdir,
        reuse=outdir / "credentials.json",
    )
    fresh = write_broker_config(config, tmp_path / "other")

    assert {u: first.credentials[u] for u in ("alice", "crm", "ctid")} == {
        u: second.credentials[u] for u in ("alice", "crm", "ctid")
    }
    assert sorted(second.credentials) == ["alice", "carol", "crm", "ctid"]
    assert second.credentials["carol"] not in first.credentials.values()
    assert not set(first.credentials.values()) & set(fresh.credentials.values())


def test_configured_ctid_password_is_used(tmp_path: Path) -> None:
    """ctid's configured mqtt.password is the one hashed, since ctid logs in with it."""
    config = dataclasses.replace(make_config(tmp_path), mqtt=MqttConfig(password="from-config"))
    files = write_broker_config(config, tmp_path / "broker")

    assert files.credentials["ctid"] == "from-config"
    (line,) = (x for x in files.passwd.read_text().splitlines() if x.startswith("ctid:"))
    assert verify_password("from-config", line.split(":", 1)[1])


def test_acl_has_fixed_user_blocks_only(tmp_path: Path) -> None:
    """The ACL names each user literally: no `pattern` lines, no rules outside a user block."""
    files = write_broker_config(make_config(tmp_path), tmp_path / "broker")
    rules = [
        line for line in files.acl.read_text().splitlines() if line and not line.startswith("#")
    ]

    assert rules[0].startswith("user ")
    assert not [r for r in rules if not r.startswith(("user ", "topic "))]
    assert rules[rules.index("user bob") :] == [
        "user bob",
        "topic read ctid/v1/agents/bob/#",
        "topic read ctid/v1/queues/+/state",
        "topic read ctid/v1/inbox/general",
        "topic read ctid/v1/status",
        "topic write ctid/v1/agents/bob/cmd",
    ]


def test_conf_names_absolute_files_and_sizes_the_queue(tmp_path: Path) -> None:
    """mosquitto.conf points at absolute passwd/acl paths, bans anonymous, sets nodelay."""
    files = write_broker_config(make_config(tmp_path), tmp_path / "broker")
    conf = files.conf.read_text().splitlines()

    for line in [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {files.passwd}",
        f"acl_file {files.acl}",
        "set_tcp_nodelay true",
        "max_queued_messages 10000",
        "persistence false",
        "listener 1883 127.0.0.1",
        "listener 9001",
        "protocol websockets",
    ]:
        assert line in conf
    assert files.passwd.is_absolute()


@pytest.mark.parametrize(
    "agent_id",
    ["", "a/b", "a+b", "a#", "a b", "a:b", "a\nb", "a\x00b", "a\u200bb", "$SYS", "x" * 129],
)
def test_unsafe_agent_ids_are_rejected(tmp_path: Path, agent_id: str) -> None:
    """An agent id that is not a safe topic segment and user name stops with the key named."""
    config = make_config(tmp_path)
    bad = dataclasses.replace(config.agents[1], id=agent_id)
    with pytest.raises(ConfigError) as rejected:
        write_broker_config(
            dataclasses.replace(config, agents=(config.agents[0], bad)), tmp_path / "b"
        )

    assert rejected.value.key == "agents[1].id"
    assert str(rejected.value).startswith("agents[1].id: ")
    assert not (tmp_path / "b").exists()  # nothing written


@pytest.mark.parametrize(
    ("agents", "mqtt", "key"),
    [
        (("alice", "alice"), MqttConfig(), "agents[1].id"),
        (("alice", "crm"), MqttConfig(), "agents[1].id"),
        (("ctid",), MqttConfig(), "agents[0].id"),
        ((), MqttConfig(username="crm"), "mqtt.username"),
        ((), MqttConfig(username="c#"), "mqtt.username"),
        ((), MqttConfig(topic_prefix="a/+/b"), "mqtt.topic_prefix"),
        ((), MqttConfig(topic_prefix="ctid/"), "mqtt.topic_prefix"),
        ((), MqttConfig(topic_prefix="$SYS"), "mqtt.topic_prefix"),
        ((), MqttConfig(websockets_port=1883), "mqtt.websockets_port"),
    ],
)
def test_conflicting_users_and_bad_prefix_are_rejected(
    tmp_path: Path, agents: tuple[str, ...], mqtt: MqttConfig, key: str
) -> None:
    """Duplicate or reserved user names, wildcard prefixes and clashing ports name their key."""
    config = Config(mqtt=mqtt, agents=tuple(AgentConfig(id=a, name=a, devices=()) for a in agents))
    with pytest.raises(ConfigError) as rejected:
        write_broker_config(config, tmp_path / "b")
    assert key == rejected.value.key


def test_names_allowed_are_not_overly_strict() -> None:
    """Ordinary CRM user names (dots, dashes, @, non-ASCII letters) are accepted as they are."""
    names = ["alice", "a.smith", "b-jones_2", "carol@example.com", "müller", "Ærø"]
    assert names == [check_name("agents[0].id", n) for n in names]


def test_persistence_is_opt_in(tmp_path: Path) -> None:
    """Persistence is off by default; asked for, it uses a data directory Mosquitto can write."""
    config = make_config(tmp_path)
    default = write_broker_config(config, tmp_path / "a").conf.read_text().splitlines()
    files = write_broker_config(config, tmp_path / "b", persistence=True)
    persistent = files.conf.read_text().splitlines()

    assert "persistence false" in default
    assert "persistence true" in persistent
    assert f"persistence_location {files.outdir / 'data'}/" in persistent
    if os.geteuid() == 0:
        assert pwd.getpwnam("mosquitto").pw_uid == (files.outdir / "data").stat().st_uid


def test_websockets_port_zero_leaves_the_listener_out(tmp_path: Path) -> None:
    """mqtt.websockets_port = 0 writes an MQTT listener only."""
    config = dataclasses.replace(make_config(tmp_path), mqtt=MqttConfig(websockets_port=0))
    conf = write_broker_config(config, tmp_path / "b").conf.read_text().splitlines()

    assert [line for line in conf if line.startswith("listener ")] == ["listener 1883 127.0.0.1"]
    assert "protocol websockets" not in conf


def test_new_directory_is_traversable_whatever_the_umask(tmp_path: Path) -> None:
    """A restrictive umask (077, common for root shells) does not lock Mosquitto out."""
    old = os.umask(0o077)
    try:
        files = write_broker_config(make_config(tmp_path), tmp_path / "broker")
    finally:
        os.umask(old)

    assert stat.S_IMODE(files.outdir.stat().st_mode) == 0o755
    assert stat.S_IMODE(files.acl.stat().st_mode) == 0o644
    assert stat.S_IMODE(files.credentials_file.stat().st_mode) == 0o600
