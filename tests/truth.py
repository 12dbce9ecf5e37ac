"""Compare what ctid publishes for a real AMI capture with the capture's ground truth.

Each capture in ``shared/ami-captures`` comes with ``<scenario>.truth.json``: the
scenario driver's own record of who called, who rang, who answered, transfers,
consults, holds, abandons, presence changes and outbound outcomes. It is not
derived from the AMI stream, so it checks ctid independently. This module runs
the capture through ``ctid.replay.replay`` and lists every way the published
messages disagree with the truth, one line each, like::

    inbound_abandoned c1: agent 1002 expected outcome missed, got answered

Every expectation is derived from the truth file (and the MQTT contract in
DESIGN.md), never from ctid's own output. ctid's output is only searched for
the messages that correspond to a truth item.

Tolerances:

- ``TOL`` (0.6 s) for every time and duration. The truth's times are the
  driver's schedule (two decimals); the PBX acts on them within a few hundred
  milliseconds.
- ``PRE_CAPTURE_TOL`` (1.6 s) for times of things that happened before the
  capture's session connected (``reconnect``): ctid can only learn them from the
  resync answers, whose ``Duration``/``Seconds`` fields are whole seconds.
- ``talk_s`` of a customer with driver-timed ``holds`` (``hold_unhold``): TOL
  more per hold. The truth's ``talk_s`` is the sum of its scheduled talk phases
  (3 + 3 + 3 s) and a hold's ``t`` is when the agent started keying ``*7``; the PBX
  holds ~0.6 s later, time the truth counts neither as talk nor as hold. Its own
  numbers show it: hold A at 6.04 for 5 s ends at 11.04, hold B begins at 14.65,
  3.61 s later, which the truth counts as 3 s of talk. For the same reason a
  hold's start may be 2 * TOL after its ``t``.
- Outbound ``offered_at`` against the truth's action time: TOL + 0.5 s (the
  handset is rung after the Originate is queued).

Readings of the truth (where it leaves a choice):

- One activity per agent per part of the interaction: each missed ring is a part;
  being consulted and then, after a completed attended transfer, carrying the
  customer is one part (its ``answered_at``/``talk_s`` are the truth's
  ``t_answered``/``talk_s``, the customer part).
- ``rung_no_answer`` is not complete in ``burst`` (rings cut short by an abandon
  are not listed), so an unlisted agent's missed ring is not a mismatch; an
  unlisted agent's activity that claims an answer is.
- Not comparable, so skipped: ``penalty`` presence changes (agent_state has no
  penalty), ``hangup_by``, and outbound attempts of devices that are no configured
  agent (PJSIP/1099, PJSIP/1999: no agent topic exists for them).

Outbound outcome words: the truth uses ``answered``, ``busy``, ``no_answer`` and
``failed``, which are ctid's activity outcomes of the same name
(``OUTBOUND_OUTCOMES``).
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ctid.config import Config, load_config
from ctid.replay import replay

Json = dict[str, Any]

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT.parent / "shared" / "ami-captures"
CONFIG = ROOT / "tests" / "data" / "captures.toml"

TOL = 0.6
PRE_CAPTURE_TOL = 1.6
# truth outbound outcome -> ctid activity outcome
OUTBOUND_OUTCOMES = {
    "answered": "answered",
    "busy": "busy",
    "no_answer": "no_answer",
    "failed": "failed",
}
ANSWERED_OUTCOMES = frozenset({"answered", "transferred", "consulted"})


# --------------------------------------------------------------------------- published data


def epoch(iso: str | None) -> float | None:
    """An ISO-8601 time of a payload as epoch seconds (``None`` stays ``None``)."""
    if iso is None:
        return None
    return datetime.fromisoformat(iso).timestamp()


def e164_of(value: Any) -> str | None:
    """A published ``e164`` field, with "no number" (``None`` or ``""``) as ``None``."""
    return value if isinstance(value, str) and value else None


def fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f}"


@dataclass
class Interaction:
    """Everything published about one ``interaction_id``."""

    iid: str
    pops: list[Json] = field(default_factory=list)
    activities: dict[str, Json] = field(default_factory=dict)  # id -> latest version
    records: list[Json] = field(default_factory=list)  # call_record messages
    calls: list[Json] = field(default_factory=list)  # call-state updates, in order
    e164s: list[str | None] = field(default_factory=list)
    start: float = float("inf")

    def see(self, e164: str | None, when: float | None) -> None:
        self.e164s.append(e164)
        if when is not None:
            self.start = min(self.start, when)

    @property
    def e164(self) -> str | None:
        """The customer's number: the call record's, else the first one published."""
        for rec in self.records:
            return e164_of(rec["customer"].get("e164"))
        return self.e164s[0] if self.e164s else None


@dataclass
class Published:
    """The replay's messages, indexed for the comparison."""

    messages: list[Json]
    t0: float
    capture_start: float  # relative to t0: the first timestamped event
    interactions: dict[str, Interaction]
    states: dict[str, list[tuple[float, Json]]]  # agent -> (rel ts, payload) in order
    activities: dict[str, Json]  # id -> latest version (agents/*/activity only)
    inbox: list[Json]

    def rel(self, iso: str | None) -> float | None:
        """A payload time as seconds after the truth's ``t0_epoch``."""
        t = epoch(iso)
        return None if t is None else t - self.t0

    def activities_of(self, agent: str, interactions: Iterable[Interaction]) -> list[Json]:
        out = [a for i in interactions for a in i.activities.values() if a["agent"] == agent]
        return sorted(out, key=lambda a: epoch(a["offered_at"]) or 0.0)


def index(messages: list[Json], t0: float) -> Published:
    interactions: dict[str, Interaction] = {}
    states: dict[str, list[tuple[float, Json]]] = defaultdict(list)
    activities: dict[str, Json] = {}
    inbox: list[Json] = []
    capture_start: float | None = None

    def inter(iid: str) -> Interaction:
        return interactions.setdefault(iid, Interaction(iid))

    for msg in messages:
        topic: str = msg["topic"]
        p: Json = msg["payload"]
        kind = p.get("type")
        ts = epoch(p.get("ts"))
        if capture_start is None and ts is not None:
            capture_start = ts - t0
        parts = topic.split("/")
        if "inbox" in parts[-2:]:  # ctid/v1/inbox/general and agents/{a}/inbox
            inbox.append(p)
        if kind == "agent_state" and ts is not None:
            states[p["agent"]].append((ts - t0, p))
        elif kind == "pop" and parts[-1] == "pop":
            i = inter(p["interaction_id"])
            i.pops.append(p)
            i.see(e164_of(p["number"].get("e164")), ts)
        elif kind == "activity" and parts[-1] == "activity" and parts[-3] == "agents":
            i = inter(p["interaction_id"])
            i.activities[p["id"]] = p
            activities[p["id"]] = p
            i.see(e164_of(p["customer"].get("e164")), epoch(p.get("offered_at")))
        elif kind == "call_record":
            i = inter(p["interaction_id"])
            i.records.append(p)
            i.see(e164_of(p["customer"].get("e164")), epoch(p.get("started_at")))
        elif kind == "call" and "interaction_id" in p:
            i = inter(p["interaction_id"])
            i.calls.append(p)
            number = p.get("number") or {}
            i.see(e164_of(number.get("e164")), ts)
    for i in interactions.values():
        i.start -= t0
    return Published(
        messages=messages,
        t0=t0,
        capture_start=capture_start if capture_start is not None else 0.0,
        interactions=interactions,
        states=dict(states),
        activities=activities,
        inbox=inbox,
    )


# --------------------------------------------------------------------------- the report


class Report:
    """Mismatch lines in the order found, each once."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.lines: list[str] = []

    def add(self, subject: str, text: str) -> None:
        line = f"{self.scenario} {subject}: {text}" if subject else f"{self.scenario}: {text}"
        if line not in self.lines:
            self.lines.append(line)


def near(got: float | None, want: float, tol: float) -> bool:
    return got is not None and abs(got - want) <= tol


def outcomes(acts: Sequence[Json]) -> str:
    return ", ".join(str(a["outcome"]) for a in acts) if acts else "no activity"


# --------------------------------------------------------------------------- customers


def customer_windows(customers: list[Json]) -> dict[str, tuple[float, float]]:
    """For each customer key, the span in which its interaction must start.

    From 1 s before its call until 0.5 s before the next truth customer with the
    same number (or no number) calls, so that repeated callers and several
    anonymous callers are told apart by time.
    """
    by_number: dict[str | None, list[Json]] = defaultdict(list)
    for c in customers:
        by_number[c.get("e164")].append(c)
    out: dict[str, tuple[float, float]] = {}
    for group in by_number.values():
        group.sort(key=lambda c: float(c["t_call"]))
        for n, c in enumerate(group):
            end = float(group[n + 1]["t_call"]) - 0.5 if n + 1 < len(group) else float("inf")
            out[c["key"]] = (float(c["t_call"]) - 1.0, end)
    return out


def interactions_of(pub: Published, c: Json, window: tuple[float, float]) -> list[Interaction]:
    want = c.get("e164")
    return sorted(
        (
            i
            for i in pub.interactions.values()
            if i.e164 == want and window[0] <= i.start < window[1]
        ),
        key=lambda i: i.start,
    )


def transfer_to_names(transfer_to: Any, extension: str, agent: str) -> bool:
    if not isinstance(transfer_to, str):
        return False
    return transfer_to == agent or extension in re.findall(r"[0-9]+", transfer_to)


def check_customer(
    rep: Report,
    pub: Published,
    config: Config,
    c: Json,
    found: list[Interaction],
) -> None:
    """Every rule for one truth customer (``found``: its interactions)."""
    subject = str(c["key"])
    want_e164: str | None = c.get("e164")
    extensions = {a.id: a.extension for a in config.agents}
    tol = PRE_CAPTURE_TOL if float(c["t_call"]) < pub.capture_start else TOL
    # Each driver-timed hold (``holds``) starts when the driver acts; the PBX's hold
    # begins up to TOL later (the *7 keying), time the truth counts neither as talk nor
    # as hold, so talk_s gets TOL more per hold.
    talk_tol = tol + TOL * len(c.get("holds") or [])
    if not found:
        rep.add(subject, f"no interaction published for caller {want_e164 or 'without ANI'}")
        return

    answered_by: list[str] = list(c.get("answered_by") or [])
    rung_no_answer: list[str] = list(c.get("rung_no_answer") or [])
    transferred: list[Json] = list(c.get("transferred") or [])
    consulted: list[Json] = list(c.get("consulted") or [])
    talk: dict[str, float] = c.get("talk_s") or {}
    hold: dict[str, float] = c.get("hold_s") or {}
    t_answered: dict[str, float] = c.get("t_answered") or {}
    transfer_from = {t["from"]: t for t in transferred}
    transfer_targets = {t["to"]: t for t in transferred}
    consult_agents = {k["agent"]: k for k in consulted}
    consult_by = {k["by"]: k for k in consulted}

    # --- pops: the number, and who was alerted
    pops = [p for i in found for p in i.pops]
    for p in pops:
        got = e164_of(p["number"].get("e164"))
        if got != want_e164:
            rep.add(
                subject,
                f"pop to agent {p['agent']} has number e164 {got}, expected {want_e164}",
            )
        name = c.get("name")
        if name and c.get("presentation") == "allowed" and p.get("caller_name") != name:
            rep.add(
                subject,
                f"pop to agent {p['agent']} has caller_name {p.get('caller_name')!r}, "
                f"expected {name!r}",
            )
        if want_e164 is None and p["number"].get("kind") != "no_ani":
            rep.add(
                subject,
                f"pop to agent {p['agent']} has number kind {p['number'].get('kind')}, "
                "expected no_ani",
            )
    rang = list(dict.fromkeys([*rung_no_answer, *answered_by, *consult_agents]))
    answered_at = c.get("t_answered") or {}
    for agent in rang:
        if agent in answered_at and float(answered_at[agent]) < pub.capture_start:
            # Answered before the session connected: ctid learns of the call from
            # the resync, so no ringing was there to pop; the pop is "accepted".
            if not any(p["agent"] == agent and p["phase"] == "accepted" for p in pops):
                rep.add(subject, f"agent {agent} (answered before connect) got no accepted pop")
            continue
        alerting = [p for p in pops if p["agent"] == agent and p["phase"] == "alerting"]
        if not alerting:
            rep.add(subject, f"agent {agent} got no alerting pop")
            continue
        whys = sorted({str(p.get("why")) for p in alerting})
        if agent in consult_agents:
            expected_why = "consult"
        elif agent in transfer_targets and transfer_targets[agent]["kind"] != "attended":
            expected_why = "transfer"
        else:
            expected_why = "inbound"
        if expected_why not in whys:
            rep.add(
                subject,
                f"agent {agent} alerting pop why {'/'.join(whys)}, expected {expected_why}",
            )
        if expected_why == "inbound" and c.get("queue"):
            queues = sorted({str(p.get("queue")) for p in alerting if p.get("why") == "inbound"})
            if queues != [c["queue"]]:
                rep.add(
                    subject,
                    f"agent {agent} alerting pop queue {'/'.join(queues)}, expected {c['queue']}",
                )
            for a in pub.activities_of(agent, found):
                if a.get("queue") != c["queue"]:
                    rep.add(
                        subject,
                        f"agent {agent} activity queue {a.get('queue')!r}, expected {c['queue']!r}",
                    )
        # a consult or transfer rings its target when the truth says it was started
        started: float | None = None
        if expected_why == "consult":
            started = float(consult_agents[agent]["t"])
        elif expected_why == "transfer":
            started = float(transfer_targets[agent]["t"])
        if started is not None:
            first = min(pub.rel(p["ts"]) or 0.0 for p in alerting)
            if not near(first, started, tol):
                rep.add(
                    subject,
                    f"agent {agent} {expected_why} pop at t={first:.2f}, expected t={started:.2f}",
                )

    # --- activities, agent by agent
    all_acts = [a for i in found for a in i.activities.values()]
    for a in all_acts:
        if e164_of(a["customer"].get("e164")) != want_e164:
            rep.add(
                subject,
                f"agent {a['agent']} activity customer e164 "
                f"{e164_of(a['customer'].get('e164'))}, expected {want_e164}",
            )
        if a.get("direction") != "inbound":
            rep.add(
                subject,
                f"agent {a['agent']} activity direction {a.get('direction')}, expected inbound",
            )
    # One activity per agent per part: each missed ring is a part; answering and being
    # consulted (and then, for a completed consult, carrying the customer) is one part.
    expected_parts: Counter[str] = Counter(rung_no_answer)
    expected_parts.update({*answered_by, *consult_agents})
    for agent in sorted({str(a["agent"]) for a in all_acts} | set(expected_parts)):
        acts = pub.activities_of(agent, found)
        if agent not in expected_parts:
            for a in acts:
                if a.get("answered_at") is not None or a["outcome"] in ANSWERED_OUTCOMES:
                    rep.add(
                        subject,
                        f"agent {agent} did not answer, got an activity with outcome "
                        f"{a['outcome']} answered at {fmt(pub.rel(a.get('answered_at')))}",
                    )
            continue
        if len(acts) != expected_parts[agent]:
            rep.add(
                subject,
                f"agent {agent} expected {expected_parts[agent]} activit"
                f"{'y' if expected_parts[agent] == 1 else 'ies'}, got {len(acts)} "
                f"({outcomes(acts)})",
            )
        used: set[str] = set()

        # answered parts
        if agent in answered_by:
            cands = [a for a in acts if a.get("answered_at") is not None]
            want_t = t_answered.get(agent)
            if want_t is not None:
                cands.sort(key=lambda a: abs((pub.rel(a["answered_at"]) or 0.0) - want_t))
            if not cands:
                rep.add(
                    subject, f"agent {agent} expected an answered activity, got {outcomes(acts)}"
                )
            else:
                a = cands[0]
                used.add(a["id"])
                got_t = pub.rel(a["answered_at"])
                if want_t is not None and not near(got_t, want_t, tol):
                    rep.add(
                        subject,
                        f"agent {agent} expected answered_at t={want_t:.2f}, got t={fmt(got_t)}",
                    )
                if agent in talk and not near(float(a["talk_s"]), float(talk[agent]), talk_tol):
                    rep.add(
                        subject,
                        f"agent {agent} expected talk_s {float(talk[agent]):.2f}, "
                        f"got {float(a['talk_s']):.2f}",
                    )
                want_hold = float(hold.get(agent, 0.0))
                if not near(float(a["hold_s"]), want_hold, tol):
                    rep.add(
                        subject,
                        f"agent {agent} expected hold_s {want_hold:.2f}, "
                        f"got {float(a['hold_s']):.2f}",
                    )
                if agent in transfer_from:
                    allowed = {"transferred"}
                elif agent in consult_by and consult_by[agent]["outcome"] != "completed":
                    allowed = {"answered", "consulted"}
                else:
                    allowed = {"answered"}
                if a["outcome"] not in allowed:
                    rep.add(
                        subject,
                        f"agent {agent} expected outcome {'/'.join(sorted(allowed))}, "
                        f"got {a['outcome']}",
                    )
                if agent in transfer_from:
                    to = str(transfer_from[agent]["to"])
                    if not transfer_to_names(a.get("transfer_to"), extensions.get(to) or to, to):
                        rep.add(
                            subject,
                            f"agent {agent} expected transfer_to {extensions.get(to) or to}, "
                            f"got {a.get('transfer_to')!r}",
                        )

        # the consult of an agent who does not then carry the customer
        if agent in consult_agents and agent not in answered_by:
            k = consult_agents[agent]
            rest = [a for a in acts if a["id"] not in used]
            want_talk = float(k.get("consult_talk_s") or 0.0)
            match = [
                a
                for a in rest
                if a.get("answered_at") is not None
                and near(float(a["talk_s"]), want_talk, talk_tol)
            ]
            if not match:
                detail = ", ".join(
                    f"{a['outcome']} answered t={fmt(pub.rel(a.get('answered_at')))} "
                    f"talk_s {float(a['talk_s']):.2f}"
                    for a in rest
                )
                rep.add(
                    subject,
                    f"agent {agent} expected an answered consult activity with talk_s "
                    f"{want_talk:.2f} (consulted by {k['by']}), got {detail or 'none'}",
                )
            else:
                used.add(match[0]["id"])

        # missed rings
        missed_wanted = rung_no_answer.count(agent)
        if missed_wanted:
            rest = [a for a in acts if a["id"] not in used]
            missed = [a for a in rest if a["outcome"] == "missed"]
            if len(missed) < missed_wanted:
                rep.add(
                    subject,
                    f"agent {agent} expected outcome missed, got {outcomes(rest)}",
                )
            for a in missed:
                if a.get("answered_at") is not None:
                    rep.add(subject, f"agent {agent} missed activity has an answered_at")

    for h in c.get("holds") or []:
        check_hold(rep, pub, subject, found, h, tol)

    # --- the call record
    record_ids = sorted({i.iid for i in found if i.records})
    if len(record_ids) != 1:
        rep.add(subject, f"expected 1 call record, got {len(record_ids)} ({', '.join(record_ids)})")
    for iid in record_ids[:1]:
        rec = pub.interactions[iid].records[-1]
        want_queue = c.get("queue") or None
        if (rec.get("queue") or None) != want_queue:
            rep.add(subject, f"call record queue {rec.get('queue')!r}, expected {want_queue!r}")
        if e164_of(rec["customer"].get("e164")) != want_e164:
            rep.add(
                subject,
                f"call record customer e164 {e164_of(rec['customer'].get('e164'))}, "
                f"expected {want_e164}",
            )
        got_start = pub.rel(rec.get("started_at"))
        if not near(got_start, float(c["t_call"]), tol):
            rep.add(
                subject,
                f"call record started_at t={fmt(got_start)}, expected t={float(c['t_call']):.2f}",
            )
        if c.get("abandoned") is True and c.get("patience_s") is not None:
            want_end = float(c["t_call"]) + float(c["patience_s"])
            got_end = pub.rel(rec.get("ended_at"))
            if not near(got_end, want_end, tol):
                rep.add(
                    subject,
                    f"call record ended_at t={fmt(got_end)}, expected t={want_end:.2f} "
                    f"(patience {c['patience_s']} s)",
                )
        if rec.get("direction") != "inbound":
            rep.add(subject, f"call record direction {rec.get('direction')}, expected inbound")
        abandoned = c.get("abandoned")
        if abandoned is True:
            if rec["outcome"] != "abandoned":
                rep.add(subject, f"call record expected outcome abandoned, got {rec['outcome']}")
            if "wait_s" in c and not near(float(rec["wait_s"]), float(c["wait_s"]), tol):
                rep.add(
                    subject,
                    f"call record expected wait_s {float(c['wait_s']):.2f}, "
                    f"got {float(rec['wait_s']):.2f}",
                )
        elif abandoned is False:
            if answered_by and rec["outcome"] != "answered":
                rep.add(subject, f"call record expected outcome answered, got {rec['outcome']}")
            if not answered_by and rec["outcome"] == "abandoned":
                rep.add(
                    subject,
                    f"call record outcome abandoned, but the caller did not abandon "
                    f"(hung up by {c.get('hangup_by')})",
                )
        missing = [a for a in answered_by if a not in rec.get("agents", [])]
        if missing:
            rep.add(
                subject,
                f"call record agents {rec.get('agents')} lack {', '.join(missing)}",
            )
        if int(rec.get("transfers", 0)) != len(transferred):
            rep.add(
                subject,
                f"call record transfers {rec.get('transfers')}, expected {len(transferred)}",
            )
    if c.get("abandoned") is True:
        for a in all_acts:
            if a.get("answered_at") is not None or a["outcome"] in ANSWERED_OUTCOMES:
                rep.add(
                    subject,
                    f"abandoned call, but agent {a['agent']} activity claims an answer "
                    f"(outcome {a['outcome']})",
                )

    # --- an IVR callback request
    cb = c.get("callback_requested")
    if cb:
        check_callback(rep, pub, subject, cb)


def check_hold(
    rep: Report, pub: Published, subject: str, found: list[Interaction], hold: Json, tol: float
) -> None:
    """One driver-timed hold: the agent's call shows ``held`` for ``secs``.

    The hold's ``t`` is when the driver acted; the PBX holds up to TOL later (the
    keying of ``*7``), so the start may be 2 * TOL late.
    """
    agent, t, secs = str(hold["by"]), float(hold["t"]), float(hold["secs"])
    calls = [p for i in found for p in i.calls if p.get("agent") == agent]
    calls.sort(key=lambda p: epoch(p["ts"]) or 0.0)
    for n, p in enumerate(calls):
        at = pub.rel(p["ts"]) or 0.0
        if p.get("state") == "held" and t - tol <= at <= t + 2 * tol:
            end = next((q for q in calls[n + 1 :] if q.get("state") != "held"), None)
            got = None if end is None else (pub.rel(end["ts"]) or 0.0) - at
            if not near(got, secs, tol):
                rep.add(
                    subject,
                    f"agent {agent} hold at t={t:.2f}: expected {secs:.2f} s, got {fmt(got)}",
                )
            return
    states = ", ".join(f"{p.get('state')}@{fmt(pub.rel(p['ts']))}" for p in calls)
    rep.add(subject, f"agent {agent} expected call state held at t={t:.2f}, got {states or 'none'}")


def check_callback(rep: Report, pub: Published, subject: str, cb: Json) -> None:
    """A callback request lands in an inbox (agent's or general) with number and reason."""
    number = cb.get("number")
    wants = [str(cb.get("reason"))]
    if isinstance(number, str) and number.startswith("+"):
        wants.append(number)
    for p in pub.inbox:
        text = json.dumps(p, ensure_ascii=False)
        if all(w in text for w in wants):
            return
    rep.add(
        subject,
        f"expected a callback request in an inbox (number {number}, reason {cb.get('reason')}, "
        f"queue {cb.get('queue')}), got none",
    )


# --------------------------------------------------------------------------- presence


def state_at(pub: Published, agent: str, when: float) -> Json | None:
    """The agent's state in effect at ``when`` (the last one published at or before it)."""
    current: Json | None = None
    for t, p in pub.states.get(agent, []):
        if t > when:
            break
        current = p
    return current


def describe_queue(state: Json, queue: str) -> str:
    q = (state.get("queues") or {}).get(queue)
    if q is None:
        return f"{queue} not in queues"
    return f"{queue} paused ({q.get('reason')})" if q.get("paused") else f"{queue} not paused"


def check_presence(rep: Report, pub: Published, agent: str, change: Json) -> None:
    """One ``presence_changes`` entry against the agent's published states."""
    subject = f"agent {agent}"
    t = float(change["t"])
    tol = PRE_CAPTURE_TOL if t < pub.capture_start else TOL
    when = max(t, pub.capture_start) + tol
    kind = change["presence"]
    queue = change.get("queue")
    reason = change.get("reason")
    at = f"at t={t:.2f}"
    if kind == "penalty":
        return  # the agent_state contract carries no penalty: nothing to compare
    state = state_at(pub, agent, when)
    if state is None:
        rep.add(subject, f"expected {kind} {queue} {at}, got no state published by then")
        return
    queues: dict[str, Json] = state.get("queues") or {}
    if kind == "paused" and queue == "all":
        if state.get("presence") != "not_ready" or state.get("reason") != reason:
            rep.add(
                subject,
                f"expected presence not_ready ({reason}) {at}, "
                f"got {state.get('presence')} ({state.get('reason')})",
            )
        for name, q in sorted(queues.items()):
            if not q.get("paused") or q.get("reason") != reason:
                rep.add(
                    subject,
                    f"expected {name} paused ({reason}) {at}, got {describe_queue(state, name)}",
                )
        if not queues:
            rep.add(subject, f"expected queues paused ({reason}) {at}, got no queues")
    elif kind == "paused":
        one = queues.get(str(queue))
        if one is None or not one.get("paused") or one.get("reason") != reason:
            rep.add(
                subject,
                f"expected {queue} paused ({reason}) {at}, got {describe_queue(state, str(queue))}",
            )
    elif kind == "unpaused" and queue == "all":
        if state.get("presence") == "not_ready":
            rep.add(
                subject,
                f"expected not paused {at}, got presence not_ready ({state.get('reason')})",
            )
        for name, q in sorted(queues.items()):
            if q.get("paused"):
                rep.add(subject, f"expected {name} not paused {at}, got paused ({q.get('reason')})")
    elif kind == "unpaused":
        one = queues.get(str(queue))
        if one is None or one.get("paused"):
            rep.add(
                subject,
                f"expected {queue} not paused {at}, got {describe_queue(state, str(queue))}",
            )
    elif kind == "logged_in":
        if str(queue) not in queues:
            rep.add(
                subject,
                f"expected logged in to {queue} {at}, got queues {sorted(queues) or 'none'}",
            )
    elif kind == "logged_out":
        if str(queue) in queues:
            rep.add(subject, f"expected logged out of {queue} {at}, still in queues")
    else:
        rep.add(subject, f"truth presence change {kind!r} has no comparison rule (harness gap)")


# --------------------------------------------------------------------------- outbound


def check_outbound(rep: Report, pub: Published, config: Config, outbound: list[Json]) -> set[str]:
    """Each outbound attempt of a configured agent has its own activity; returns their ids."""
    agents = {a.id for a in config.agents}
    used: set[str] = set()
    wanted: Counter[tuple[str, str]] = Counter()
    for n, o in enumerate(outbound):
        agent, number = str(o["agent"]), str(o["number"])
        subject = f"outbound #{n} {agent}->{number}"
        if agent not in agents:
            # The truth's device (PJSIP/1099 switched off, PJSIP/1999 no such endpoint) is
            # no configured agent, so there is no agent topic to publish an activity on.
            continue
        wanted[agent, number] += 1
        want = OUTBOUND_OUTCOMES.get(str(o["outcome"]), str(o["outcome"]))
        t = o.get("t")
        cands = [
            a
            for a in pub.activities.values()
            if a["agent"] == agent
            and e164_of(a["customer"].get("e164")) == number
            and a["id"] not in used
            and (t is None or (pub.rel(a.get("offered_at")) or -1e9) >= float(t) - TOL)
        ]
        cands.sort(key=lambda a: epoch(a.get("offered_at")) or 0.0)
        if not cands:
            mine = [a for a in pub.activities.values() if a["agent"] == agent]
            rep.add(
                subject,
                f"expected an outbound activity with outcome {want}, got none "
                f"(agent's activities: {outcomes(mine)})",
            )
            continue
        a = cands[0]
        used.add(a["id"])
        if a.get("direction") != "outbound":
            rep.add(subject, f"expected direction outbound, got {a.get('direction')}")
        if a["outcome"] != want:
            rep.add(subject, f"expected outcome {want}, got {a['outcome']}")
        if "talk_s" in o and not near(float(a["talk_s"]), float(o["talk_s"]), TOL):
            rep.add(subject, f"expected talk_s {float(o['talk_s']):.2f}, got {a['talk_s']}")
        if t is not None and not near(pub.rel(a.get("offered_at")), float(t), TOL + 0.5):
            # offered_at is when the agent's handset starts ringing, right after the action
            rep.add(
                subject,
                f"expected offered_at t={float(t):.2f}, got t={fmt(pub.rel(a.get('offered_at')))}",
            )
    for (agent, number), count in wanted.items():
        got = [
            a
            for a in pub.activities.values()
            if a["agent"] == agent and e164_of(a["customer"].get("e164")) == number
        ]
        if len(got) > count:  # fewer is reported per attempt above
            rep.add(
                f"outbound {agent}->{number}",
                f"expected {count} activit{'y' if count == 1 else 'ies'}, got {len(got)} "
                f"({outcomes(got)})",
            )
    return used


# --------------------------------------------------------------------------- notes


NOT_RUNG = re.compile(r"^(\d+) was a paused \w+ member during the call and was not rung$")
REJECTED_PAUSE = re.compile(r"^QueuePause \{.*'Interface': '[A-Za-z0-9]+/(\d+)'.*\} was rejected")
ANON_ANSWERS = re.compile(r"answers of anonymous calls: (\[.*\])$")


def check_notes(rep: Report, pub: Published, truth: Json, config: Config) -> None:
    """The notes that state something checkable."""
    agents = {a.id for a in config.agents}
    for note in truth.get("notes", []):
        if m := NOT_RUNG.match(note):
            agent = m.group(1)
            pops = [p for i in pub.interactions.values() for p in i.pops if p["agent"] == agent]
            if pops:
                rep.add("notes", f"agent {agent} was not rung, got {len(pops)} pop(s)")
        elif m := REJECTED_PAUSE.match(note):
            agent = m.group(1)
            if agent not in agents:
                stray = [msg for msg in pub.messages if f"/agents/{agent}/" in msg["topic"]]
                if stray:
                    rep.add("notes", f"unknown device {agent}: {len(stray)} message(s) published")
        elif m := ANON_ANSWERS.search(note):
            check_anonymous_answers(rep, pub, ast.literal_eval(m.group(1)))


def check_anonymous_answers(rep: Report, pub: Published, answers: list[Json]) -> None:
    """The burst's anonymous callers: their answers are only known as a list."""
    acts = [
        a
        for a in pub.activities.values()
        if e164_of(a["customer"].get("e164")) is None
        and a.get("direction") == "inbound"
        and a.get("answered_at") is not None
    ]
    used: set[str] = set()
    for ans in answers:
        agent, t, talk = str(ans["agent"]), float(ans["t"]), float(ans["talk_s"])
        cands = [
            a
            for a in acts
            if a["agent"] == agent
            and a["id"] not in used
            and near(pub.rel(a["answered_at"]), t, TOL)
        ]
        if not cands:
            rep.add(
                "anonymous",
                f"agent {agent} expected an answered activity without ANI at t={t:.2f}, got none",
            )
            continue
        a = cands[0]
        used.add(a["id"])
        if not near(float(a["talk_s"]), talk, TOL):
            rep.add(
                "anonymous",
                f"agent {agent} answered at t={t:.2f}: expected talk_s {talk:.2f}, "
                f"got {float(a['talk_s']):.2f}",
            )
    if len(acts) != len(answers):
        rep.add(
            "anonymous",
            f"expected {len(answers)} answered activities without ANI, got {len(acts)}",
        )


# --------------------------------------------------------------------------- general


def check_general(rep: Report, pub: Published, t_end: float) -> None:
    """Contract rules for every message: v 1, per-agent seq, no negative durations.

    And nothing ends after the scenario ended (``t_end``).
    """
    last_seq: dict[str, int] = {}
    for n, msg in enumerate(pub.messages):
        p = msg["payload"]
        if p.get("v") != 1:
            rep.add("", f"message #{n} on {msg['topic']} has v={p.get('v')!r}")
        parts = msg["topic"].split("/")
        if len(parts) >= 4 and parts[-3] == "agents":
            agent = parts[-2]
            seq = p.get("seq")
            if not isinstance(seq, int):
                rep.add("", f"message #{n} on {msg['topic']} has no integer seq")
            else:
                if agent in last_seq and seq <= last_seq[agent]:
                    rep.add(
                        "",
                        f"agent {agent} seq not increasing: {seq} on {parts[-1]} "
                        f"after {last_seq[agent]} (message #{n})",
                    )
                last_seq[agent] = seq
        kind = p.get("type")
        if kind in ("activity", "call_record"):
            durations = ("ring_s", "talk_s", "hold_s", "wrapup_s", "wait_s")
            for key in durations:
                if key in p and float(p[key]) < 0:
                    rep.add("", f"{kind} {p.get('id') or p['interaction_id']} has {key} {p[key]}")
            start = "offered_at" if kind == "activity" else "started_at"
            times = [(k, epoch(p.get(k))) for k in (start, "answered_at", "ended_at")]
            present = [(k, t) for k, t in times if t is not None]
            ended = pub.rel(p.get("ended_at"))
            if ended is not None and ended > t_end + TOL:
                rep.add(
                    "",
                    f"{kind} {p.get('id') or p['interaction_id']} ended at t={ended:.2f}, "
                    f"after the scenario ended (t={t_end:.2f})",
                )
            for (k1, t1), (k2, t2) in itertools.pairwise(present):
                if t2 < t1:
                    rep.add(
                        "",
                        f"{kind} {p.get('id') or p['interaction_id']} has {k2} before {k1}",
                    )


def check_unexplained(
    rep: Report, pub: Published, truth: Json, explained: set[str], outbound_ids: set[str]
) -> None:
    """Interactions that no truth customer or outbound attempt accounts for."""
    numbers = {str(o["number"]) for o in truth.get("outbound", [])}
    ambiguous_anonymous = any(
        c.get("e164") is None and c.get("answered_by") is None for c in truth.get("customers", [])
    )
    for i in sorted(pub.interactions.values(), key=lambda i: i.start):
        if i.iid in explained or any(a in outbound_ids for a in i.activities):
            continue
        if i.e164 in numbers or (i.e164 is None and ambiguous_anonymous):
            continue
        if not (i.pops or i.activities or i.records):
            continue
        rep.add(
            "",
            f"interaction {i.iid} (caller {i.e164 or 'without ANI'}, t={i.start:.2f}) "
            "matches no caller of the truth",
        )


# --------------------------------------------------------------------------- entry points


def load_truth(capture: Path) -> Json:
    path = capture.with_suffix(".truth.json")
    data: Json = json.loads(path.read_text(encoding="utf-8"))
    return data


def compare(truth: Json, messages: list[Json], config: Config) -> list[str]:
    """Every mismatch between the truth and the published messages, one line each."""
    rep = Report(str(truth["scenario"]))
    pub = index(messages, float(truth["t0_epoch"]))
    check_general(rep, pub, float(truth["t_end"]))

    customers: list[Json] = list(truth.get("customers", []))
    windows = customer_windows(customers)
    explained: set[str] = set()
    for c in customers:
        found = interactions_of(pub, c, windows[c["key"]])
        explained.update(i.iid for i in found)
        if c.get("answered_by") is None and c.get("e164") is None:
            continue  # the truth itself cannot say who took this anonymous caller (burst)
        check_customer(rep, pub, config, c, found)

    for a in truth.get("agents", []):
        for change in a.get("presence_changes", []):
            check_presence(rep, pub, str(a["agent"]), change)

    outbound_ids = check_outbound(rep, pub, config, list(truth.get("outbound", [])))
    if truth.get("internal"):
        rep.add("internal", f"{len(truth['internal'])} entries, and the harness has no rule yet")
    check_notes(rep, pub, truth, config)
    check_unexplained(rep, pub, truth, explained, outbound_ids)
    return rep.lines


def check_capture(capture: Path, config: Config | None = None) -> list[str]:
    """Replay ``capture`` and compare it with its truth file: the mismatch report."""
    config = config or load_config(CONFIG)
    messages = list(replay(config, capture))
    return compare(load_truth(capture), messages, config)


def all_captures() -> list[Path]:
    return sorted(CAPTURES.glob("*.ami"))


if __name__ == "__main__":  # pragma: no cover - a manual run prints every report
    cfg = load_config(CONFIG)
    for cap in all_captures():
        for line in check_capture(cap, cfg):
            print(line)
