"""The MQTT adapter (aiomqtt): one supervised broker connection.

* aiomqtt has no automatic reconnect: ``run`` loops around ``async with
  Client(...)``, catching ``MqttError``, with capped jittered backoff.
* ``ctid/v1/status`` is retained, with a last will saying ``offline``, so a
  front end can tell a dead daemon from a quiet one.
* Retained messages (agent states, snapshots, status) are remembered and
  re-published after every reconnect, so the broker's view heals after it
  lost its state.
* TCP_NODELAY on our socket: neither paho nor Mosquitto disables Nagle by
  default, which put up to 44 ms on the pop latency tail (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import orjson
import structlog

from ctid.config import MqttConfig
from ctid.errors import BusError

log = structlog.get_logger("ctid.bus")

MessageHandler = Callable[[str, bytes, bool], Awaitable[None]]  # topic, payload, retained


def dumps(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


class Bus:
    """Publish to and subscribe on the broker; survives broker restarts."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        password: str,
        will_payload: dict[str, Any],
        subscriptions: tuple[str, ...] = (),
        on_message: MessageHandler | None = None,
        on_connected: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.prefix = config.topic_prefix
        self._password = password
        self._will = will_payload
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connected = on_connected
        # Mosquitto 2.0 cannot bind a client id to a user: anyone who knows our
        # id could connect with it and kick ctid off. A random suffix prevents that.
        self._identifier = f"{config.client_id}-{secrets.token_hex(6)}"
        self._client: aiomqtt.Client | None = None
        self._retained: dict[str, bytes] = {}
        self._closing = asyncio.Event()
        self.connected = asyncio.Event()
        self.connections = 0

    def topic(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    async def run(self) -> None:
        """Stay connected until ``close()``."""
        attempt = 0
        while not self._closing.is_set():
            try:
                async with aiomqtt.Client(
                    self.config.host,
                    self.config.port,
                    username=self.config.username or None,
                    password=self._password or None,
                    identifier=self._identifier,
                    keepalive=self.config.keepalive_s,
                    will=aiomqtt.Will(
                        self.topic("v1/status"), dumps(self._will), qos=1, retain=True
                    ),
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                    max_queued_outgoing_messages=100_000,
                ) as client:
                    self._client = client
                    attempt = 0
                    self.connections += 1
                    for sub in self._subscriptions:
                        await client.subscribe(self.topic(sub), qos=1)
                    await self._republish_retained(client)
                    self.connected.set()
                    log.info("bus.connected", host=self.config.host, port=self.config.port)
                    if self._on_connected is not None:
                        await self._on_connected()
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                log.warning(
                    "bus.disconnected", host=self.config.host, port=self.config.port, error=str(exc)
                )
            finally:
                self._client = None
                self.connected.clear()
            if self._closing.is_set():
                break
            attempt += 1
            cap = min(
                self.config.reconnect_max_s, self.config.reconnect_initial_s * 2 ** (attempt - 1)
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(random.uniform(cap / 2, cap)):  # noqa: S311 - jitter
                    await self._closing.wait()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Read messages until the connection fails (raises MqttError) or ``close()``."""
        reader = asyncio.create_task(self._read(client), name="ctid.bus.reader")
        closer = asyncio.create_task(self._closing.wait(), name="ctid.bus.closer")
        try:
            done, _ = await asyncio.wait({reader, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            closer.cancel()
        if reader in done:
            reader.result()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self._on_message is not None:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                await self._on_message(message.topic.value, payload, bool(message.retain))

    async def _republish_retained(self, client: aiomqtt.Client) -> None:
        for topic, payload in list(self._retained.items()):
            await client.publish(topic, payload, qos=1, retain=True)

    async def close(self, final: dict[str, Any] | None = None) -> None:
        """Publish a last status (if given) and disconnect cleanly."""
        if final is not None and self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError, BusError):
                await self.publish("v1/status", final, qos=1, retain=True)
        # ``run`` leaves its ``async with`` on this: a clean DISCONNECT, so the
        # broker does not send the last will.
        self._closing.set()

    async def publish(
        self, relative: str, payload: dict[str, Any] | bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish on ``{prefix}/{relative}``; with QoS 1 returns after the broker's PUBACK.

        Retained messages are remembered even while disconnected and sent on
        reconnect. Raises ``BusError`` when not connected (for messages that
        must not be lost the outbox retries).
        """
        topic = self.topic(relative)
        data = payload if isinstance(payload, bytes) else dumps(payload)
        if retain:
            self._retained[topic] = data
        client = self._client
        if client is None or not self.connected.is_set():
            raise BusError(f"broker not connected: {topic}")
        try:
            await client.publish(topic, data, qos=qos, retain=retain, timeout=10)
        except aiomqtt.MqttError as exc:
            raise BusError(f"publish to {topic} failed: {exc}") from exc
