"""Agents: presence and phone activity. Every rule about an agent's state lives here.

An agent's state is two independent things, as the seeds describe it (CIC
"workmodes", Webex "agent state"):

**Presence** - what the agent chose, as Asterisk's queues record it:

| queue memberships of the agent's device(s)       | presence                 |
|--------------------------------------------------|--------------------------|
| none                                             | ``logged_out``           |
| member, not paused anywhere                      | ``ready``                |
| paused in some queue, reason ``wrap-up``         | ``wrap_up``              |
| paused in some queue, any other reason           | ``not_ready`` + reason   |

A pause in one queue counts as a pause (the captures' ground truth does so);
the per-queue detail is published beside it. Presence follows the PBX, so a
pause made on the phone or by another tool shows too. ctid's own automatic
wrap-up is a pause with reason ``wrap-up`` (``WRAPUP_REASON``).

**Phone** - what the agent's device is doing, derived from its channels:

| agent channel                                     | phone      |
|---------------------------------------------------|------------|
| up, held (Hold event, or MOH on its customer)     | ``held``   |
| up, calling out, far end not answered yet         | ``dialing``|
| up, otherwise                                     | ``talking``|
| ring / ringing                                    | ``ringing``|
| none, or down                                     | ``idle``   |

With several channels (two calls, a consultation), the first of
``PHONE_PRECEDENCE`` present wins: a talking agent with a second call
ringing is ``talking`` (the open-interaction count shows the second).

**Link** - the PBX link as every agent's state shows it (the CIC seed's
"Server Down / Attempt Reconnect").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum


class Presence(StrEnum):
    LOGGED_OUT = "logged_out"
    READY = "ready"
    NOT_READY = "not_ready"
    WRAP_UP = "wrap_up"


class Phone(StrEnum):
    IDLE = "idle"
    RINGING = "ringing"
    DIALING = "dialing"
    TALKING = "talking"
    HELD = "held"


class Link(StrEnum):
    UP = "up"
    DOWN = "down"
    RECONNECTING = "reconnecting"


WRAPUP_REASON = "wrap-up"
# Pause reasons that mean wrap-up: ours, and the spelling another tool used in
# the agent_pause_unpause capture ("Wrapup").
WRAPUP_REASONS = frozenset({"wrap-up", "wrapup"})

PHONE_PRECEDENCE = (Phone.TALKING, Phone.HELD, Phone.DIALING, Phone.RINGING)


def presence_of(queues: Mapping[str, tuple[bool, str]]) -> tuple[Presence, str]:
    """An agent's presence and reason from its queue memberships (queue → (paused, reason))."""
    if not queues:
        return Presence.LOGGED_OUT, ""
    paused = [reason for paused, reason in queues.values() if paused]
    if paused:
        reason = paused[-1]
        if reason.lower() in WRAPUP_REASONS:
            return Presence.WRAP_UP, reason
        return Presence.NOT_READY, reason
    return Presence.READY, ""


def channel_phone(*, state: str, held: bool, calling_out: bool) -> Phone:
    """What one agent channel in ``state`` says about the phone (the table above)."""
    if state == "up":
        if held:
            return Phone.HELD
        if calling_out:
            return Phone.DIALING
        return Phone.TALKING
    if state in ("ring", "ringing"):
        return Phone.RINGING
    return Phone.IDLE


def phone_of(channels: Iterable[Phone]) -> Phone:
    """The phone state of an agent from what each of its channels says."""
    present = set(channels)
    return next((p for p in PHONE_PRECEDENCE if p in present), Phone.IDLE)
