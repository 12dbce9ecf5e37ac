"""Effects: what the pure core asks the shell to do, as data.

The core never publishes, stores or sends anything itself. It returns these,
and the composition root hands each to the adapter that owns the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctid.core.records import ActivityRecord, AgentStateInterval, CallbackRecord, CallRecord


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` on ``{prefix}/{topic}`` (``topic`` starts with ``v1/``)."""

    topic: str
    payload: dict[str, Any]
    retain: bool = False
    qos: int = 0


@dataclass(frozen=True, slots=True)
class EmitActivity:
    """Store an activity and its messages (outbox), then publish them: store before publish."""

    record: ActivityRecord
    messages: tuple[Publish, ...]
    # Closed by ctid, not by Asterisk's events (a resync found it gone): a guess that
    # must never replace a stored row. Later saves of it (notes, wrap-up) are updates.
    unseen_close: bool = False


@dataclass(frozen=True, slots=True)
class EmitCall:
    """Store a finished call's statistics row, then publish its CRM message through the outbox."""

    record: CallRecord
    messages: tuple[Publish, ...]
    unseen_close: bool = False  # as EmitActivity's


@dataclass(frozen=True, slots=True)
class EmitCallback:
    """Store a callback request, then publish the inbox it lands in (retained)."""

    record: CallbackRecord


@dataclass(frozen=True, slots=True)
class RecordInterval:
    """Store a closed agent state interval (presence, reason and phone)."""

    interval: AgentStateInterval


@dataclass(frozen=True, slots=True)
class SavePresence:
    """Persist an agent's current presence and reason (re-applied after a PBX restart)."""

    agent: str
    presence: str
    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class Lookup:
    """Look the caller up in the directory; answer with ``Model.lookup_done`` (deadline below)."""

    call_id: str
    by: str  # "number" (E.164 or extension), "email" or "id" (an IVR-provided account)
    value: str
    deadline_s: float  # after this, ``Model.lookup_deadline`` marks the pops ``timeout``


@dataclass(frozen=True, slots=True)
class SendAction:
    """Send an AMI action; fields are validated again when framed."""

    action: str
    fields: tuple[tuple[str, str], ...]


Effect = (
    Publish
    | EmitActivity
    | EmitCall
    | EmitCallback
    | RecordInterval
    | SavePresence
    | SendAction
    | Lookup
)
