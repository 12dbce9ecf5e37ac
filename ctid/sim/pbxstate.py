"""The PBX state behind the simulator: what a resync would find at this moment.

``PbxState`` follows the events the simulated Asterisk emits (``apply``) and
renders the answers of the resync actions the way Asterisk 22 does
(``core_show_channels``, ``status``, ``bridge_list``, ``bridge_info``,
``queue_status``, ``queue_summary``, ``device_state_list``). The shapes are the
ones recorded in ``ami-captures/reconnect.ami`` (captures README, point 17);
the items carry no ``ActionID`` and no ``Timestamp`` (point 18): the simulator
adds the ``ActionID`` when it frames the list.

What is tracked, and from which events:

* channels, keyed by ``Uniqueid``: created by ``Newchannel``; their snapshot
  (state, caller and connected line, context/exten/priority, linkedid) is
  replaced by ``Newstate``/``NewCallerid``/``NewConnectedLine``/``Newexten``/
  ``NewAccountCode``, which are the events Asterisk publishes when a channel
  snapshot changes; ``Newexten`` also sets ``Application``/``AppData``;
  ``BridgeEnter``/``BridgeLeave`` set the bridge; ``Rename`` the name;
  ``Hangup`` removes the channel. Events about a channel the state never saw
  created are ignored (a capture that starts mid-call needs ``seed``);
* bridges: ``BridgeCreate`` … ``BridgeDestroy``, with type, technology,
  creator, name and video mode from the latest bridge snapshot; the members
  are the channels whose bridge it is;
* queues: every queue named by a queue event; members from
  ``QueueMemberStatus``/``Added``/``Removed``/``Pause``/``Penalty``/
  ``Ringinuse`` (all carry the whole member); callers from
  ``QueueCallerJoin``/``QueueCallerLeave`` (``Wait`` from the join time);
  the counters of ``QueueParams`` from ``AgentConnect``/``AgentComplete``/
  ``QueueCallerAbandon`` with app_queue's formulas;
* device states from unsolicited ``DeviceStateChange``.

What no event tells (a queue's strategy and service level, the counters
before the stream began, a channel's formats) starts at Asterisk's defaults
or comes from ``seed``, which loads recorded list answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ctid.core.ami import AmiMessage

__all__ = ["CHANNEL_SNAPSHOT", "PbxState"]

CHANNEL_SNAPSHOT = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
)
"""Channel snapshot headers in Asterisk's order (``ast_manager_build_channel_state_string``)."""

_BRIDGE_SNAPSHOT = (
    "BridgeUniqueid",
    "BridgeType",
    "BridgeTechnology",
    "BridgeCreator",
    "BridgeName",
    "BridgeNumChannels",
    "BridgeVideoSourceMode",
    "BridgeVideoSource",
)

_MEMBER_FIELDS = (
    "StateInterface",
    "Membership",
    "Penalty",
    "CallsTaken",
    "LastCall",
    "LastPause",
    "LoginTime",
    "InCall",
    "Status",
    "Paused",
    "PausedReason",
    "Wrapuptime",
)
"""``QueueMember`` headers after ``Queue``/``Name``/``Location``, in Asterisk 22's order."""

# Events Asterisk's channel snapshot monitors publish when a snapshot changes
# (manager_channels.c). Other channel events carry a snapshot too, but one read
# on another topic (queue, dial) may be older than the channel's latest.
_SNAPSHOT_EVENTS = frozenset(
    {"newstate", "newcallerid", "newconnectedline", "newexten", "newaccountcode"}
)
_MEMBER_EVENTS = frozenset(
    {
        "queuememberstatus",
        "queuememberadded",
        "queuememberpause",
        "queuememberpenalty",
        "queuememberringinuse",
    }
)
# AST_DEVICE_NOT_INUSE and AST_DEVICE_UNKNOWN: app_queue's member_status_available().
_AVAILABLE = frozenset({"0", "1"})
# AST_DEVICE_INVALID and AST_DEVICE_UNAVAILABLE do not count as logged in (QueueSummary).
_LOGGED_OUT = frozenset({"4", "5"})


@dataclass(slots=True)
class _Channel:
    snapshot: dict[str, str]
    created: float
    application: str = ""
    app_data: str = ""
    bridge: str = ""
    dnid: str = ""
    status_extra: dict[str, str] = field(default_factory=dict)
    """``Status`` headers no event tells (formats, groups), from ``seed``."""

    @property
    def uniqueid(self) -> str:
        return self.snapshot.get("Uniqueid", "")

    @property
    def name(self) -> str:
        return self.snapshot.get("Channel", "")


@dataclass(slots=True)
class _Bridge:
    fields: dict[str, str]


@dataclass(slots=True)
class _Entry:
    uniqueid: str
    snapshot: dict[str, str]
    joined: float
    priority: str = "0"


@dataclass(slots=True)
class _Queue:
    name: str
    strategy: str = "ringall"
    max: str = "0"
    service_level: int = 0
    weight: str = "0"
    holdtime: int = 0
    talktime: int = 0
    completed: int = 0
    abandoned: int = 0
    completed_in_sl: int = 0
    abandoned_in_sl: int = 0
    members: dict[str, dict[str, str]] = field(default_factory=dict)
    """By ``Interface``: ``Name`` and the ``_MEMBER_FIELDS``."""
    entries: list[_Entry] = field(default_factory=list)


def _ami(event: str, pairs: Iterable[tuple[str, str]]) -> AmiMessage:
    return AmiMessage((("Event", event), *pairs))


def _int(value: str, default: int = 0) -> int:
    try:
        return int(value)
    except ValueError:
        return default


def _perf(part: int, whole: int) -> str:
    # app_queue prints "%2.1f" of a percentage, 0.0 without calls.
    return f"{(part * 100.0 / whole) if whole else 0.0:.1f}"


def _entry_id(value: str) -> str:
    """QueueEntry shows caller/connected line with ``S_COR(valid, str, "unknown")``.

    The snapshot renders an absent number as ``<unknown>``: the same absence.
    """
    return "unknown" if value in {"", "<unknown>"} else value


class PbxState:
    """The live calls, bridges and queues of a simulated Asterisk 22."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._bridges: dict[str, _Bridge] = {}
        self._queues: dict[str, _Queue] = {}
        self._devices: dict[str, str] = {}
        self._last_ts: float | None = None
        self._last_wall = 0.0
        self.applied = 0
        """How many events went through ``apply``."""

    # ----------------------------------------------------------------- clock

    def now(self) -> float:
        """The PBX clock: the last event's ``Timestamp`` plus the wall time since it was applied.

        A capture replayed with its recorded timestamps keeps its own epoch, so
        ``Duration``/``Wait`` computed with this clock match the capture; before
        any timestamped event it is the wall clock.
        """
        if self._last_ts is None:
            return time.time()
        return self._last_ts + (time.time() - self._last_wall)

    def _at(self, msg: AmiMessage) -> float:
        ts = msg.timestamp
        return self.now() if ts is None else ts

    # ----------------------------------------------------------------- inspection

    @property
    def channels(self) -> list[str]:
        """Names of the live channels, oldest first."""
        return [c.name for c in self._channels.values()]

    @property
    def uniqueids(self) -> list[str]:
        """``Uniqueid`` of the live channels, oldest first."""
        return list(self._channels)

    @property
    def bridges(self) -> dict[str, list[str]]:
        """Live bridges: ``BridgeUniqueid`` → names of the channels in it."""
        return {bid: [c.name for c in self._members(bid)] for bid in self._bridges}

    @property
    def queue_callers(self) -> dict[str, list[str]]:
        """Queues with waiting callers: queue → channel names in position order."""
        return {
            q.name: [self._entry_snapshot(e)["Channel"] for e in q.entries]
            for q in self._queues.values()
            if q.entries
        }

    @property
    def queue_members(self) -> dict[str, dict[str, dict[str, str]]]:
        """queue → interface → the member's fields (copies)."""
        return {q.name: {i: dict(m) for i, m in q.members.items()} for q in self._queues.values()}

    def channel(self, name_or_uniqueid: str) -> dict[str, str] | None:
        """The snapshot of a live channel (by name or ``Uniqueid``), or ``None``."""
        chan = self._channels.get(name_or_uniqueid) or self._by_name(name_or_uniqueid)
        return None if chan is None else dict(chan.snapshot)

    # ----------------------------------------------------------------- events

    def apply(self, msg: AmiMessage) -> None:
        """Change the state as Asterisk did when it emitted event ``msg``.

        List items answering an action (``ActionID`` without ``Timestamp``) are
        answers, not changes, and are ignored, like responses and unknown events.
        """
        name = msg.event.lower()
        if not name or (msg.action_id and "Timestamp" not in msg):
            return
        self.applied += 1
        ts = msg.timestamp
        if ts is not None:
            self._last_ts = ts
            self._last_wall = time.time()
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, msg)

    def apply_all(self, messages: Iterable[AmiMessage]) -> None:
        """``apply`` each message in order."""
        for msg in messages:
            self.apply(msg)

    def _snapshot_of(self, msg: AmiMessage) -> dict[str, str]:
        return {k: msg.get(k) for k in CHANNEL_SNAPSHOT}

    def _known(self, msg: AmiMessage) -> _Channel | None:
        return self._channels.get(msg.get("Uniqueid"))

    def _by_name(self, name: str) -> _Channel | None:
        return next((c for c in self._channels.values() if c.name == name), None)

    def _on_newchannel(self, msg: AmiMessage) -> None:
        snap = self._snapshot_of(msg)
        exten = snap["Exten"]
        # The dialed number of a call that came in (PJSIP request URI, IAX2
        # called number) is the exten the channel starts at; a channel the PBX
        # dials out starts at "s" and has no DNID (reconnect.ami, cti-5).
        tech = snap["Channel"].split("/", 1)[0]
        dnid = "" if exten in {"", "s"} or tech == "Local" else exten
        self._channels[snap["Uniqueid"]] = _Channel(snap, self._at(msg), dnid=dnid)

    def _on_snapshot(self, msg: AmiMessage) -> None:
        chan = self._known(msg)
        if chan is None:
            return
        chan.snapshot = self._snapshot_of(msg)
        if msg.event.lower() == "newexten":
            chan.application = msg.get("Application")
            chan.app_data = msg.get("AppData")

    def _on_rename(self, msg: AmiMessage) -> None:
        chan = self._known(msg)
        if chan is not None:
            chan.snapshot["Channel"] = msg.get("Newname")

    def _on_hangup(self, msg: AmiMessage) -> None:
        uid = msg.get("Uniqueid")
        self._channels.pop(uid, None)
        # Asterisk leaves bridges and queues before the Hangup; this only keeps
        # a stream with events missing from leaving ghosts in the lists.
        for queue in self._queues.values():
            queue.entries = [e for e in queue.entries if e.uniqueid != uid]

    def _bridge_fields(self, msg: AmiMessage) -> dict[str, str]:
        return {k: msg.get(k) for k in _BRIDGE_SNAPSHOT if k in msg}

    def _on_bridge(self, msg: AmiMessage) -> None:
        bid = msg.get("BridgeUniqueid")
        if not bid:
            return
        event = msg.event.lower()
        if event == "bridgedestroy":
            self._bridges.pop(bid, None)
            for member in self._members(bid):
                member.bridge = ""
            return
        bridge = self._bridges.setdefault(bid, _Bridge({}))
        bridge.fields.update(self._bridge_fields(msg))
        chan = self._known(msg)
        if chan is None or event == "bridgecreate":
            return
        if event == "bridgeenter":
            chan.bridge = bid
        elif chan.bridge == bid:
            chan.bridge = ""

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name)
        return queue

    def _on_member(self, msg: AmiMessage) -> None:
        queue = self._queue(msg.get("Queue"))
        member = {"Name": msg.get("MemberName")}
        member.update((k, msg.get(k)) for k in _MEMBER_FIELDS)
        queue.members[msg.get("Interface")] = member

    def _on_member_removed(self, msg: AmiMessage) -> None:
        self._queue(msg.get("Queue")).members.pop(msg.get("Interface"), None)

    def _on_caller_join(self, msg: AmiMessage) -> None:
        queue = self._queue(msg.get("Queue"))
        uid = msg.get("Uniqueid")
        queue.entries = [e for e in queue.entries if e.uniqueid != uid]
        pos = max(_int(msg.get("Position"), len(queue.entries) + 1) - 1, 0)
        queue.entries.insert(pos, _Entry(uid, self._snapshot_of(msg), self._at(msg)))

    def _on_caller_leave(self, msg: AmiMessage) -> None:
        queue = self._queue(msg.get("Queue"))
        uid = msg.get("Uniqueid")
        # Later callers move up: positions are the list order (app_queue leave_queue).
        queue.entries = [e for e in queue.entries if e.uniqueid != uid]

    def _on_abandon(self, msg: AmiMessage) -> None:
        queue = self._queue(msg.get("Queue"))
        queue.abandoned += 1
        if _int(msg.get("HoldTime")) <= queue.service_level:
            queue.abandoned_in_sl += 1

    def _on_agent_connect(self, msg: AmiMessage) -> None:
        queue = self._queue(msg.get("Queue"))
        # recalc_holdtime: a running average weighted 3:1 towards the old value.
        queue.holdtime = ((queue.holdtime << 2) - queue.holdtime + _int(msg.get("HoldTime"))) >> 2

    def _on_agent_complete(self, msg: AmiMessage) -> None:
        queue = self._queue(msg.get("Queue"))
        # update_queue: the same 3:1 running average for talk time, one more call completed.
        queue.talktime = ((queue.talktime << 2) - queue.talktime + _int(msg.get("TalkTime"))) >> 2
        queue.completed += 1
        if _int(msg.get("HoldTime")) <= queue.service_level:
            queue.completed_in_sl += 1

    def _on_queue_named(self, msg: AmiMessage) -> None:
        self._queue(msg.get("Queue"))

    def _on_device(self, msg: AmiMessage) -> None:
        self._devices[msg.get("Device")] = msg.get("State")

    # ----------------------------------------------------------------- seeding

    def define_queue(
        self,
        name: str,
        *,
        strategy: str = "ringall",
        service_level: int = 0,
        max_callers: int = 0,
        weight: int = 0,
    ) -> None:
        """Declare a queue with the settings no event carries (``queues.conf``)."""
        queue = self._queue(name)
        queue.strategy = strategy
        queue.service_level = service_level
        queue.max = str(max_callers)
        queue.weight = str(weight)

    def seed(self, items: Iterable[AmiMessage], now: float | None = None) -> None:
        """Load recorded list answers as the state at ``now`` (default: ``self.now()``).

        Understands ``CoreShowChannel``, ``Status``, ``BridgeListItem``,
        ``BridgeInfoComplete``, ``QueueParams``, ``QueueMember``, ``QueueEntry``
        and list ``DeviceStateChange`` items; anything else is skipped. For a
        capture that begins with calls already up (``reconnect.ami``): seed its
        answers, then ``apply`` the events that follow them.
        """
        at = self.now() if now is None else now
        if self._last_ts is None and now is not None:
            self._last_ts, self._last_wall = now, time.time()
        for item in items:
            name = item.event
            if name in {"CoreShowChannel", "Status"}:
                self._seed_channel(item, at)
            elif name in {"BridgeListItem", "BridgeInfoComplete"}:
                bid = item.get("BridgeUniqueid")
                self._bridges.setdefault(bid, _Bridge({})).fields.update(self._bridge_fields(item))
            elif name == "QueueParams":
                self._seed_params(item)
            elif name == "QueueMember":
                member = {"Name": item.get("Name")}
                member.update((k, item.get(k)) for k in _MEMBER_FIELDS)
                self._queue(item.get("Queue")).members[item.get("Location")] = member
            elif name == "QueueEntry":
                self._seed_entry(item, at)
            elif name == "DeviceStateChange":
                self._devices[item.get("Device")] = item.get("State")

    def _seed_channel(self, item: AmiMessage, at: float) -> None:
        uid = item.get("Uniqueid")
        chan = self._channels.get(uid)
        if chan is None:
            chan = self._channels[uid] = _Channel(self._snapshot_of(item), at)
        chan.snapshot = self._snapshot_of(item)
        if item.event == "CoreShowChannel":
            chan.application = item.get("Application")
            chan.app_data = item.get("ApplicationData")
            chan.bridge = item.get("BridgeId")
            h, m, s = (_int(p) for p in (item.get("Duration", "0:0:0").split(":") + ["0"] * 3)[:3])
            chan.created = at - (h * 3600 + m * 60 + s)
            return
        chan.application = item.get("Application")
        chan.app_data = item.get("Data")
        chan.bridge = item.get("BridgeID")
        chan.dnid = item.get("DNID")
        chan.created = at - _int(item.get("Seconds"))
        chan.status_extra = {k: item.get(k) for k in _STATUS_EXTRA if k in item}

    def _seed_params(self, item: AmiMessage) -> None:
        queue = self._queue(item.get("Queue"))
        queue.strategy = item.get("Strategy", queue.strategy)
        queue.max = item.get("Max", queue.max)
        queue.weight = item.get("Weight", queue.weight)
        queue.service_level = _int(item.get("ServiceLevel"))
        queue.holdtime = _int(item.get("Holdtime"))
        queue.talktime = _int(item.get("TalkTime"))
        queue.completed = _int(item.get("Completed"))
        queue.abandoned = _int(item.get("Abandoned"))
        # The in-service-level counts are only visible as percentages.
        perf = float(item.get("ServicelevelPerf") or 0)
        perf2 = float(item.get("ServicelevelPerf2") or 0)
        queue.completed_in_sl = round(perf * queue.completed / 100)
        total = queue.completed + queue.abandoned
        queue.abandoned_in_sl = max(round(perf2 * total / 100) - queue.completed_in_sl, 0)

    def _seed_entry(self, item: AmiMessage, at: float) -> None:
        queue = self._queue(item.get("Queue"))
        uid = item.get("Uniqueid")
        snap = dict.fromkeys(CHANNEL_SNAPSHOT, "")
        snap.update(
            (k, item.get(k)) for k in ("Channel", "Uniqueid", "CallerIDNum", "CallerIDName")
        )
        snap.update(
            (k, item.get(k)) for k in ("ConnectedLineNum", "ConnectedLineName") if k in item
        )
        entry = _Entry(uid, snap, at - _int(item.get("Wait")), item.get("Priority", "0"))
        queue.entries = [e for e in queue.entries if e.uniqueid != uid]
        pos = max(_int(item.get("Position"), len(queue.entries) + 1) - 1, 0)
        queue.entries.insert(pos, entry)

    # ----------------------------------------------------------------- rendering

    def _members(self, bridge_id: str) -> list[_Channel]:
        return [c for c in self._channels.values() if c.bridge == bridge_id]

    def _entry_snapshot(self, entry: _Entry) -> dict[str, str]:
        chan = self._channels.get(entry.uniqueid)
        return entry.snapshot if chan is None else chan.snapshot

    def core_show_channels(self, now: float | None = None) -> list[AmiMessage]:
        """``CoreShowChannel`` items, one per live channel."""
        at = self.now() if now is None else now
        out = []
        for chan in self._channels.values():
            # action_coreshowchannels: whole seconds of the ms difference, as H:M:S.
            secs = max(int(at - chan.created), 0)
            duration = f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"
            out.append(
                _ami(
                    "CoreShowChannel",
                    [
                        *((k, chan.snapshot.get(k, "")) for k in CHANNEL_SNAPSHOT),
                        ("Application", chan.application),
                        ("ApplicationData", chan.app_data),
                        ("Duration", duration),
                        ("BridgeId", chan.bridge),
                    ],
                )
            )
        return out

    def status(self, now: float | None = None, channel: str = "") -> list[AmiMessage]:
        """``Status`` items for every live channel (or the one named ``channel``)."""
        at = self.now() if now is None else now
        out = []
        for chan in self._channels.values():
            if channel and chan.name != channel:
                continue
            snap = chan.snapshot
            extra = {**_STATUS_DEFAULTS, **chan.status_extra}
            tech = chan.name.split("/", 1)[0]
            pairs = [
                ("Privilege", "Call"),
                *((k, snap.get(k, "")) for k in CHANNEL_SNAPSHOT),
                ("Type", tech),
                ("DNID", chan.dnid),
                ("EffectiveConnectedLineNum", snap.get("ConnectedLineNum", "")),
                ("EffectiveConnectedLineName", snap.get("ConnectedLineName", "")),
                ("TimeToHangup", "0"),
                ("BridgeID", chan.bridge),
                ("Application", chan.application),
                ("Data", chan.app_data),
                *((k, extra[k]) for k in _STATUS_EXTRA),
                # generate_status: now.tv_sec - creationtime.tv_sec.
                ("Seconds", str(max(int(at) - int(chan.created), 0))),
            ]
            out.append(_ami("Status", pairs))
        return out

    def bridge_list(self) -> list[AmiMessage]:
        """``BridgeListItem`` items, one per live bridge."""
        return [self._bridge_item("BridgeListItem", bid) for bid in self._bridges]

    def _bridge_pairs(self, bid: str) -> list[tuple[str, str]]:
        fields = {**_BRIDGE_DEFAULTS, **self._bridges[bid].fields}
        fields["BridgeUniqueid"] = bid
        fields["BridgeNumChannels"] = str(len(self._members(bid)))
        pairs = [(k, fields[k]) for k in _BRIDGE_SNAPSHOT[:-1]]
        if fields.get("BridgeVideoSource"):
            pairs.append(("BridgeVideoSource", fields["BridgeVideoSource"]))
        return pairs

    def _bridge_item(self, event: str, bid: str) -> AmiMessage:
        return _ami(event, self._bridge_pairs(bid))

    def bridge_info(self, bridge_id: str) -> tuple[list[AmiMessage], list[tuple[str, str]]] | None:
        """``BridgeInfoChannel`` items and the bridge headers of ``BridgeInfoComplete``.

        ``None`` if there is no such bridge.
        """
        if bridge_id not in self._bridges:
            return None
        items = [
            _ami("BridgeInfoChannel", ((k, c.snapshot.get(k, "")) for k in CHANNEL_SNAPSHOT))
            for c in self._members(bridge_id)
        ]
        return items, self._bridge_pairs(bridge_id)

    def queue_status(self, now: float | None = None) -> list[AmiMessage]:
        """``QueueParams`` + ``QueueMember`` + ``QueueEntry`` items, queue by queue."""
        at = self.now() if now is None else now
        out = []
        for q in self._queues.values():
            out.append(
                _ami(
                    "QueueParams",
                    [
                        ("Queue", q.name),
                        ("Max", q.max),
                        ("Strategy", q.strategy),
                        ("Calls", str(len(q.entries))),
                        ("Holdtime", str(q.holdtime)),
                        ("TalkTime", str(q.talktime)),
                        ("Completed", str(q.completed)),
                        ("Abandoned", str(q.abandoned)),
                        ("ServiceLevel", str(q.service_level)),
                        ("ServicelevelPerf", _perf(q.completed_in_sl, q.completed)),
                        (
                            "ServicelevelPerf2",
                            _perf(q.completed_in_sl + q.abandoned_in_sl, q.completed + q.abandoned),
                        ),
                        ("Weight", q.weight),
                    ],
                )
            )
            for interface, m in q.members.items():
                out.append(
                    _ami(
                        "QueueMember",
                        [
                            ("Queue", q.name),
                            ("Name", m["Name"]),
                            ("Location", interface),
                            *((k, m[k]) for k in _MEMBER_FIELDS),
                        ],
                    )
                )
            for pos, entry in enumerate(q.entries, 1):
                snap = self._entry_snapshot(entry)
                out.append(
                    _ami(
                        "QueueEntry",
                        [
                            ("Queue", q.name),
                            ("Position", str(pos)),
                            ("Channel", snap.get("Channel", "")),
                            ("Uniqueid", entry.uniqueid),
                            ("CallerIDNum", _entry_id(snap.get("CallerIDNum", ""))),
                            ("CallerIDName", _entry_id(snap.get("CallerIDName", ""))),
                            ("ConnectedLineNum", _entry_id(snap.get("ConnectedLineNum", ""))),
                            ("ConnectedLineName", _entry_id(snap.get("ConnectedLineName", ""))),
                            # (long)(now - qe->start) with time_t seconds.
                            ("Wait", str(max(int(at) - int(entry.joined), 0))),
                            ("Priority", entry.priority),
                        ],
                    )
                )
        return out

    def queue_summary(self, now: float | None = None) -> list[AmiMessage]:
        """``QueueSummary`` items, one per queue (``manager_queues_summary``)."""
        at = self.now() if now is None else now
        out = []
        for q in self._queues.values():
            logged_in = [m for m in q.members.values() if m["Status"] not in _LOGGED_OUT]
            available = [m for m in logged_in if m["Status"] in _AVAILABLE and m["Paused"] != "1"]
            longest = max((int(at) - int(e.joined) for e in q.entries), default=0)
            out.append(
                _ami(
                    "QueueSummary",
                    [
                        ("Queue", q.name),
                        ("LoggedIn", str(len(logged_in))),
                        ("Available", str(len(available))),
                        ("Callers", str(len(q.entries))),
                        ("HoldTime", str(q.holdtime)),
                        ("TalkTime", str(q.talktime)),
                        ("LongestHoldTime", str(max(longest, 0))),
                    ],
                )
            )
        return out

    def device_state_list(self) -> list[AmiMessage]:
        """``DeviceStateChange`` list items (``Device``, ``State``) for every device seen."""
        return [
            _ami("DeviceStateChange", (("Device", d), ("State", s)))
            for d, s in self._devices.items()
        ]

    def list_items(self, action: str, now: float | None = None) -> list[AmiMessage] | None:
        """The items answering list action ``action`` (case-insensitive), or ``None``.

        ``ExtensionStateList`` is always empty: hints are not simulated (the
        lab had none either, captures README point 17).
        """
        key = action.lower()
        if key == "coreshowchannels":
            return self.core_show_channels(now)
        if key == "status":
            return self.status(now)
        if key == "bridgelist":
            return self.bridge_list()
        if key == "queuestatus":
            return self.queue_status(now)
        if key == "queuesummary":
            return self.queue_summary(now)
        if key == "devicestatelist":
            return self.device_state_list()
        if key == "extensionstatelist":
            return []
        return None


_STATUS_EXTRA = (
    "Nativeformats",
    "Readformat",
    "Readtrans",
    "Writeformat",
    "Writetrans",
    "Callgroup",
    "Pickupgroup",
)
# What the lab's PJSIP channels reported (reconnect.ami, cti-5): ulaw, no groups.
_STATUS_DEFAULTS = {
    "Nativeformats": "(ulaw)",
    "Readformat": "ulaw",
    "Readtrans": "",
    "Writeformat": "ulaw",
    "Writetrans": "",
    "Callgroup": "0",
    "Pickupgroup": "0",
}
# A basic two-party bridge as BridgeCreate announces it (reconnect.ami, cti-6).
_BRIDGE_DEFAULTS = {
    "BridgeType": "basic",
    "BridgeTechnology": "simple_bridge",
    "BridgeCreator": "<unknown>",
    "BridgeName": "<unknown>",
    "BridgeVideoSourceMode": "none",
}

_HANDLERS = {
    "newchannel": PbxState._on_newchannel,
    **dict.fromkeys(_SNAPSHOT_EVENTS, PbxState._on_snapshot),
    "rename": PbxState._on_rename,
    "hangup": PbxState._on_hangup,
    "bridgecreate": PbxState._on_bridge,
    "bridgeenter": PbxState._on_bridge,
    "bridgeleave": PbxState._on_bridge,
    "bridgedestroy": PbxState._on_bridge,
    **dict.fromkeys(_MEMBER_EVENTS, PbxState._on_member),
    "queuememberremoved": PbxState._on_member_removed,
    "queuecallerjoin": PbxState._on_caller_join,
    "queuecallerleave": PbxState._on_caller_leave,
    "queuecallerabandon": PbxState._on_abandon,
    "agentconnect": PbxState._on_agent_connect,
    "agentcomplete": PbxState._on_agent_complete,
    "agentcalled": PbxState._on_queue_named,
    "agentringnoanswer": PbxState._on_queue_named,
    "devicestatechange": PbxState._on_device,
}
