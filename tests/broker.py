"""A real Mosquitto for tests, running ctid's generated configuration.

``running_mosquitto(config)`` picks free ports, writes the broker files with
``ctid.broker_config.write_broker_config``, starts ``mosquitto -c …``, waits
until it accepts an authenticated MQTT connection and yields a
``MosquittoBroker``; on exit it stops the broker and removes what it made.
``MosquittoBroker.stop()`` / ``start()`` simulate an outage on the same ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import shutil
import socket
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Literal

import aiomqtt

from ctid.broker_config import BrokerFiles, mosquitto_cannot_reach, write_broker_config
from ctid.config import AgentConfig, Config, StoreConfig

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def make_config(tmp_path: Path) -> Config:
    """A Config with agents alice (PJSIP/1001) and bob (PJSIP/1002), files under ``tmp_path``."""
    return Config(
        store=StoreConfig(path=tmp_path / "ctid.sqlite3"),
        agents=(
            AgentConfig(
                id="alice", name="Alice Example", devices=("PJSIP/1001",), extension="1001"
            ),
            AgentConfig(id="bob", name="Bob Example", devices=("PJSIP/1002",), extension="1002"),
        ),
    )


class BrokerStartError(RuntimeError):
    """Mosquitto did not start or did not accept ctid's login in time."""


def mosquitto_binary() -> str:
    """Path of the mosquitto executable (it lives in /usr/sbin, often not on PATH)."""
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def mqtt_connack(
    host: str, port: int, username: str | None, password: str | None, *, within_s: float = 2.0
) -> int:
    """Send one MQTT 3.1.1 CONNECT and return the CONNACK return code (0 = accepted).

    Raises OSError if the port does not accept the TCP connection, TimeoutError if
    no CONNACK comes. Written out by hand so that the readiness probe does not
    depend on the client library under test.
    """

    def utf8(s: str) -> bytes:
        b = s.encode("utf-8")
        return struct.pack("!H", len(b)) + b

    flags = 0x02  # clean session
    payload = utf8(f"probe-{uuid.uuid4().hex[:12]}")
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += utf8(password)
    body = utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 10) + payload
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    async with asyncio.timeout(within_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(bytes([0x10]) + bytes(encoded) + body)
            await writer.drain()
            connack = await reader.readexactly(4)
            if connack[0] != 0x20:
                raise OSError(f"expected CONNACK, got packet type {connack[0]:#x}")
            if connack[3] == 0:
                writer.write(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean exit
                await writer.drain()
            return connack[3]
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@dataclasses.dataclass(eq=False)
class MosquittoBroker:
    """A Mosquitto process running ctid's generated configuration.

    ``config`` is the caller's Config with the broker's real ports and ctid's
    password filled in, ready to hand to ctid.
    """

    host: str
    port: int
    ws_port: int
    files: BrokerFiles
    config: Config
    log_path: Path
    _process: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = None

    @property
    def credentials(self) -> Mapping[str, str]:
        """``{user: password}`` for every broker user (ctid, crm, each agent)."""
        return self.files.credentials

    @property
    def running(self) -> bool:
        """True while the Mosquitto process is alive."""
        return self._process is not None and self._process.returncode is None

    def log(self) -> str:
        """Everything Mosquitto has written to stdout/stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def client(
        self,
        user: str | None,
        *,
        password: str | None = None,
        identifier: str | None = None,
        transport: Literal["tcp", "websockets"] = "tcp",
        timeout: float = 5.0,
    ) -> aiomqtt.Client:
        """An aiomqtt client (not yet connected) logging in as ``user`` with its password.

        ``user=None`` connects anonymously; ``password`` overrides the user's own.
        """
        if password is None and user is not None:
            password = self.credentials[user]
        return aiomqtt.Client(
            self.host,
            self.ws_port if transport == "websockets" else self.port,
            username=user,
            password=password,
            identifier=identifier or f"{user or 'anon'}-{uuid.uuid4().hex[:8]}",
            transport=transport,
            timeout=timeout,
        )

    async def start(self, *, ready_within_s: float = START_TIMEOUT_S) -> None:
        """Start Mosquitto on this broker's ports; return once ctid can log in."""
        if self.running:
            raise RuntimeError("Mosquitto is already running")
        self._log = self.log_path.open("ab")  # append: a restart keeps the earlier log
        self._process = await asyncio.create_subprocess_exec(
            mosquitto_binary(),
            "-c",
            str(self.files.conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await self._wait_ready(ready_within_s)
        except BaseException:
            await self.stop(kill=True)
            raise

    async def stop(self, *, kill: bool = False) -> None:
        """Stop Mosquitto: SIGTERM (SIGKILL after a grace period), or SIGKILL at once if ``kill``.

        ``kill=True`` simulates a crash: clients see the TCP connection drop
        without a broker DISCONNECT. Safe to call when already stopped.
        """
        process, self._process = self._process, None
        try:
            if process is not None and process.returncode is None:
                # It may have exited since the check: nothing left to signal then.
                with contextlib.suppress(ProcessLookupError):
                    if kill:
                        process.kill()
                    else:
                        process.terminate()
                try:
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    async def _wait_ready(self, within_s: float) -> None:
        """Probe with ctid's login until Mosquitto accepts it; fail at once if it exits."""
        assert self._process is not None
        user = self.files.ctid_user
        password = self.files.password(user)
        last = "no attempt yet"
        # Race every probe against the process's exit: a probe can hang until its
        # own timeout on a port that accepts TCP but is not (or no longer) Mosquitto's.
        exited = asyncio.ensure_future(self._process.wait())
        probe: asyncio.Future[int] | None = None
        try:
            async with asyncio.timeout(within_s):
                while True:
                    probe = asyncio.ensure_future(
                        mqtt_connack(self.host, self.port, user, password)
                    )
                    await asyncio.wait({probe, exited}, return_when=asyncio.FIRST_COMPLETED)
                    if exited.done():
                        raise BrokerStartError(
                            f"mosquitto exited with status {exited.result()} before "
                            f"accepting connections; its output:\n{self.log()}"
                        )
                    try:
                        code = probe.result()
                    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                        last = f"{type(exc).__name__}: {exc}"
                    else:
                        if code == 0:
                            return
                        # The broker is up but refuses ctid: waiting will not help.
                        raise BrokerStartError(
                            f"mosquitto refused {user!r}: CONNACK {code} "
                            f"({_CONNACK_CODES.get(code, '?')}); its output:\n{self.log()}"
                        )
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise BrokerStartError(
                f"mosquitto did not accept a login on {self.host}:{self.port} within "
                f"{within_s} s (last attempt: {last}); its output:\n{self.log()}"
            ) from None
        finally:
            for pending in (probe, exited):
                if pending is not None and not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending


def _interface_of(host: str) -> str | None:
    """The interface to bind the websockets listener to: ``lo`` for loopback, else all.

    Mosquitto 2.0.11 binds websockets by interface name and ignores an IP address
    (eclipse-mosquitto/mosquitto#3045); a test broker on 127.0.0.1 must not be
    reachable from the network through its websockets port.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return "lo" if loopback and "lo" in {name for _, name in socket.if_nameindex()} else None


def _make_config_dir() -> Path:
    """A fresh directory the mosquitto user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ctid-mosquitto-"))
    # x only: Mosquitto must reach the files by name, nobody needs to list them.
    os.chmod(path, 0o711)
    return path


@contextlib.asynccontextmanager
async def running_mosquitto(
    config: Config,
    config_dir: Path | None = None,
    *,
    websockets: bool = True,
    ready_within_s: float = START_TIMEOUT_S,
) -> AsyncIterator[MosquittoBroker]:
    """Run Mosquitto with the configuration ctid generates for ``config``.

    Ports are chosen free on ``config.mqtt.host`` (the ports in ``config`` are
    ignored); the websockets listener binds to loopback too if the host is.
    ``websockets=False`` leaves that listener out (``ws_port`` 0): Mosquitto 2.0
    then starts in ~10 ms instead of 30-900 ms, as its libwebsockets set-up and
    polling are slow. The broker files go to ``config_dir`` (it must be reachable
    by the mosquitto user when we are root), or to a temporary directory removed
    afterwards.
    """
    own_dir = config_dir is None
    directory = _make_config_dir() if config_dir is None else config_dir
    try:
        blocked = mosquitto_cannot_reach(directory / "passwd")
        if blocked is not None:
            raise BrokerStartError(
                f"Mosquitto runs as the mosquitto user and cannot traverse {blocked}; "
                "pass no config_dir (a temporary directory is made) or one under a "
                "world-traversable directory"
            )
        host = config.mqtt.host
        broker: MosquittoBroker | None = None
        # A port picked free can be taken before Mosquitto binds it: retry with new ones.
        for attempt in range(3):
            port = free_port(host)
            ws_port = free_port(host) if websockets else 0
            while ws_port == port:
                ws_port = free_port(host)
            wanted = dataclasses.replace(
                config, mqtt=dataclasses.replace(config.mqtt, port=port, websockets_port=ws_port)
            )
            files = write_broker_config(
                wanted,
                directory,
                reuse=directory / "credentials.json",
                websockets_bind=_interface_of(host),
            )
            broker = MosquittoBroker(
                host=host,
                port=port,
                ws_port=ws_port,
                files=files,
                config=dataclasses.replace(
                    wanted,
                    mqtt=dataclasses.replace(
                        wanted.mqtt, password=files.password(files.ctid_user), password_file=None
                    ),
                ),
                log_path=directory / "mosquitto.log",
            )
            try:
                await broker.start(ready_within_s=ready_within_s)
            except BrokerStartError as exc:
                if attempt < 2 and "Address already in use" in str(exc):
                    continue
                raise
            break
        assert broker is not None
        try:
            yield broker
        finally:
            # SIGKILL: the test broker has nothing to save (no persistence), and
            # after SIGTERM Mosquitto can sit out up to a second in its event loop.
            await broker.stop(kill=True)
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
