"""AMI wire format: incremental parsing of Asterisk's byte stream, and action framing.

Everything that affects how bytes become messages lives in this module:

* Asterisk sends UTF-8 (caller names like ``Jürgen Müller`` arrive as raw UTF-8
  bytes), and TCP may split a multi-byte character across reads, so decoding is
  incremental. (panoramisk decodes each chunk with ``errors='ignore'`` and loses
  such characters: DESIGN.md, defect 4.)
* A header may be empty (``Challenge: `` in ``ChallengeSent``); it is kept.
  (panoramisk strips the message and drops a trailing empty header.)
* Headers may repeat: a ``UserEvent`` carries the channel's ``Uniqueid`` and then
  the user's own (captures README, point 4). Messages keep every header in order;
  ``get`` returns the first, ``get_all`` all of them.
* The banner ``Asterisk Call Manager/11.0.0`` is one line with no blank line
  after it; the Login response follows directly (captures README, point 1).
* Lines end with CRLF; a bare LF is accepted too.

``format_action`` is the only way ctid turns an action into bytes, and it
refuses CR and LF anywhere, so nothing that reaches AMI can inject headers.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BANNER_PREFIX = "Asterisk Call Manager/"


@dataclass(frozen=True, slots=True)
class AmiMessage:
    """One AMI message (event, response or list item) with its headers in wire order."""

    headers: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        low = name.lower()
        for key, value in self.headers:
            if key.lower() == low:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` in wire order (a UserEvent may repeat one)."""
        low = name.lower()
        return [value for key, value in self.headers if key.lower() == low]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        low = name.lower()
        return any(key.lower() == low for key, _ in self.headers)

    @property
    def event(self) -> str:
        """The ``Event`` name, or ``""`` for responses."""
        return self.get("Event")

    @property
    def response(self) -> str:
        """The ``Response`` value (``Success``, ``Error``, ``Follows``, ``Goodbye``) or ``""``."""
        return self.get("Response")

    @property
    def action_id(self) -> str:
        return self.get("ActionID")

    @property
    def is_banner(self) -> bool:
        return len(self.headers) == 1 and self.headers[0][0] == "__banner__"

    @property
    def banner_version(self) -> str:
        return self.headers[0][1] if self.is_banner else ""

    @property
    def timestamp(self) -> float | None:
        """The ``Timestamp`` header (``timestampevents = yes``) as epoch seconds, if present."""
        raw = self.get("Timestamp")
        if not raw:
            return None
        try:
            return float(raw)
        except ValueError:
            return None

    def as_dict(self) -> dict[str, str]:
        """Headers as a dict keeping the *first* value of a repeated key."""
        out: dict[str, str] = {}
        for key, value in self.headers:
            out.setdefault(key, value)
        return out

    def to_bytes(self) -> bytes:
        """Re-encode the message as it would appear on the wire."""
        if self.is_banner:
            return f"{BANNER_PREFIX}{self.banner_version}\r\n".encode()
        lines = [f"{k}: {v}" if k else v for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    @classmethod
    def build(cls, items: Iterable[tuple[str, str]] | Mapping[str, str]) -> AmiMessage:
        """Make a message from ``(key, value)`` pairs or a mapping."""
        pairs = items.items() if isinstance(items, Mapping) else items
        return cls(tuple((str(k), str(v)) for k, v in pairs))


class AmiParser:
    """Bytes in, messages out. Feed any chunking (down to one byte); nothing is lost.

    ``expect_banner`` is true for a client (Asterisk greets first) and false for
    a server reading actions from a client.
    """

    __slots__ = ("_decoder", "_expect_banner", "_headers", "_partial")

    def __init__(self, *, expect_banner: bool = True) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._headers: list[tuple[str, str]] = []
        self._expect_banner = expect_banner

    def feed(self, data: bytes) -> list[AmiMessage]:
        """Consume ``data`` and return the messages it completed."""
        text = self._partial + self._decoder.decode(data)
        lines = text.split("\n")
        self._partial = lines.pop()
        out: list[AmiMessage] = []
        headers = self._headers
        for raw in lines:
            line = raw[:-1] if raw.endswith("\r") else raw
            if self._expect_banner:
                self._expect_banner = False
                if line.startswith(BANNER_PREFIX):
                    out.append(AmiMessage((("__banner__", line[len(BANNER_PREFIX) :]),)))
                    continue
            if not line:
                if headers:
                    out.append(AmiMessage(tuple(headers)))
                    headers = []
                continue
            key, sep, value = line.partition(":")
            if sep:
                # "Key: value" - the single space after the colon is syntax, the rest is data.
                out_value = value[1:] if value.startswith(" ") else value
                headers.append((key, out_value))
            else:
                # A line without a colon (old-style command output): keep it, keyless.
                headers.append(("", line))
        self._headers = headers
        return out

    @property
    def pending(self) -> bool:
        """Whether a message has started but not ended (useful at EOF)."""
        return bool(self._headers or self._partial)


_FORBIDDEN = re.compile(r"[\r\n\x00]")
# fullmatch, not match with "$": "$" also matches before a trailing newline.
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


class UnsafeActionError(ValueError):
    """An action field would corrupt the AMI stream (CR, LF or NUL, or a bad key)."""


def format_action(action: str, fields: Sequence[tuple[str, str]] | Mapping[str, str]) -> bytes:
    """Frame ``Action: action`` with ``fields`` as AMI bytes, refusing any CR/LF/NUL.

    This is the last line of defence: callers validate fields against their own
    allow-lists first; this guarantees no header or action can be injected.
    """
    pairs = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    check_action_name(action)
    lines = [f"Action: {action}"]
    for key, value in pairs:
        check_field(key, value)
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def check_action_name(action: str) -> None:
    """Raise ``UnsafeActionError`` unless ``action`` looks like an AMI action name."""
    if not _KEY.fullmatch(action):
        raise UnsafeActionError(f"invalid AMI action name {action!r}")


def check_field(key: str, value: str) -> None:
    """Raise ``UnsafeActionError`` unless ``key: value`` is one safe AMI header line."""
    if not _KEY.fullmatch(key):
        raise UnsafeActionError(f"invalid AMI header name {key!r}")
    if not isinstance(value, str):
        raise UnsafeActionError(f"{key}: value must be a string")
    if _FORBIDDEN.search(value):
        raise UnsafeActionError(f"{key}: CR, LF and NUL are not allowed")
