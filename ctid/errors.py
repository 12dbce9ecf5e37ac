"""ctid's exception tree.

Every adapter maps its library's exceptions to one of these at the boundary
(``raise AmiError(...) from exc``), so the rest of ctid never catches a
panoramisk, aiomqtt or sqlite3 exception. ``CtidError`` subclasses are
expected failures of the outside world; anything else escaping is a bug.
"""

from __future__ import annotations


class CtidError(Exception):
    """Root of every error ctid raises on purpose."""


class ConfigError(CtidError):
    """The configuration is invalid; the message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class AmiError(CtidError):
    """Anything that went wrong talking to Asterisk."""


class AmiProtocolError(AmiError):
    """The peer sent bytes that are not AMI."""


class AmiConnectError(AmiError):
    """The TCP connection could not be made or was lost."""


class AmiLoginError(AmiError):
    """Asterisk refused our credentials; retrying at once will not help."""


class AmiNotConnectedError(AmiError):
    """An action was sent while the link is down (PBX link down)."""


class AmiActionTimeoutError(AmiError):
    """An action got no (complete) response in time."""


class AmiActionFailedError(AmiError):
    """Asterisk answered an action with ``Response: Error``."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(f"{action}: {message}")
        self.action = action
        self.message = message


class BusError(CtidError):
    """The MQTT broker could not be reached or refused us."""


class StoreError(CtidError):
    """SQLite failed (disk full, corrupt file, locked beyond the timeout)."""


class ImportFileError(CtidError):
    """A file to import is unreadable as a whole (rows with errors are reported, not raised)."""
