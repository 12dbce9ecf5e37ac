"""A bare AMI client on asyncio streams, for tests that check the wire itself.

It uses ctid's own parser and ``format_action`` and nothing else, so a test of
the simulator (or of anything speaking AMI) sees exactly the bytes that were
sent, with no library in between.
"""

# Every read here is bounded so that a broken server fails a test instead of
# hanging it; a plain ``timeout`` argument on each call keeps tests short.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from ctid.core.ami import AmiMessage, AmiParser, format_action

__all__ = ["RawAmiClient"]

Fields = Sequence[tuple[str, str]] | Mapping[str, str]


class RawAmiClient:
    """One AMI connection: send actions, read messages one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = AmiParser(expect_banner=True)
        self._inbox: deque[AmiMessage] = deque()
        self._ids = itertools.count(1)
        self.eof = False
        self.reads = 0
        """How many reads returned data (to see that bytes arrived in pieces)."""
        self.banner = ""

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = 5.0) -> RawAmiClient:
        """Connect and read the banner."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        first = await client.next(timeout)
        if not first.is_banner:
            raise AssertionError(f"expected the AMI banner, got {first.headers}")
        client.banner = first.banner_version
        return client

    async def __aenter__(self) -> RawAmiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (no Logoff)."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    # ----------------------------------------------------------------- writing

    def next_action_id(self) -> str:
        """A fresh ``ActionID`` (``t-1``, ``t-2``, …)."""
        return f"t-{next(self._ids)}"

    async def send(self, action: str, fields: Fields = ()) -> None:
        """Send one action exactly as given (add ``ActionID`` yourself if wanted)."""
        self._writer.write(format_action(action, fields))
        await self._writer.drain()

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self._writer.write(data)
        await self._writer.drain()

    async def request(self, action: str, fields: Fields = (), timeout: float = 5.0) -> AmiMessage:
        """Send ``action`` with a new ``ActionID`` and return its ``Response``.

        Messages that arrive before it stay queued for ``next``.
        """
        aid = self.next_action_id()
        pairs = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
        await self.send(action, [("ActionID", aid), *pairs])
        return await self.wait_for(lambda m: bool(m.response) and m.action_id == aid, timeout)

    async def login(
        self, username: str, secret: str, *, md5: bool = False, events: str | None = None
    ) -> AmiMessage:
        """Log in (plain or with the MD5 challenge) and return the Login response."""
        extra = [] if events is None else [("Events", events)]
        if not md5:
            return await self.request("Login", [("Username", username), ("Secret", secret), *extra])
        challenge = await self.request("Challenge", [("AuthType", "MD5")])
        key = hashlib.md5(  # the AMI challenge protocol is defined with MD5
            (challenge.get("Challenge") + secret).encode(), usedforsecurity=False
        ).hexdigest()
        return await self.request(
            "Login", [("AuthType", "MD5"), ("Username", username), ("Key", key), *extra]
        )

    # ----------------------------------------------------------------- reading

    async def _read_more(self) -> None:
        data = await self._reader.read(65536)
        if not data:
            self.eof = True
            return
        self.reads += 1
        self._inbox.extend(self._parser.feed(data))

    async def next(self, timeout: float = 5.0) -> AmiMessage:
        """The next message; ``EOFError`` if the server closed, ``TimeoutError`` if none came."""
        async with asyncio.timeout(timeout):
            while not self._inbox:
                if self.eof:
                    raise EOFError("the AMI server closed the connection")
                try:
                    await self._read_more()
                except ConnectionError:
                    self.eof = True
        return self._inbox.popleft()

    async def wait_for(
        self, predicate: Callable[[AmiMessage], bool], timeout: float = 5.0
    ) -> AmiMessage:
        """The first queued or arriving message matching ``predicate``; others stay queued."""
        skipped: list[AmiMessage] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    msg = await self.next(timeout)
                    if predicate(msg):
                        return msg
                    skipped.append(msg)
        finally:
            self._inbox.extendleft(reversed(skipped))

    async def collect(self, count: int, timeout: float = 5.0) -> list[AmiMessage]:
        """The next ``count`` messages."""
        async with asyncio.timeout(timeout):
            return [await self.next(timeout) for _ in range(count)]

    async def quiet(self, seconds: float = 0.2) -> list[AmiMessage]:
        """Everything that arrives within ``seconds`` (to check that nothing does)."""
        out: list[AmiMessage] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                out.append(await self.next(left))
            except (TimeoutError, EOFError):
                break
        return out

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Read until EOF; true if the server closed the connection within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not self.eof:
                    try:
                        await self._read_more()
                    except ConnectionError:
                        self.eof = True
        except TimeoutError:
            return False
        return True
