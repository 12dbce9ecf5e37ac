"""``ctid replay``: a recorded AMI capture through the real model, every message printed.

Time comes from the events' ``Timestamp`` header (``timestampevents = yes``).
Unsolicited events are applied as the daemon applies them. The capture
session's own answers to ``CoreShowChannels``, ``QueueStatus``, ``Status`` and
``BridgeList`` (list items carry no ``Timestamp``: README point 18), when they
come right after the login, before any event of the PBX, are what the daemon's
resync would have received then, and are applied as a resync. Later answers
were the recording client's own queries (``QueueStatus Queue=backoffice`` in
agent_pause_unpause), possibly filtered, and are not the whole truth.

``ctid replay`` also stores what it replays, as the daemon would (see
``store_replayed``); ``replay()`` itself only yields the messages, and hands the
effects to be stored to its caller through ``durable``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ctid import __version__
from ctid.adapters.store import OutboxMessage, PresenceRow, Store, StoredRow
from ctid.app import build_model, messages_of
from ctid.app import outbox_messages as daemon_outbox
from ctid.config import Config
from ctid.core import contract
from ctid.core.ami import AmiMessage, AmiParser
from ctid.core.effects import (
    Effect,
    EmitActivity,
    EmitCall,
    EmitCallback,
    Lookup,
    Publish,
    RecordInterval,
    SavePresence,
)
from ctid.core.model import Model
from ctid.core.records import CallbackRecord

# What Asterisk sends because we logged in (README point 2), not because of calls.
LOGIN_EVENTS = frozenset({"FullyBooted", "SuccessfulAuth", "ChallengeSent"})

# The "…Complete" event that ends each resync list answer.
RESYNC_LISTS = {
    "CoreShowChannelsComplete": "CoreShowChannels",
    "QueueStatusComplete": "QueueStatus",
    "StatusComplete": "Status",
    "BridgeListComplete": "BridgeList",
}


def capture_messages(path: Path) -> Iterator[AmiMessage]:
    """Every message of a raw ``.ami`` capture, in order (the banner left out)."""
    parser = AmiParser(expect_banner=True)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            for msg in parser.feed(chunk):
                if not msg.is_banner:
                    yield msg


def is_unsolicited(msg: AmiMessage) -> bool:
    """An event of the PBX, not an item answering the session's own action."""
    return bool(msg.event) and (msg.timestamp is not None or not msg.action_id)


Resolver = Callable[[str, str], Mapping[str, Any]]  # (by, value) -> the pop's match


def no_directory(by: str, value: str) -> Mapping[str, Any]:
    """The answer of an empty directory, whatever is asked."""
    del by, value
    return {"kind": "none", "records": []}


class _Replayer:
    def __init__(self, model: Model, resolver: Resolver) -> None:
        self.model = model
        self.resolver = resolver
        self.lists: dict[str, list[AmiMessage]] = {}
        self.applied: set[str] = set()
        self.live = False  # an event of the PBX (not of our login) has been applied
        self.now = 0.0
        self.callbacks: dict[str, CallbackRecord] = {}

    def inbox(self, effect: EmitCallback) -> Publish:
        """The general inbox after a callback request, as the daemon publishes it."""
        self.callbacks[effect.record.id] = effect.record
        items = [c for c in self.callbacks.values() if c.status in ("open", "assigned")]
        payload = contract.inbox_payload(ts=self.now, owner="general", items=items)
        return Publish(contract.GENERAL_INBOX_TOPIC, payload, retain=True, qos=1)

    def feed(self, msg: AmiMessage) -> list[Effect]:
        """The effects of one message, directory lookups answered at once (in event time)."""
        effects = self._feed(msg)
        out: list[Effect] = []
        while effects:
            lookups = [e for e in effects if isinstance(e, Lookup)]
            out += [e for e in effects if not isinstance(e, Lookup)]
            # The answer comes after everything the event caused (the pending pop first).
            effects = [
                answer
                for lookup in lookups
                for answer in self.model.lookup_done(
                    lookup.call_id,
                    lookup.by,
                    lookup.value,
                    self.resolver(lookup.by, lookup.value),
                    self.now,
                )
            ]
        return out

    def _feed(self, msg: AmiMessage) -> list[Effect]:
        if is_unsolicited(msg):
            now = msg.timestamp if msg.timestamp is not None else self.now
            self.now = now
            self.live = self.live or msg.event not in LOGIN_EVENTS
            # Time passes between events too (parts settle): the model's clock is
            # the events' own Timestamp.
            return [*self.model.tick(now), *self.model.apply(msg, now)]
        if not (msg.event and msg.action_id):
            return []
        items = self.lists.setdefault(msg.action_id, [])
        items.append(msg)
        kind = RESYNC_LISTS.get(msg.event)
        if kind is None:
            return []
        del self.lists[msg.action_id]
        if kind in self.applied or self.live:
            return []
        self.applied.add(kind)
        return self.model.resync(items, self.now)


DurableEffect = EmitActivity | EmitCall | EmitCallback | RecordInterval | SavePresence
DURABLE_EFFECTS = (EmitActivity, EmitCall, EmitCallback, RecordInterval, SavePresence)


def replay(
    config: Config,
    capture: Path,
    *,
    resolver: Resolver = no_directory,
    durable: list[DurableEffect] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every message ctid would publish for ``capture``, as ``{topic, payload, retain, qos}``.

    Directory lookups are answered by ``resolver`` at once, so a pop goes out
    ``pending`` and its update ``done`` follows at the same moment. With
    ``durable``, every effect the daemon writes to SQLite (activities and call
    rows with their messages, state intervals, presences, callbacks) is appended
    to it in the model's order, before the messages it causes are yielded.
    """
    model = build_model(config)
    prefix = config.mqtt.topic_prefix
    replayer = _Replayer(model, resolver)
    started = False
    for msg in capture_messages(capture):
        if not started and msg.timestamp is not None:
            started = True
            now = msg.timestamp
            replayer.now = now
            status = contract.status_payload(ts=now, pbx="up", broker="up", version=__version__)
            yield _line(prefix, contract.STATUS_TOPIC, status, retain=True, qos=1)
            for effect in model.initial_states(now):
                _keep(durable, effect)
                for pub in messages_of(effect):
                    yield _line(prefix, pub.topic, pub.payload, retain=pub.retain, qos=pub.qos)
        if not started:
            continue
        for effect in replayer.feed(msg):
            _keep(durable, effect)
            pubs = (
                (replayer.inbox(effect),)
                if isinstance(effect, EmitCallback)
                else messages_of(effect)
            )
            for pub in pubs:
                yield _line(prefix, pub.topic, pub.payload, retain=pub.retain, qos=pub.qos)


async def store_replayed(store: Store, durable: list[DurableEffect]) -> dict[str, int]:
    """Write what a replay produced into ``store`` as the daemon would; idempotent.

    Activities and call rows go in with their outbox messages for the CRM
    (which a running daemon then publishes), state intervals, presences and
    callbacks as the daemon writes them. Not the messages on agents' topics: a
    replay is of the past, its ``seq`` are the replay's own, and a page must not
    get old activities with seqs that clash with its live stream. A second
    replay of the same capture writes nothing (``Store.save_once``): same rows,
    same ``seq``, no message queued again.
    Returns the rows written and skipped, by table.
    """
    items: list[tuple[StoredRow, list[OutboxMessage]]] = []
    for effect in durable:
        if isinstance(effect, EmitActivity | EmitCall):
            crm = tuple(m for m in effect.messages if contract.agent_of_topic(m.topic) is None)
            items.append((effect.record, daemon_outbox(crm)))
        elif isinstance(effect, EmitCallback):
            items.append((effect.record, []))
        elif isinstance(effect, RecordInterval):
            items.append((effect.interval, []))
        else:
            row = PresenceRow(effect.agent, effect.presence, effect.reason, effect.since)
            items.append((row, []))
    return await store.save_once(items)


def _keep(durable: list[DurableEffect] | None, effect: Effect) -> None:
    if durable is not None and isinstance(effect, DURABLE_EFFECTS):
        durable.append(effect)


def _line(
    prefix: str, topic: str, payload: dict[str, Any], *, retain: bool, qos: int
) -> dict[str, Any]:
    return {"topic": f"{prefix}/{topic}", "payload": payload, "retain": retain, "qos": qos}
