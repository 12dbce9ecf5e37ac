"""Helpers for tests that run ctid for real: as ``python -m ctid run`` or behind a TCP gate.

* ``write_config`` writes a TOML config (secrets in files) for a broker and an AMI port.
* ``DaemonProcess`` runs ``python -m ctid run -c FILE`` with its output in a log file,
  and can SIGKILL it (a crash) or SIGTERM it (a clean stop).
* ``Recorder`` is an MQTT subscriber that keeps every message it receives, raw.
* ``TcpGate`` is a TCP relay a test can shut (connections refused) and open again.
* ``db_rows`` reads the SQLite store while a daemon writes it (WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt

from tests.broker import MosquittoBroker

SECRET = "sim-secret"


def agent_block(extension: str, queue: str = "support") -> str:
    """The ``[[agents]]`` table of agent ``a{extension}`` on ``PJSIP/{extension}``."""
    return (
        f'[[agents]]\nid = "a{extension}"\nname = "Agent {extension}"\n'
        f'devices = ["PJSIP/{extension}"]\nextension = "{extension}"\nqueues = ["{queue}"]\n'
    )


def write_config(
    directory: Path,
    broker: MosquittoBroker,
    ami_port: int,
    extensions: Sequence[str],
    *,
    store: Path,
    batch_wait_s: float = 0.05,
) -> Path:
    """A ``ctid.toml`` in ``directory``: ``broker`` as user ctid, the AMI on ``ami_port``."""
    (directory / "ami.secret").write_text(SECRET + "\n")
    (directory / "mqtt.password").write_text(broker.credentials["ctid"] + "\n")
    path = directory / "ctid.toml"
    path.write_text(
        f"""
[ami]
host = "127.0.0.1"
port = {ami_port}
username = "ctid"
secret_file = "ami.secret"
reconnect_initial_s = 0.05
reconnect_max_s = 0.2

[mqtt]
host = "{broker.host}"
port = {broker.port}
{f"websockets_port = {broker.ws_port}" if broker.ws_port else ""}
username = "ctid"
password_file = "mqtt.password"
reconnect_initial_s = 0.1
reconnect_max_s = 0.5

[store]
path = "{store}"
batch_wait_s = {batch_wait_s}

[log]
format = "json"

"""
        + "\n".join(agent_block(ext) for ext in extensions)
    )
    return path


class DaemonProcess:
    """``python -m ctid run -c CONFIG`` as a child process; stdout and stderr go to ``log``."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ctid",
                "run",
                "-c",
                str(self.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self, within_s: float = 15.0) -> int:
        """SIGTERM and wait for the exit; its status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(within_s):
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(
                f"ctid did not exit within {within_s} s of SIGTERM; its log:\n{self.log()[-4000:]}"
            ) from None

    async def __aenter__(self) -> DaemonProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


class Recorder:
    """An MQTT subscriber (user ``crm``, QoS 1) keeping every message as (topic, raw payload).

    One connection: when the broker goes away the recorder stops (``disconnected`` is
    set); a new ``Recorder`` is needed after the broker is back.
    """

    def __init__(self, broker: MosquittoBroker, topics: Sequence[str]) -> None:
        self._client = broker.client("crm")
        self._topics = topics
        self._task: asyncio.Task[None] | None = None
        self.got: list[tuple[str, bytes]] = []
        self.disconnected = asyncio.Event()

    async def __aenter__(self) -> Recorder:
        await self._client.__aenter__()
        for topic in self._topics:
            await self._client.subscribe(topic, qos=1)  # returns after the SUBACK
        self._task = asyncio.create_task(self._read(), name="test.recorder")
        return self

    async def _read(self) -> None:
        try:
            async for message in self._client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                self.got.append((message.topic.value, payload))
        except aiomqtt.MqttError:
            pass
        finally:
            self.disconnected.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)


class TcpGate:
    """A TCP relay to ``target_port`` on loopback that a test can shut and open again.

    ``shut()`` stops listening (new connections are refused) but keeps relaying
    the connections already made; a connection ends on both sides as soon as
    either side closes it, so a broker that dies takes the relayed client's
    connection with it. ``open()`` listens again on the same port.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def shut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def aclose(self) -> None:
        await self.shut()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                await _close(up_writer)
        finally:
            await _close(writer)
            self._relays.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then close ``writer`` (so the other side sees the end)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def db_rows(path: Path, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows of ``sql`` from the store at ``path`` (a daemon may be writing it: WAL).

    A read-write connection, though it only reads: after a SIGKILL, SQLite may have to
    recover the WAL index, which a read-only connection cannot do.
    """
    db = sqlite3.connect(path, timeout=5.0)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql, params)]
    finally:
        db.close()
