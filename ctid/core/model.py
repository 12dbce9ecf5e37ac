"""The call and agent model: AMI events in, state and effects out. No I/O.

``Model.apply(msg, now)`` applies one AMI event and returns the effects it
caused (publish a pop, store an activity, …). Entities (channels, calls, agent
parts, agents) are frozen dataclasses replaced on change; the model owns the
maps that hold them. Asterisk is the source of truth: an event the model does
not expect (a Hangup for a channel it never saw, a duplicate DialEnd) is
absorbed, never raised.

How Asterisk shows a call (captures README, and the captures themselves):

* Every channel of one call carries the same ``Linkedid`` (the first channel's
  ``Uniqueid``), including agent legs, Local legs of a consult, the new leg after
  a transfer and the PSTN leg of a click-to-dial (README point 8). An interaction
  is therefore keyed by ``Linkedid``.
* An agent's *part* in an interaction is the life of its device's channels in
  that call: offered when its channel appears, alerting when it rings, accepted
  when it is answered, ended when its last channel hangs up.
* Which channels are agents' comes from the config (``agents[].devices``): the
  device of ``PJSIP/1001-0000001a`` is ``PJSIP/1001``, of ``IAX2/1001-12345`` is
  ``IAX2/1001`` (README point 7). ``Local/…`` channels are plumbing, never a party.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ctid.core import contract
from ctid.core.agents import (
    WRAPUP_REASON,
    Link,
    Phone,
    Presence,
    channel_phone,
    phone_of,
    presence_of,
)
from ctid.core.ami import AmiMessage
from ctid.core.effects import (
    Effect,
    EmitActivity,
    EmitCall,
    EmitCallback,
    Lookup,
    Publish,
    RecordInterval,
    SavePresence,
    SendAction,
)
from ctid.core.numbers import Number, NumberNormalizer
from ctid.core.records import ActivityRecord, AgentStateInterval, CallbackRecord, CallRecord

# ChannelState numbers from Asterisk's ast_channel_state (channelstate.h).
_STATE_NAMES = {
    "0": "down",
    "1": "reserved",
    "2": "offhook",
    "3": "dialing",
    "4": "ring",
    "5": "ringing",
    "6": "up",
    "7": "busy",
}

# Dial statuses that end an outbound attempt without an answer, mapped to call outcomes.
_DIAL_FAILURES = {
    "BUSY": "busy",
    "NOANSWER": "no_answer",
    "CONGESTION": "failed",
    "CHANUNAVAIL": "failed",
    "CANCEL": "missed",
}


# The call model's transitions, one line per AMI event: what it does to legs,
# interactions and agent parts. Agents' presence and phone rules: ctid/core/agents.py.
# An event not listed here changes nothing (Cdr, Newexten, RTCP…).
CALL_TRANSITIONS: dict[str, tuple[str, str]] = {
    "Newchannel": (
        "_on_newchannel",
        "a leg appears; the first opens the interaction (a customer's: inbound; an agent's: "
        "internal, outbound once a customer leg joins); an agent's leg opens its part",
    ),
    "Newstate": (
        "_on_newstate",
        "an agent leg ringing → part alerting (pop); up → accepted (pop); the customer "
        "leg of a click to dial up → the agent's talk starts",
    ),
    "NewCallerid": (
        "_on_newcallerid",
        "caller id of a leg changed (the customer's number and name follow)",
    ),
    "NewConnectedLine": ("_on_newcallerid", "as NewCallerid"),
    "DialBegin": (
        "_on_dial_begin",
        "a leg dials another; an agent dialling a customer shows the outbound pop",
    ),
    "DialEnd": (
        "_on_dial_end",
        "the fate of a dialled customer leg (first status kept; DialEnd repeats: README 15)",
    ),
    "Hangup": (
        "_on_hangup",
        "a leg ends; an agent's last leg → its part ends (or settles while the customer "
        "stays); the last leg → the interaction ends",
    ),
    "BridgeEnter": ("_on_bridge_enter", "a leg joins a bridge (talking needs a bridge partner)"),
    "BridgeLeave": ("_on_bridge_leave", "a leg leaves a bridge"),
    "Hold": ("_on_hold", "the agent's leg holds (handset or PBX feature: README 13)"),
    "Unhold": ("_on_unhold", "the agent's leg resumes"),
    "MusicOnHoldStart": (
        "_on_moh_start",
        "music for a bridged customer = a hold by its agent (IAX2 has no Hold: README 13)",
    ),
    "MusicOnHoldStop": ("_on_moh_stop", "end of that hold"),
    "QueueCallerJoin": (
        "_on_queue_join",
        "the customer waits in a queue (a re-join after a transfer restarts the wait: README 21)",
    ),
    "QueueCallerLeave": (
        "_on_queue_leave",
        "the customer stopped waiting (answered, abandoned or moved on)",
    ),
    "QueueCallerAbandon": ("_on_queue_abandon", "the customer gave up waiting"),
    "AgentCalled": ("_on_agent_called", "the queue rings an agent: the part's queue"),
    "AgentConnect": ("_on_agent_connect", "the queue connected an agent: the customer's wait ends"),
    "BlindTransfer": ("_on_blind_transfer", "the transferer's part is transferred (README 9)"),
    "AttendedTransfer": (
        "_on_attended_transfer",
        "a consultation completes: the consulted agent takes the customer, or a "
        "three-way conference starts (DestType: README 23)",
    ),
    "VarSet": (
        "_on_varset",
        "channel variables with the configured prefix are the IVR's attached data",
    ),
    "QueueMemberStatus": (
        "_on_member",
        "an agent's membership and pause in one queue (presence: agents.py)",
    ),
    "QueueMemberAdded": ("_on_member", "as QueueMemberStatus"),
    "QueueMemberPause": ("_on_member", "as QueueMemberStatus"),
    "QueueMemberRemoved": ("_on_member_removed", "the agent left a queue"),
    "FullyBooted": (
        "_on_fully_booted",
        "Asterisk's boot time: a later one means it restarted and forgot pause reasons",
    ),
    "OriginateResponse": (
        "_on_originate_response",
        "names the number of a click to dial whose agent leg never answered (README 14)",
    ),
    "UserEvent": (
        "_on_user_event",
        "CallbackRequest from the IVR → a callback in the general inbox",
    ),
}


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """What the model needs to know of a configured agent."""

    id: str
    devices: tuple[str, ...]
    limit: int = 6
    extension: str = ""


@dataclass(frozen=True, slots=True)
class ModelSettings:
    agents: tuple[AgentSpec, ...] = ()
    attached_prefix: str = "CTI_"
    pop_on: str = "alerting"
    # How long an agent's finished part waits for the customer's next step before
    # it is closed as "answered" (a Redirect-style transfer shows only as the
    # customer dialling the next agent after the first one hung up: README 12).
    settle_s: float = 2.0
    # Automatic wrap-up after a customer part (0 = off): the agent is paused with
    # reason WRAPUP_REASON until it says it is done or this many seconds pass.
    wrapup_s: float = 0.0
    # A call never seen to hang up (a lost Hangup) is closed after this age.
    max_call_age_s: float = 4 * 3600.0
    # Directory lookups: the pop goes out at once; the match follows, or the pop
    # says "timeout" after this deadline. Off: pops carry no directory match.
    lookup: bool = True
    lookup_deadline_s: float = 0.3
    match_cache_size: int = 10_000
    # How long a cached answer is trusted. The daemon also clears the cache when the
    # directory changes (``forget_matches``); this bounds a stale answer if it cannot tell.
    match_cache_ttl_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Channel:
    uniqueid: str
    linkedid: str
    name: str
    device: str
    agent: str | None
    state: str
    caller_num: str
    caller_name: str
    connected_num: str
    created_at: float
    bridge: str = ""
    held: bool = False
    dialer: bool = False  # this channel dialled another (the calling side of a Dial)
    local: bool = False


@dataclass(frozen=True, slots=True)
class Part:
    """One agent's part in one interaction."""

    agent: str
    call_id: str
    # The Uniqueid of the agent's channel that opened the part. Asterisk never
    # reuses it within a boot, and a resync after a ctid restart sees the same
    # one, so it makes the activity id stable (no in-memory counter that a
    # restart would reset and so overwrite a stored activity).
    leg: str
    why: str  # "inbound" | "transfer" | "consult" | "outbound" | "internal"
    offered_at: float
    channels: frozenset[str] = frozenset()
    queue: str = ""
    alerting_at: float | None = None
    answered_at: float | None = None  # when the agent began talking to the customer
    first_answered_at: float | None = None  # when the agent picked up (ends the ringing)
    hold_since: float | None = None
    hold_s: float = 0.0
    hold_source: str = ""  # "hold" (Hold/Unhold events) or "moh" (IAX2: MusicOnHold only)
    originator: bool = False
    transferred_to: str = ""
    consult_s: float = 0.0  # time spent in consultation before taking the customer over
    conference: bool = False
    left_at: float | None = None  # the agent's last channel hung up (the part may still settle)
    left_unseen: str = ""  # why ctid, not Asterisk, closed it ("disconnected", "expired")
    notes: str = ""  # the agent's notes (command ``notes``)
    customer_record: str = ""  # the directory record the agent chose (command ``select``)
    last_pop: Mapping[str, Any] | None = None

    @property
    def activity_id(self) -> str:
        """The id of this part's activity (stable: see ``leg``)."""
        return f"{self.call_id}/{self.agent}/{self.leg}"


@dataclass(frozen=True, slots=True)
class Call:
    id: str
    started_at: float
    direction: str  # "inbound" | "outbound" | "internal"
    customer_uid: str = ""
    customer_raw: str = ""
    customer_name: str = ""
    queue: str = ""
    queued_at: float | None = None
    wait_s: float | None = None
    abandoned: bool = False
    answered_at: float | None = None
    dial_status: str = ""
    customer_cause: str = ""  # Hangup Cause of the customer's leg
    offered: bool = False  # queued or rung at an agent: not just an IVR call
    attached: tuple[tuple[str, str], ...] = ()
    agents: tuple[str, ...] = ()
    transfers: int = 0
    transfer_events: frozenset[str] = frozenset()  # already applied (an event may repeat)
    channels: frozenset[str] = frozenset()
    talk_s: float = 0.0
    hold_s: float = 0.0
    match: Mapping[str, Any] | None = None  # the directory's answer for the customer
    lookup: str = ""  # "" (not asked) | "pending" | "done" | "timeout"
    # Why ctid, not Asterisk, hung up its last channel ("disconnected", "expired"): the
    # call itself may end later (a part settles on a tick), and its record says so too.
    closed_unseen: str = ""


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    devices: tuple[str, ...]
    limit: int
    presence: Presence = Presence.LOGGED_OUT
    reason: str = ""
    since: float = 0.0
    phone: Phone = Phone.IDLE
    # Start of the open state interval (presence, reason and phone unchanged since);
    # 0: the presence is not known yet (no queue information), nothing is recorded.
    interval_since: float = 0.0
    seq: int = 0
    queues: Mapping[str, tuple[bool, str]] = field(
        default_factory=dict
    )  # queue -> (paused, reason)
    parts: frozenset[str] = frozenset()  # open interaction ids
    published: tuple[Any, ...] = ()  # last published state key, to publish only on change
    wrapup_until: float | None = None
    wrapup_since: float = 0.0
    wrapup_part: tuple[str, str] | None = None  # the part whose end started the wrap-up
    wrapup_activity: ActivityRecord | None = None  # updated with wrapup_s when wrap-up ends
    # A wrap-up that ended while its part was still settling: (wrapup_s, code, notes).
    wrapup_result: tuple[float, str, str] | None = None


@dataclass(frozen=True, slots=True)
class ModelState:
    """The model's calls and agents at one moment, for a restarted daemon (``Model.restore``).

    Asterisk tells a new AMI session what is up now, never what ended before it
    connected: a call that ends while ctid is down is lost unless ctid remembers
    it was open, so that the resync can close it (``ended_while_disconnected``).
    """

    channels: dict[str, Channel]
    calls: dict[str, Call]
    parts: dict[tuple[str, str], Part]
    settling: dict[tuple[str, str], Part]
    agents: dict[str, Agent]
    waiting: dict[str, dict[str, float]]
    boot_time: float | None


class Model:
    """The whole model of calls and agents; ``apply`` is its only way in."""

    def __init__(self, settings: ModelSettings, numbers: NumberNormalizer) -> None:
        self.settings = settings
        self.numbers = numbers
        self.link = Link.UP
        self.channels: dict[str, Channel] = {}
        self.calls: dict[str, Call] = {}
        self.parts: dict[tuple[str, str], Part] = {}
        # Parts whose agent left while the customer stayed: closed when the customer's
        # next step shows whether it was a transfer (see ModelSettings.settle_s).
        self.settling: dict[tuple[str, str], Part] = {}
        self.agents: dict[str, Agent] = {
            spec.id: Agent(id=spec.id, devices=spec.devices, limit=spec.limit)
            for spec in settings.agents
        }
        # Directory answers by lookup key ("number:+4930…", "id:crm-17"), most recent
        # last; invalidated when the directory changes (import).
        self.match_cache: OrderedDict[str, tuple[Mapping[str, Any], float]] = OrderedDict()
        # Callers waiting per queue: queue -> {Linkedid: joined at}.
        self.waiting: dict[str, dict[str, float]] = {}
        self._queue_published: dict[str, tuple[Any, ...]] = {}
        self._device_agent = {dev: spec.id for spec in settings.agents for dev in spec.devices}
        self._extensions = {spec.id: spec.extension for spec in settings.agents}
        # Why records are being closed by ctid rather than by Asterisk's events:
        # "disconnected" (a resync found them gone) or "expired" (too old).
        self._close_reason = ""
        self.boot_time: float | None = None  # when Asterisk started (FullyBooted Uptime)
        self.pbx_restarted = False
        self._handlers = {
            event: getattr(self, handler) for event, (handler, _) in CALL_TRANSITIONS.items()
        }

    # ------------------------------------------------------------------ entry points

    def apply(self, msg: AmiMessage, now: float) -> list[Effect]:
        """Apply one AMI event at time ``now`` and return the effects it caused."""
        handler = self._handlers.get(msg.event)
        if handler is None:
            return []
        out: list[Effect] = []
        handler(msg, now, out)
        return out

    def set_link(self, link: Link, now: float) -> list[Effect]:
        """The PBX link changed: every logged-in agent's state shows it."""
        self.link = link
        out: list[Effect] = []
        for agent_id in self.agents:
            self._publish_state(agent_id, now, out)
        return out

    def initial_states(self, now: float) -> list[Effect]:
        """Retained state and snapshot of every configured agent (the daemon: whenever
        it connects to the broker; a replay: at the start).

        The snapshot too: a retained one from before a restart may list
        interactions that are gone, and a page that loads must not show them.
        """
        out: list[Effect] = []
        for agent_id in self.agents:
            self._publish_state(agent_id, now, out, force=True)
            self._publish_snapshot(agent_id, now, out)
        return out

    def handles(self, event: str) -> bool:
        """Whether ``apply`` does anything with this event (others change nothing)."""
        return event in self._handlers

    def pending_lookups(self) -> list[Effect]:
        """Ask the directory again for calls whose lookup was under way (after a restore:
        the answer, and the deadline timer, were lost with the previous run)."""
        out: list[Effect] = []
        for call in list(self.calls.values()):
            if call.lookup != "pending":
                continue
            parts = self._parts_of_call(call.id)
            key = self._lookup_key(call, parts[0]) if parts else None
            if key is None:
                self.calls[call.id] = replace(call, lookup="")
                continue
            out.append(Lookup(call.id, key[0], key[1], self.settings.lookup_deadline_s))
        return out

    def state(self) -> ModelState:
        """The calls and agents now (copies of the maps; their values are immutable)."""
        return ModelState(
            channels=dict(self.channels),
            calls=dict(self.calls),
            parts=dict(self.parts),
            settling=dict(self.settling),
            agents=dict(self.agents),
            waiting={queue: dict(callers) for queue, callers in self.waiting.items()},
            boot_time=self.boot_time,
        )

    def restore(
        self,
        state: ModelState,
        *,
        stored_calls: frozenset[str] = frozenset(),
        stored_activities: frozenset[str] = frozenset(),
    ) -> None:
        """Take up the calls and agents a previous run left (at start-up, before any event).

        The next resync closes what ended meanwhile. Agents come from the config:
        one no longer configured is dropped with its parts; devices and limits are
        the config's. ``stored_calls`` and ``stored_activities``: the calls and parts
        of ``state`` whose rows are stored, because they ended after the checkpoint
        was taken; they are dropped, not closed a second time.
        """
        state = _without_stored(state, stored_calls, stored_activities)
        known = set(self.agents)
        for agent_id, saved in state.agents.items():
            if agent_id in known:
                current = self.agents[agent_id]
                self.agents[agent_id] = replace(saved, devices=current.devices, limit=current.limit)
        self.channels = {
            uid: chan if chan.agent is None or chan.agent in known else replace(chan, agent=None)
            for uid, chan in state.channels.items()
        }
        self.calls = dict(state.calls)
        self.parts = {key: part for key, part in state.parts.items() if part.agent in known}
        self.settling = {key: part for key, part in state.settling.items() if part.agent in known}
        self.waiting = {queue: dict(callers) for queue, callers in state.waiting.items()}
        self.boot_time = state.boot_time
        self.link = Link.DOWN  # until the daemon's AMI link is up (and resynced)
        for agent_id, agent in self.agents.items():
            self.agents[agent_id] = replace(agent, phone=self._phone_of(agent_id))

    def resync(self, items: Iterable[AmiMessage], now: float) -> list[Effect]:
        """Rebuild the model from the answers to the resync actions, after a reconnect.

        ``items`` are the list items of ``CoreShowChannels``, ``BridgeList``,
        ``QueueStatus`` and ``Status`` (in that order). The answer is the whole
        truth: channels the model knows but Asterisk no longer lists ended
        while the link was down, and their calls and parts are closed with what
        is known, flagged ``ended_while_disconnected``; channels Asterisk lists
        but the model does not know are added; calls that survived keep their
        parts, so no activity is duplicated.
        """
        out: list[Effect] = []
        items = list(items)
        live = {i.get("Uniqueid"): i for i in items if i.event == "CoreShowChannel"}
        if any(i.event == "CoreShowChannelsComplete" for i in items) or live:
            gone = [u for u in self.channels if u not in live]
            # Channels Asterisk lists first: a call with a leg still up (an agent's,
            # the customer gone) is not over, so the gone legs' hangups must not end it.
            for uid, item in live.items():
                self._resync_channel(uid, item, now, out)
            self._force_hangup(gone, "disconnected", now, out)
            self._infer_outage_transfers(now, out)
        members = [i for i in items if i.event == "QueueMember"]
        if members or any(i.event == "QueueStatusComplete" for i in items):
            self._resync_members(members, now, out)
        if any(i.event == "QueueStatusComplete" for i in items):
            # Who waits where now is in the QueueEntry items (README point 17).
            before = set(self.waiting)
            self.waiting = {}
            for item in items:
                if item.event != "QueueEntry":
                    continue
                linkedid = item.get("Linkedid") or item.get("Uniqueid")
                wait = _float(item.get("Wait"))
                self.waiting.setdefault(item.get("Queue"), {})[linkedid] = now - wait
                call = self.calls.get(linkedid)
                if call is not None and (not call.queue or call.queued_at is None):
                    # Also when the channel's resync already named the queue: the wait
                    # (of an abandon, say) counts from here, not from HoldTime's whole seconds.
                    self.calls[call.id] = replace(
                        call,
                        queue=call.queue or item.get("Queue"),
                        queued_at=now - wait,
                        offered=True,
                    )
            for queue in sorted(before | set(self.waiting)):
                self._publish_queue(queue, now, out)
        return out

    def _infer_outage_transfers(self, now: float, out: list[Effect]) -> None:
        """An attended transfer that completed while the link was down.

        Its AttendedTransfer event was lost; what remains is the consulting
        agent gone, the consulted agent still there and the customer still
        there: the customer was handed over.
        """
        for key in list(self.settling):
            call_id, agent_id = key
            call = self.calls.get(call_id)
            if call is None or call.customer_uid not in self.channels:
                continue
            consults = [
                p for p in self._parts_of_call(call_id) if p.why == "consult" and p.answered_at
            ]
            if consults and key in self.settling:
                self._complete_consult(call_id, agent_id, now, out)

    def _backdate(self, uid: str, born: float) -> None:
        """A channel found by a resync was born earlier than we saw it: say so in its records."""
        chan = self.channels[uid]
        self.channels[uid] = replace(chan, created_at=born)
        call = self.calls.get(chan.linkedid)
        if call is not None and call.started_at > born:
            self.calls[call.id] = replace(call, started_at=born)
        if chan.agent is not None:
            key = (chan.linkedid, chan.agent)
            part = self.parts.get(key)
            if part is not None and part.offered_at > born:
                self.parts[key] = replace(part, offered_at=born)

    def _resync_channel(self, uid: str, item: AmiMessage, now: float, out: list[Effect]) -> None:
        """Bring one channel Asterisk lists in line with the model (or add it)."""
        fields = {
            "Uniqueid": uid,
            "Linkedid": item.get("Linkedid") or uid,
            "Channel": item.get("Channel"),
            "ChannelState": item.get("ChannelState"),
            "ChannelStateDesc": item.get("ChannelStateDesc"),
            "CallerIDNum": item.get("CallerIDNum"),
            "CallerIDName": item.get("CallerIDName"),
            "ConnectedLineNum": item.get("ConnectedLineNum"),
        }
        new = uid not in self.channels
        when = now
        if new:
            # Created before we could see it: born Duration ago, in state Down, and
            # then brought to its state now.
            when = now - _duration(item.get("Duration"))
            down = {**fields, "ChannelState": "0", "ChannelStateDesc": "Down"}
            self._on_newchannel(AmiMessage.build({"Event": "Newchannel", **down}), now, out)
            self._backdate(uid, when)
        chan = self.channels.get(uid)
        if chan is None:
            return
        if chan.state != _state_of(AmiMessage.build(fields)):
            self._on_newstate(AmiMessage.build({"Event": "Newstate", **fields}), now, out)
            if new and chan.agent is not None:
                # Answered before we could see it: its birth is the closest bound we
                # have for the answer (a queue leg rings only briefly).
                key = (chan.linkedid, chan.agent)
                part = self.parts.get(key)
                if part is not None and part.answered_at == now:
                    self.parts[key] = replace(part, answered_at=when, first_answered_at=when)
        call = self.calls.get(chan.linkedid)
        if (
            call is not None
            and not call.queue
            and uid == call.customer_uid
            and item.get("Application") == "Queue"
        ):
            # Still inside Queue() while bridged to the agent: its first argument
            # is the queue's name.
            queue = item.get("ApplicationData").split(",", 1)[0]
            self.calls[call.id] = replace(call, queue=queue, offered=True)
        bridge = item.get("BridgeId")
        chan = self.channels[uid]
        if bridge != chan.bridge:
            self.channels[uid] = replace(chan, bridge=bridge)
            self._refresh_agents_of(chan.linkedid, now, out)

    def _resync_members(self, members: list[AmiMessage], now: float, out: list[Effect]) -> None:
        # Members removed while the link was down simply are not listed, so the
        # answer is taken as the whole truth, not merged.
        by_agent: dict[str, dict[str, tuple[bool, str]]] = {a: {} for a in self.agents}
        for item in members:
            agent_id = self.agent_of_device(item.get("StateInterface") or item.get("Location"))
            if agent_id is None:
                agent_id = self.agent_of_device(item.get("Location"))
            if agent_id is None:
                continue
            paused = item.get("Paused") == "1"
            by_agent[agent_id][item.get("Queue")] = (
                paused,
                item.get("PausedReason") if paused else "",
            )
        for agent_id, listed in by_agent.items():
            agent = self.agents[agent_id]
            queues = listed
            if self.pbx_restarted and agent.presence in (Presence.NOT_READY, Presence.WRAP_UP):
                # Asterisk forgets pause reasons when it restarts; the agent did not
                # choose to become ready. Pause again with the reason it had.
                unpaused = [q for q, (paused, _) in queues.items() if not paused]
                if unpaused:
                    device = agent.devices[0]
                    out.append(
                        SendAction(
                            "QueuePause",
                            (("Interface", device), ("Paused", "true"), ("Reason", agent.reason)),
                        )
                    )
                    queues = dict.fromkeys(queues, (True, agent.reason))
            self._set_queues(agent, queues, now, out)
        self.pbx_restarted = False

    def restore_presence(self, agent_id: str, presence: str, reason: str, since: float) -> None:
        """What the store remembers of an agent's presence (at start-up, before any event)."""
        agent = self.agents.get(agent_id)
        if agent is None:
            return
        try:
            value = Presence(presence)
        except ValueError:
            return
        self.agents[agent_id] = replace(
            agent, presence=value, reason=reason, since=since, interval_since=since
        )

    def restore_seq(self, agent_id: str, seq: int) -> None:
        """The agent's last ``seq`` before a restart: its stream goes on after it."""
        agent = self.agents.get(agent_id)
        if agent is not None and seq > agent.seq:
            self.agents[agent_id] = replace(agent, seq=seq)

    def _on_originate_response(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        # The only place that names the number of a click to dial whose agent leg
        # never answered: Failure, Reason 3, Uniqueid <unknown>, Channel = the
        # dial string (README point 14). It reaches every AMI session.
        agent_id = self.agent_of_device(msg.get("Channel"))
        number = self.numbers.normalize(msg.get("Exten"))
        if agent_id is None or number.kind != "e164":
            return
        uid = msg.get("Uniqueid")
        for part in self._parts_of_agent(agent_id):
            call = self.calls[part.call_id]
            if not part.originator or call.customer_uid:
                continue
            if uid not in ("", "<unknown>") and uid not in part.channels:
                continue
            self.calls[call.id] = replace(call, direction="outbound", customer_raw=msg.get("Exten"))

    def _on_user_event(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        if msg.get("UserEvent") != "CallbackRequest":
            return
        # The IVR's UserEvent(CallbackRequest,Number:…,Reason:…,PreferredTime:…,
        # Queue:…). A UserEvent carries the channel's headers first and the user's
        # after, so Uniqueid can appear twice (README point 4): the first is the
        # channel's, and identifies the request.
        uid = msg.get("Uniqueid")
        raw = msg.get_all("Number")[-1] if "Number" in msg else msg.get("CallerIDNum")
        number = self.numbers.normalize(raw)
        out.append(
            EmitCallback(
                CallbackRecord(
                    id=f"ivr-{uid}",
                    number=raw,
                    e164=number.e164 if number.kind == "e164" else "",
                    reason=msg.get("Reason"),
                    queue=msg.get_all("Queue")[-1] if "Queue" in msg else "",
                    requested_at=now,
                    preferred_time=msg.get("PreferredTime"),
                    partner=msg.get("Partner"),
                    source="ivr",
                    interaction_id=msg.get("Linkedid") or uid,
                )
            )
        )

    def _on_fully_booted(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        # Sent right after every login with the PBX's uptime (README point 2). A
        # boot time later than the one we knew (or later than the presences we
        # restored) means Asterisk restarted and forgot its pause reasons.
        uptime = msg.get("Uptime")
        if not uptime:
            return
        booted = now - _float(uptime)
        if self.boot_time is not None:
            if booted > self.boot_time + 5.0:
                self.pbx_restarted = True
        else:
            newest = max((a.since for a in self.agents.values() if a.since), default=None)
            if newest is not None and booted > newest:
                self.pbx_restarted = True
        self.boot_time = booted

    def agent_of_device(self, channel_or_interface: str) -> str | None:
        return self._device_agent.get(device_of(channel_or_interface))

    # ------------------------------------------------------------------ channels

    def _on_newchannel(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        uid = msg.get("Uniqueid")
        if not uid or uid in self.channels:
            return
        linkedid = msg.get("Linkedid") or uid
        name = msg.get("Channel")
        device = device_of(name)
        agent = self._device_agent.get(device)
        chan = Channel(
            uniqueid=uid,
            linkedid=linkedid,
            name=name,
            device=device,
            agent=agent,
            state=_state_of(msg),
            caller_num=_clean(msg.get("CallerIDNum")),
            caller_name=_clean(msg.get("CallerIDName")),
            connected_num=_clean(msg.get("ConnectedLineNum")),
            created_at=now,
            local=name.startswith("Local/"),
        )
        self.channels[uid] = chan
        call = self.calls.get(linkedid)
        if call is None:
            # The first channel decides the direction: a customer calling in, or
            # an agent's device calling out (click to dial is an Originate to the
            # agent's device first: README point 14).
            direction = "internal" if agent is not None or chan.local else "inbound"
            call = Call(id=linkedid, started_at=now, direction=direction)
            if agent is None and not chan.local:
                call = replace(
                    call,
                    customer_uid=uid,
                    customer_raw=chan.caller_num,
                    customer_name=chan.caller_name,
                )
        elif agent is None and not chan.local and not call.customer_uid:
            # A non-agent leg joins a call an agent started: an outbound call.
            call = replace(
                call, direction="outbound", customer_uid=uid, customer_raw=chan.caller_num
            )
        call = replace(call, channels=call.channels | {uid})
        self.calls[linkedid] = call
        if agent is not None:
            self._join_part(agent, call, chan, now, out, originator=(uid == linkedid))

    def _join_part(
        self,
        agent: str,
        call: Call,
        chan: Channel,
        now: float,
        out: list[Effect],
        *,
        originator: bool,
    ) -> None:
        key = (call.id, agent)
        if any(k[0] == call.id for k in self.settling):
            # An agent left while the customer stayed, and now the customer reaches
            # another agent: a transfer, even without a transfer event (Redirect).
            self._settle_all(call.id, now, out, transfer_to=self._extension(agent))
            call = self.calls[call.id]
        part = self.parts.get(key)
        if part is None:
            if originator:
                why = "outbound"
            elif call.transfers:
                why = "transfer"
            elif any(
                p.call_id == call.id and p.answered_at is not None
                for p in self._parts_of_call(call.id)
            ):
                why = "consult"
            else:
                why = "inbound" if call.direction == "inbound" else call.direction
            part = Part(
                agent=agent,
                call_id=call.id,
                leg=chan.uniqueid,
                why=why,
                offered_at=now,
                originator=originator,
            )
            if agent not in call.agents:
                self.calls[call.id] = replace(call, agents=(*call.agents, agent))
            ag = self.agents[agent]
            self.agents[agent] = replace(ag, parts=ag.parts | {call.id})
        self.parts[key] = replace(part, channels=part.channels | {chan.uniqueid})
        self._refresh_phone(agent, now, out)

    def _on_newstate(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        chan = self._update_ids(msg)
        if chan is None:
            return
        state = _state_of(msg)
        old = chan.state
        chan = replace(chan, state=state)
        self.channels[chan.uniqueid] = chan
        call = self.calls.get(chan.linkedid)
        if call is None:
            return
        if chan.uniqueid == call.customer_uid:
            call = replace(call, customer_raw=chan.caller_num or call.customer_raw)
            self.calls[call.id] = call
        if chan.agent is not None:
            part = self.parts.get((call.id, chan.agent))
            if part is not None:
                if state == "ringing" and old != "ringing" and not part.originator:
                    self._alerting(part, now, out)
                elif state == "up" and part.answered_at is None and not part.originator:
                    self._answered(part, now, out)
            self._refresh_phone(chan.agent, now, out)
        elif chan.uniqueid == call.customer_uid and state == "up" and call.direction == "outbound":
            # The far end of a click-to-dial answered: the agent's talk starts now.
            for part in self._parts_of_call(call.id):
                if part.originator and part.answered_at is None:
                    self._answered(part, now, out)
            self._refresh_agents_of(call.id, now, out)

    def _on_newcallerid(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        chan = self._update_ids(msg)
        if chan is None:
            return
        call = self.calls.get(chan.linkedid)
        if call is not None and chan.uniqueid == call.customer_uid and chan.caller_num:
            # On an outbound leg the "caller" name is our own caller ID as sent
            # to the network (e.g. 'Agent 1001'), never the callee's name.
            name = call.customer_name if call.direction == "outbound" else chan.caller_name
            self.calls[call.id] = replace(
                call, customer_raw=chan.caller_num, customer_name=name or call.customer_name
            )

    def _update_ids(self, msg: AmiMessage) -> Channel | None:
        """Refresh a channel's caller and connected line from any event about it."""
        chan = self.channels.get(msg.get("Uniqueid"))
        if chan is None:
            return None
        num = _clean(msg.get("CallerIDNum"))
        name = _clean(msg.get("CallerIDName"))
        conn = _clean(msg.get("ConnectedLineNum"))
        if (
            (num and num != chan.caller_num)
            or (name and name != chan.caller_name)
            or (conn and conn != chan.connected_num)
        ):
            chan = replace(
                chan,
                caller_num=num or chan.caller_num,
                caller_name=name or chan.caller_name,
                connected_num=conn or chan.connected_num,
            )
            self.channels[chan.uniqueid] = chan
        return chan

    def _on_dial_begin(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        src = self.channels.get(msg.get("Uniqueid"))
        if src is not None and not src.dialer:
            self.channels[src.uniqueid] = replace(src, dialer=True)
        dest = self.channels.get(msg.get("DestUniqueid"))
        if dest is None or src is None:
            return
        call = self.calls.get(dest.linkedid)
        if call is None:
            return
        if (
            dest.agent is None
            and not dest.local
            and src.agent is not None
            and call.direction == "outbound"
        ):
            # Click to dial: the agent's leg dials the customer. The agent's pop
            # shows whom it is calling, as soon as the number is known.
            raw = (
                _clean(msg.get("DestCallerIDNum"))
                or _clean(msg.get("DestExten"))
                or call.customer_raw
            )
            call = replace(call, customer_raw=raw or call.customer_raw)
            self.calls[call.id] = call
            part = self.parts.get((call.id, src.agent))
            if part is not None and part.last_pop is None:
                self._pop(part, "alerting", now, out)

    def _on_dial_end(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        dest = self.channels.get(msg.get("DestUniqueid"))
        status = msg.get("DialStatus")
        if dest is None:
            return
        call = self.calls.get(dest.linkedid)
        # DialEnd can repeat for one leg (README point 15): the first status wins
        # unless a later one is an answer.
        if (
            call is not None
            and dest.uniqueid == call.customer_uid
            and status
            and (not call.dial_status or status == "ANSWER")
        ):
            self.calls[call.id] = replace(call, dial_status=status)

    def _on_hangup(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        uid = msg.get("Uniqueid")
        chan = self.channels.pop(uid, None)
        if chan is None:
            return
        call = self.calls.get(chan.linkedid)
        if call is None:
            return
        call = replace(call, channels=call.channels - {uid})
        self.calls[call.id] = call
        if chan.agent is not None:
            part = self.parts.get((call.id, chan.agent))
            if part is not None:
                part = replace(part, channels=part.channels - {uid})
                self.parts[(call.id, chan.agent)] = part
                if not part.channels:
                    self._agent_left(part, now, out)
            self._refresh_phone(chan.agent, now, out)
        elif uid == call.customer_uid:
            call = replace(call, customer_cause=msg.get("Cause"))
            self.calls[call.id] = call
            # The customer is gone: whoever left before it was not transferred.
            self._settle_all(call.id, now, out, transfer_to="")
        if not call.channels:
            self._end_call(call, now, out)

    # ------------------------------------------------------------------ bridges and holds

    def _on_bridge_enter(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        chan = self.channels.get(msg.get("Uniqueid"))
        if chan is None:
            return
        self.channels[chan.uniqueid] = replace(chan, bridge=msg.get("BridgeUniqueid"))
        self._refresh_agents_of(chan.linkedid, now, out)

    def _on_bridge_leave(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        chan = self.channels.get(msg.get("Uniqueid"))
        if chan is None:
            return
        self.channels[chan.uniqueid] = replace(chan, bridge="")
        self._refresh_agents_of(chan.linkedid, now, out)

    def _on_hold(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        chan = self.channels.get(msg.get("Uniqueid"))
        if chan is None:
            return
        self.channels[chan.uniqueid] = replace(chan, held=True)
        if chan.agent is not None:
            self._hold_part(chan.linkedid, chan.agent, now, "hold", start=True)
            self._refresh_phone(chan.agent, now, out)

    def _on_unhold(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        chan = self.channels.get(msg.get("Uniqueid"))
        if chan is None:
            return
        self.channels[chan.uniqueid] = replace(chan, held=False)
        if chan.agent is not None:
            self._hold_part(chan.linkedid, chan.agent, now, "hold", start=False)
            self._refresh_phone(chan.agent, now, out)

    def _on_moh_start(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        self._moh(msg, now, out, start=True)

    def _on_moh_stop(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        self._moh(msg, now, out, start=False)

    def _moh(self, msg: AmiMessage, now: float, out: list[Effect], *, start: bool) -> None:
        # Music on hold for the customer while it is bridged to an agent is a hold
        # by that agent. chan_iax2 shows a handset hold only this way: no Hold
        # event at all (README point 13). Music while queued is not a hold.
        chan = self.channels.get(msg.get("Uniqueid"))
        if chan is None or chan.agent is not None:
            return
        for part in self._parts_of_call(chan.linkedid):
            if part.answered_at is None:
                continue
            if start and not chan.bridge:
                continue
            self._hold_part(part.call_id, part.agent, now, "moh", start=start)
            self._refresh_phone(part.agent, now, out)

    def _hold_part(self, call_id: str, agent: str, now: float, source: str, *, start: bool) -> None:
        part = self.parts.get((call_id, agent))
        if part is None:
            return
        if start:
            if part.hold_since is None and (part.hold_source in ("", source)):
                part = replace(part, hold_since=now, hold_source=source)
        elif part.hold_since is not None and part.hold_source == source:
            part = replace(
                part, hold_s=part.hold_s + max(0.0, now - part.hold_since), hold_since=None
            )
        self.parts[(call_id, agent)] = part

    # ------------------------------------------------------------------ queues

    def _on_queue_join(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        call = self.calls.get(msg.get("Linkedid"))
        if call is None:
            return
        if any(k[0] == call.id for k in self.settling):
            # The agent left and the customer went (back) into a queue: a transfer to it.
            self._settle_all(call.id, now, out, transfer_to=msg.get("Queue"))
            call = self.calls[call.id]
        call = replace(call, offered=True)
        if not call.queue:
            call = replace(call, queue=msg.get("Queue"), queued_at=now)
        elif call.transfers:
            # A blind transfer into another queue: the same customer channel joins
            # again (README point 21); its wait counts from the re-join.
            call = replace(call, queued_at=now)
        self.calls[call.id] = call
        queue = msg.get("Queue")
        self.waiting.setdefault(queue, {})[call.id] = now
        self._publish_queue(queue, now, out)

    def _on_queue_leave(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        queue = msg.get("Queue")
        linkedid = msg.get("Linkedid") or msg.get("Uniqueid")
        if self.waiting.get(queue, {}).pop(linkedid, None) is not None:
            self._publish_queue(queue, now, out)

    def _publish_queue(self, queue: str, now: float, out: list[Effect]) -> None:
        """``v1/queues/{queue}/state`` (retained), when what it shows has changed."""
        if not queue:
            return
        waiting = self.waiting.get(queue, {})
        ready = busy = paused = 0
        for agent in self.agents.values():
            membership = agent.queues.get(queue)
            if membership is None:
                continue
            if membership[0]:
                paused += 1
            elif agent.phone == Phone.IDLE and agent.presence == Presence.READY:
                ready += 1
            else:
                busy += 1
        oldest = min(waiting.values(), default=None)
        key = (len(waiting), oldest, ready, busy, paused)
        if self._queue_published.get(queue) == key:
            return
        self._queue_published[queue] = key
        payload = contract.envelope(
            "queue_state",
            now,
            queue=queue,
            waiting=len(waiting),
            longest_wait_since=contract.iso(oldest),
            longest_wait_s=round(now - oldest, 3) if oldest is not None else 0.0,
            agents={"ready": ready, "busy": busy, "paused": paused},
        )
        out.append(Publish(f"v1/queues/{queue}/state", payload, retain=True, qos=1))

    def _on_queue_abandon(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        call = self.calls.get(msg.get("Linkedid"))
        if call is None:
            return
        wait = _float(msg.get("HoldTime"))
        if call.queued_at is not None:
            # As for an answered call (_on_agent_connect): HoldTime is whole seconds,
            # cut down (a caller who gave up after 3.9 s has HoldTime 3).
            wait = max(0.0, now - call.queued_at)
        self.calls[call.id] = replace(
            call, abandoned=True, wait_s=call.wait_s if call.wait_s is not None else wait
        )

    def _on_agent_called(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        agent = self.agent_of_device(msg.get("Interface"))
        call = self.calls.get(msg.get("Linkedid"))
        if agent is None or call is None:
            return
        part = self.parts.get((call.id, agent))
        if part is not None and not part.queue:
            self.parts[(call.id, agent)] = replace(part, queue=msg.get("Queue"))

    def _on_agent_connect(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        call = self.calls.get(msg.get("Linkedid"))
        if call is None:
            return
        if call.wait_s is None:
            wait = _float(msg.get("HoldTime"))
            if call.queued_at is not None:
                # Timestamps are finer than HoldTime's whole seconds.
                wait = max(0.0, now - call.queued_at)
            self.calls[call.id] = replace(call, wait_s=wait)

    # ------------------------------------------------------------------ transfers

    def _on_blind_transfer(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        transferer = self.channels.get(msg.get("TransfererUniqueid"))
        if transferer is None or msg.get("Result") not in ("", "Success"):
            return
        call = self.calls.get(transferer.linkedid)
        if call is None or not self._first_time(call, "blind", msg):
            return
        call = self.calls[call.id]
        self.calls[call.id] = replace(call, transfers=call.transfers + 1)
        if transferer.agent is not None:
            key = (call.id, transferer.agent)
            part = self.parts.get(key)
            if part is not None:
                self.parts[key] = replace(part, transferred_to=msg.get("Extension"))
            elif key in self.settling:
                self.settling[key] = replace(
                    self.settling[key], transferred_to=msg.get("Extension")
                )
                self._settle_key(key, now, out)

    def _on_attended_transfer(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        # AMI Atxfer has no event of its own: the consultation shows as a Hold on
        # the transferer, Local channels and a new agent leg; only its completion
        # is an AttendedTransfer (README points 10, 11).
        if msg.get("Result") != "Success":
            return
        transferer = self.channels.get(msg.get("OrigTransfererUniqueid"))
        linkedid = transferer.linkedid if transferer else msg.get("OrigTransfererLinkedid")
        call = self.calls.get(linkedid)
        if call is None or not self._first_time(call, "attended", msg):
            return
        threeway = msg.get("DestType") == "Threeway"
        agent_id = (
            transferer.agent
            if transferer
            else self.agent_of_device(msg.get("OrigTransfererChannel"))
        )
        fallback = _local_exten(msg.get("TransferTargetChannel"))
        self._complete_consult(call.id, agent_id, now, out, threeway=threeway, fallback=fallback)

    def _complete_consult(
        self,
        call_id: str,
        transferer: str | None,
        now: float,
        out: list[Effect],
        *,
        threeway: bool = False,
        fallback: str = "",
    ) -> None:
        """An attended transfer completed (or became a conference): hand the customer over."""
        consults = [p for p in self._parts_of_call(call_id) if p.why == "consult"]
        for consult in consults:
            if consult.answered_at is None:
                continue
            # The consulted agent now has the customer: its talk with the customer
            # starts here; the consultation before it is kept apart (consult_s).
            part = replace(
                consult,
                consult_s=max(0.0, now - consult.answered_at - consult.hold_s),
                answered_at=now,
                hold_s=0.0,
                why="consult" if threeway else "transfer",
                conference=threeway,
            )
            self.parts[(call_id, part.agent)] = part
            self._pop(part, "accepted", now, out)
        if threeway:
            # A three-way conference: the transferer stays in the call (README point 23).
            return
        call = self.calls[call_id]
        self.calls[call_id] = replace(call, transfers=call.transfers + 1)
        target = next((p.agent for p in consults if p.answered_at is not None), "")
        to = (self._extension(target) if target else fallback) or "transfer"
        if transferer is None:
            return
        key = (call_id, transferer)
        if key in self.parts:
            self.parts[key] = replace(self.parts[key], transferred_to=to)
        elif key in self.settling:
            # The transferer's hangup came first; it was waiting for this.
            self.settling[key] = replace(self.settling[key], transferred_to=to)
            self._settle_key(key, now, out)

    def _first_time(self, call: Call, kind: str, msg: AmiMessage) -> bool:
        """Whether this transfer event is new for the call (not a repeat of one applied)."""
        key = "/".join(
            (
                kind,
                msg.get("Timestamp"),
                msg.get("TransfererUniqueid"),
                msg.get("OrigTransfererUniqueid"),
            )
        )
        if key in call.transfer_events:
            return False
        self.calls[call.id] = replace(call, transfer_events=call.transfer_events | {key})
        return True

    # ------------------------------------------------------------------ attached data

    def _on_varset(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        prefix = self.settings.attached_prefix
        var = msg.get("Variable")
        if not prefix or not var.startswith(prefix):
            return
        call = self.calls.get(msg.get("Linkedid"))
        if call is None:
            return
        attached = dict(call.attached)
        attached[var[len(prefix) :]] = msg.get("Value")
        self.calls[call.id] = replace(call, attached=tuple(attached.items()))

    # ------------------------------------------------------------------ presence

    def _on_member(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        agent_id = self.agent_of_device(msg.get("Interface") or msg.get("Location"))
        if agent_id is None:
            return
        agent = self.agents[agent_id]
        paused = msg.get("Paused") == "1"
        reason = msg.get("PausedReason") if paused else ""
        queues = dict(agent.queues)
        queues[msg.get("Queue")] = (paused, reason)
        self._set_queues(agent, queues, now, out)

    def _on_member_removed(self, msg: AmiMessage, now: float, out: list[Effect]) -> None:
        agent_id = self.agent_of_device(msg.get("Interface") or msg.get("Location"))
        if agent_id is None:
            return
        agent = self.agents[agent_id]
        queues = dict(agent.queues)
        queues.pop(msg.get("Queue"), None)
        self._set_queues(agent, queues, now, out)

    def _set_queues(
        self, agent: Agent, queues: dict[str, tuple[bool, str]], now: float, out: list[Effect]
    ) -> None:
        presence, reason = presence_of(queues)
        touched = set(agent.queues) | set(queues)
        agent = replace(agent, queues=queues)
        self.agents[agent.id] = agent
        if agent.presence == Presence.WRAP_UP:
            if presence in (Presence.READY, Presence.WRAP_UP):
                # Our own wrap-up pause, or its QueuePause not applied yet.
                presence, reason = agent.presence, agent.reason
            else:
                # Paused for another reason or logged out meanwhile: wrap-up is over.
                self._finish_wrapup(agent.id, now, out, code="", notes="")
        self._change_presence(agent.id, presence, reason, now, out)
        agent = self.agents[agent.id]
        if not agent.interval_since:
            # The PBX has told us the agent's presence (maybe "still logged out", in a
            # resync): its state intervals count from now.
            self.agents[agent.id] = replace(agent, interval_since=now)
        self._publish_state(agent.id, now, out)
        for queue in sorted(touched):
            self._publish_queue(queue, now, out)

    def _change_presence(
        self, agent_id: str, presence: Presence, reason: str, now: float, out: list[Effect]
    ) -> None:
        """Set an agent's presence, closing the state interval of the one before."""
        agent = self.agents[agent_id]
        if (presence, reason) == (agent.presence, agent.reason):
            return
        agent = self._close_interval(agent, now, out)
        out.append(SavePresence(agent.id, presence.value, reason, now))
        self.agents[agent_id] = replace(
            agent,
            presence=presence,
            reason=reason,
            since=now,
            interval_since=agent.interval_since or now,
        )

    def _close_interval(self, agent: Agent, now: float, out: list[Effect]) -> Agent:
        """End the agent's open state interval at ``now``; the returned agent starts the next.

        Called before presence, reason or phone change, so the closed interval
        carries the state the agent had throughout it. An interval of no length
        (two changes in one instant) is not recorded: it adds nothing to a sum.
        Nothing is recorded before the agent's presence is known.
        """
        if not agent.interval_since:
            return agent
        if now > agent.interval_since:
            interval = AgentStateInterval(
                agent.id,
                agent.presence.value,
                agent.reason,
                agent.interval_since,
                now,
                agent.phone.value,
            )
            out.append(RecordInterval(interval))
        if now < agent.interval_since:
            # An event older than the open interval's start (clock step, resync):
            # keep the start, so intervals never overlap.
            return agent
        return replace(agent, interval_since=now)

    # ------------------------------------------------------------------ wrap-up

    def _maybe_start_wrapup(self, part: Part, now: float, out: list[Effect]) -> None:
        """When an agent leaves a customer it talked to, pause it for wrap-up (if configured).

        Started when the agent hangs up, not when the activity closes (which may
        wait for the customer's next step), so no new call reaches it meanwhile.
        """
        agent = self.agents[part.agent]
        if (
            self.settings.wrapup_s <= 0
            or part.why == "consult"
            or part.answered_at is None
            or agent.parts
            or agent.presence != Presence.READY
            # Closed by a resync: it ended at some unknown time (maybe hours ago, ctid
            # restarted the next morning); pausing the agent now would trap it.
            or part.left_unseen
        ):
            return
        for device in agent.devices:
            out.append(
                SendAction(
                    "QueuePause",
                    (("Interface", device), ("Paused", "true"), ("Reason", WRAPUP_REASON)),
                )
            )
        self._change_presence(agent.id, Presence.WRAP_UP, WRAPUP_REASON, now, out)
        self.agents[agent.id] = replace(
            self.agents[agent.id],
            wrapup_until=now + self.settings.wrapup_s,
            wrapup_since=now,
            wrapup_part=(part.call_id, part.agent),
            wrapup_activity=None,
            wrapup_result=None,
        )
        self._publish_state(agent.id, now, out)

    def _wrapup_closed(self, record: ActivityRecord) -> ActivityRecord:
        """The activity of a wrap-up's part closed: remember it, or complete it if done."""
        agent = self.agents[record.agent]
        if agent.wrapup_part != (record.interaction_id, record.agent):
            return record
        if agent.wrapup_result is not None:
            wrapup_s, code, notes = agent.wrapup_result
            self.agents[record.agent] = replace(agent, wrapup_part=None, wrapup_result=None)
            return replace(record, wrapup_s=wrapup_s, wrapup_code=code, notes=notes)
        self.agents[record.agent] = replace(agent, wrapup_activity=record)
        return record

    def part_of(self, interaction: str, agent_id: str) -> Part | None:
        """The agent's open part in an interaction (its own calls only: the command guard)."""
        return self.parts.get((interaction, agent_id))

    def annotate(
        self,
        interaction: str,
        agent_id: str,
        now: float,
        *,
        notes: str | None = None,
        record: str | None = None,
    ) -> list[Effect] | None:
        """Add the agent's notes or chosen record to its part of an interaction.

        An open (or settling) part keeps them for its activity. A part whose
        activity is already out but still in wrap-up gets the activity published
        again. Returns ``None`` when the model no longer holds the part (the
        caller updates the stored activity instead).
        """
        key = (interaction, agent_id)

        def updated(part: Part) -> Part:
            if notes is not None:
                part = replace(part, notes=join_notes(part.notes, notes))
            if record is not None:
                part = replace(part, customer_record=record)
            return part

        if key in self.parts:
            self.parts[key] = updated(self.parts[key])
            return []
        if key in self.settling:
            self.settling[key] = updated(self.settling[key])
            return []
        agent = self.agents.get(agent_id)
        activity = agent.wrapup_activity if agent is not None else None
        if agent is not None and activity is not None and activity.interaction_id == interaction:
            if notes is not None:
                activity = replace(activity, notes=join_notes(activity.notes, notes))
            if record is not None:
                activity = replace(activity, customer_record=record)
            self.agents[agent_id] = replace(agent, wrapup_activity=activity)
            out: list[Effect] = []
            self._emit_activity(activity, now, out)
            return out
        return None

    def republish_activity(self, record: ActivityRecord, now: float) -> list[Effect]:
        """Publish a stored activity again after it changed (same id, next seq)."""
        out: list[Effect] = []
        if record.agent in self.agents:
            self._emit_activity(record, now, out)
        return out

    def end_wrapup(
        self, agent_id: str, now: float, *, code: str = "", notes: str = ""
    ) -> list[Effect]:
        """The agent is done wrapping up (or the wrap-up time ran out): ready again.

        The activity of the part that started the wrap-up is published again,
        same id, with its wrap-up time, code and notes.
        """
        out: list[Effect] = []
        agent = self.agents.get(agent_id)
        if agent is None or agent.presence != Presence.WRAP_UP:
            return out
        for device in agent.devices:
            out.append(SendAction("QueuePause", (("Interface", device), ("Paused", "false"))))
        self._finish_wrapup(agent_id, now, out, code=code, notes=notes)
        # Back to ready at once: the unpause events that follow agree with it.
        queues = {
            q: (False, "")
            for q, (paused, r) in agent.queues.items()
            if paused and r == WRAPUP_REASON
        }
        merged = {**agent.queues, **queues}
        self.agents[agent_id] = replace(self.agents[agent_id], queues=merged)
        presence, reason = presence_of(merged)
        self._change_presence(agent_id, presence, reason, now, out)
        self._publish_state(agent_id, now, out)
        return out

    def _finish_wrapup(
        self, agent_id: str, now: float, out: list[Effect], *, code: str, notes: str
    ) -> None:
        agent = self.agents[agent_id]
        record = agent.wrapup_activity
        wrapup_s = max(0.0, now - agent.wrapup_since)
        if record is None:
            # Its part is still settling: the activity gets the result when it closes.
            result = (wrapup_s, code, notes) if agent.wrapup_part else None
            self.agents[agent_id] = replace(agent, wrapup_until=None, wrapup_result=result)
            return
        self.agents[agent_id] = replace(
            agent, wrapup_until=None, wrapup_activity=None, wrapup_part=None
        )
        updated = replace(
            record,
            wrapup_s=wrapup_s,
            wrapup_code=code or record.wrapup_code,
            notes=notes or record.notes,
        )
        self._emit_activity(updated, now, out)

    def _emit_activity(
        self, record: ActivityRecord, now: float, out: list[Effect], *, closing: bool = False
    ) -> None:
        """Store and publish ``record``; ``closing``: its part's end, not an update."""
        seq = self._next_seq(record.agent)
        payload = contract.activity_payload(record, ts=now, seq=seq)
        messages = (
            Publish(contract.agent_topic(record.agent, "activity"), payload, qos=1),
            Publish(contract.CRM_ACTIVITY_TOPIC, payload, qos=1),
        )
        unseen = closing and record.ended_while_disconnected
        out.append(EmitActivity(record, messages, unseen_close=unseen))

    # ------------------------------------------------------------------ agent parts

    def _parts_of_call(self, call_id: str) -> list[Part]:
        return [p for (cid, _), p in self.parts.items() if cid == call_id]

    def _alerting(self, part: Part, now: float, out: list[Effect]) -> None:
        part = replace(part, alerting_at=part.alerting_at or now)
        self.parts[(part.call_id, part.agent)] = part
        if self.settings.pop_on == "alerting":
            self._pop(part, "alerting", now, out)
        else:
            # The pop waits for the answer; the lookup need not: ask now, so the
            # accepted pop can carry the match at once.
            self._ensure_lookup(self.calls[part.call_id], part, now, out)

    def _answered(self, part: Part, now: float, out: list[Effect]) -> None:
        part = replace(part, answered_at=now, first_answered_at=now)
        self.parts[(part.call_id, part.agent)] = part
        call = self.calls[part.call_id]
        if call.answered_at is None:
            self.calls[call.id] = replace(call, answered_at=now)
        self._pop(part, "accepted", now, out)

    def _pop(self, part: Part, phase: str, now: float, out: list[Effect]) -> None:
        call = self._ensure_lookup(self.calls[part.call_id], part, now, out)
        number = self._customer_number(call, part)
        payload = contract.envelope(
            "pop",
            now,
            agent=part.agent,
            interaction_id=call.id,
            media="call",
            direction=call.direction,
            phase=phase,
            number=number.as_payload(),
            caller_name=call.customer_name,
            match=dict(call.match) if call.match is not None else _no_match(number),
            lookup=call.lookup or "done",
            queue=part.queue or call.queue,
            attached=dict(call.attached),
            why=part.why,
        )
        key = (part.call_id, part.agent)
        if key in self.parts:  # a withdrawn pop is sent after the part has ended
            self.parts[key] = replace(part, last_pop=payload)
        self._agent_publish(part.agent, "pop", payload, now, out)
        self._publish_snapshot(part.agent, now, out)

    # ------------------------------------------------------------------ directory lookups

    def _lookup_key(self, call: Call, part: Part) -> tuple[str, str] | None:
        """What to look the customer up by: an IVR-given account, else the number."""
        attached = dict(call.attached)
        account = attached.get("ACCOUNT") or attached.get("ACCOUNT_ID")
        if account:
            # The IVR already identified the caller: no number lookup (issue 4).
            return "id", account
        number = self._customer_number(call, part)
        # An extension too: a colleague's phone that is no agent's calls a queue, and
        # the directory may hold it (``ctid lookup`` finds it the same way).
        if number.kind in ("e164", "extension") and call.direction != "internal":
            return "number", number.e164
        return None

    def _ensure_lookup(self, call: Call, part: Part, now: float, out: list[Effect]) -> Call:
        if call.lookup or not self.settings.lookup:
            return call
        key = self._lookup_key(call, part)
        if key is None:
            call = replace(call, lookup="done")
        elif (cached := self._cached_match(f"{key[0]}:{key[1]}", now)) is not None:
            call = replace(call, lookup="done", match=cached)
        else:
            call = replace(call, lookup="pending")
            out.append(Lookup(call.id, key[0], key[1], self.settings.lookup_deadline_s))
        self.calls[call.id] = call
        return call

    def lookup_done(
        self,
        call_id: str,
        by: str,
        value: str,
        match: Mapping[str, Any],
        now: float,
        *,
        cacheable: bool = True,
    ) -> list[Effect]:
        """The directory answered: cache it (if ``cacheable``: not read across an
        import), and update every pop of the call already out."""
        out: list[Effect] = []
        if cacheable:
            key = f"{by}:{value}"
            self.match_cache[key] = (match, now)
            self.match_cache.move_to_end(key)
            while len(self.match_cache) > self.settings.match_cache_size:
                self.match_cache.popitem(last=False)
        call = self.calls.get(call_id)
        if call is None or call.lookup == "done":
            return out
        self.calls[call_id] = replace(call, lookup="done", match=match)
        self._repop(call_id, now, out)
        return out

    def lookup_deadline(self, call_id: str, now: float) -> list[Effect]:
        """The deadline passed without an answer: the pops say so (the match may still follow)."""
        out: list[Effect] = []
        call = self.calls.get(call_id)
        if call is None or call.lookup != "pending":
            return out
        self.calls[call_id] = replace(call, lookup="timeout")
        self._repop(call_id, now, out)
        return out

    def _cached_match(self, key: str, now: float) -> Mapping[str, Any] | None:
        entry = self.match_cache.get(key)
        if entry is None:
            return None
        match, stored = entry
        if now - stored > self.settings.match_cache_ttl_s or now < stored:
            del self.match_cache[key]
            return None
        self.match_cache.move_to_end(key)
        return match

    def forget_match(self, by: str, value: str) -> None:
        """The answer for one caller changed (an agent chose a record): ask again next time."""
        self.match_cache.pop(f"{by}:{value}", None)

    def forget_matches(self) -> None:
        """The directory changed (an import): ask it again for every caller."""
        self.match_cache.clear()

    def _repop(self, call_id: str, now: float, out: list[Effect]) -> None:
        """Publish the latest pop of each part of the call again, with the call's match."""
        for part in self._parts_of_call(call_id):
            if part.last_pop is not None:
                self._pop(part, str(part.last_pop["phase"]), now, out)

    def _customer_number(self, call: Call, part: Part) -> Number:
        raw = call.customer_raw
        if call.direction == "internal":
            # Internal call: the other agent's extension is the "customer".
            chan = next((self.channels[u] for u in part.channels if u in self.channels), None)
            if chan is not None:
                raw = (
                    chan.connected_num
                    if part.originator
                    else self._first_caller(call) or chan.connected_num
                )
        return self.numbers.normalize(raw)

    def _first_caller(self, call: Call) -> str:
        first = self.channels.get(call.id)
        return first.caller_num if first is not None else ""

    def _agent_left(self, part: Part, now: float, out: list[Effect]) -> None:
        """The agent's last channel in the call hung up: close its part, or let it settle.

        An answered part whose customer is still there may turn out to have been
        a transfer without any transfer event (a Redirect, README point 12): it
        waits in ``settling`` for the customer's next step.
        """
        key = (part.call_id, part.agent)
        self.parts.pop(key, None)
        if part.hold_since is not None:
            part = replace(
                part, hold_s=part.hold_s + max(0.0, now - part.hold_since), hold_since=None
            )
        part = replace(part, left_at=now, left_unseen=self._close_reason)
        agent = self.agents[part.agent]
        self.agents[part.agent] = replace(agent, parts=agent.parts - {part.call_id})
        call = self.calls[part.call_id]
        self._call_update(part, "ended", now, out)
        self._maybe_start_wrapup(part, now, out)
        if (
            part.answered_at is not None
            and not part.transferred_to
            and part.why != "consult"
            and call.customer_uid in self.channels
        ):
            self.settling[key] = part
            self._publish_snapshot(part.agent, now, out)
            if any(p.why == "consult" and p.answered_at for p in self._parts_of_call(call.id)):
                # The consulting agent hung up while its consultation was answered:
                # that completes an attended transfer (how the captures' agents
                # complete Atxfer). Normally AttendedTransfer came first; if it was
                # lost (link down), this is the only sign of it.
                self._complete_consult(call.id, part.agent, now, out)
            return
        self._close_part(part, now, out)

    def _settle_all(self, call_id: str, now: float, out: list[Effect], *, transfer_to: str) -> None:
        """Close the settling parts of a call: as transferred (to ``transfer_to``) or not."""
        for key in [k for k in self.settling if k[0] == call_id]:
            part = self.settling.pop(key)
            if transfer_to:
                part = replace(part, transferred_to=transfer_to)
                call = self.calls.get(call_id)
                if call is not None:
                    self.calls[call_id] = replace(call, transfers=call.transfers + 1)
            self._close_part(part, now, out)

    def _settle_key(self, key: tuple[str, str], now: float, out: list[Effect]) -> None:
        part = self.settling.pop(key, None)
        if part is not None:
            self._close_part(part, now, out)

    def tick(self, now: float) -> list[Effect]:
        """Time passes: settled parts close, wrap-ups time out, stale calls expire."""
        out: list[Effect] = []
        for key, part in list(self.settling.items()):
            if part.left_at is not None and now - part.left_at >= self.settings.settle_s:
                self._settle_key(key, now, out)
        for agent in list(self.agents.values()):
            # Not while the PBX link is down: the unpause could not be sent, and the
            # resync would find the agent still paused by ctid, with no timer left.
            if (
                self.link == Link.UP
                and agent.wrapup_until is not None
                and now >= agent.wrapup_until
            ):
                out += self.end_wrapup(agent.id, now)
        for call in list(self.calls.values()):
            if now - call.started_at > self.settings.max_call_age_s:
                self._force_hangup(sorted(call.channels), "expired", now, out)
                self.calls.pop(call.id, None)  # even if it had no channel left
        return out

    def _force_hangup(self, uids: list[str], reason: str, now: float, out: list[Effect]) -> None:
        """Hang up channels Asterisk will never report again (gone during an outage, or lost)."""
        self._close_reason = reason
        try:
            for uid in uids:
                chan = self.channels.get(uid)
                if chan is not None:
                    hangup = {"Event": "Hangup", "Uniqueid": uid, "Linkedid": chan.linkedid}
                    self._on_hangup(AmiMessage.build(hangup), now, out)
                    call = self.calls.get(chan.linkedid)
                    if call is not None and not call.channels and not call.closed_unseen:
                        # Its last channel gone unseen: the call ends later (when its
                        # parts have settled) with no event of Asterisk's to say so.
                        self.calls[call.id] = replace(call, closed_unseen=reason)
        finally:
            self._close_reason = ""

    def _close_part(self, part: Part, now: float, out: list[Effect]) -> None:
        """Emit the activity of a finished part (ended when its agent left)."""
        call = self.calls[part.call_id]
        ended = part.left_at if part.left_at is not None else now
        answered = part.answered_at
        if part.transferred_to:
            outcome = "transferred"
        elif answered is not None:
            outcome = "consulted" if part.why == "consult" and not part.conference else "answered"
        elif part.originator:
            # The agent's own handset may have answered; the customer's fate is in
            # DialEnd's DialStatus (README point 14).
            outcome = _outbound_outcome(call)
        else:
            outcome = "missed"
        ring_from = part.alerting_at or part.offered_at
        picked_up = part.first_answered_at or answered
        ring_s = max(0.0, (picked_up if picked_up is not None else ended) - ring_from)
        talk_s = max(0.0, ended - answered - part.hold_s) if answered is not None else 0.0
        number = self._customer_number(call, part)
        extra: dict[str, Any] = {"why": part.why}
        closed_by = part.left_unseen or self._close_reason
        if closed_by:
            extra["closed_by"] = closed_by
        if part.consult_s:
            extra["consult_s"] = round(part.consult_s, 3)
        if part.conference:
            extra["conference"] = True
        record = ActivityRecord(
            id=part.activity_id,
            agent=part.agent,
            interaction_id=call.id,
            media="call",
            direction=call.direction,
            customer_number=number.raw,
            customer_e164=number.e164,
            queue=part.queue or call.queue,
            offered_at=part.offered_at,
            answered_at=answered,
            ended_at=ended,
            ring_s=ring_s,
            talk_s=talk_s,
            hold_s=part.hold_s,
            outcome=outcome,
            transfer_to=part.transferred_to,
            notes=part.notes,
            customer_record=part.customer_record,
            ended_while_disconnected=closed_by == "disconnected",
            extra=extra,
        )
        if outcome != "consulted":
            # A consultation is agent-to-agent talk: not the customer's talk time.
            call = replace(call, talk_s=call.talk_s + talk_s, hold_s=call.hold_s + part.hold_s)
            self.calls[call.id] = call
        if answered is None and part.last_pop is not None:
            # The agent was offered the call but did not take it (another agent
            # answered, ring-no-answer, the caller gave up): withdraw the pop.
            self._pop(part, "withdrawn", now, out)
        if (
            answered is None
            and part.last_pop is None
            and part.alerting_at is None
            and not part.originator
        ):
            # Never rang (a leg created and torn down at once): not worth an activity.
            self._publish_snapshot(part.agent, now, out)
            return
        self._emit_activity(self._wrapup_closed(record), now, out, closing=True)
        self._publish_snapshot(part.agent, now, out)

    def _extension(self, agent_id: str) -> str:
        return self._extensions.get(agent_id) or agent_id

    def _end_call(self, call: Call, now: float, out: list[Effect]) -> None:
        for key in [k for k in self.parts if k[0] == call.id]:
            self._agent_left(self.parts[key], now, out)
        self._settle_all(call.id, now, out, transfer_to="")
        call = self.calls.pop(call.id, call)
        for queue, waiting in self.waiting.items():
            if waiting.pop(call.id, None) is not None:  # its QueueCallerLeave was lost
                self._publish_queue(queue, now, out)
        if call.direction == "internal" and not call.agents:
            return
        number = self.numbers.normalize(call.customer_raw)
        outcome = self._call_outcome(call)
        wait = call.wait_s
        if wait is None and call.queued_at is not None:
            wait = max(0.0, (call.answered_at or now) - call.queued_at)
        record = CallRecord(
            interaction_id=call.id,
            media="call",
            direction=call.direction,
            customer_number=number.raw,
            customer_e164=number.e164,
            queue=call.queue,
            started_at=call.started_at,
            ended_at=now,
            answered_at=call.answered_at,
            wait_s=wait or 0.0,
            talk_s=call.talk_s,
            hold_s=call.hold_s,
            outcome=outcome,
            agents=call.agents,
            transfers=call.transfers,
            ended_while_disconnected=(call.closed_unseen or self._close_reason) == "disconnected",
        )
        payload = contract.call_record_payload(record, ts=now)
        message = Publish(contract.CRM_CALLS_TOPIC, payload, qos=1)
        out.append(EmitCall(record, (message,), unseen_close=record.ended_while_disconnected))

    def _call_outcome(self, call: Call) -> str:
        if call.answered_at is not None:
            return "answered"
        if call.direction == "outbound":
            return _outbound_outcome(call)
        if call.abandoned or (call.direction == "inbound" and (call.offered or call.agents)):
            return "abandoned"
        if call.direction == "inbound":
            # Never queued nor rung at an agent: handled by the IVR (a callback
            # request, an announcement), not abandoned by the caller.
            return "ivr"
        return "missed"

    # ------------------------------------------------------------------ agent state

    def _refresh_agents_of(self, call_id: str, now: float, out: list[Effect]) -> None:
        for part in self._parts_of_call(call_id):
            self._refresh_phone(part.agent, now, out)

    def _refresh_phone(self, agent_id: str, now: float, out: list[Effect]) -> None:
        agent = self.agents[agent_id]
        phone = self._phone_of(agent_id)
        if phone != agent.phone:
            agent = self._close_interval(agent, now, out)
            self.agents[agent_id] = replace(agent, phone=phone)
            for part in self._parts_of_agent(agent_id):
                self._call_update(part, phone.value, now, out)
            for queue in sorted(agent.queues):
                self._publish_queue(queue, now, out)
        self._publish_state(agent_id, now, out)

    def _parts_of_agent(self, agent_id: str) -> list[Part]:
        return [p for (_, a), p in self.parts.items() if a == agent_id]

    def _phone_of(self, agent_id: str) -> Phone:
        return phone_of(
            channel_phone(
                state=chan.state,
                held=chan.held or part.hold_since is not None,
                calling_out=part.originator and part.answered_at is None,
            )
            for part in self._parts_of_agent(agent_id)
            for chan in (self.channels.get(uid) for uid in part.channels)
            if chan is not None
        )

    def _call_update(self, part: Part, state: str, now: float, out: list[Effect]) -> None:
        call = self.calls.get(part.call_id)
        if call is None:
            return
        payload = contract.envelope(
            "call",
            now,
            agent=part.agent,
            interaction_id=call.id,
            media="call",
            direction=call.direction,
            state=state,
            number=self._customer_number(call, part).as_payload(),
            queue=part.queue or call.queue,
        )
        self._agent_publish(part.agent, "call", payload, now, out)

    def _publish_state(
        self, agent_id: str, now: float, out: list[Effect], *, force: bool = False
    ) -> None:
        agent = self.agents[agent_id]
        pbx = self.link.value
        key = (
            agent.presence,
            agent.reason,
            agent.phone,
            len(agent.parts),
            pbx,
            tuple(sorted(agent.queues.items())),
        )
        if key == agent.published and not force:
            return
        self.agents[agent_id] = replace(agent, published=key)
        payload = contract.envelope(
            "agent_state",
            now,
            agent=agent.id,
            presence=agent.presence.value,
            reason=agent.reason,
            phone=agent.phone.value,
            interactions=len(agent.parts),
            limit=agent.limit,
            pbx=pbx,
            since=contract.iso(agent.since) if agent.since else None,
            queues={q: {"paused": p, "reason": r} for q, (p, r) in sorted(agent.queues.items())},
        )
        self._agent_publish(agent_id, "state", payload, now, out, retain=True, qos=1)

    def _publish_snapshot(self, agent_id: str, now: float, out: list[Effect]) -> None:
        pops = [dict(p.last_pop) for p in self._parts_of_agent(agent_id) if p.last_pop is not None]
        payload = contract.envelope("snapshot", now, agent=agent_id, interactions=pops)
        self._agent_publish(agent_id, "snapshot", payload, now, out, retain=True, qos=1)

    def _next_seq(self, agent_id: str) -> int:
        agent = self.agents[agent_id]
        self.agents[agent_id] = replace(agent, seq=agent.seq + 1)
        return agent.seq + 1

    def _agent_publish(
        self,
        agent_id: str,
        leaf: str,
        payload: dict[str, Any],
        now: float,
        out: list[Effect],
        *,
        retain: bool = False,
        qos: int = 1,
    ) -> None:
        payload["seq"] = self._next_seq(agent_id)
        out.append(Publish(contract.agent_topic(agent_id, leaf), payload, retain=retain, qos=qos))


# ---------------------------------------------------------------------- helpers


def _without_stored(
    state: ModelState, stored_calls: frozenset[str], stored_activities: frozenset[str]
) -> ModelState:
    """``state`` without the calls and parts whose rows are stored (ended since)."""
    if not stored_calls and not stored_activities:
        return state

    def open_part(part: Part) -> bool:
        return part.call_id not in stored_calls and part.activity_id not in stored_activities

    parts = {key: p for key, p in state.parts.items() if open_part(p)}
    settling = {key: p for key, p in state.settling.items() if open_part(p)}
    agents = {
        agent_id: replace(agent, parts=frozenset(c for c in agent.parts if (c, agent_id) in parts))
        for agent_id, agent in state.agents.items()
    }
    return replace(
        state,
        channels={u: c for u, c in state.channels.items() if c.linkedid not in stored_calls},
        calls={i: c for i, c in state.calls.items() if i not in stored_calls},
        parts=parts,
        settling=settling,
        agents=agents,
        waiting={
            queue: {i: t for i, t in callers.items() if i not in stored_calls}
            for queue, callers in state.waiting.items()
        },
    )


def device_of(channel: str) -> str:
    """The device (queue member interface) of a channel name.

    ``PJSIP/1001-0000001a`` → ``PJSIP/1001``; ``IAX2/1001-12345`` → ``IAX2/1001``;
    ``Local/1002@internal-00000001;1`` → ``Local/1002@internal``. An interface
    such as ``PJSIP/1001`` is returned unchanged.
    """
    name = channel.split(";", 1)[0]
    tech, sep, rest = name.partition("/")
    if not sep:
        return name
    head, dash, tail = rest.rpartition("-")
    if dash and tail and all(c in "0123456789abcdefABCDEF" for c in tail):
        return f"{tech}/{head}"
    return name


# Q.850 causes on the customer's leg that say the call could not be placed at
# all, whatever DialStatus says: chan_iax2 reports an unallocated number (cause
# 1) as DialStatus NOANSWER (captures README point 14).
_FAILED_CAUSES = frozenset({"1", "2", "3", "20", "22", "27", "28", "34", "38", "41", "42", "47"})


def _outbound_outcome(call: Call) -> str:
    """What became of an unanswered outbound call: busy, no_answer or failed."""
    if call.customer_cause == "17":
        return "busy"
    if call.customer_cause in _FAILED_CAUSES:
        return "failed"
    return _DIAL_FAILURES.get(call.dial_status, "failed")


def join_notes(old: str, new: str) -> str:
    """An agent's notes with ``new`` added on a line of its own."""
    return f"{old}\n{new}" if old else new


def _no_match(number: Number) -> dict[str, Any]:
    return {"kind": "no_ani" if number.kind == "no_ani" else "none", "records": []}


def _local_exten(channel: str) -> str:
    """``Local/1002@internal-00000000;1`` → ``1002``; anything else → its device."""
    if channel.startswith("Local/"):
        return channel[len("Local/") :].split("@", 1)[0]
    return device_of(channel) if channel else ""


def _state_of(msg: AmiMessage) -> str:
    desc = msg.get("ChannelStateDesc").lower()
    return desc or _STATE_NAMES.get(msg.get("ChannelState"), "down")


def _clean(value: str) -> str:
    """AMI's ``<unknown>`` placeholder means "no value"."""
    return "" if value == "<unknown>" else value


def _duration(value: str) -> float:
    """``CoreShowChannel``'s ``Duration: 00:01:05`` in seconds (0 if unreadable)."""
    total = 0.0
    for part in value.split(":"):
        if not part.isdigit():
            return 0.0
        total = total * 60 + int(part)
    return total


def _float(value: str) -> float:
    """A duration header (``HoldTime``, ``Wait``) in seconds: never negative, NaN or infinite."""
    try:
        number = float(value)
    except ValueError:
        return 0.0
    return number if math.isfinite(number) and number >= 0 else 0.0


def specs_from(agents: Iterable[Any], limit: int) -> tuple[AgentSpec, ...]:
    """AgentSpecs from config agents (anything with ``id`` and ``devices``)."""
    return tuple(
        AgentSpec(id=a.id, devices=tuple(a.devices), limit=limit, extension=a.extension)
        for a in agents
    )
