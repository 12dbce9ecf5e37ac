"""Support for ``tests/test_model_fuzz.py``: real captures turned into fuzzed event streams.

A ``Scenario`` is a plain, printable description of one stream (which captures,
how they are interleaved, which events are duplicated, mutated or inserted, where
the stream is cut). Hypothesis draws scenarios; ``build_stream`` turns one into
``(AmiMessage, now)`` pairs, so a failing example printed by Hypothesis can be
replayed by hand::

    from tests.fuzz_support import Scenario, build_stream, run_stream
    run_stream(build_stream(Scenario(captures=("hold_unhold",), ...)))

Captures are re-keyed per slot so that two captures never share a Uniqueid,
Linkedid, bridge id or channel name: every such value gets a one-digit tag
appended (``1795308161.0`` → ``1795308161.01``, ``PJSIP/1001-0000001a`` →
``PJSIP/1001-0000001a1``, ``Local/1002@internal-00000001;1`` →
``Local/1002@internal-000000011;1``). A fixed-width tag at the end cannot make
two different (value, slot) pairs equal. Devices (``PJSIP/1001``) and queue
member interfaces are left alone, so the agents are shared by all captures.

Time: ``now`` is each event's ``Timestamp`` relative to its capture's first one,
plus a common base, and never goes backwards in the merged stream (one Asterisk
stamps one stream monotonically). Duplicated and inserted events get the time of
the event before them.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hypothesis import strategies as st

from ctid.core.agents import Phone
from ctid.core.ami import AmiMessage
from ctid.core.effects import Effect, EmitActivity, EmitCall, Publish
from ctid.core.model import AgentSpec, Model, ModelSettings
from ctid.core.numbers import NumberNormalizer
from ctid.core.records import ActivityRecord, CallRecord
from ctid.sim.capture import load_capture

CAPTURES_DIR = Path(__file__).resolve().parents[2] / "shared" / "ami-captures"
AGENTS = tuple(AgentSpec(str(n), (f"PJSIP/{n}", f"IAX2/{n}")) for n in range(1001, 1011))
BASE_TIME = 1_800_000_000.0

_ID_SUFFIXES = ("uniqueid", "linkedid")
_CHANNEL_SUFFIX = "channel"
_NO_VALUE = frozenset({"", "<unknown>"})

# The bulk of the traffic, which the model reads little of (captures README, point 3).
NOISE = frozenset(
    {
        "VarSet",
        "Newexten",
        "RTCPSent",
        "RTCPReceived",
        "DeviceStateChange",
        "Cdr",
        "ChallengeSent",
        "SuccessfulAuth",
    }
)

# Headers the model reads: a mutation picks one of them more often than the rest.
MODEL_KEYS = frozenset(
    {
        "Event",
        "Uniqueid",
        "Linkedid",
        "Channel",
        "ChannelState",
        "ChannelStateDesc",
        "CallerIDNum",
        "CallerIDName",
        "ConnectedLineNum",
        "DestUniqueid",
        "DestCallerIDNum",
        "DestExten",
        "DialStatus",
        "BridgeUniqueid",
        "Queue",
        "HoldTime",
        "Interface",
        "Location",
        "Paused",
        "PausedReason",
        "Result",
        "DestType",
        "Extension",
        "TransfererUniqueid",
        "OrigTransfererUniqueid",
        "TransferTargetUniqueid",
        "Variable",
        "Value",
    }
)

# Captures too big for hundreds of fuzzed examples: they are fed whole, once.
BIG_CAPTURES = frozenset({"burst"})


# ---------------------------------------------------------------------- captures


@functools.cache
def capture_names() -> tuple[str, ...]:
    """Every capture that has events, by name."""
    return tuple(
        name for name in sorted(p.stem for p in CAPTURES_DIR.glob("*.ami")) if capture_events(name)
    )


@functools.cache
def fuzz_pool() -> tuple[str, ...]:
    """The captures Hypothesis interleaves (all but the big ones)."""
    return tuple(n for n in capture_names() if n not in BIG_CAPTURES)


@functools.cache
def capture_events(name: str) -> tuple[AmiMessage, ...]:
    """The replayable events of one capture (loaded once per test session)."""
    return load_capture(CAPTURES_DIR / f"{name}.ami").replay_events


@functools.cache
def event_names() -> frozenset[str]:
    """Every event name that occurs in any capture."""
    return frozenset(m.event for name in capture_names() for m in capture_events(name))


def _tag_channel(name: str, tag: str) -> str:
    base, semi, leg = name.partition(";")
    _, dash, tail = base.rpartition("-")
    if not dash or not tail or not tail.isalnum():
        return name  # a dial string or a device, not a channel: shared
    return f"{base}{tag}{semi}{leg}"


def _rename_map(events: Iterable[AmiMessage], tag: str) -> dict[str, str]:
    renames: dict[str, str] = {}
    for msg in events:
        for key, value in msg.headers:
            low = key.lower()
            if value in _NO_VALUE:
                continue
            if low.endswith(_ID_SUFFIXES):
                renames[value] = value + tag
            elif low.endswith(_CHANNEL_SUFFIX):
                renamed = _tag_channel(value, tag)
                if renamed != value:
                    renames[value] = renamed
    return renames


@functools.cache
def slot_events(name: str, slot: int) -> tuple[tuple[AmiMessage, float], ...]:
    """Capture ``name`` re-keyed for ``slot``, each event with its time since the capture began."""
    events = capture_events(name)
    renames = _rename_map(events, str(slot + 1))
    out: list[tuple[AmiMessage, float]] = []
    start: float | None = None
    rel = 0.0
    for msg in events:
        ts = msg.timestamp
        if ts is not None:
            if start is None:
                start = ts
            rel = ts - start
        headers = tuple((k, renames.get(v, v)) for k, v in msg.headers)
        out.append((AmiMessage(headers), rel))
    return tuple(out)


def id_values(events: Iterable[AmiMessage]) -> list[str]:
    """Uniqueids, Linkedids and channel names in ``events`` (for garbage that aliases)."""
    seen: dict[str, None] = {}
    for msg in events:
        for key, value in msg.headers:
            if value not in _NO_VALUE and key.lower().endswith((*_ID_SUFFIXES, _CHANNEL_SUFFIX)):
                seen.setdefault(value, None)
    return list(seen)


@functools.cache
def slot_ids(name: str, slot: int) -> tuple[str, ...]:
    """``id_values`` of one re-keyed capture."""
    return tuple(id_values(msg for msg, _ in slot_events(name, slot)))


# ---------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Mutation:
    """Change event number ``position`` of the merged stream (before duplicates and inserts).

    ``drop`` removes every header named ``key``; ``set`` gives them all ``value``;
    ``add`` appends ``key: value`` (a second value of a key ``get`` does not see).
    """

    position: int
    op: Literal["drop", "set", "add"]
    key: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Give every header named ``key`` the value ``value`` in the whole merged stream.

    One garbage value in every ``HoldTime`` (say) reaches the few events that read it far
    more often than a mutation at one random position would.
    """

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Insert:
    """Put an extra event with ``headers`` at ``position`` of the stream (after duplicates)."""

    position: int
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One fuzzed stream. ``segments`` are ``(slot, count)`` runs taken from the captures in
    turn; whatever they leave is appended capture by capture. ``duplicates`` are positions
    of the merged stream delivered twice in a row (``"all"``: every event). ``cut`` stops
    the stream after that many events. ``rewrites`` apply to every event, before the rest."""

    captures: tuple[str, ...]
    segments: tuple[tuple[int, int], ...] = ()
    duplicates: tuple[int, ...] | Literal["all"] = ()
    mutations: tuple[Mutation, ...] = ()
    inserts: tuple[Insert, ...] = ()
    cut: int | None = None
    rewrites: tuple[Rewrite, ...] = ()


def merged(
    captures: Sequence[str], segments: Iterable[tuple[int, int]]
) -> list[tuple[int, AmiMessage, float]]:
    """The captures interleaved by ``segments``: ``(slot, message, relative time)``."""
    sources = [slot_events(name, slot) for slot, name in enumerate(captures)]
    cursor = [0] * len(sources)
    out: list[tuple[int, AmiMessage, float]] = []

    def take(slot: int, count: int) -> None:
        events = sources[slot]
        end = min(len(events), cursor[slot] + count)
        out.extend((slot, msg, rel) for msg, rel in events[cursor[slot] : end])
        cursor[slot] = end

    for slot, count in segments:
        if 0 <= slot < len(sources):
            take(slot, count)
    for slot, events in enumerate(sources):
        take(slot, len(events))
    return out


def _mutate(msg: AmiMessage, mutation: Mutation) -> AmiMessage:
    low = mutation.key.lower()
    if mutation.op == "drop":
        return AmiMessage(tuple((k, v) for k, v in msg.headers if k.lower() != low))
    if mutation.op == "set":
        return AmiMessage(
            tuple((k, mutation.value if k.lower() == low else v) for k, v in msg.headers)
        )
    return AmiMessage((*msg.headers, (mutation.key, mutation.value)))


def build_stream(scenario: Scenario) -> list[tuple[AmiMessage, float]]:
    """The ``(message, now)`` pairs a scenario describes, in delivery order."""
    events = merged(scenario.captures, scenario.segments)
    mutations: dict[int, list[Mutation]] = defaultdict(list)
    for m in scenario.mutations:
        mutations[m.position].append(m)
    dup_all = scenario.duplicates == "all"
    dups: set[int] = set() if scenario.duplicates == "all" else set(scenario.duplicates)

    rewrite: dict[str, str] = {}
    for r in scenario.rewrites:
        rewrite.setdefault(r.key.lower(), r.value)
    stream: list[tuple[AmiMessage, float]] = []
    now = BASE_TIME
    for i, (_, original, rel) in enumerate(events):
        msg = original
        if rewrite and any(k.lower() in rewrite for k, _ in msg.headers):
            msg = AmiMessage(tuple((k, rewrite.get(k.lower(), v)) for k, v in msg.headers))
        for m in mutations.get(i, ()):
            msg = _mutate(msg, m)
        now = max(now, BASE_TIME + rel)
        stream.append((msg, now))
        if dup_all or i in dups:
            stream.append((msg, now))

    for ins in sorted(scenario.inserts, key=lambda x: x.position):
        pos = max(0, min(ins.position, len(stream)))
        at = stream[pos - 1][1] if pos else BASE_TIME
        stream.insert(pos, (AmiMessage(ins.headers), at))

    if scenario.cut is not None:
        del stream[scenario.cut :]
    return stream


def new_model() -> Model:
    return Model(ModelSettings(agents=AGENTS), NumberNormalizer())


def run_stream(
    stream: Iterable[tuple[AmiMessage, float]], model: Model | None = None
) -> tuple[Model, list[Effect]]:
    """Feed ``stream`` to ``model`` (a fresh one by default); every effect, in order."""
    model = model if model is not None else new_model()
    effects: list[Effect] = []
    for msg, now in stream:
        effects.extend(model.apply(msg, now))
    return model, effects


# ---------------------------------------------------------------------- properties


def leftovers(model: Model) -> list[str]:
    """What a model that has seen every hang-up must no longer hold (empty when clean)."""
    out = [f"open call {cid}" for cid in model.calls]
    out += [f"open channel {c.name} ({uid})" for uid, c in model.channels.items()]
    out += [f"open part {key}" for key in model.parts]
    for agent in model.agents.values():
        if agent.parts:
            out.append(f"agent {agent.id} still has interactions {sorted(agent.parts)}")
        if agent.phone != Phone.IDLE:
            out.append(f"agent {agent.id} phone is {agent.phone.value}, not idle")
    return out


def _bad_duration(value: float) -> bool:
    return not (value >= 0.0 and math.isfinite(value))  # catches NaN as well


def _activity_violations(rec: ActivityRecord) -> list[str]:
    out = [
        f"activity {rec.id}: {name}={value!r}"
        for name, value in (
            ("ring_s", rec.ring_s),
            ("talk_s", rec.talk_s),
            ("hold_s", rec.hold_s),
            ("wrapup_s", rec.wrapup_s),
        )
        if _bad_duration(value)
    ]
    if rec.answered_at is not None and rec.answered_at < rec.offered_at:
        out.append(f"activity {rec.id}: answered_at {rec.answered_at} < offered_at")
    if rec.ended_at < rec.offered_at:
        out.append(f"activity {rec.id}: ended_at {rec.ended_at} < offered_at {rec.offered_at}")
    return out


def _call_violations(rec: CallRecord) -> list[str]:
    cid = rec.interaction_id
    out = [
        f"call {cid}: {name}={value!r}"
        for name, value in (("wait_s", rec.wait_s), ("talk_s", rec.talk_s), ("hold_s", rec.hold_s))
        if _bad_duration(value)
    ]
    if rec.answered_at is not None and rec.answered_at < rec.started_at:
        out.append(f"call {cid}: answered_at {rec.answered_at} < started_at {rec.started_at}")
    if rec.ended_at < rec.started_at:
        out.append(f"call {cid}: ended_at {rec.ended_at} < started_at {rec.started_at}")
    return out


def duration_violations(effects: Iterable[Effect]) -> list[str]:
    """Negative (or NaN/infinite) durations and times before the start, in any record."""
    out: list[str] = []
    for effect in effects:
        if isinstance(effect, EmitActivity):
            out += _activity_violations(effect.record)
        elif isinstance(effect, EmitCall):
            out += _call_violations(effect.record)
    return out


def agent_publishes(effects: Iterable[Effect]) -> list[Publish]:
    """Every message published on a ``v1/agents/{id}/…`` topic, in order."""
    out: list[Publish] = []
    for effect in effects:
        if isinstance(effect, Publish):
            pubs: tuple[Publish, ...] = (effect,)
        elif isinstance(effect, EmitActivity | EmitCall):
            pubs = effect.messages
        else:
            continue
        out += [p for p in pubs if p.topic.startswith("v1/agents/")]
    return out


def seq_violations(effects: Iterable[Effect]) -> list[str]:
    """Per agent, ``seq`` of the published payloads must strictly increase."""
    last: dict[str, int] = {}
    out: list[str] = []
    for pub in agent_publishes(effects):
        agent = pub.topic.split("/")[2]
        seq = pub.payload.get("seq")
        if not isinstance(seq, int):
            out.append(f"{pub.topic}: no integer seq ({seq!r})")
            continue
        if agent in last and seq <= last[agent]:
            out.append(f"{pub.topic}: seq {seq} after {last[agent]}")
        last[agent] = seq
    return out


@dataclass(frozen=True, slots=True)
class Records:
    activities: tuple[ActivityRecord, ...] = field(default=())
    calls: tuple[CallRecord, ...] = field(default=())


def records(effects: Iterable[Effect]) -> Records:
    acts: list[ActivityRecord] = []
    calls: list[CallRecord] = []
    for effect in effects:
        if isinstance(effect, EmitActivity):
            acts.append(effect.record)
        elif isinstance(effect, EmitCall):
            calls.append(effect.record)
    return Records(tuple(acts), tuple(calls))


# ---------------------------------------------------------------------- strategies

GARBAGE_WORDS = (
    "",
    "<unknown>",
    "-1",
    "-3600.5",
    "0",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "Success",
    "Failure",
    "Threeway",
    "Bridge",
    "ANSWER",
    "CANCEL",
    "BUSY",
    "Up",
    "Ringing",
    "Ring",
    "6",
    "5",
    "1",
    "PJSIP/1001",
    "IAX2/1002",
    "PJSIP/1003-ffffffff",
    "Local/1002@internal-00000001;1",
    "CTI_",
    "wrap-up",
)


numeric_garbage = st.one_of(
    st.floats().map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(("nan", "-nan", "inf", "-inf", "1e309", "-0", "0x10", "1_000", " 5 ")),
)


def numeric_keys(events: Iterable[AmiMessage]) -> list[str]:
    """Keys that carry a number somewhere in ``events`` (HoldTime, RingTime, ChannelState…)."""
    seen: dict[str, None] = {}
    for msg in events:
        for key, value in msg.headers:
            if value.lstrip("-").replace(".", "", 1).isdigit():
                seen.setdefault(key, None)
    return list(seen)


def garbage(ids: Sequence[str]) -> st.SearchStrategy[str]:
    """A header value: random text, a suspicious word or number, or an id of this very stream."""
    choices = [st.sampled_from(GARBAGE_WORDS), numeric_garbage, st.text(max_size=12)]
    if ids:
        choices.append(st.sampled_from(ids))
    return st.one_of(choices)


header_keys = st.one_of(
    st.sampled_from(
        (
            "Uniqueid",
            "Linkedid",
            "Channel",
            "DestUniqueid",
            "ChannelState",
            "ChannelStateDesc",
            "Interface",
            "Queue",
            "Paused",
            "HoldTime",
            "Variable",
            "Value",
        )
    ),
    st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=10),
)


@st.composite
def unknown_event(
    draw: st.DrawFn, values: st.SearchStrategy[str], *, known: bool
) -> tuple[tuple[str, str], ...]:
    """Headers of a random event. ``known=False``: a name no capture or model uses."""
    if known:
        name = draw(st.one_of(st.sampled_from(sorted(event_names())), st.text(max_size=12)))
    else:
        name = draw(st.text(min_size=1, max_size=12).filter(lambda n: n not in event_names()))
    headers = draw(st.lists(st.tuples(header_keys, values), max_size=6))
    return (("Event", name), *headers)


@functools.cache
def _garbage_for(captures: tuple[str, ...]) -> st.SearchStrategy[str]:
    return garbage([v for slot, name in enumerate(captures) for v in slot_ids(name, slot)])


@functools.cache
def _numeric_keys_of(captures: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        numeric_keys(
            msg for slot, name in enumerate(captures) for msg, _ in slot_events(name, slot)
        )
    )


def _pick(items: Sequence[int], n: int) -> st.SearchStrategy[int]:
    """A position: mostly one of ``items`` (drawn by index: cheap for long lists), or any."""
    if not items:
        return st.integers(0, n - 1)
    return st.integers(0, len(items) - 1).map(items.__getitem__) | st.integers(0, n - 1)


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    min_captures: int = 2,
    max_captures: int = 3,
    duplicates: bool = True,
    mutations: bool = False,
    inserts: bool = False,
    known_inserts: bool = False,
    cut: bool = False,
) -> Scenario:
    """A random interleaving of real captures, with the requested kinds of damage."""
    captures = tuple(
        draw(
            st.lists(
                st.sampled_from(fuzz_pool()),
                min_size=min_captures,
                max_size=max_captures,
                unique=True,
            )
        )
    )
    segments = tuple(
        draw(
            st.lists(st.tuples(st.integers(0, len(captures) - 1), st.integers(1, 80)), max_size=30)
        )
    )
    events = merged(captures, segments)
    n = len(events)
    values = _garbage_for(captures)
    # Mostly events the model cares about: 20 picks among 600 would rarely hit the one
    # BlindTransfer. Any position is allowed as well.
    relevant = [i for i, (_, msg, _) in enumerate(events) if msg.event not in NOISE]
    position = _pick(relevant, n)

    dups: tuple[int, ...] = ()
    if duplicates and n:
        dups = tuple(sorted(draw(st.sets(position, max_size=40))))

    muts: list[Mutation] = []
    rewrites: list[Rewrite] = []
    if mutations and n:
        keys = _numeric_keys_of(captures)
        for _ in range(draw(st.integers(0, 4))):
            key = draw(st.sampled_from(keys) | header_keys)
            rewrites.append(Rewrite(key, draw(numeric_garbage | values)))
        for _ in range(draw(st.integers(0, 25))):
            pos = draw(position)
            msg = events[pos][1]
            own = [k for k, _ in msg.headers]
            op: Literal["drop", "set", "add"] = draw(st.sampled_from(("drop", "set", "add")))
            read = sorted(MODEL_KEYS.intersection(own))
            if op == "add":
                key = draw(header_keys)
            elif read:
                key = draw(st.sampled_from(read) | st.sampled_from(own))
            else:
                key = draw(st.sampled_from(own))
            value = "" if op == "drop" else draw(values)
            muts.append(Mutation(pos, op, key, value))

    extra: list[Insert] = []
    if inserts:
        for _ in range(draw(st.integers(0, 10))):
            pos = draw(st.integers(0, n + len(dups)))
            extra.append(Insert(pos, draw(unknown_event(values, known=known_inserts))))

    stop = None
    if cut:
        stop = draw(st.none() | st.integers(0, n + len(dups) + len(extra)))
    return Scenario(
        captures=captures,
        segments=segments,
        duplicates=dups,
        mutations=tuple(muts),
        inserts=tuple(extra),
        cut=stop,
        rewrites=tuple(rewrites),
    )
