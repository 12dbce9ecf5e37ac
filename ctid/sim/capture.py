"""Recorded AMI sessions: load a raw ``.ami`` capture into messages.

A capture is the byte stream one AMI client received from a real Asterisk:
the banner, the Login response, ``FullyBooted``, then events interleaved
with the responses to the client's own actions. ``load_capture`` parses it
with ctid's own ``AmiParser`` and sorts the messages into

* ``events``: what Asterisk sent on its own and would send to any client,
* ``list_items``: events that answer one of the recording client's actions,
* ``responses``: ``Response:`` messages to the recording client's actions.

The split follows the captures README (point 18): an answer to an action
carries the ``ActionID`` and never a ``Timestamp``; an unsolicited event always
carries ``Timestamp`` (``timestampevents = yes``) except ``FullyBooted``. Some
unsolicited events carry an ``ActionID`` too: ``OriginateResponse`` and a
``UserEvent`` raised by an action are broadcast to every session, so the
``Timestamp`` decides, not the ``ActionID`` alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ctid.core.ami import AmiMessage, AmiParser

__all__ = ["Capture", "is_reply_item", "load_capture", "parse_capture"]

# Events Asterisk sends to a session because it just logged in: they belong to
# the recording client's own login, not to the scenario.
_LOGIN_EVENTS = frozenset({"fullybooted", "successfulauth"})


def is_reply_item(msg: AmiMessage) -> bool:
    """Whether ``msg`` is an event answering an action (list item or ``…Complete``)."""
    return bool(msg.event) and bool(msg.action_id) and "Timestamp" not in msg


@dataclass(frozen=True, slots=True)
class Capture:
    """One parsed AMI capture.

    ``messages`` holds everything after the banner in wire order; the other
    sequences are views of it (same objects, same order).
    """

    name: str
    banner_version: str
    messages: tuple[AmiMessage, ...]
    events: tuple[AmiMessage, ...]
    list_items: tuple[AmiMessage, ...]
    responses: tuple[AmiMessage, ...]
    replay_events: tuple[AmiMessage, ...]
    """``events`` without the recording session's own login events.

    A simulator sends its own ``FullyBooted``/``SuccessfulAuth`` when a client
    logs in, so replaying the recorded ones would report a second login.
    """

    @property
    def first_timestamp(self) -> float | None:
        """``Timestamp`` of the first event that has one."""
        for msg in self.events:
            ts = msg.timestamp
            if ts is not None:
                return ts
        return None

    @property
    def duration(self) -> float:
        """Seconds between the first and the last timestamped event."""
        stamps = [ts for ts in (m.timestamp for m in self.events) if ts is not None]
        return max(stamps) - min(stamps) if stamps else 0.0

    def index_at(self, timestamp: float) -> int:
        """Index in ``replay_events`` of the first event stamped at or after ``timestamp``.

        ``len(replay_events)`` if none is; events without a ``Timestamp`` count
        as stamped like the one before them. For ``AmiSimulator.replay(start=,
        stop=)``, to cut a capture at a moment of its timeline.
        """
        last = float("-inf")
        for i, msg in enumerate(self.replay_events):
            ts = msg.timestamp
            last = last if ts is None else ts
            if last >= timestamp:
                return i
        return len(self.replay_events)

    def to_bytes(self) -> bytes:
        """The capture re-encoded; equal to the file's bytes for every capture recorded here."""
        head = f"Asterisk Call Manager/{self.banner_version}\r\n" if self.banner_version else ""
        return head.encode() + b"".join(m.to_bytes() for m in self.messages)


def parse_capture(data: bytes, name: str = "") -> Capture:
    """Parse the raw bytes of an AMI session (banner optional)."""
    parser = AmiParser(expect_banner=True)
    parsed = parser.feed(data)
    if parser.pending:
        # A capture cut off mid-message still yields what was complete; the
        # tail is ended as if the blank line had arrived.
        parsed += parser.feed(b"\r\n\r\n")
    banner = ""
    if parsed and parsed[0].is_banner:
        banner = parsed[0].banner_version
        parsed = parsed[1:]

    events: list[AmiMessage] = []
    items: list[AmiMessage] = []
    responses: list[AmiMessage] = []
    for msg in parsed:
        if msg.response and not msg.event:
            responses.append(msg)
        elif is_reply_item(msg):
            items.append(msg)
        elif msg.event:
            events.append(msg)

    return Capture(
        name=name,
        banner_version=banner,
        messages=tuple(parsed),
        events=tuple(events),
        list_items=tuple(items),
        responses=tuple(responses),
        replay_events=tuple(_without_login_events(parsed)),
    )


def load_capture(path: str | os.PathLike[str]) -> Capture:
    """Read and parse a raw ``.ami`` capture file."""
    p = Path(path)
    return parse_capture(p.read_bytes(), name=p.stem)


def _without_login_events(messages: list[AmiMessage]) -> list[AmiMessage]:
    """The unsolicited events, minus those caused by the recording client's Login.

    Those are the ``FullyBooted`` and the AMI ``SuccessfulAuth`` that follow the
    Login response directly; a later ``SuccessfulAuth`` (a SIP peer, another
    AMI client) is scenario traffic and stays.
    """
    out: list[AmiMessage] = []
    after_login = False
    for msg in messages:
        if msg.response:
            after_login = msg.get("Message") == "Authentication accepted"
            continue
        if is_reply_item(msg) or not msg.event:
            after_login = False
            continue
        if (
            after_login
            and msg.event.lower() in _LOGIN_EVENTS
            and (msg.event.lower() == "fullybooted" or msg.get("Service") == "AMI")
        ):
            continue
        after_login = False
        out.append(msg)
    return out
