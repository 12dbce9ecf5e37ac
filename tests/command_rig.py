"""Support for the agent command tests: the daemon, a real Mosquitto and the AMI simulator.

``command_rig(config, …)`` runs the whole chain in-process: a Mosquitto with
ctid's generated ACL, an ``AmiSimulator`` answering actions the way Asterisk 22
does (the texts are the ones in the captures and in app_queue.c/manager.c),
the real ``Daemon``, and one MQTT client per broker user (alice, bob, crm)
logged in with its own credentials. ``Rig.command`` publishes a command as an
agent and returns its reply together with the AMI actions it caused, so a test
states exactly what reached Asterisk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

from ctid.app import Daemon
from ctid.config import AgentConfig, Config, ReasonConfig
from ctid.core.ami import AmiMessage
from ctid.sim.capture import load_capture
from ctid.sim.server import AmiSimulator, Handler, response, success_handler
from tests.broker import MosquittoBroker, make_config, running_mosquitto
from tests.test_slice_inbound import daemon_config, queue_member, running_daemon

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "ami-captures"

REASONS = (
    ReasonConfig(code="Lunch", label="Lunch", kind="not_ready"),
    ReasonConfig(code="EndOfShift", label="End of shift", kind="logout"),
    ReasonConfig(code="Sale", label="Sale", kind="wrapup"),
)
ALICE_QUEUES = ("support", "sales")
BOB_QUEUES = ("support",)

# What the daemon sends by itself, not because of a command.
HOUSEKEEPING = frozenset(
    {"login", "challenge", "logoff", "ping", "events"}
    | {"coreshowchannels", "bridgelist", "queuestatus", "status"}
)


def commands_config(tmp_path: Path) -> Config:
    """alice (PJSIP/1001: support, sales) and bob (PJSIP/1002: support) with three reasons."""
    base = make_config(tmp_path)
    alice, bob = base.agents
    agents: tuple[AgentConfig, ...] = (
        dataclasses.replace(alice, queues=ALICE_QUEUES),
        dataclasses.replace(bob, queues=BOB_QUEUES),
    )
    return dataclasses.replace(base, reasons=REASONS, agents=agents)


def queue_pause(action: AmiMessage) -> list[AmiMessage]:
    """QueuePause as app_queue answers it (agent_pause_unpause capture)."""
    paused = action.get("Paused").lower() in {"true", "yes", "1", "on"}
    text = "Interface paused successfully" if paused else "Interface unpaused successfully"
    return [response(action, "Success", text)]


def redirect(action: AmiMessage) -> list[AmiMessage]:
    """Redirect as manager.c answers it: a second channel makes it a dual redirect."""
    dual = bool(action.get("ExtraChannel"))
    return [
        response(action, "Success", "Dual Redirect successful" if dual else "Redirect successful")
    ]


ASTERISK_22: Mapping[str, Handler] = {
    "QueueAdd": success_handler("Added interface to queue"),
    "QueueRemove": success_handler("Removed interface from queue"),
    "QueuePause": queue_pause,
    "QueueLog": success_handler("Event added successfully"),
    "Originate": success_handler("Originate successfully queued"),
    "Hangup": success_handler("Channel Hungup"),
    "Redirect": redirect,
    "Bridge": success_handler("Channels have been bridged"),
    "BlindTransfer": success_handler("Transfer succeeded"),
    "Atxfer": success_handler("Atxfer successfully queued"),
    "CancelAtxfer": success_handler("CancelAtxfer successfully queued"),
    "PlayDTMF": success_handler("DTMF successfully queued"),
}
"""Successful answers of Asterisk 22 to every action a command sends."""


def fields_of(action: AmiMessage) -> list[tuple[str, str]]:
    """An action's headers without its ``ActionID``, sorted (the wire order is panoramisk's)."""
    return sorted((k, v) for k, v in action.headers if k.lower() != "actionid")


def expect(action: str, *fields: tuple[str, str]) -> list[tuple[str, str]]:
    """The sorted headers an action must have: ``Action`` plus ``fields``, nothing else."""
    return sorted([("Action", action), *fields])


def cut_after(capture: str, predicate: Callable[[AmiMessage], bool], *, nth: int = 1) -> int:
    """The replay index just after the ``nth`` event of ``capture`` matching ``predicate``."""
    seen = 0
    for i, event in enumerate(load_capture(CAPTURES / f"{capture}.ami").replay_events):
        if predicate(event):
            seen += 1
            if seen == nth:
                return i + 1
    raise AssertionError(f"{capture}: no event #{nth} matches")


def bridge_enter(channel: str) -> Callable[[AmiMessage], bool]:
    return lambda e: e.event == "BridgeEnter" and e.get("Channel") == channel


async def until(condition: Callable[[], bool], within_s: float = 5.0, what: str = "") -> None:
    """Wait (polling) until ``condition()`` is true."""
    try:
        async with asyncio.timeout(within_s):
            # The model has no event to wait on; it is polled (only tests read it this way).
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {within_s} s: {what or condition}") from None


# inbound_answered, cut after the bridge: the customer's channel is the call (its
# Linkedid) and alice's leg answered it. Shared by the command tests.
CALL = "1795308161.0"
CUSTOMER = "PJSIP/carrier-00000000"
ALICE_LEG = "PJSIP/1001-00000001"


class Listener:
    """One broker user's MQTT session: everything it receives, in order."""

    def __init__(self, user: str, client: aiomqtt.Client) -> None:
        self.user = user
        self.client = client
        self.got: list[tuple[str, Any]] = []
        self._changed = asyncio.Condition()

    async def read(self) -> None:
        async for message in self.client.messages:
            raw = message.payload if isinstance(message.payload, bytes) else b""
            try:
                payload: Any = orjson.loads(raw)
            except orjson.JSONDecodeError:
                payload = raw
            async with self._changed:
                self.got.append((message.topic.value, payload))
                self._changed.notify_all()

    def on(self, topic: str, start: int = 0) -> list[Any]:
        """Payloads received on ``topic`` (from index ``start`` of ``got``)."""
        return [p for t, p in self.got[start:] if t == topic]

    async def wait_for(
        self, predicate: Callable[[str, Any], bool], *, start: int = 0, within_s: float = 5.0
    ) -> tuple[str, Any]:
        """The first message from index ``start`` on for which ``predicate(topic, payload)``."""

        def found() -> tuple[str, Any] | None:
            return next(((t, p) for t, p in self.got[start:] if predicate(t, p)), None)

        try:
            async with asyncio.timeout(within_s), self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        except TimeoutError:
            topics = [t for t, _ in self.got[start:]]
            raise AssertionError(
                f"{self.user}: nothing matched within {within_s} s; got {topics}"
            ) from None
        hit = found()
        assert hit is not None
        return hit


@dataclasses.dataclass
class Rig:
    """The running chain; ``users`` holds alice's, bob's and crm's MQTT sessions."""

    broker: MosquittoBroker
    sim: AmiSimulator
    daemon: Daemon
    users: dict[str, Listener]
    _n: int = 0

    def next_id(self) -> str:
        self._n += 1
        return f"c{self._n}"

    async def publish(self, user: str, topic: str, payload: bytes | Mapping[str, Any]) -> None:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        await self.users[user].client.publish(topic, data, qos=1)

    async def command(
        self,
        payload: bytes | Mapping[str, Any],
        *,
        agent: str = "alice",
        reply_id: object = ...,
        within_s: float = 5.0,
    ) -> tuple[dict[str, Any], list[AmiMessage]]:
        """Publish ``payload`` as ``agent`` on its cmd topic; its reply and the actions it caused.

        The reply is the first on the agent's reply topic with ``reply_id`` (by
        default the payload's own ``id``). Every action a command sends is
        awaited before its reply, so the actions are complete when it arrives.
        """
        if reply_id is ...:
            reply_id = payload.get("id") if isinstance(payload, Mapping) else None
        listener = self.users[agent]
        start = len(listener.got)
        mark = len(self.sim.actions)
        topic = f"ctid/v1/agents/{agent}/reply"
        await self.publish(agent, f"ctid/v1/agents/{agent}/cmd", payload)
        _, reply = await listener.wait_for(
            lambda t, p: t == topic and isinstance(p, dict) and p.get("id") == reply_id,
            start=start,
            within_s=within_s,
        )
        return reply, self.actions_since(mark)

    def actions_since(self, mark: int) -> list[AmiMessage]:
        """Actions the simulator received from index ``mark`` on, housekeeping left out."""
        return [a for a in self.sim.actions[mark:] if a.get("Action").lower() not in HOUSEKEEPING]


def fast_client(broker: MosquittoBroker, user: str) -> aiomqtt.Client:
    """``broker.client(user)`` with TCP_NODELAY: Nagle would add ~40 ms to every command."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=broker.credentials[user],
        identifier=f"{user}-{uuid.uuid4().hex[:8]}",
        timeout=5.0,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


@contextlib.asynccontextmanager
async def command_rig(
    config: Config,
    *,
    members: Iterable[AmiMessage] = (),
    adjust: Callable[[Config], Config] = lambda c: c,
    users: Iterable[str] = ("alice",),
    subscribe: Mapping[str, Iterable[str]] | None = None,
) -> AsyncIterator[Rig]:
    """Mosquitto, simulator and daemon for ``config``; ``members`` answer ``QueueStatus``.

    ``adjust`` changes the daemon's config (timeouts, limits); ``users`` log in
    to the broker, each subscribed to its own ``agents/{user}/#`` unless
    ``subscribe`` says otherwise.
    """
    async with (
        running_mosquitto(config, websockets=False) as broker,
        AmiSimulator(secret="sim-secret") as sim,
    ):
        for name, handler in ASTERISK_22.items():
            sim.set_handler(name, handler)
        sim.set_list("QueueStatus", list(members))
        listeners: dict[str, Listener] = {}
        async with contextlib.AsyncExitStack() as stack:
            tasks: list[asyncio.Task[None]] = []
            for user in users:
                client = await stack.enter_async_context(fast_client(broker, user))
                topics = (subscribe or {}).get(user, (f"ctid/v1/agents/{user}/#",))
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                listener = Listener(user, client)
                listeners[user] = listener
                tasks.append(asyncio.create_task(listener.read(), name=f"test.mqtt.{user}"))
            try:
                daemon_cfg = adjust(daemon_config(broker, sim))
                async with running_daemon(daemon_cfg, sim) as daemon:
                    yield Rig(broker=broker, sim=sim, daemon=daemon, users=listeners)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


def logged_in(agent: str, *, paused_reason: str = "") -> list[AmiMessage]:
    """``QueueStatus`` members saying ``agent`` (alice or bob) is logged in to its queues."""
    device, queues = (
        ("PJSIP/1001", ALICE_QUEUES) if agent == "alice" else ("PJSIP/1002", BOB_QUEUES)
    )
    return [
        queue_member(device, q, paused=bool(paused_reason), reason=paused_reason) for q in queues
    ]
