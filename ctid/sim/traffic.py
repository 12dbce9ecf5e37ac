"""Scripted contact-center traffic shaped like Asterisk 22 with PJSIP.

``generate`` runs a small discrete-event simulation of one queue (``support``,
linear hunt) with ``agents`` handsets ``PJSIP/1001…`` and ``callers`` inbound
calls over ``PJSIP/carrier-…``, and yields the AMI events a client of that PBX
would receive, in time order. The shapes (header order, ``Timestamp`` as the
third header, ``Uniqueid``/``Linkedid`` like ``1795308161.0``, channel names
like ``PJSIP/1001-0000000a``, which events come in which order) are copied from
the captures ``inbound_answered``, ``inbound_abandoned``,
``agent_ring_noanswer`` and ``blind_transfer``.

Per call, decided by a seeded ``random.Random`` (same seed, same stream):

* the caller abandons with probability ``abandon``: they hang up after a
  patience of a few seconds, before any agent answers (``QueueCallerAbandon``
  comes before ``QueueCallerLeave``; an agent being rung gets ``DialEnd
  CANCEL``);
* otherwise each agent rung answers with probability ``answer``; one who does
  not gets ``AgentRingNoAnswer`` after the ring timeout (``DialEnd NOANSWER``
  then ``CANCEL``, as recorded), and the next free agent is rung;
* an answered call is blind-transferred with probability ``transfer`` to
  another agent, if one is free at that moment (``Unhold``, ``BlindTransfer``,
  ``AgentComplete Reason: transfer``, then a plain dial from the customer
  channel to the target);
* a caller still unanswered after ``Timing.max_wait`` leaves the queue
  (timeout) and is hung up.

Not simulated: the many ``VarSet``/``Newexten`` of a real dialplan beyond a
few, RTCP events, holds, attended transfers, several queues.
"""

from __future__ import annotations

import heapq
import random
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace

from ctid.core.ami import AmiMessage

__all__ = [
    "DEFAULT_START_TS",
    "Timing",
    "agent_extensions",
    "generate",
    "queue_status_items",
]

DEFAULT_START_TS = 1795400000.0
"""A fixed start so that a seed alone fixes the stream (2026-11-22, like the captures)."""

SERVICE_NUMBER = "+49301234500"
"""The DID that routes to the ``support`` queue in the lab the captures come from."""

_STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}

_NAMES = (
    "Max Mustermann",
    "Erika Musterfrau",
    "Jürgen Müller-Lüdenscheidt",
    "Hans Meier",
    "Zoë Weiß",
    "Ömer Öztürk",
    "François Dupont",
    "Klaus Kunde",
    "Anna Schmidt",
    "Łukasz Nowak",
)


@dataclass(frozen=True, slots=True)
class Timing:
    """Durations of the simulated contact center, in seconds."""

    mean_talk: float = 90.0
    min_talk: float = 5.0
    ring_min: float = 1.0
    """Ring time of an agent who answers: uniform between ``ring_min`` and ``ring_max``."""
    ring_max: float = 6.0
    ring_timeout: float = 15.0
    """Ring time of an agent who does not answer (queue member ``timeout``)."""
    retry: float = 1.0
    """Pause after a ring-no-answer before the next agent is rung (queue ``retry``)."""
    ivr: float = 0.5
    """From answering the customer channel to joining the queue."""
    patience_min: float = 3.0
    patience_max: float = 40.0
    max_wait: float = 120.0
    """Queue timeout (``Queue(support,tTc,,,120)`` in the captures' dialplan)."""
    mean_interarrival: float | None = None
    """Mean seconds between calls; by default the agents are kept about 80% busy."""


def agent_extensions(agents: int) -> list[str]:
    """The extensions of ``agents`` agents: ``1001``, ``1002``, …"""
    return [str(1001 + i) for i in range(agents)]


def queue_status_items(
    agents: int, queue: str = "support", login_time: float = DEFAULT_START_TS - 3600
) -> list[AmiMessage]:
    """``QueueParams`` and idle ``QueueMember`` items for the simulator's ``QueueStatus``.

    Matches the agents ``generate`` uses, in the Asterisk 22 shape (``ActionID``
    is added by the simulator).
    """
    items = [
        AmiMessage.build(
            [
                ("Event", "QueueParams"),
                ("Queue", queue),
                ("Max", "0"),
                ("Strategy", "linear"),
                ("Calls", "0"),
                ("Holdtime", "0"),
                ("TalkTime", "0"),
                ("Completed", "0"),
                ("Abandoned", "0"),
                ("ServiceLevel", "20"),
                ("ServicelevelPerf", "0.0"),
                ("ServicelevelPerf2", "0.0"),
                ("Weight", "0"),
            ]
        )
    ]
    for ext in agent_extensions(agents):
        items.append(
            AmiMessage.build(
                [
                    ("Event", "QueueMember"),
                    ("Queue", queue),
                    ("Name", f"Agent {ext}"),
                    ("Location", f"PJSIP/{ext}"),
                    ("StateInterface", f"PJSIP/{ext}"),
                    ("Membership", "static"),
                    ("Penalty", "0"),
                    ("CallsTaken", "0"),
                    ("LastCall", "0"),
                    ("LastPause", "0"),
                    ("LoginTime", str(int(login_time))),
                    ("InCall", "0"),
                    ("Status", "1"),
                    ("Paused", "0"),
                    ("PausedReason", ""),
                    ("Wrapuptime", "0"),
                ]
            )
        )
    return items


def generate(
    agents: int = 5,
    callers: int = 20,
    *,
    seed: int = 0,
    answer: float = 0.8,
    abandon: float = 0.1,
    transfer: float = 0.1,
    no_ani: float = 0.05,
    start_ts: float = DEFAULT_START_TS,
    queue: str = "support",
    timing: Timing | None = None,
    dialplan_events: bool = True,
) -> Iterator[AmiMessage]:
    """Yield the AMI events of ``callers`` inbound calls to ``agents`` agents, in time order.

    ``answer``: probability that a rung agent answers; ``abandon``: that a
    caller hangs up before being answered; ``transfer``: that an answered call
    is blind-transferred (only if another agent is free at that moment);
    ``no_ani``: that the caller has no caller ID. The first call arrives at
    ``start_ts``. ``dialplan_events`` adds the handful of
    ``Newexten``/``VarSet`` the lab dialplan produces per call (real traffic is
    mostly those).
    """
    if agents < 1:
        raise ValueError("agents must be at least 1")
    for name, p in (("answer", answer), ("abandon", abandon), ("transfer", transfer)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability, got {p}")
    sim = _ContactCenter(
        agents=agents,
        # Reproducible simulation, not cryptography.
        rng=random.Random(seed),  # noqa: S311
        answer=answer,
        abandon=abandon,
        transfer=transfer,
        no_ani=no_ani,
        start_ts=start_ts,
        queue=queue,
        timing=timing or Timing(),
        dialplan_events=dialplan_events,
    )
    return sim.run(callers)


# --------------------------------------------------------------------------- model


@dataclass(slots=True)
class _Channel:
    """A channel snapshot as Asterisk prints it in every channel event."""

    name: str
    uniqueid: str
    linkedid: str
    cid_num: str
    cid_name: str
    context: str
    exten: str
    state: int = 0
    col_num: str = "<unknown>"
    col_name: str = "<unknown>"
    priority: int = 1

    def headers(self, prefix: str = "") -> list[tuple[str, str]]:
        return [
            (f"{prefix}Channel", self.name),
            (f"{prefix}ChannelState", str(self.state)),
            (f"{prefix}ChannelStateDesc", _STATE_DESC[self.state]),
            (f"{prefix}CallerIDNum", self.cid_num),
            (f"{prefix}CallerIDName", self.cid_name),
            (f"{prefix}ConnectedLineNum", self.col_num),
            (f"{prefix}ConnectedLineName", self.col_name),
            (f"{prefix}Language", "en"),
            (f"{prefix}AccountCode", ""),
            (f"{prefix}Context", self.context),
            (f"{prefix}Exten", self.exten),
            (f"{prefix}Priority", str(self.priority)),
            (f"{prefix}Uniqueid", self.uniqueid),
            (f"{prefix}Linkedid", self.linkedid),
        ]


@dataclass(slots=True)
class _Agent:
    ext: str
    order: int
    free: bool = True
    calls_taken: int = 0
    last_call: int = 0

    @property
    def interface(self) -> str:
        return f"PJSIP/{self.ext}"

    @property
    def name(self) -> str:
        return f"Agent {self.ext}"


@dataclass(slots=True)
class _Caller:
    """A call in the queue, from ``QueueCallerJoin`` to ``QueueCallerLeave``."""

    chan: _Channel
    joined: float = 0.0
    position: int = 0
    last_agent: _Agent | None = None


@dataclass(eq=False, slots=True)
class _WaitAgent:
    """Yielded by a call process: resume me with a free agent, or ``None`` at ``deadline``."""

    caller: _Caller
    deadline: float
    proc: _Proc | None = None
    done: bool = False


_Proc = Generator["float | _WaitAgent", "_Agent | None", None]


@dataclass(order=True, slots=True)
class _Wakeup:
    at: float
    seq: int
    proc: _Proc = field(compare=False)
    value: _Agent | None = field(compare=False, default=None)
    wait: _WaitAgent | None = field(compare=False, default=None)


class _ContactCenter:
    """The simulation: a clock, a run queue of call processes, agents, and the event output."""

    def __init__(
        self,
        *,
        agents: int,
        rng: random.Random,
        answer: float,
        abandon: float,
        transfer: float,
        no_ani: float,
        start_ts: float,
        queue: str,
        timing: Timing,
        dialplan_events: bool,
    ) -> None:
        self.rng = rng
        self.p_answer = answer
        self.p_abandon = abandon
        self.p_transfer = transfer
        self.p_no_ani = no_ani
        self.queue = queue
        self.t = timing
        self.dialplan_events = dialplan_events
        self.agents = [_Agent(ext, i) for i, ext in enumerate(agent_extensions(agents))]
        self.now = start_ts
        self.last_ts = start_ts
        # The agents logged in to their phones an hour before the traffic starts.
        self.login_time = int(start_ts) - 3600
        self.seq = 0
        self.channel_counter = 0
        self.carrier_calls = 0
        self.in_queue: list[_Caller] = []
        self.waiting: list[_WaitAgent] = []
        self.wakeups: list[_Wakeup] = []
        self.out: list[AmiMessage] = []
        self.mean_interarrival = timing.mean_interarrival or (
            (timing.mean_talk + timing.ring_max) / (agents * 0.8)
        )

    # ------------------------------------------------------------------ scheduler

    def run(self, callers: int) -> Iterator[AmiMessage]:
        at = self.now
        for _ in range(callers):
            self._schedule(at, self._call())
            at += self.rng.expovariate(1.0 / self.mean_interarrival)
        while self.wakeups:
            wake = heapq.heappop(self.wakeups)
            if wake.wait is not None:
                if wake.wait.done:
                    continue  # the agent came first; this was the patience timer
                self._stop_waiting(wake.wait)
            self.now = max(self.now, wake.at)
            self._step(wake.proc, wake.value)
            yield from self.out
            self.out.clear()

    def _schedule(
        self, at: float, proc: _Proc, value: _Agent | None = None, wait: _WaitAgent | None = None
    ) -> None:
        self.seq += 1
        heapq.heappush(self.wakeups, _Wakeup(at, self.seq, proc, value, wait))

    def _step(self, proc: _Proc, value: _Agent | None) -> None:
        try:
            request = proc.send(value)
        except StopIteration:
            return
        if isinstance(request, _WaitAgent):
            request.proc = proc
            self.waiting.append(request)
            self._schedule(request.deadline, proc, None, request)
            self._hand_out_agents()
        else:
            self._schedule(self.now + request, proc)

    def _stop_waiting(self, wait: _WaitAgent) -> None:
        wait.done = True
        self.waiting.remove(wait)

    def _hand_out_agents(self) -> None:
        """Give free agents to waiting callers, longest waiting first (linear hunt)."""
        for wait in sorted(self.waiting, key=lambda w: w.caller.joined):
            agent = self._pick_agent(wait.caller.last_agent)
            if agent is None:
                return
            agent.free = False
            self._stop_waiting(wait)
            assert wait.proc is not None
            self._schedule(self.now, wait.proc, agent)

    def _pick_agent(self, after: _Agent | None) -> _Agent | None:
        """The next free agent in member order, starting after the one rung last."""
        start = 0 if after is None else after.order + 1
        n = len(self.agents)
        for i in range(n):
            agent = self.agents[(start + i) % n]
            if agent.free:
                return agent
        return None

    def _release(self, agent: _Agent) -> None:
        agent.free = True
        self._hand_out_agents()

    # ------------------------------------------------------------------ output

    def _emit(self, event: str, privilege: str, fields: list[tuple[str, str]]) -> None:
        # A few microseconds apart, never backwards, like the recorded streams.
        self.last_ts = max(self.last_ts + 0.000015, self.now)
        self.out.append(
            AmiMessage(
                (
                    ("Event", event),
                    ("Privilege", f"{privilege},all"),
                    ("Timestamp", f"{self.last_ts:.6f}"),
                    *fields,
                )
            )
        )

    def _chan_event(self, event: str, chan: _Channel, *extra: tuple[str, str]) -> None:
        self._emit(event, "call", [*chan.headers(), *extra])

    def _dial_event(
        self, event: str, src: _Channel, dst: _Channel, *extra: tuple[str, str]
    ) -> None:
        self._emit(event, "call", [*src.headers(), *dst.headers("Dest"), *extra])

    def _device(self, device: str, state: str) -> None:
        self._emit("DeviceStateChange", "call", [("Device", device), ("State", state)])

    def _member_status(self, agent: _Agent, status: int) -> None:
        self._emit(
            "QueueMemberStatus",
            "agent",
            [
                ("Queue", self.queue),
                ("MemberName", agent.name),
                ("Interface", agent.interface),
                ("StateInterface", agent.interface),
                ("Membership", "static"),
                ("Penalty", "0"),
                ("CallsTaken", str(agent.calls_taken)),
                ("LastCall", str(agent.last_call)),
                ("LastPause", "0"),
                ("LoginTime", str(self.login_time)),
                ("InCall", "0"),
                ("Status", str(status)),
                ("Paused", "0"),
                ("PausedReason", ""),
                ("Ringinuse", "0"),
                ("Wrapuptime", "0"),
            ],
        )

    def _agent_busy(self, agent: _Agent) -> None:
        # PJSIP endpoints with device_state_busy_at=1: ringing already shows BUSY (3).
        self._device(agent.interface, "BUSY")
        self._member_status(agent, 3)

    def _agent_idle(self, agent: _Agent) -> None:
        self._device(agent.interface, "NOT_INUSE")
        self._member_status(agent, 1)

    def _agent_event(
        self, event: str, caller: _Channel, leg: _Channel, agent: _Agent, *extra: tuple[str, str]
    ) -> None:
        self._emit(
            event,
            "agent",
            [
                *caller.headers(),
                *leg.headers("Dest"),
                ("Queue", self.queue),
                ("Interface", agent.interface),
                ("MemberName", agent.name),
                *extra,
            ],
        )

    def _hangup(self, chan: _Channel, cause: int = 16) -> None:
        text = {0: "Unknown", 16: "Normal Clearing"}[cause]
        self._chan_event("Hangup", chan, ("Cause", str(cause)), ("Cause-txt", text))

    def _bridge_headers(self, bridge: str, members: int) -> list[tuple[str, str]]:
        return [
            ("BridgeUniqueid", bridge),
            ("BridgeType", "basic"),
            ("BridgeTechnology", "simple_bridge"),
            ("BridgeCreator", "<unknown>"),
            ("BridgeName", "<unknown>"),
            ("BridgeNumChannels", str(members)),
            ("BridgeVideoSourceMode", "none"),
        ]

    def _bridge(self, event: str, bridge: str, members: int, chan: _Channel | None = None) -> None:
        fields = self._bridge_headers(bridge, members)
        if chan is not None:
            fields += chan.headers()
        self._emit(event, "call", fields)

    def _bridge_up(self, first: _Channel, second: _Channel) -> str:
        bridge = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self._bridge("BridgeCreate", bridge, 0)
        self._bridge("BridgeEnter", bridge, 1, first)
        self._bridge("BridgeEnter", bridge, 2, second)
        return bridge

    def _bridge_down(self, bridge: str, first: _Channel, second: _Channel) -> None:
        self._bridge("BridgeLeave", bridge, 1, first)
        self._bridge("BridgeLeave", bridge, 0, second)
        self._bridge("BridgeDestroy", bridge, 0)

    def _cdr(self, chan: _Channel, dest: _Channel | None, start: float, answered: bool) -> None:
        def stamp(t: float) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

        duration = str(int(self.now - start))
        self._emit(
            "Cdr",
            "cdr",
            [
                ("AccountCode", ""),
                ("Source", chan.cid_num),
                ("Destination", SERVICE_NUMBER),
                ("DestinationContext", "from-trunk"),
                ("CallerID", f'"{chan.cid_name}" <{chan.cid_num}>'),
                ("Channel", chan.name),
                ("DestinationChannel", dest.name if dest else ""),
                ("LastApplication", "Queue"),
                ("LastData", f"{self.queue},tTc,,,120"),
                ("StartTime", stamp(start)),
                ("AnswerTime", stamp(start)),
                ("EndTime", stamp(self.now)),
                ("Duration", duration),
                ("BillableSeconds", duration),
                ("Disposition", "ANSWERED" if answered else "NO ANSWER"),
                ("AMAFlags", "DOCUMENTATION"),
                ("UniqueID", chan.uniqueid),
                ("UserField", f"did:{SERVICE_NUMBER}"),
            ],
        )

    def _dialplan(
        self, chan: _Channel, app: str, data: str, var: tuple[str, str] | None = None
    ) -> None:
        if not self.dialplan_events:
            return
        self._chan_event(
            "Newexten", chan, ("Extension", chan.exten), ("Application", app), ("AppData", data)
        )
        if var is not None:
            self._emit(
                "VarSet", "dialplan", [*chan.headers(), ("Variable", var[0]), ("Value", var[1])]
            )

    # ------------------------------------------------------------------ channels

    def _new_channel(
        self,
        *,
        endpoint: str,
        cid_num: str,
        cid_name: str,
        context: str,
        exten: str,
        linkedid: str = "",
    ) -> _Channel:
        n = self.channel_counter
        self.channel_counter += 1
        uniqueid = f"{int(self.now)}.{n}"
        return _Channel(
            name=f"PJSIP/{endpoint}-{n:08x}",
            uniqueid=uniqueid,
            linkedid=linkedid or uniqueid,
            cid_num=cid_num,
            cid_name=cid_name,
            context=context,
            exten=exten,
        )

    def _customer(self) -> tuple[str, str]:
        if self.rng.random() < self.p_no_ani:
            return "anonymous", "Anonymous"
        name = self.rng.choice(_NAMES)
        # PJSIP passes the From user part verbatim, so formats vary (README point 19).
        style = self.rng.random()
        if style < 0.6:
            number = (
                f"+49{self.rng.choice(['30', '40', '89', '176'])}{self.rng.randrange(10**6, 10**8)}"
            )
        elif style < 0.9:
            number = f"0{self.rng.choice(['30', '40', '89'])}{self.rng.randrange(10**6, 10**8)}"
        else:
            number = f"030 {self.rng.randrange(10**6, 10**7)}"
        return number, name

    def _agent_leg(self, agent: _Agent, customer: _Channel) -> _Channel:
        return self._new_channel(
            endpoint=agent.ext,
            cid_num=agent.ext,
            cid_name=agent.name,
            context="internal",
            exten="s",
            linkedid=customer.linkedid,
        )

    def _connect_lines(self, a: _Channel, b: _Channel) -> None:
        a.col_num, a.col_name = b.cid_num, b.cid_name
        b.col_num, b.col_name = a.cid_num, a.cid_name

    # ------------------------------------------------------------------ queue

    def _join_queue(self, caller: _Caller) -> None:
        self.in_queue.append(caller)
        caller.joined = self.now
        caller.position = len(self.in_queue)
        if len(self.in_queue) == 1:
            self._device(f"Queue:{self.queue}", "RINGING")
        self._chan_event(
            "QueueCallerJoin",
            caller.chan,
            ("Queue", self.queue),
            ("Position", str(caller.position)),
            ("Count", str(len(self.in_queue))),
        )

    def _leave_queue(self, caller: _Caller) -> None:
        position = self.in_queue.index(caller) + 1
        self.in_queue.remove(caller)
        if not self.in_queue:
            self._device(f"Queue:{self.queue}", "NOT_INUSE")
        self._chan_event(
            "QueueCallerLeave",
            caller.chan,
            ("Queue", self.queue),
            ("Position", str(position)),
            ("Count", str(len(self.in_queue))),
        )

    # ------------------------------------------------------------------ one call

    def _call(self) -> _Proc:
        """The life of one inbound call, as a process of the simulation."""
        t = self.t
        rng = self.rng
        will_abandon = rng.random() < self.p_abandon
        wants_transfer = rng.random() < self.p_transfer
        cid_num, cid_name = self._customer()
        start = self.now

        self._security_events()
        cust = self._new_channel(
            endpoint="carrier",
            cid_num=cid_num,
            cid_name=cid_name,
            context="from-trunk",
            exten=SERVICE_NUMBER,
        )
        cust.state = 4
        self._chan_event("Newchannel", cust)
        self._dialplan(cust, "NoOp", f'Inbound DID {SERVICE_NUMBER} from "{cid_name}" <{cid_num}>')
        cust.priority = 2
        self._dialplan(
            cust, "Set", "__TRANSFER_CONTEXT=internal", ("__TRANSFER_CONTEXT", "internal")
        )
        cust.priority = 5
        self._dialplan(cust, "Answer", "")
        cust.state = 6
        self._chan_event("Newstate", cust)
        self.carrier_calls += 1
        if self.carrier_calls == 1:
            self._device("PJSIP/carrier", "INUSE")

        yield t.ivr
        cust.priority = 6
        self._dialplan(cust, "Queue", f"{self.queue},tTc,,,120", ("QUEUEWAIT", ""))
        caller = _Caller(cust)
        self._join_queue(caller)
        self._chan_event("MusicOnHoldStart", cust, ("Class", "default"))

        give_up = self.now + (
            rng.uniform(t.patience_min, t.patience_max) if will_abandon else t.max_wait
        )
        agent: _Agent | None = None
        leg: _Channel | None = None
        last_leg: _Channel | None = None
        ring = 0.0
        answered = False
        while self.now < give_up:
            agent = yield _WaitAgent(caller, give_up)
            if agent is None:
                break
            caller.last_agent = agent
            leg = last_leg = self._ring(cust, agent)
            answers = not will_abandon and rng.random() < self.p_answer
            ring = rng.uniform(t.ring_min, t.ring_max) if answers else t.ring_timeout
            if self.now + ring >= give_up:
                yield give_up - self.now
                break  # still ringing when the caller gives up (or the queue times out)
            yield ring
            if answers:
                answered = True
                break
            self._ring_no_answer(cust, leg, agent, ring)
            self._release(agent)
            agent = leg = None
            yield t.retry

        if not answered or agent is None or leg is None:
            self._give_up(caller, agent, leg, abandoned=will_abandon)
            self._cdr(cust, last_leg, start, answered=False)
            self._carrier_done()
            return
        hold = self.now - caller.joined
        yield from self._talk(
            caller=caller,
            agent=agent,
            leg=leg,
            hold=hold,
            ring=ring,
            wants_transfer=wants_transfer,
            start=start,
        )

    def _security_events(self) -> None:
        # Every INVITE from the carrier is challenged (README point 2).
        session = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        common = [
            ("EventTV", time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(self.now))),
            ("Severity", "Informational"),
            ("Service", "PJSIP"),
            ("EventVersion", "1"),
        ]
        address = [
            ("SessionID", session),
            ("LocalAddress", "IPV4/UDP/127.0.0.1/5060"),
            ("RemoteAddress", "IPV4/UDP/127.0.0.1/5071"),
        ]
        self._emit(
            "ChallengeSent",
            "security",
            [*common, ("AccountID", "<unknown>"), *address, ("Challenge", "")],
        )
        self._emit(
            "SuccessfulAuth",
            "security",
            [*common, ("AccountID", "carrier"), *address, ("UsingPassword", "1")],
        )

    def _ring(self, cust: _Channel, agent: _Agent) -> _Channel:
        """Queue rings ``agent``: from ``Newchannel`` of the leg to ``DialState RINGING``."""
        leg = self._agent_leg(agent, cust)
        self._chan_event("Newchannel", leg)
        # AgentCalled already shows the leg as it will be once dialled; DialBegin shows it raw.
        called = replace(leg, col_num=cust.cid_num, col_name=cust.cid_name, exten=cust.exten)
        self._agent_event("AgentCalled", cust, called, agent)
        self._dial_event("DialBegin", cust, leg, ("DialString", agent.interface))
        self._connect_lines(cust, leg)
        leg.exten = cust.exten
        self._chan_event("NewConnectedLine", cust)
        leg.state = 5
        self._chan_event("Newstate", leg)
        self._chan_event("NewConnectedLine", leg)
        self._agent_busy(agent)
        self._dial_event("DialState", cust, leg, ("DialStatus", "RINGING"))
        return leg

    def _ring_no_answer(self, cust: _Channel, leg: _Channel, agent: _Agent, ring: float) -> None:
        self._agent_event(
            "AgentRingNoAnswer", cust, leg, agent, ("RingTime", str(int(ring * 1000)))
        )
        # Recorded: NOANSWER and then CANCEL for the same leg (README point 15).
        self._dial_event("DialEnd", cust, leg, ("DialStatus", "NOANSWER"))
        self._dial_event("DialEnd", cust, leg, ("DialStatus", "CANCEL"))
        self._hangup(leg, cause=0)
        self._agent_idle(agent)

    def _give_up(
        self, caller: _Caller, agent: _Agent | None, leg: _Channel | None, *, abandoned: bool
    ) -> None:
        """The caller hangs up (abandon) or the queue times out while waiting or ringing."""
        cust = caller.chan
        if abandoned:
            self._chan_event("HangupRequest", cust, ("Cause", "16"))
        self._chan_event("MusicOnHoldStop", cust)
        if leg is not None:
            self._dial_event("DialEnd", cust, leg, ("DialStatus", "CANCEL"))
        if abandoned:
            self._chan_event(
                "QueueCallerAbandon",
                cust,
                ("Queue", self.queue),
                ("Position", str(self.in_queue.index(caller) + 1)),
                ("OriginalPosition", str(caller.position)),
                ("HoldTime", str(int(self.now - caller.joined))),
            )
        if leg is not None:
            self._hangup(leg, cause=0)
        self._leave_queue(caller)
        self._chan_event("SoftHangupRequest", cust, ("Cause", "16"))
        if leg is not None and agent is not None:
            self._agent_idle(agent)
            self._release(agent)
        self._hangup(cust)

    def _carrier_done(self) -> None:
        self.carrier_calls -= 1
        if self.carrier_calls == 0:
            self._device("PJSIP/carrier", "UNAVAILABLE")

    def _talk(
        self,
        *,
        caller: _Caller,
        agent: _Agent,
        leg: _Channel,
        hold: float,
        ring: float,
        wants_transfer: bool,
        start: float,
    ) -> _Proc:
        """Answered: connect, talk, maybe blind-transfer, hang up."""
        t = self.t
        rng = self.rng
        cust = caller.chan
        leg.state = 6
        self._chan_event("Newstate", leg)
        self._dial_event("DialEnd", cust, leg, ("DialStatus", "ANSWER"))
        self._chan_event("MusicOnHoldStop", cust)
        self._leave_queue(caller)
        self._agent_event(
            "AgentConnect",
            cust,
            leg,
            agent,
            ("HoldTime", str(int(hold))),
            ("RingTime", str(int(ring))),
        )
        bridge = self._bridge_up(leg, cust)
        connected = self.now
        talk = max(t.min_talk, rng.expovariate(1.0 / t.mean_talk))

        if wants_transfer:
            yield talk * rng.uniform(0.3, 0.7)
            target = self._pick_agent(agent)
            if target is not None and target is not agent:
                target.free = False
                self._blind_transfer(
                    cust=cust,
                    leg=leg,
                    agent=agent,
                    target=target,
                    bridge=bridge,
                    hold=hold,
                    connected=connected,
                )
                yield from self._transferred(cust, target, start)
                return
            yield talk - (self.now - connected)
        else:
            yield talk

        by_caller = rng.random() < 0.5
        self._chan_event("HangupRequest", cust if by_caller else leg, ("Cause", "16"))
        self._agent_event(
            "AgentComplete",
            cust,
            leg,
            agent,
            ("HoldTime", str(int(hold))),
            ("TalkTime", str(int(self.now - connected))),
            ("Reason", "caller" if by_caller else "agent"),
        )
        if by_caller:
            self._bridge_down(bridge, cust, leg)
        else:
            self._bridge_down(bridge, leg, cust)
        self._hangup(leg)
        self._hangup(cust)
        self._cdr(cust, leg, start, answered=True)
        agent.calls_taken += 1
        agent.last_call = int(self.now)
        self._agent_idle(agent)
        self._release(agent)
        self._carrier_done()

    def _blind_transfer(
        self,
        *,
        cust: _Channel,
        leg: _Channel,
        agent: _Agent,
        target: _Agent,
        bridge: str,
        hold: float,
        connected: float,
    ) -> None:
        """The agent blind-transfers the customer (AMI ``BlindTransfer`` or a handset REFER)."""
        self._chan_event("Unhold", leg)
        self._emit(
            "BlindTransfer",
            "call",
            [
                ("Result", "Success"),
                *leg.headers("Transferer"),
                *cust.headers("Transferee"),
                *self._bridge_headers(bridge, 2),
                ("IsExternal", "Yes"),
                ("Context", "internal"),
                ("Extension", target.ext),
            ],
        )
        self._bridge("BridgeLeave", bridge, 1, leg)
        self._agent_event(
            "AgentComplete",
            cust,
            leg,
            agent,
            ("HoldTime", str(int(hold))),
            ("TalkTime", str(int(self.now - connected))),
            ("Reason", "transfer"),
        )
        self._bridge("BridgeLeave", bridge, 0, cust)
        self._bridge("BridgeDestroy", bridge, 0)
        self._hangup(leg)
        agent.calls_taken += 1
        agent.last_call = int(self.now)
        self._agent_idle(agent)
        self._release(agent)

    def _transferred(self, cust: _Channel, target: _Agent, start: float) -> _Proc:
        """The customer channel dials the target directly: no queue events any more."""
        t = self.t
        rng = self.rng
        cust.context, cust.exten, cust.priority = "internal", target.ext, 1
        leg = self._agent_leg(target, cust)
        self._chan_event("Newchannel", leg)
        leg.col_num, leg.col_name = cust.cid_num, cust.cid_name
        leg.exten = target.ext
        self._chan_event("NewConnectedLine", leg)
        cust.priority = 2
        self._dial_event("DialBegin", cust, leg, ("DialString", target.ext))
        cust.col_num, cust.col_name = leg.cid_num, leg.cid_name
        self._chan_event("NewConnectedLine", cust)
        leg.state = 5
        self._chan_event("Newstate", leg)
        self._agent_busy(target)
        self._dial_event("DialState", cust, leg, ("DialStatus", "RINGING"))

        yield rng.uniform(t.ring_min, t.ring_max)
        leg.state = 6
        self._chan_event("Newstate", leg)
        self._dial_event("DialEnd", cust, leg, ("DialStatus", "ANSWER"))
        bridge = self._bridge_up(leg, cust)

        yield max(t.min_talk, rng.expovariate(1.0 / t.mean_talk))
        self._chan_event("HangupRequest", leg, ("Cause", "16"))
        self._bridge_down(bridge, leg, cust)
        self._hangup(leg)
        self._chan_event("SoftHangupRequest", cust, ("Cause", "16"))
        self._hangup(cust)
        self._cdr(cust, leg, start, answered=True)
        # Not a queue call for the target: CallsTaken stays.
        self._agent_idle(target)
        self._release(target)
        self._carrier_done()
