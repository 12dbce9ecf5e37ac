"""The AMI adapter: one persistent, supervised connection to Asterisk, on panoramisk.

panoramisk provides the protocol base class (transport handling, ActionID
correlation of responses to pending actions) and ``Action`` (ActionID
generation and serialisation). This module replaces its parsing and its
connection lifecycle, which is where its confirmed defects live (DESIGN.md,
"AMI adapter"); each fix is named where it is made:

1. An event callback that raises kills the connection → events are only
   *enqueued* here (``events`` queue); nothing user-supplied runs in
   ``data_received``.
2. ``Manager.close()`` does not cancel a scheduled reconnect → one supervisor
   task owns the lifecycle; ``close()`` ends it and nothing is scheduled behind it.
3. Keepalive Ping replies are never checked → ``_watch`` sends Ping with a
   deadline; no reply aborts the transport and the supervisor reconnects.
4. Chunks decoded with ``errors='ignore'``, trailing empty header dropped →
   parsing is ``ctid.core.ami.AmiParser`` (incremental UTF-8, headers kept).
5. A failed login neither raises nor retries → ``AmiLoginError``, logged, backoff.
6. ``connect()`` returns at TCP connect → the link is ``up`` only after login
   and the ``on_connected`` hook (resync) have finished.
7. Actions sent while disconnected never resolve → ``AmiNotConnectedError`` at once,
   and every action has a timeout; pending actions fail when the link drops
   (panoramisk would re-send them after reconnect: an Originate twice).
8. Awaiting ``QueueAdd`` never returns in 1.4 (its reply "Added interface to
   queue" makes panoramisk expect a list) → non-list actions are sent with
   ``as_list=False`` and resolve on their first response.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from ctid.config import AmiConfig
from ctid.core.agents import Link
from ctid.core.ami import (
    AmiMessage,
    AmiParser,
    UnsafeActionError,
    check_action_name,
    check_field,
)
from ctid.errors import (
    AmiActionFailedError,
    AmiActionTimeoutError,
    AmiConnectError,
    AmiError,
    AmiLoginError,
    AmiNotConnectedError,
)

log = structlog.get_logger("ctid.ami")

# Actions whose answer is an event list ending in "…Complete".
LIST_ACTIONS = frozenset(
    {
        "coreshowchannels",
        "bridgelist",
        "bridgeinfo",
        "queuestatus",
        "queuesummary",
        "status",
        "devicestatelist",
        "extensionstatelist",
        "pjsipshowendpoints",
        "listcommands",
    }
)


class ActionSender(Protocol):
    """How the ``on_connected`` hook sends actions before the link counts as up."""

    def __call__(
        self, action: str, fields: Sequence[tuple[str, str]] = (), *, timeout_s: float | None = None
    ) -> Awaitable[list[AmiMessage]]: ...


@dataclass(slots=True)
class _Pending:
    action: Action
    name: str
    as_list: bool
    messages: list[AmiMessage] = field(default_factory=list)


class _Protocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol with ctid's parser and an enqueue-only event path."""

    def __init__(self, client: AmiClient) -> None:
        super().__init__()
        self._client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.encoding = "utf-8"
        self.parser = AmiParser(expect_banner=True)
        self.banner: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[str, _Pending] = {}

    def data_received(self, data: bytes) -> None:
        for msg in self.parser.feed(data):
            if msg.is_banner:
                if not self.banner.done():
                    self.banner.set_result(msg.banner_version)
                continue
            pending = self.pending.get(msg.action_id) if msg.action_id else None
            if pending is None:
                if msg.event:
                    # Defect 1: only enqueue. OriginateResponse also lands here: it
                    # carries our ActionID but arrives after the action resolved.
                    self._client.events.put_nowait((msg, time.time()))
                elif not self.banner.done():
                    self.banner.set_result("")
                continue
            pending.messages.append(msg)
            if msg.response == "Error" and not pending.action.future.done():
                # panoramisk waits forever for the list after an error reply.
                pending.action.future.set_result(Message(msg.as_dict()))
            else:
                self.handle_message(Message(msg.as_dict()))
            if pending.action.future.done():
                self.pending.pop(msg.action_id, None)
                self.responses.pop(msg.action_id, None)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # why the link dropped is logged by the supervisor
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        for pending in self.pending.values():
            if not pending.action.future.done():
                pending.action.future.set_exception(
                    AmiNotConnectedError(f"{pending.name}: link lost")
                )
        self.pending.clear()
        self.responses.clear()


class AmiClient:
    """A supervised AMI link: connect, log in, resync, watch, reconnect with backoff.

    Events arrive on ``events`` as ``(AmiMessage, arrival_time)`` and link
    changes as ``(Link, time)``, in the order they happened.
    """

    def __init__(
        self,
        config: AmiConfig,
        *,
        on_connected: Callable[[ActionSender], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self._on_connected = on_connected
        # The consumer may put its own items here too (ticks, resync answers) to
        # keep them in order with the events; it dispatches on their type.
        self.events: asyncio.Queue[tuple[object, float]] = asyncio.Queue()
        self.link = Link.DOWN
        self.ready = asyncio.Event()
        self.logins = 0
        self._protocol: _Protocol | None = None
        self._closing = asyncio.Event()
        self._attempt = 0

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Keep the link up until ``close()``; never returns earlier, never raises AmiError."""
        while not self._closing.is_set():
            try:
                await self._session()
            except AmiLoginError as exc:
                log.error(
                    "ami.login_failed",
                    host=self.config.host,
                    username=self.config.username,
                    error=str(exc),
                )
            except (AmiError, OSError, TimeoutError) as exc:
                log.warning(
                    "ami.link_lost",
                    host=self.config.host,
                    port=self.config.port,
                    error=str(exc) or type(exc).__name__,
                )
            finally:
                self._drop()
            if self._closing.is_set():
                break
            self._set_link(Link.RECONNECTING)
            delay = self._backoff()
            log.info("ami.reconnect_scheduled", delay_s=round(delay, 3), attempt=self._attempt)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
        self._set_link(Link.DOWN)

    def close(self) -> None:
        """Stop for good: close the link and cancel any pending reconnect (defect 2)."""
        self._closing.set()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()

    def _backoff(self) -> float:
        # Capped exponential backoff with full jitter, so a fleet of daemons does
        # not hammer a PBX that just restarted in lockstep.
        self._attempt += 1
        cap = min(
            self.config.reconnect_max_s, self.config.reconnect_initial_s * 2 ** (self._attempt - 1)
        )
        return random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not cryptography

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self), self.config.host, self.config.port
                )
                self._protocol = protocol
                version = await protocol.banner
        except (OSError, TimeoutError) as exc:
            raise AmiConnectError(
                f"cannot connect to {self.config.host}:{self.config.port}: {exc}"
            ) from exc
        log.info(
            "ami.connected", host=self.config.host, port=self.config.port, protocol_version=version
        )
        await self._login()
        self.logins += 1
        if self._on_connected is not None:
            await self._on_connected(self._send_raw)
        self._attempt = 0
        self._set_link(Link.UP)
        self.ready.set()
        log.info("ami.ready", host=self.config.host)
        await self._watch(protocol)

    async def _login(self) -> None:
        fields: list[tuple[str, str]] = [("Username", self.config.username)]
        if self.config.auth == "md5":
            reply = await self._send_raw(
                "Challenge", [("AuthType", "MD5")], timeout_s=self.config.login_timeout_s
            )
            challenge = reply[0].get("Challenge")
            key = hashlib.md5(
                (challenge + self.config.secret).encode(), usedforsecurity=False
            ).hexdigest()
            fields += [("AuthType", "MD5"), ("Key", key)]
        else:
            fields.append(("Secret", self.config.secret))
        fields.append(("Events", "on"))
        try:
            await self._send_raw("Login", fields, timeout_s=self.config.login_timeout_s)
        except AmiActionFailedError as exc:
            raise AmiLoginError(
                f"login as {self.config.username!r} refused: {exc.message}"
            ) from exc

    async def _watch(self, protocol: _Protocol) -> None:
        """Wait for the link to drop, pinging it; an unanswered Ping aborts it (defect 3)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.ping_interval_s):
                    await asyncio.shield(protocol.lost)
            if protocol.lost.done():
                raise AmiConnectError("connection closed by peer")
            try:
                await self._send_raw("Ping", [], timeout_s=self.config.ping_timeout_s)
            except AmiActionTimeoutError as exc:
                log.warning("ami.ping_timeout", timeout_s=self.config.ping_timeout_s)
                raise AmiConnectError("no reply to Ping") from exc

    def _drop(self) -> None:
        protocol, self._protocol = self._protocol, None
        self.ready.clear()
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
            protocol.connection_lost(None)

    def _set_link(self, link: Link) -> None:
        if link != self.link:
            self.link = link
            self.events.put_nowait((link, time.time()))
            log.info("ami.link", state=link.value)

    # ---------------------------------------------------------------- actions

    async def send(
        self, action: str, fields: Sequence[tuple[str, str]] = (), *, timeout_s: float | None = None
    ) -> list[AmiMessage]:
        """Send an action once the link is up; return its response (and list items).

        Raises ``AmiNotConnectedError`` at once when the link is down (the sender
        learns "PBX link down" instead of waiting), ``AmiActionTimeoutError`` after
        ``timeout_s`` (default ``ami.action_timeout_s``), ``AmiActionFailedError`` on
        ``Response: Error``, and ``UnsafeActionError`` for CR/LF in any field.
        """
        if not self.ready.is_set():
            raise AmiNotConnectedError(f"{action}: PBX link down")
        return await self._send_raw(action, fields, timeout_s=timeout_s)

    async def _send_raw(
        self, action: str, fields: Sequence[tuple[str, str]] = (), *, timeout_s: float | None = None
    ) -> list[AmiMessage]:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            raise AmiNotConnectedError(f"{action}: PBX link down")
        check_action_name(action)
        grouped: dict[str, str | list[str]] = {"Action": action}
        for key, value in fields:
            check_field(key, value)
            if key.lower() in ("action", "actionid"):
                raise UnsafeActionError(f"{key}: set by ctid")
            prev = grouped.get(key)
            if prev is None:
                grouped[key] = value
            elif isinstance(prev, list):
                prev.append(value)
            else:
                grouped[key] = [prev, value]
        as_list = action.lower() in LIST_ACTIONS
        pan = Action(grouped, as_list=as_list)
        pending = _Pending(pan, action, as_list)
        protocol.pending[pan.action_id] = pending
        protocol.send(pan, as_list=as_list)
        try:
            async with asyncio.timeout(
                timeout_s if timeout_s is not None else self.config.action_timeout_s
            ):
                await pan.future
        except TimeoutError as exc:
            protocol.pending.pop(pan.action_id, None)
            protocol.responses.pop(pan.action_id, None)
            raise AmiActionTimeoutError(f"{action}: no response within the timeout") from exc
        first = pending.messages[0] if pending.messages else None
        if first is not None and first.response == "Error":
            raise AmiActionFailedError(action, first.get("Message") or "error")
        return pending.messages
