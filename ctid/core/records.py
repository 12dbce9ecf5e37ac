"""Rows ctid keeps: the finished facts the core hands to the store and the bus.

These are plain frozen dataclasses so that the core can build them without
knowing SQLite, and the store can persist them without knowing AMI. Times are
epoch seconds (float, from the events' ``Timestamp``); durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

# The kinds of rows ``ctid sync export`` gives, each with the shared ``seq``.
ExportKind = Literal["activities", "calls", "agent-states", "queue-intervals"]
EXPORT_KINDS: Final[tuple[ExportKind, ...]] = get_args(ExportKind)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One interaction as a whole (all legs of one Asterisk ``Linkedid``)."""

    interaction_id: str
    media: str  # "call" | "chat" | "email" | "callback" | "campaign"
    direction: str  # "inbound" | "outbound" | "internal"
    customer_number: str  # as the network gave it ("" when there was no ANI)
    customer_e164: str  # normalised, "" when unknown
    queue: str  # the first queue the customer waited in, "" if none
    started_at: float
    ended_at: float
    answered_at: float | None = None
    wait_s: float = 0.0  # queue wait until answer or abandon
    talk_s: float = 0.0
    hold_s: float = 0.0
    outcome: str = (
        "answered"  # "answered" | "abandoned" | "missed" | "failed" | "busy" | "no_answer"
    )
    agents: tuple[str, ...] = ()  # every agent who took part, in order
    transfers: int = 0
    ended_while_disconnected: bool = False


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    """One agent's part in one interaction (the Webex seed's conversation activity)."""

    id: str  # stable: "{interaction_id}/{agent}/{agent leg Uniqueid}": replays, resyncs and
    # restarts give the same part the same id, and two parts never share one
    agent: str
    interaction_id: str
    media: str
    direction: str
    customer_number: str
    customer_e164: str
    queue: str
    offered_at: float
    ended_at: float
    answered_at: float | None = None
    ring_s: float = 0.0
    talk_s: float = 0.0
    hold_s: float = 0.0
    wrapup_s: float = 0.0
    outcome: str = "answered"  # "answered" | "missed" | "transferred" | "consulted" | "failed" …
    notes: str = ""
    wrapup_code: str = ""
    transfer_to: str = ""
    customer_record: str = ""  # the matched directory record id, if any
    ended_while_disconnected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentStateInterval:
    """A closed interval of one agent's state: presence, reason and phone unchanged throughout.

    A new interval starts whenever any of the three changes, and one agent's
    intervals never overlap, so sums over them give time ready and idle, not
    ready by reason, ringing, talking (phone ``talking`` or ``held``), wrap-up.
    """

    agent: str
    presence: str  # "logged_out" | "ready" | "not_ready" | "wrap_up"
    reason: str
    started_at: float
    ended_at: float
    # "idle" | "ringing" | "dialing" | "talking" | "held"; "" = not recorded (older rows)
    phone: str = ""


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    """A customer's request to be called back (the SAP seed 002), from the IVR or the web."""

    id: str  # stable: "ivr-{Uniqueid}" for an IVR request, so a replay cannot duplicate it
    number: str  # as given ("unknown" when the caller withheld it)
    e164: str  # normalised, "" when there is no usable number
    reason: str
    queue: str
    requested_at: float
    preferred_time: str = ""  # as given (ISO 8601 from the IVR)
    partner: str = ""  # the customer's CRM record, when the request names one
    source: str = "ivr"  # "ivr" | "web"
    status: str = "open"  # "open" | "assigned" | "done" | "returned"
    agent: str = ""  # the agent whose inbox holds it ("" = the general inbox)
    interaction_id: str = ""  # the call that asked for it
