"""The composition root: builds every part from the config and runs them.

One ``asyncio.TaskGroup`` holds the long-lived tasks, each named
(``ctid.ami.link``, ``ctid.ami.reader``, …). The model is touched by one task
only (``ctid.ami.reader``), so it needs no locks. SIGTERM drains what must not
be lost (activities, statistics) into SQLite and closes cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

import orjson
import structlog

from ctid import __version__, checkpoint
from ctid.adapters.ami import ActionSender, AmiClient
from ctid.adapters.bus import Bus
from ctid.adapters.directory import Directory
from ctid.adapters.store import AgentMessage, OutboxMessage, Store
from ctid.agent_commands import CommandExecutor
from ctid.config import Config
from ctid.core import contract
from ctid.core.agents import Link
from ctid.core.ami import AmiMessage
from ctid.core.commands import CommandError, readable_id, reply_error
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
from ctid.core.model import Model, ModelSettings, join_notes, specs_from
from ctid.core.numbers import NumberNormalizer
from ctid.errors import AmiError, BusError, CtidError, StoreError
from ctid.systemd import notify, watchdog_interval_s

log = structlog.get_logger("ctid.app")


def build_model(config: Config) -> Model:
    """The pure model as the config describes it (shared by the daemon and ``replay``)."""
    settings = ModelSettings(
        agents=specs_from(config.agents, config.calls.interaction_limit),
        attached_prefix=config.calls.attached_prefix,
        pop_on=config.calls.pop_on,
        wrapup_s=config.calls.wrapup_s,
        max_call_age_s=config.calls.max_call_age_s,
        lookup_deadline_s=config.calls.lookup_deadline_s,
    )
    numbers = NumberNormalizer(
        default_region=config.numbers.default_region,
        max_extension_length=config.numbers.max_extension_length,
        cache_size=config.numbers.cache_size,
    )
    return Model(settings, numbers)


def messages_of(effect: Effect) -> tuple[Publish, ...]:
    """The MQTT messages an effect ends in (directly, or after it is stored)."""
    if isinstance(effect, Publish):
        return (effect,)
    if isinstance(effect, EmitActivity | EmitCall):
        return effect.messages
    return ()


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes for the model (parts settle, wrap-ups end, stale calls expire)."""


@dataclass(frozen=True, slots=True)
class LookupAnswer:
    """The directory answered a lookup (or its deadline passed: ``match`` None)."""

    call_id: str
    by: str
    value: str
    match: dict[str, Any] | None
    # False when the directory changed (an import) while it was being looked up: the
    # answer may be from before it, good for this pop but not to be cached.
    cacheable: bool = True


@dataclass(frozen=True, slots=True)
class Republish:
    """The broker is (re)connected: every agent's retained state and snapshot again."""


@dataclass(frozen=True, slots=True)
class DirectoryChanged:
    """An import changed the directory: the model forgets the matches it cached."""


@dataclass(frozen=True, slots=True)
class Resync:
    """The answers to the resync actions sent on (re)connect, for the model's task."""

    items: tuple[AmiMessage, ...]


# In this order (DESIGN.md): channels first, so calls that ended during the
# outage are closed before queue memberships and presences are rebuilt.
RESYNC_ACTIONS = ("CoreShowChannels", "BridgeList", "QueueStatus", "Status")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The model's state (``ctid.checkpoint`` bytes) to store, after what it emitted before."""

    taken_at: float
    state: bytes


# What the publisher task takes, in the model's order.
Outgoing = Publish | EmitActivity | EmitCall | EmitCallback
# A checkpoint is taken at most this often (seconds), and only after a change: a
# SIGKILL loses the calls that began in the last this-long and ended while ctid was down.
_CHECKPOINT_EVERY_S = 0.2
# At most this many queued effects are logged in one transaction before publishing.
_PUBLISH_BATCH = 500


class Daemon:
    """ctid itself: AMI in, model, MQTT and SQLite out."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = build_model(config)
        self.ami = AmiClient(config.ami, on_connected=self._resync)
        self.commands = CommandExecutor(
            config,
            self.model,
            send=self.ami.send,
            emit=self._emit_command,
            history=_StoreHistory(self),
            directory=_DirectoryAccess(self),
            # The model's clock: event time, running on between events.
            clock=lambda: time.time() + self._clock_offset,
        )
        self._command_backlog: dict[str, int] = {}
        self._command_locks: dict[str, asyncio.Lock] = {}
        self._command_tasks: set[asyncio.Task[None]] = set()
        self.bus = Bus(
            config.mqtt,
            password=config.mqtt.password,
            subscriptions=("v1/agents/+/cmd",),
            on_message=self._on_command,
            will_payload=contract.status_payload(
                ts=time.time(), pbx="down", broker="down", version=__version__, daemon="offline"
            ),
            on_connected=self._on_bus_connected,
        )
        self._publishes: asyncio.Queue[Outgoing | Checkpoint] = asyncio.Queue()
        self._publishing = False  # the publisher holds a batch it has not finished
        self._model_changed = False  # since the last checkpoint was taken
        self._checkpoint_at = float("-inf")  # loop time of the last checkpoint
        self._checkpoint_queued = False  # one is in the publisher's queue, not yet stored
        self._checkpoint_timer: asyncio.TimerHandle | None = None
        self._checkpoint_cost_s = 0.0  # how long the last one took to take
        self._durable: asyncio.Queue[Effect] = asyncio.Queue()
        self._outbox_kick = asyncio.Event()
        self._outbox_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._store: Store | None = None
        self._directory: Directory | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.events_applied = 0
        # The model's clock is the events' Timestamp; between events it runs on
        # with the wall clock from the last event's offset, so a tick and an
        # event never disagree about what time it is (replays included).
        self._clock_offset = 0.0
        self._directory_epoch = 0  # Directory.epoch when the model's matches were last valid

    # ---------------------------------------------------------------- running

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT or ``stop()``."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        async with (
            Store.open(
                self.config.store, service_level_s=self.config.stats.service_level_s
            ) as store,
            # The model's normaliser: lookups read numbers exactly as pops show them.
            Directory.open(self.config.store, normalizer=self.model.numbers) as directory,
        ):
            self._store = store
            self._directory = directory
            # Lookups go through aiosqlite's thread until the cache is warm, then inline.
            self._spawn(self._warm_directory(directory), "ctid.directory.warm_up")
            await self._restore_checkpoint(store)
            for agent_id, (presence, reason, since) in (await store.load_presences()).items():
                self.model.restore_presence(agent_id, presence, reason, since)
            for agent_id, seq in (await store.agent_seqs()).items():
                self.model.restore_seq(agent_id, seq)
            # Every agent's state and snapshot go out once the broker is connected
            # (_on_bus_connected): published before, they would be dropped.
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [
                        tg.create_task(self.ami.run(), name="ctid.ami.link"),
                        tg.create_task(self.bus.run(), name="ctid.bus"),
                        tg.create_task(self._read_ami(), name="ctid.ami.reader"),
                        tg.create_task(self._publisher(), name="ctid.publisher"),
                        tg.create_task(self._durable_writer(), name="ctid.store.writer"),
                        tg.create_task(self._outbox_drainer(), name="ctid.outbox"),
                        tg.create_task(self._ticker(), name="ctid.ticker"),
                    ]
                    notify("READY=1")
                    log.info("ctid.started", version=__version__, agents=len(self.config.agents))
                    await self._stop.wait()
                    notify("STOPPING=1")
                    await self._shutdown(tasks)
            finally:
                self._store = None
                self._directory = None
        log.info("ctid.stopped")

    def stop(self) -> None:
        self._stop.set()

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        self.ami.close()
        ami_task = next(t for t in tasks if t.get_name() == "ctid.ami.link")
        # Order matters: the AMI link's last "down" must be applied and every
        # stored message and state published before the final "stopped" status,
        # or a late retained "running" status would overwrite it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.wait({ami_task})
                await self.ami.events.join()
                await self._durable.join()
        # With the broker gone, publishing fails at once: what is queued is still
        # stored (activities, calls) and the queue drains, the checkpoint last.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5 if self.bus.connected.is_set() else 2):
                await self._publishes.join()
        if self._publishes.empty() and not self._publishing:
            # Everything the model emitted is stored: the state now matches the rows.
            # (Otherwise the last checkpoint stays, older than rows not yet stored.)
            await self._save_checkpoint(self._take_checkpoint())
        await self.bus.close(self._status("down", daemon="stopped"))
        # Lookups and actions still in flight: their answers have nowhere to go now,
        # and the directory closes next (they would log a failure against it).
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in tasks:
            if task.get_name() != "ctid.bus":
                task.cancel()

    # ---------------------------------------------------------------- AMI side

    async def _resync(self, send: ActionSender) -> None:
        """Before the link counts as up: rebuild the model from what Asterisk says now."""
        items: list[AmiMessage] = []
        for action in RESYNC_ACTIONS:
            items += await send(action)
        self.ami.events.put_nowait((Resync(tuple(items)), time.time()))

    async def _read_ami(self) -> None:
        while True:
            item, arrived = await self.ami.events.get()
            try:
                if isinstance(item, AmiMessage):
                    stamp = item.timestamp
                    if stamp is not None:
                        self._clock_offset = stamp - arrived
                    effects = self.model.apply(item, stamp if stamp is not None else arrived)
                    self.events_applied += 1
                elif isinstance(item, Tick):
                    effects = self.model.tick(arrived + self._clock_offset)
                elif isinstance(item, Link):
                    effects = self.model.set_link(item, arrived)
                    self._publish_status()
                elif isinstance(item, LookupAnswer):
                    now = arrived + self._clock_offset
                    if item.match is None:
                        effects = self.model.lookup_deadline(item.call_id, now)
                    else:
                        effects = self.model.lookup_done(
                            item.call_id,
                            item.by,
                            item.value,
                            item.match,
                            now,
                            cacheable=item.cacheable,
                        )
                elif isinstance(item, Republish):
                    effects = self.model.initial_states(arrived + self._clock_offset)
                elif isinstance(item, DirectoryChanged):
                    self.model.forget_matches()
                    effects = []
                elif isinstance(item, Resync):
                    effects = self.model.resync(item.items, arrived + self._clock_offset)
                    log.info(
                        "ami.resynced",
                        channels=len(self.model.channels),
                        calls=len(self.model.calls),
                        closed=sum(isinstance(e, EmitActivity | EmitCall) for e in effects),
                    )
                else:
                    effects = []
            except Exception:
                # A model bug must not take the daemon down with it: log the
                # event that triggered it, keep going (Asterisk stays the truth).
                log.exception("model.apply_failed", ami_event=getattr(item, "event", str(item)))
                effects = []
            finally:
                self.ami.events.task_done()
            if isinstance(item, AmiMessage):
                if self.model.handles(item.event):  # others change nothing
                    self._model_changed = True
            elif not isinstance(item, Tick):
                self._model_changed = True
            self._emit(effects)
            self._maybe_checkpoint()

    def _emit_command(self, effects: list[Effect]) -> None:
        # A command may change the model without an effect (notes on a call going on).
        self._model_changed = True
        self._emit(effects)
        self._maybe_checkpoint()

    def _emit(self, effects: list[Effect]) -> None:
        if effects:
            self._model_changed = True
        for effect in effects:
            if isinstance(effect, Outgoing):
                self._publishes.put_nowait(effect)
            elif isinstance(effect, SendAction):
                self._spawn(self._send_action(effect), "ctid.ami.action")
            elif isinstance(effect, Lookup):
                self._lookup(effect)
            else:
                self._durable.put_nowait(effect)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        # Keep a reference: a task nobody holds may be garbage-collected mid-flight.
        # (Shutdown cancels those still running.)
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _lookup(self, effect: Lookup) -> None:
        """Ask the directory; the pop already went out, its match follows or its deadline."""
        loop = asyncio.get_running_loop()
        deadline = LookupAnswer(effect.call_id, effect.by, effect.value, None)
        # Stamped when it fires: the timeout pop's ts is the deadline, not the lookup's start.
        loop.call_later(
            effect.deadline_s, lambda: self.ami.events.put_nowait((deadline, time.time()))
        )
        self._spawn(self._answer_lookup(effect), "ctid.directory.lookup")

    async def _answer_lookup(self, effect: Lookup) -> None:
        directory = self._directory
        if directory is None:
            return
        epoch = directory.epoch
        try:
            if effect.by == "id":
                match = await directory.lookup_id(effect.value)
            else:
                match = await directory.lookup(effect.value)
        except (CtidError, ValueError) as exc:
            # The pop says "timeout" at its deadline; the agent still sees the number.
            log.warning("directory.lookup_failed", by=effect.by, error=str(exc))
            return
        answer = LookupAnswer(
            effect.call_id, effect.by, effect.value, match.as_payload(), directory.epoch == epoch
        )
        self.ami.events.put_nowait((answer, time.time()))

    async def _warm_directory(self, directory: Directory) -> None:
        started = time.monotonic()
        try:
            await directory.warm_up()
        except StoreError as exc:
            log.warning("directory.warm_up_failed", error=str(exc))
            return
        took_s = round(time.monotonic() - started, 3)
        if directory.inline:
            log.info("directory.warm", took_s=took_s)
        else:
            # Bigger than the lookup connection's page cache: lookups keep using the
            # thread (slower by the hop, never blocking the loop on a disk read).
            log.warning("directory.too_big_for_cache", took_s=took_s)

    async def _send_action(self, effect: SendAction) -> None:
        try:
            await self.ami.send(effect.action, effect.fields)
        except AmiError as exc:
            log.warning("ami.action_failed", action=effect.action, error=str(exc))

    # ---------------------------------------------------------------- agents' commands

    async def _on_command(self, topic: str, payload: bytes, retained: bool) -> None:
        parts = topic.split("/")
        agent = parts[-2] if len(parts) >= 2 else ""
        if retained:
            # A retained command would be replayed at every reconnect: never act on
            # one (the broker ACL lets an agent publish retained to its own cmd).
            log.warning("command.retained_ignored", agent=agent)
            return
        if not self.commands.knows(agent):
            log.warning("command.unknown_agent", topic=topic)
            return
        # One command at a time per agent (their replies in order), agents in
        # parallel; a flood beyond the burst is refused at once, not queued.
        backlog = self._command_backlog.get(agent, 0)
        if backlog >= self.config.commands.burst:
            reply = reply_error(readable_id(payload), CommandError("rate_limited"))
            self._publishes.put_nowait(Publish(contract.agent_topic(agent, "reply"), reply, qos=1))
            return
        self._command_backlog[agent] = backlog + 1
        task = asyncio.get_running_loop().create_task(
            self._run_command(agent, payload), name=f"ctid.command.{agent}"
        )
        self._command_tasks.add(task)
        task.add_done_callback(self._command_tasks.discard)

    async def _run_command(self, agent: str, payload: bytes) -> None:
        lock = self._command_locks.setdefault(agent, asyncio.Lock())
        try:
            async with lock:
                reply = await self.commands.handle(agent, payload)
        finally:
            self._command_backlog[agent] -= 1
        try:
            await self.bus.publish(contract.agent_topic(agent, "reply"), reply, qos=1)
        except BusError as exc:
            log.warning("command.reply_lost", agent=agent, error=str(exc))

    # ---------------------------------------------------------------- MQTT and SQLite side

    def _status(self, pbx: str, *, daemon: str = "running") -> dict[str, Any]:
        broker = "up" if self.bus.connected.is_set() else "down"
        return contract.status_payload(
            ts=time.time(), pbx=pbx, broker=broker, version=__version__, daemon=daemon
        )

    def _publish_status(self) -> None:
        self._publishes.put_nowait(
            Publish(contract.STATUS_TOPIC, self._status(self.ami.link.value), retain=True, qos=1)
        )

    async def _on_bus_connected(self) -> None:
        self._publish_status()
        # The retained state and snapshot of every agent, now: the first connection's
        # replace what a previous run left retained, and a broker restarted without
        # persistence has none. Through the model's task (it owns the seqs).
        self.ami.events.put_nowait((Republish(), time.time()))
        self._outbox_kick.set()
        if self._store is not None:
            with contextlib.suppress(BusError, StoreError):
                await self._publish_inbox(self._store, "")

    async def _publisher(self) -> None:
        """Publish effects in the order the model produced them.

        Per-agent messages carry a growing ``seq``; publishing them in one
        ordered stream is what lets a front end treat a gap as a real loss.
        Whatever is queued is taken as one batch: its per-agent messages are
        logged in SQLite first (one transaction), so ``replay`` can re-send
        anything a page saw or missed, and a restart goes on from the last seq.
        Activities and call rows are stored first (with their messages in the
        outbox) and published from the outbox, so a crash or a broker outage
        delays them but never loses them.
        """
        while True:
            batch = [await self._publishes.get()]
            while len(batch) < _PUBLISH_BATCH and not self._publishes.empty():
                batch.append(self._publishes.get_nowait())
            self._publishing = True
            try:
                await self._log_agent_messages(batch)
                for effect in batch:
                    if isinstance(effect, Checkpoint):
                        await self._save_checkpoint(effect)
                        self._checkpoint_queued = False
                        self._maybe_checkpoint()  # changes since it was taken: the next
                    else:
                        await self._publish_one(effect)
            finally:
                self._publishing = False
                for _ in batch:
                    self._publishes.task_done()

    async def _publish_one(self, effect: Outgoing) -> None:
        try:
            if isinstance(effect, Publish):
                await self.bus.publish(
                    effect.topic, effect.payload, qos=effect.qos, retain=effect.retain
                )
            elif isinstance(effect, EmitCallback):
                await self._store_callback(effect)
            else:
                await self._store_durable(effect)
                await self._drain_outbox()
        except BusError as exc:
            # Pops and call updates are live signals: a broker outage loses
            # them, and the retained state/snapshot and `replay` heal the page.
            log.debug("bus.publish_dropped", error=str(exc))

    async def _log_agent_messages(self, batch: list[Outgoing | Checkpoint]) -> None:
        store = self._store
        if store is None:
            return
        now = time.time()
        logged = [
            AgentMessage(agent, int(m.payload["seq"]), m.topic, orjson.dumps(m.payload), now)
            for effect in batch
            if not isinstance(effect, Checkpoint)
            for m in messages_of(effect)
            if (agent := contract.agent_of_topic(m.topic)) is not None and "seq" in m.payload
        ]
        try:
            await store.log_agent_messages(logged, keep=self.config.commands.replay_window)
        except StoreError:
            # The live stream matters more than its replay: publish anyway.
            log.exception("store.agent_log_failed", messages=len(logged))

    async def _store_durable(self, effect: EmitActivity | EmitCall) -> None:
        store = self._store
        if store is None:
            return
        # A record ctid closed itself after a resync never replaces a stored one: see
        # Store.save_call (a call taken up from a checkpoint may have been stored since).
        only_new = effect.unseen_close
        try:
            if isinstance(effect, EmitActivity):
                saved = await store.save_activity(
                    effect.record, outbox=outbox_messages(effect.messages), only_new=only_new
                )
            else:
                saved = await store.save_call(
                    effect.record, outbox=outbox_messages(effect.messages), only_new=only_new
                )
            if not saved:
                log.info(
                    "store.kept_stored_row",
                    effect=type(effect).__name__,
                    interaction_id=effect.record.interaction_id,
                )
        except StoreError:
            # Nothing to publish then: a message must not go out for a row that is not stored.
            log.exception("store.write_failed", effect=type(effect).__name__)

    async def _store_callback(self, effect: EmitCallback) -> None:
        store = self._store
        if store is None:
            return
        try:
            await store.save_callback(effect.record)
        except StoreError:
            log.exception("store.write_failed", effect="EmitCallback")
            return
        log.info(
            "callback.requested",
            callback=effect.record.id,
            reason=effect.record.reason,
            queue=effect.record.queue,
            source=effect.record.source,
        )
        await self._publish_inbox(store, effect.record.agent)

    async def _publish_inbox(self, store: Store, agent: str) -> None:
        """Publish an inbox (retained) as the store holds it: the store is the truth."""
        items = await store.open_callbacks(agent)
        topic = contract.agent_topic(agent, "inbox") if agent else contract.GENERAL_INBOX_TOPIC
        payload = contract.inbox_payload(ts=time.time(), owner=agent or "general", items=items)
        await self.bus.publish(topic, payload, qos=1, retain=True)

    async def _durable_writer(self) -> None:
        while True:
            effect = await self._durable.get()
            store = self._store
            if store is None:
                return
            try:
                if isinstance(effect, RecordInterval):
                    await store.save_state_interval(effect.interval)
                elif isinstance(effect, SavePresence):
                    await store.save_presence(
                        effect.agent, effect.presence, effect.reason, effect.since
                    )
            except StoreError:
                log.exception("store.write_failed", effect=type(effect).__name__)
            finally:
                self._durable.task_done()

    async def _drain_outbox(self) -> None:
        """Publish every stored, undelivered message in order; mark each after its PUBACK.

        Raises ``BusError`` when the broker is gone; what was not delivered stays
        in the outbox for the next drain (after the reconnect).
        """
        store = self._store
        if store is None:
            return
        async with self._outbox_lock:
            while True:
                pending = await store.outbox_pending()
                if not pending:
                    return
                delivered: list[int] = []
                try:
                    for msg in pending:
                        await self.bus.publish(
                            msg.topic, msg.payload, qos=msg.qos, retain=msg.retain
                        )
                        delivered.append(msg.id)
                finally:
                    if delivered:
                        await store.outbox_mark_delivered(delivered)

    async def _outbox_drainer(self) -> None:
        """Drain the outbox at start (what a crash left behind) and after each reconnect."""
        while True:
            await self._outbox_kick.wait()
            self._outbox_kick.clear()
            await self.bus.connected.wait()
            try:
                await self._drain_outbox()
            except BusError as exc:
                log.info("outbox.waiting_for_broker", error=str(exc))
            except StoreError:
                log.exception("outbox.store_failed")
                await asyncio.sleep(1)
                self._outbox_kick.set()

    async def _ticker(self) -> None:
        watchdog = watchdog_interval_s() or 5.0
        self._outbox_kick.set()
        last_watchdog = 0.0
        check: asyncio.Task[None] | None = None
        while True:
            now = time.monotonic()
            if now - last_watchdog >= min(watchdog, 5.0):
                notify("WATCHDOG=1")
                last_watchdog = now
            # Through the event queue, so the model stays owned by one task.
            self.ami.events.put_nowait((Tick(), time.time()))
            if check is None or check.done():
                # Its own task: a read that waits (the directory's thread busy) must
                # not hold back the ticks and the watchdog.
                check = self._spawn(self._check_directory(), "ctid.directory.check")
            await asyncio.sleep(0.5)

    def _maybe_checkpoint(self) -> None:
        """Queue a checkpoint of the model if it changed since the last one.

        In the publisher's queue, taken now: it is stored after every row the
        model emitted before it, so a restart never takes up a state newer than
        the stored rows (that would lose the rows in between). One at a time,
        at most every ``_CHECKPOINT_EVERY_S``: the next is taken once the last
        is stored, so under load a checkpoint covers many changes.
        """
        if self._checkpoint_queued or not self._model_changed:
            return
        loop = asyncio.get_running_loop()
        # At most 5% of the loop's time: a big model (thousands of calls open) waits longer.
        every = max(_CHECKPOINT_EVERY_S, 20 * self._checkpoint_cost_s)
        wait = self._checkpoint_at + every - loop.time()
        if wait > 0:
            if self._checkpoint_timer is None:
                self._checkpoint_timer = loop.call_later(wait, self._checkpoint_due)
            return
        self._checkpoint_at = loop.time()
        self._checkpoint_queued = True
        self._publishes.put_nowait(self._take_checkpoint())

    def _checkpoint_due(self) -> None:
        self._checkpoint_timer = None
        self._maybe_checkpoint()

    def _take_checkpoint(self) -> Checkpoint:
        """The model's state now (synchronously: no event is applied meanwhile)."""
        self._model_changed = False
        started = time.perf_counter()
        state = checkpoint.dumps(self.model.state())
        self._checkpoint_cost_s = time.perf_counter() - started
        return Checkpoint(time.time(), state)

    async def _save_checkpoint(self, taken: Checkpoint) -> None:
        store = self._store
        if store is None:
            return
        try:
            await store.save_checkpoint(checkpoint.fingerprint(), taken.taken_at, taken.state)
        except StoreError:
            log.exception("store.checkpoint_failed")

    async def _restore_checkpoint(self, store: Store) -> None:
        """Take up the calls the last run left open (the first resync closes those gone)."""
        try:
            saved = await store.load_checkpoint()
        except StoreError:
            log.exception("model.checkpoint_unreadable")
            return
        if saved is None:
            return
        written_by, taken_at, blob = saved
        if written_by != checkpoint.fingerprint():
            log.warning("model.checkpoint_ignored", written_by=written_by, why="another version")
            return
        try:
            state = checkpoint.loads(blob)
        except ValueError as exc:
            log.warning("model.checkpoint_ignored", error=str(exc))
            return
        # Calls and parts that ended after the checkpoint was taken (and before the
        # stop) have their rows: not taken up, so not closed a second time.
        parts = [*state.parts.values(), *state.settling.values()]
        try:
            stored_calls, stored_activities = await store.stored_ids(
                state.calls, [p.activity_id for p in parts]
            )
        except StoreError:
            log.exception("model.checkpoint_unreadable")
            return
        self.model.restore(state, stored_calls=stored_calls, stored_activities=stored_activities)
        # Lookups under way at the stop: their answers (and deadlines) went with it.
        self._emit(self.model.pending_lookups())
        log.info(
            "model.restored",
            calls=len(self.model.calls),
            parts=len(self.model.parts),
            taken_at=round(taken_at, 3),
            ended_since=len(stored_calls) + len(stored_activities),
        )

    async def _check_directory(self) -> None:
        """Tell the model when an import (by ``ctid directory import``) changed the directory.

        The model answers pops from its own cache of matches, without asking the
        directory, so the directory's own check for imports would not run for
        numbers the model knows: ask it here, at most every ``revalidate_s``.
        """
        directory = self._directory
        if directory is None:
            return
        try:
            await directory.revalidate()
        except StoreError as exc:
            log.warning("directory.revalidate_failed", error=str(exc))
            return
        if directory.epoch != self._directory_epoch:
            self._directory_epoch = directory.epoch
            self.ami.events.put_nowait((DirectoryChanged(), time.time()))


class _DirectoryAccess:
    """The daemon's directory for ``search`` and ``select`` (open only while it runs)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def search(self, field: str, op: str, value: str, *, limit: int = 20) -> list[Any]:
        directory = self._daemon._directory
        return [] if directory is None else await directory.search(field, op, value, limit=limit)

    async def remember_choice(self, text: str, record_id: str) -> None:
        directory = self._daemon._directory
        if directory is not None:
            await directory.remember_choice(text, record_id)


class _StoreHistory:
    """What the ``history``, ``notes`` and ``select`` commands need from SQLite."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def recent(self, agent: str, limit: int) -> list[dict[str, Any]]:
        store = self._daemon._store
        if store is None:
            return []
        rows = await store.recent_interactions(agent, limit)
        return [contract.activity_payload(r, ts=r.ended_at, seq=0) for r in rows]

    async def replay(self, agent: str, since: int, limit: int) -> dict[str, Any]:
        """Re-send the agent's messages after ``since`` (at most ``limit``), as published.

        Each goes to its own topic, never retained (a retained state or snapshot
        must stay the latest), with ``replayed: true`` added. Returns what was
        re-sent and what is gone; raises ``BusError`` if the broker went away.
        """
        store = self._daemon._store
        if store is None:
            raise StoreError("the store is closed")
        found = await store.agent_messages(agent, since, limit)
        for message in found.messages:
            payload = orjson.loads(message.payload)
            payload["replayed"] = True
            await self._daemon.bus.publish(message.topic, payload, qos=1)
        return {
            "since": since,
            "resent": len(found.messages),
            "first_seq": found.messages[0].seq if found.messages else None,
            "last_seq": found.messages[-1].seq if found.messages else None,
            "seq": found.last_seq,
            "lost": found.lost,
            "more": found.more,
        }

    async def annotate(
        self, interaction: str, agent: str, notes: str | None, record: str | None
    ) -> bool:
        """Update the agent's stored activity of ``interaction`` and publish it again."""
        store = self._daemon._store
        if store is None:
            return False
        rows = await store.list_activities(interaction_id=interaction, agent=agent)
        if not rows:
            return False
        latest = rows[-1]
        if notes is not None:
            latest = replace(latest, notes=join_notes(latest.notes, notes))
        if record is not None:
            latest = replace(latest, customer_record=record)
        self._daemon._emit(self._daemon.model.republish_activity(latest, time.time()))
        return True


def outbox_messages(messages: tuple[Publish, ...]) -> list[OutboxMessage]:
    """The outbox rows of messages that are published only after their row is stored."""
    return [
        OutboxMessage(topic=m.topic, payload=orjson.dumps(m.payload), qos=m.qos, retain=m.retain)
        for m in messages
    ]
