"""An AMI server for tests, the demo and the benchmark.

``AmiSimulator`` speaks the manager protocol the way Asterisk 22 does (the
shapes below are copied from the captures in ``ami-captures/``):

* on connect the banner ``Asterisk Call Manager/11.0.0`` (one line, no blank
  line after it);
* ``Login`` with ``Secret``, or ``Challenge`` (``AuthType: MD5``) followed by
  ``Login`` with ``AuthType: MD5`` and ``Key: md5(challenge + secret)``; a bad
  login answers ``Authentication failed`` and closes the session, as
  ``action_login`` does; a good one answers ``Authentication accepted``, then
  ``FullyBooted`` and the AMI ``SuccessfulAuth`` security event;
* any other action before login: ``Permission denied``;
* ``Ping``, ``Events``, ``Logoff``, ``CoreSettings``, ``CoreStatus`` and the
  resync lists (``CoreShowChannels``, ``BridgeList``, ``QueueStatus``,
  ``QueueSummary``, ``Status``, ``DeviceStateList``, ``ExtensionStateList``),
  which answer the items configured with ``set_list`` (none by default), or,
  with ``track_state``, the PBX state computed from the events emitted so far
  (``PbxState``), as does ``BridgeInfo``;
* an unknown action: ``Invalid/unknown command: X. Use Action: ListCommands…``.

Every response echoes the action's ``ActionID``. Events go only to sessions
that are logged in with events on (and, for an ``Events: call,agent`` mask, to
sessions whose mask matches the event's ``Privilege``).

Tests drive faults through ``push``/``push_raw``/``drop_clients``,
``stop_accepting``/``start_accepting`` (the PBX unreachable) and the
``answer_pings``/``refuse_logins`` switches, and assert on ``actions``.

An outage in the middle of a capture, with ``track_state=True``::

    await sim.replay(capture, None, stop=k)            # client connected
    await sim.stop_accepting()                          # link cut, connects refused
    await sim.replay(capture, None, start=k, stop=m)    # the PBX goes on, nobody hears
    await sim.start_accepting()                         # the client reconnects and resyncs
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ctid.core.ami import AmiMessage, AmiParser
from ctid.sim.capture import Capture, load_capture
from ctid.sim.pbxstate import PbxState

__all__ = [
    "LIST_ACTIONS",
    "AmiSimulator",
    "Handler",
    "ListSpec",
    "SimClient",
    "error",
    "event_list",
    "response",
    "success_handler",
]

HandlerResult = Iterable[AmiMessage] | None
Handler = Callable[[AmiMessage], HandlerResult | Awaitable[HandlerResult]]
"""An action handler: the action in, the messages to answer with out (``None``: no answer)."""

ReplaySource = Capture | str | os.PathLike[str] | Iterable[AmiMessage]


# --------------------------------------------------------------------------- replies


def response(
    action: AmiMessage,
    status: str = "Success",
    message: str | None = None,
    fields: Iterable[tuple[str, str]] = (),
) -> AmiMessage:
    """``Response: status`` echoing the action's ``ActionID``, then ``Message`` and ``fields``.

    The header order is Asterisk's ``astman_send_response_full``.
    """
    headers = [("Response", status)]
    if action.action_id:
        headers.append(("ActionID", action.action_id))
    if message is not None:
        headers.append(("Message", message))
    headers.extend(fields)
    return AmiMessage(tuple(headers))


def error(action: AmiMessage, message: str) -> AmiMessage:
    """``Response: Error`` with ``Message: message``, echoing the ``ActionID``."""
    return response(action, "Error", message)


def success_handler(message: str, fields: Iterable[tuple[str, str]] = ()) -> Handler:
    """A handler that answers ``Response: Success`` with ``message`` (e.g. for ``QueuePause``)."""
    extra = tuple(fields)

    def handle(action: AmiMessage) -> list[AmiMessage]:
        return [response(action, "Success", message, extra)]

    return handle


@dataclass(frozen=True, slots=True)
class ListSpec:
    """How Asterisk 22 frames the answer of one list action."""

    message: str
    """``Message`` of the ``Response: Success`` / ``EventList: start`` header."""
    complete_event: str
    action_id_last: bool = False
    """Whether the items carry ``ActionID`` as their last header (``QueueMember``) or second."""
    items_header: bool = False
    """``StatusComplete`` repeats the count as ``Items: N``."""


LIST_ACTIONS: dict[str, ListSpec] = {
    "CoreShowChannels": ListSpec("Channels will follow", "CoreShowChannelsComplete"),
    "BridgeList": ListSpec("Bridge listing will follow", "BridgeListComplete"),
    "QueueStatus": ListSpec("Queue status will follow", "QueueStatusComplete", True),
    "QueueSummary": ListSpec("Queue summary will follow", "QueueSummaryComplete", True),
    "Status": ListSpec("Channel status will follow", "StatusComplete", True, True),
    "DeviceStateList": ListSpec("Device State Changes will follow", "DeviceStateListComplete"),
    "ExtensionStateList": ListSpec("Extension Statuses will follow", "ExtensionStateListComplete"),
}
"""The list actions a resync uses, with their framing as recorded in ``reconnect.ami``."""


def event_list(
    action: AmiMessage,
    items: Sequence[AmiMessage],
    *,
    complete_event: str,
    message: str,
    action_id_last: bool = False,
    complete_fields: Iterable[tuple[str, str]] = (),
) -> list[AmiMessage]:
    """An Asterisk event list answering ``action``.

    ``Response: Success``/``EventList: start``/``Message: message``, then every
    item with the action's ``ActionID`` added (after ``Event``, or last with
    ``action_id_last``; items that already carry one keep it), then
    ``Event: complete_event``/``EventList: Complete``/``ListItems: N`` and
    ``complete_fields``.
    """
    aid = action.action_id
    head = [("Response", "Success")]
    if aid:
        head.append(("ActionID", aid))
    head += [("EventList", "start"), ("Message", message)]
    out = [AmiMessage(tuple(head))]
    for item in items:
        if not aid or "ActionID" in item:
            out.append(item)
        elif action_id_last:
            out.append(AmiMessage((*item.headers, ("ActionID", aid))))
        else:
            out.append(AmiMessage((item.headers[0], ("ActionID", aid), *item.headers[1:])))
    tail = [("Event", complete_event)]
    if aid:
        tail.append(("ActionID", aid))
    tail += [("EventList", "Complete"), ("ListItems", str(len(items))), *complete_fields]
    out.append(AmiMessage(tuple(tail)))
    return out


def _list_reply(action: AmiMessage, name: str, items: Sequence[AmiMessage]) -> list[AmiMessage]:
    spec = LIST_ACTIONS[name]
    extra = [("Items", str(len(items)))] if spec.items_header else []
    return event_list(
        action,
        items,
        complete_event=spec.complete_event,
        message=spec.message,
        action_id_last=spec.action_id_last,
        complete_fields=extra,
    )


def _with_action_id(msg: AmiMessage, action_id: str) -> AmiMessage:
    """Add ``ActionID`` after ``Response`` if a handler forgot it."""
    if not action_id or not msg.response or "ActionID" in msg:
        return msg
    return AmiMessage((msg.headers[0], ("ActionID", action_id), *msg.headers[1:]))


# --------------------------------------------------------------------------- sessions

_TRUE = frozenset({"on", "yes", "true", "y", "t", "1", "all"})
_FALSE = frozenset({"off", "no", "false", "n", "f", "0", "none", ""})


def _event_mask(value: str) -> frozenset[str] | None:
    """``Events:`` value as a set of classes; ``None`` means all, empty means none."""
    low = value.strip().lower()
    if low in _TRUE:
        return None
    if low in _FALSE:
        return frozenset()
    return frozenset(part.strip() for part in low.split(",") if part.strip())


class SimClient:
    """One AMI session on the simulator, as the tests may inspect it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lock = asyncio.Lock()
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] | None = (peer[0], peer[1]) if peer else None
        self.logged_in = False
        self.username = ""
        self.events: frozenset[str] | None = None
        """Event classes this session receives; ``None`` = all, empty = off."""
        self.challenge = ""
        self.closed = False
        self.task: asyncio.Task[Any] | None = None

    def wants(self, msg: AmiMessage) -> bool:
        """Whether Asterisk would send event ``msg`` to this session."""
        if not self.logged_in or self.closed or self.events == frozenset():
            return False
        if self.events is None:
            return True
        classes = {c.strip().lower() for c in msg.get("Privilege").split(",")} - {"all"}
        # An event without a Privilege (pushed by a test) goes to every listening session.
        return not classes or bool(classes & self.events)

    @property
    def listening(self) -> bool:
        """Logged in with some events on."""
        return self.logged_in and not self.closed and self.events != frozenset()

    async def send(self, data: bytes, chunk_size: int = 0, delay: float = 0.0) -> None:
        """Write ``data``; in ``chunk_size`` pieces with a pause between them if asked.

        The lock keeps a chunked write from interleaving with a response.
        """
        if self.closed:
            return
        async with self._lock:
            try:
                if chunk_size <= 0:
                    self._writer.write(data)
                    await self._writer.drain()
                    return
                for start in range(0, len(data), chunk_size):
                    self._writer.write(data[start : start + chunk_size])
                    await self._writer.drain()
                    # Without a pause the peer's kernel coalesces the pieces into one read.
                    await asyncio.sleep(delay)
            except ConnectionError:
                self.closed = True

    def abort(self) -> None:
        """Close the TCP connection at once, without a Goodbye or flushing."""
        self.closed = True
        self._writer.transport.abort()

    async def close(self) -> None:
        """Close the connection after what was written is sent."""
        self.closed = True
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


# --------------------------------------------------------------------------- server


class AmiSimulator:
    """An asyncio TCP server that behaves like Asterisk's manager interface.

    ``async with AmiSimulator(username="ctid", secret="s3cret") as sim:`` listens
    on 127.0.0.1 on a free port (``sim.port``).
    """

    def __init__(
        self,
        *,
        username: str = "ctid",
        secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        version: str = "11.0.0",
        asterisk_version: str = "22.10.1",
        uptime: float = 3600.0,
        security_events: bool = True,
        failed_login_delay: float = 0.0,
        track_state: bool = False,
    ) -> None:
        self.username = username
        self.secret = secret
        self.host = host
        self.port = port
        self.version = version
        self.asterisk_version = asterisk_version
        self.security_events = security_events
        self.failed_login_delay = failed_login_delay
        """Asterisk sleeps 1 s before refusing a login; tests default to none."""

        self.answer_pings = True
        self.refuse_logins = False

        self.state: PbxState | None = PbxState() if track_state else None
        """The PBX behind the simulator: every event sent through ``push``/``replay`` changes it,
        listened to or not, and the resync lists answer from it (``set_list`` overrides)."""

        self.actions: list[AmiMessage] = []
        """Every message a client sent, in arrival order (Login included)."""
        self.handler_errors: list[BaseException] = []
        """Exceptions raised by ``set_handler`` handlers (answered as ``Response: Error``)."""
        self.connections = 0
        self.logins = 0
        self.failed_logins = 0

        self._boot = time.time() - uptime
        self._reload: float | None = None
        self._clients: list[SimClient] = []
        self._handlers: dict[str, Handler] = {}
        self._lists: dict[str, list[AmiMessage]] = {}
        self._server: asyncio.Server | None = None
        self._changed: asyncio.Condition | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Listen; ``port`` 0 picks a free port, stored back into ``self.port``."""
        self._changed = asyncio.Condition()
        await self.start_accepting()

    @property
    def accepting(self) -> bool:
        """Whether the simulator listens for connections."""
        return self._server is not None

    async def stop_accepting(self, *, drop: bool = True) -> None:
        """Make the PBX unreachable: stop listening (connects are refused) and, with ``drop``,
        abort every session.

        ``state`` stays and keeps following ``push``/``replay``: the calls go on
        while no client hears of them.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if drop:
            await self.drop_clients()
        if server is not None:
            await server.wait_closed()

    async def start_accepting(self) -> None:
        """Listen (again) on ``port``; the same port after ``stop_accepting``."""
        if self._server is not None:
            return
        # asyncio sets SO_REUSEADDR, so the port is free again at once even with
        # the aborted sessions' sockets still around.
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every session."""
        if self._server is not None:
            self._server.close()
        await self.drop_clients()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> AmiSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- PBX state

    @property
    def uptime(self) -> float:
        """Seconds since the simulated PBX booted (``FullyBooted`` ``Uptime``)."""
        return time.time() - self._boot

    @uptime.setter
    def uptime(self, seconds: float) -> None:
        # Setting a small uptime simulates an Asterisk restart for the next login.
        self._boot = time.time() - seconds
        self._reload = None

    @property
    def last_reload(self) -> float:
        """Seconds since the last reload (equal to ``uptime`` unless set)."""
        return self.uptime if self._reload is None else time.time() - self._reload

    @last_reload.setter
    def last_reload(self, seconds: float) -> None:
        self._reload = time.time() - seconds

    def set_handler(self, action: str, handler: Handler | None) -> None:
        """Answer ``action`` with ``handler`` (``None`` restores the default).

        ``Login``, ``Challenge`` and ``Logoff`` are the protocol and cannot be replaced.
        """
        key = action.lower()
        if key in {"login", "challenge", "logoff"}:
            raise ValueError(f"{action} is handled by the simulator itself")
        if handler is None:
            self._handlers.pop(key, None)
        else:
            self._handlers[key] = handler

    def set_list(self, action: str, items: Iterable[AmiMessage] | None) -> None:
        """The items a default list action answers (see ``LIST_ACTIONS``), without ``ActionID``.

        They take precedence over ``state``; ``None`` removes them again.
        """
        name = self._list_name(action)
        if name is None:
            raise ValueError(f"{action} is not one of {sorted(LIST_ACTIONS)}")
        if items is None:
            self._lists.pop(name, None)
        else:
            self._lists[name] = list(items)

    # ----------------------------------------------------------------- inspection

    @property
    def clients(self) -> list[SimClient]:
        """Sessions currently connected."""
        return [c for c in self._clients if not c.closed]

    def actions_named(self, name: str) -> list[AmiMessage]:
        """The recorded actions called ``name`` (case-insensitive)."""
        low = name.lower()
        return [a for a in self.actions if a.get("Action").lower() == low]

    # A plain timeout argument keeps test code short; it is applied with asyncio.timeout.
    async def wait_for_action(
        self,
        name: str,
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        count: int = 1,
    ) -> AmiMessage:
        """The ``count``-th action called ``name``, waiting up to ``timeout`` s for it.

        Raises ``TimeoutError`` naming the actions that did arrive.
        """
        cond = self._condition()
        try:
            async with asyncio.timeout(timeout), cond:
                await cond.wait_for(lambda: len(self.actions_named(name)) >= count)
        except TimeoutError:
            seen = [a.get("Action") for a in self.actions]
            raise TimeoutError(f"no {name} #{count} within {timeout}s; got {seen}") from None
        return self.actions_named(name)[count - 1]

    async def wait_for_clients(self, count: int = 1, timeout: float | None = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``count`` sessions are logged in with events on."""
        cond = self._condition()
        try:
            async with asyncio.timeout(timeout), cond:
                await cond.wait_for(lambda: sum(c.listening for c in self._clients) >= count)
        except TimeoutError:
            raise TimeoutError(f"fewer than {count} listening AMI clients") from None

    # ----------------------------------------------------------------- faults and events

    async def push(self, *messages: AmiMessage | bytes) -> None:
        """Send events (or raw bytes) to every logged-in session with events on."""
        await self.push_many(messages)

    async def push_many(self, messages: Iterable[AmiMessage | bytes]) -> None:
        """Send a batch in one write per session (each session gets what it subscribed to).

        Each message also goes into ``state``, whether any session listens or not;
        raw bytes do not.
        """
        batch = list(messages)
        if self.state is not None:
            for m in batch:
                if isinstance(m, AmiMessage):
                    self.state.apply(m)
        await self._broadcast(batch)

    async def _broadcast(self, batch: list[AmiMessage | bytes]) -> None:
        sends = []
        for client in self.clients:
            data = b"".join(
                m if isinstance(m, bytes) else m.to_bytes()
                for m in batch
                if isinstance(m, bytes) or client.wants(m)
            )
            if data and client.listening:
                sends.append(client.send(data))
        await asyncio.gather(*sends)

    async def push_raw(self, data: bytes, chunk_size: int = 1, delay: float = 0.001) -> None:
        """Write ``data`` to listening sessions in ``chunk_size``-byte pieces, ``delay`` s apart.

        For tests of split reads, e.g. a UTF-8 character cut in half.
        """
        await asyncio.gather(
            *(c.send(data, chunk_size, delay) for c in self.clients if c.listening)
        )

    async def drop_clients(self) -> None:
        """Abort every connection, as a crashing PBX or a broken network would."""
        clients = list(self._clients)
        for client in clients:
            client.abort()
        tasks = [
            c.task for c in clients if c.task is not None and c.task is not asyncio.current_task()
        ]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def replay(
        self,
        source: ReplaySource,
        speed: float | None = 1.0,
        *,
        retime: bool = False,
        start: int = 0,
        stop: int | None = None,
    ) -> int:
        """Send a capture's events (or any messages) to the listening sessions.

        Only the messages ``[start:stop]`` of the source go (indexes into
        ``Capture.replay_events``; ``Capture.index_at`` finds one by time), so a
        test can replay a capture in parts with an outage in between.

        The pace follows the ``Timestamp`` deltas divided by ``speed``; with
        ``speed=None`` everything goes as fast as the clients read. Messages
        without a ``Timestamp`` go right after the one before. Headers are sent
        as recorded (order and duplicates kept); with ``retime`` each
        ``Timestamp`` is rewritten to the wall-clock time of sending, so that a
        looped replay does not go back in time. Returns the number sent.
        """
        if isinstance(source, Capture):
            messages: Iterable[AmiMessage] = source.replay_events
        elif isinstance(source, str | os.PathLike):
            messages = load_capture(Path(source)).replay_events
        else:
            messages = source
        if start or stop is not None:
            messages = itertools.islice(messages, start, stop)

        loop = asyncio.get_running_loop()
        began = loop.time()
        first_ts: float | None = None
        batch: list[AmiMessage] = []
        sent = 0
        for msg in messages:
            ts = msg.timestamp
            if speed is not None and ts is not None:
                if first_ts is None:
                    first_ts = ts
                wait = began + (ts - first_ts) / speed - loop.time()
                if wait > 0:
                    # Everything due before this event goes out before the pause.
                    await self._flush(batch, retime)
                    sent += len(batch)
                    batch = []
                    await asyncio.sleep(wait)
            batch.append(msg)
            if len(batch) >= 256:
                await self._flush(batch, retime)
                sent += len(batch)
                batch = []
        await self._flush(batch, retime)
        return sent + len(batch)

    async def _flush(self, batch: list[AmiMessage], retime: bool) -> None:
        if not batch:
            return
        if retime:
            now = f"{time.time():.6f}"
            batch = [_retimed(m, now) for m in batch]
        await self.push_many(batch)

    # ----------------------------------------------------------------- protocol

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Small pushes (push_raw) must leave as separate segments.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = SimClient(writer)
        client.task = asyncio.current_task()
        self._clients.append(client)
        self.connections += 1
        await self._notify()
        parser = AmiParser(expect_banner=False)
        try:
            await client.send(f"Asterisk Call Manager/{self.version}\r\n".encode())
            while not client.closed:
                data = await reader.read(65536)
                if not data:
                    break
                for action in parser.feed(data):
                    if not await self._dispatch(client, action):
                        await client.close()
                        break
        except ConnectionError:
            pass
        finally:
            client.closed = True
            if not writer.is_closing():
                writer.close()
            self._clients.remove(client)
            await self._notify()

    async def _dispatch(self, client: SimClient, action: AmiMessage) -> bool:
        """Answer one action; ``False`` ends the session."""
        self.actions.append(action)
        await self._notify()
        name = action.get("Action")
        key = name.lower()

        if not name:
            await self._reply(client, [error(action, "Missing action in request")])
            return True
        if key == "login":
            return await self._login(client, action)
        if key == "challenge":
            await self._reply(client, [self._challenge(client, action)])
            return True
        if key == "logoff":
            await self._reply(client, [response(action, "Goodbye", "Thanks for all the fish.")])
            return False
        if not client.logged_in:
            await self._reply(client, [error(action, "Permission denied")])
            return True
        if key == "ping" and not self.answer_pings:
            return True

        handler = self._handlers.get(key)
        if handler is not None:
            try:
                raw = handler(action)
                result = await raw if isinstance(raw, Awaitable) else raw
            except Exception as exc:
                # A broken test handler must show up in the test, not kill the session.
                self.handler_errors.append(exc)
                await self._reply(client, [error(action, f"Simulator handler failed: {exc!r}")])
                return True
            if result is not None:
                aid = action.action_id
                await self._reply(client, [_with_action_id(m, aid) for m in result])
            return True
        await self._reply(client, self._default(client, action, name))
        return True

    async def _reply(self, client: SimClient, messages: Iterable[AmiMessage]) -> None:
        await client.send(b"".join(m.to_bytes() for m in messages))

    def _challenge(self, client: SimClient, action: AmiMessage) -> AmiMessage:
        if action.get("AuthType").lower() != "md5":
            return error(action, "Must specify AuthType")
        if not client.challenge:
            # Asterisk uses ast_random() printed as a decimal number.
            client.challenge = str(secrets.randbelow(2**31))
        return response(action, fields=[("Challenge", client.challenge)])

    def _credentials_ok(self, client: SimClient, action: AmiMessage) -> bool:
        if self.refuse_logins or action.get("Username").lower() != self.username.lower():
            return False
        if action.get("AuthType").lower() == "md5":
            if not client.challenge:
                return False
            digest = hashlib.md5(  # AMI's challenge protocol is defined with MD5.
                (client.challenge + self.secret).encode(), usedforsecurity=False
            ).hexdigest()
            return hmac.compare_digest(digest, action.get("Key").lower())
        return hmac.compare_digest(action.get("Secret").encode(), self.secret.encode())

    async def _login(self, client: SimClient, action: AmiMessage) -> bool:
        if client.logged_in:
            await self._reply(client, [response(action, "Success", "Already authenticated")])
            return True
        if not self._credentials_ok(client, action):
            self.failed_logins += 1
            if self.failed_login_delay:
                await asyncio.sleep(self.failed_login_delay)
            await self._reply(client, [error(action, "Authentication failed")])
            return False

        client.logged_in = True
        client.username = action.get("Username")
        if "Events" in action:
            client.events = _event_mask(action.get("Events"))
        self.logins += 1
        out = [response(action, "Success", "Authentication accepted")]
        # Asterisk only announces FullyBooted to a session that reads system events.
        if client.events is None or "system" in client.events:
            out.append(
                AmiMessage(
                    (
                        ("Event", "FullyBooted"),
                        ("Privilege", "system,all"),
                        ("Uptime", str(int(self.uptime))),
                        ("LastReload", str(int(self.last_reload))),
                        ("Status", "Fully Booted"),
                    )
                )
            )
        await self._reply(client, out)
        if self.security_events:
            # Not through push: the login is not PBX traffic, and its wall-clock
            # Timestamp would move the state's clock away from a replayed capture's.
            await self._broadcast([self._successful_auth(client, action)])
        await self._notify()
        return True

    def _successful_auth(self, client: SimClient, action: AmiMessage) -> AmiMessage:
        now = time.time()
        tv = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1000):03d}+0000"
        )
        local = f"IPV4/TCP/{self.host}/{self.port}"
        remote = f"IPV4/TCP/{client.peer[0]}/{client.peer[1]}" if client.peer else "<unknown>"
        return AmiMessage(
            (
                ("Event", "SuccessfulAuth"),
                ("Privilege", "security,all"),
                ("Timestamp", f"{now:.6f}"),
                ("EventTV", tv),
                ("Severity", "Informational"),
                ("Service", "AMI"),
                ("EventVersion", "1"),
                ("AccountID", client.username),
                ("SessionID", f"0x{id(client):x}"),
                ("LocalAddress", local),
                ("RemoteAddress", remote),
                ("UsingPassword", "0" if action.get("AuthType") else "1"),
                ("SessionTV", tv),
            )
        )

    @staticmethod
    def _list_name(action: str) -> str | None:
        low = action.lower()
        return next((n for n in LIST_ACTIONS if n.lower() == low), None)

    def _default(self, client: SimClient, action: AmiMessage, name: str) -> list[AmiMessage]:
        key = name.lower()
        if key == "ping":
            return [
                response(action, fields=[("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}")])
            ]
        if key == "events":
            client.events = _event_mask(action.get("EventMask"))
            state = "Off" if client.events == frozenset() else "On"
            return [response(action, fields=[("Events", state)])]
        if key == "coresettings":
            return [response(action, fields=self._core_settings())]
        if key == "corestatus":
            return [response(action, fields=self._core_status())]
        list_name = self._list_name(name)
        if list_name is not None:
            return self._list_answer(action, list_name)
        if key == "bridgeinfo" and self.state is not None:
            return self._bridge_info(action)
        return [
            error(
                action,
                f"Invalid/unknown command: {name}. "
                "Use Action: ListCommands to show available commands.",
            )
        ]

    def _list_answer(self, action: AmiMessage, name: str) -> list[AmiMessage]:
        items = self._lists.get(name)
        if items is None:
            tracked = None if self.state is None else self.state.list_items(name)
            items = [] if tracked is None else tracked
        if name == "Status" and action.get("Channel"):
            channel = action.get("Channel")
            items = [i for i in items if i.get("Channel") == channel]
            if not items:
                return [error(action, "No such channel")]
        if name in {"QueueStatus", "QueueSummary"} and action.get("Queue"):
            items = [i for i in items if i.get("Queue") == action.get("Queue")]
        if name == "QueueStatus" and action.get("Member"):
            member = action.get("Member")
            items = [
                i
                for i in items
                if i.event != "QueueMember" or member in (i.get("Location"), i.get("Name"))
            ]
        return _list_reply(action, name, items)

    def _bridge_info(self, action: AmiMessage) -> list[AmiMessage]:
        assert self.state is not None
        bid = action.get("BridgeUniqueid")
        # The error texts of manager_bridge_info (main/manager_bridges.c).
        if not bid:
            return [error(action, "BridgeUniqueid must be provided")]
        found = self.state.bridge_info(bid)
        if found is None:
            return [error(action, "Specified BridgeUniqueid not found")]
        items, fields = found
        return event_list(
            action,
            items,
            complete_event="BridgeInfoComplete",
            message="Bridge channel listing will follow",
            complete_fields=fields,
        )

    def _core_settings(self) -> list[tuple[str, str]]:
        return [
            ("AMIversion", self.version),
            ("AsteriskVersion", self.asterisk_version),
            ("SystemName", ""),
            ("CoreMaxCalls", "500"),
            ("CoreMaxLoadAvg", "0.000000"),
            ("CoreRunUser", ""),
            ("CoreRunGroup", ""),
            ("CoreMaxFilehandles", "0"),
            ("CoreRealTimeEnabled", "No"),
            ("CoreCDRenabled", "Yes"),
            ("CoreHTTPenabled", "No"),
            ("SoundsSearchCustomDir", "No"),
        ]

    def _core_status(self) -> list[tuple[str, str]]:
        boot = time.localtime(self._boot)
        reload = time.localtime(time.time() - self.last_reload)
        return [
            ("CoreStartupDate", time.strftime("%Y-%m-%d", boot)),
            ("CoreStartupTime", time.strftime("%H:%M:%S", boot)),
            ("CoreReloadDate", time.strftime("%Y-%m-%d", reload)),
            ("CoreReloadTime", time.strftime("%H:%M:%S", reload)),
            ("CoreCurrentCalls", str(self._current_calls())),
            ("CoreProcessedCalls", "0"),
        ]

    def _current_calls(self) -> int:
        listed = self._lists.get("CoreShowChannels")
        if listed is None and self.state is not None:
            return len(self.state.channels)
        return len(listed or [])


def _retimed(msg: AmiMessage, stamp: str) -> AmiMessage:
    if "Timestamp" not in msg:
        return msg
    return AmiMessage(
        tuple((k, stamp) if k.lower() == "timestamp" else (k, v) for k, v in msg.headers)
    )
