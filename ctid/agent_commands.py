"""Carrying out agents' commands: validated commands in, AMI actions and a reply out.

Each command is checked against the agent's own state first (logged in? its
own call? a configured reason?), so an agent can only ever touch its own
device and calls: interactions are looked up by (interaction, agent), never
by interaction alone. Then the AMI actions are sent; what Asterisk answers
becomes the reply. The AMI action each command sends is listed in README.md.

Asterisk facts that shaped the mapping:

* There is no AMI action to hold a PJSIP call. ``hold`` redirects the customer
  to music (``dialplan.hold_context``) and the agent to a waiting context in one
  ``Redirect`` (with ``ExtraChannel``: redirecting the customer alone would hang
  the agent up, as the redirect_transfer capture shows); ``unhold`` bridges the
  two again with ``Bridge``.
* An attended transfer completes when the transferer hangs up (the
  attended_transfer capture), so ``complete`` is a ``Hangup`` of the agent's leg;
  ``retrieve`` is ``CancelAtxfer``; ``conference`` injects the atxferthreeway
  feature code as received DTMF (``PlayDTMF`` with ``Receive``, Asterisk 16+).
* A static queue member cannot be added twice: ``QueueAdd`` answering "Already
  there" means the agent is logged in; ``QueueRemove`` answering "Not there"
  means it is out already.

Every action a command needs is sent and awaited before the reply, so the reply
says what Asterisk did. ``wrapup_done`` (and ``ready`` during a wrap-up) unpause
the agent's device first and end the model's wrap-up only once Asterisk accepted
it; the model's own unpause of that device is then not sent a second time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog

from ctid.config import AgentConfig, Config
from ctid.core.agents import Presence
from ctid.core.ami import AmiMessage, UnsafeActionError
from ctid.core.commands import (
    Command,
    CommandError,
    RateLimiter,
    parse_command,
    readable_id,
    reply_error,
    reply_ok,
)
from ctid.core.effects import Effect, SendAction
from ctid.core.model import Model, Part
from ctid.errors import (
    AmiActionFailedError,
    AmiActionTimeoutError,
    AmiNotConnectedError,
    BusError,
    CtidError,
    StoreError,
)

log = structlog.get_logger("ctid.commands")

Fields = Sequence[tuple[str, str]]


class ActionSink(Protocol):
    def __call__(self, action: str, fields: Fields = ()) -> Awaitable[list[AmiMessage]]: ...


class DirectoryAccess(Protocol):
    """What ``search`` and ``select`` need of the contact directory."""

    async def search(self, field: str, op: str, value: str, *, limit: int = 20) -> list[Any]: ...

    async def remember_choice(self, text: str, record_id: str) -> None: ...


class History(Protocol):
    async def recent(self, agent: str, limit: int) -> list[dict[str, Any]]: ...

    async def replay(self, agent: str, since: int, limit: int) -> dict[str, Any]: ...

    async def annotate(
        self, interaction: str, agent: str, notes: str | None, record: str | None
    ) -> bool: ...


class CommandExecutor:
    """Validates, authorises and carries out one agent's command; always returns a reply."""

    def __init__(
        self,
        config: Config,
        model: Model,
        *,
        send: ActionSink,
        emit: Callable[[list[Effect]], None],
        history: History | None = None,
        directory: DirectoryAccess | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.model = model
        self._send = send
        self._emit = emit
        self._history = history
        self._directory = directory
        self._clock = clock
        self._monotonic = monotonic
        self._agents = {a.id: a for a in config.agents}
        self._reasons = {r.code: r for r in config.reasons}
        self._limiter = RateLimiter(
            per_minute=config.commands.rate_per_minute, burst=config.commands.burst
        )
        # The model's normaliser: one cache, and the same reading of numbers as the pops.
        self._numbers = model.numbers
        self._queues = {q for a in config.agents for q in a.queues}
        self._handlers: dict[str, Callable[[AgentConfig, Command], Awaitable[dict[str, Any]]]] = {
            "login": self._login,
            "logout": self._logout,
            "ready": self._ready,
            "not_ready": self._not_ready,
            "wrapup_done": self._wrapup_done,
            "dial": self._dial,
            "hangup": self._hangup,
            "hold": self._hold,
            "unhold": self._unhold,
            "transfer": self._transfer,
            "consult": self._consult,
            "complete": self._complete,
            "retrieve": self._retrieve,
            "conference": self._conference,
            "notes": self._notes,
            "select": self._select,
            "history": self._recent,
            "replay": self._replay,
            "search": self._search,
        }

    def knows(self, agent_id: str) -> bool:
        return agent_id in self._agents

    async def handle(self, agent_id: str, payload: bytes) -> dict[str, Any]:
        """The reply to ``payload`` sent on ``agent_id``'s command topic (never raises)."""
        agent = self._agents[agent_id]
        command_id = readable_id(payload)
        try:
            if not self._limiter.allow(agent_id, self._monotonic()):
                raise CommandError("rate_limited", command_id=command_id)
            command = parse_command(payload)
            command_id = command.id
            handler = self._handlers.get(command.name)
            if handler is None:
                raise CommandError("unknown_command", f"{command.name} is not available")
            result = await handler(agent, command)
        except CommandError as exc:
            log.info(
                "command.refused",
                agent=agent_id,
                command_id=command_id,
                code=exc.code,
                message=exc.message,
            )
            return reply_error(command_id, exc)
        except Exception:
            log.exception("command.failed", agent=agent_id, command_id=command_id)
            return reply_error(command_id, CommandError("internal"))
        log.info("command.done", agent=agent_id, command_id=command_id, cmd=command.name)
        return reply_ok(command_id, result)

    # ---------------------------------------------------------------- AMI

    async def _action(self, action: str, fields: Fields = ()) -> list[AmiMessage]:
        try:
            return await self._send(action, fields)
        except AmiNotConnectedError as exc:
            raise CommandError("pbx_down", "the PBX link is down; try again shortly") from exc
        except AmiActionTimeoutError as exc:
            raise CommandError("timeout", f"{action}: Asterisk did not answer") from exc
        except AmiActionFailedError as exc:
            raise CommandError("pbx_error", f"{action}: {exc.message}") from exc
        except UnsafeActionError as exc:  # validation let something through: refuse anyway
            raise CommandError("bad_request", str(exc)) from exc

    async def _queue_log(self, agent: AgentConfig, queue: str, event: str, message: str) -> None:
        # Asterisk's own queue reports (queue_log) then agree with ctid. QueueLog
        # answers with a Response and emits no event (captures README point 25).
        fields = [("Queue", queue), ("Event", event), ("Interface", agent.devices[0])]
        if message:
            fields.append(("Message", message))
        try:
            await self._action("QueueLog", fields)
        except CommandError as exc:
            log.warning("command.queue_log_failed", agent=agent.id, queue=queue, error=exc.message)

    # ---------------------------------------------------------------- presence

    def _presence(self, agent: AgentConfig) -> Presence:
        return self.model.agents[agent.id].presence

    def _reason(self, code: str, *kinds: str) -> str:
        reason = self._reasons.get(code)
        if reason is None or reason.kind not in kinds:
            raise CommandError(
                "unknown_reason", f"reason {code!r} is not configured as {'/'.join(kinds)}"
            )
        return reason.code

    def _require_login(self, agent: AgentConfig) -> None:
        if self._presence(agent) == Presence.LOGGED_OUT:
            raise CommandError("not_logged_in")

    async def _login(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        if self._presence(agent) != Presence.LOGGED_OUT:
            raise CommandError("already_logged_in")
        if not agent.queues:
            raise CommandError("bad_request", "no queues are configured for this agent")
        reason = self._reason(cmd.get("reason"), "not_ready") if cmd.get("reason") else ""
        device = agent.devices[0]
        for queue in agent.queues:
            fields = [
                ("Queue", queue),
                ("Interface", device),
                ("MemberName", agent.name),
                ("StateInterface", device),
            ]
            if reason:
                fields += [("Paused", "true"), ("Reason", reason)]
            try:
                await self._action("QueueAdd", fields)
            except CommandError as exc:
                if "Already there" not in exc.message:
                    raise
            await self._queue_log(agent, queue, "AGENTLOGIN", reason)
        return {"queues": list(agent.queues), "paused": bool(reason)}

    async def _logout(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        self._require_login(agent)
        reason = self._reason(cmd.get("reason"), "logout")
        queues = sorted(self.model.agents[agent.id].queues) or list(agent.queues)
        for queue in queues:
            try:
                await self._action(
                    "QueueRemove", [("Queue", queue), ("Interface", agent.devices[0])]
                )
            except CommandError as exc:
                if "Not there" not in exc.message:
                    raise
            await self._queue_log(agent, queue, "AGENTLOGOFF", reason)
        return {"queues": queues, "reason": reason}

    async def _ready(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        self._require_login(agent)
        await self._action("QueuePause", [("Interface", agent.devices[0]), ("Paused", "false")])
        if self._presence(agent) == Presence.WRAP_UP:
            self._end_wrapup(agent)
        await self._queue_log(agent, "NONE", "UNPAUSEALL", "")
        return {}

    async def _not_ready(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        self._require_login(agent)
        reason = self._reason(cmd.get("reason"), "not_ready")
        await self._action(
            "QueuePause",
            [("Interface", agent.devices[0]), ("Paused", "true"), ("Reason", reason)],
        )
        await self._queue_log(agent, "NONE", "PAUSEALL", reason)
        return {"reason": reason}

    async def _wrapup_done(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        if self._presence(agent) != Presence.WRAP_UP:
            raise CommandError("not_in_wrapup")
        code = self._reason(cmd.get("code"), "wrapup") if cmd.get("code") else ""
        await self._action("QueuePause", [("Interface", agent.devices[0]), ("Paused", "false")])
        self._end_wrapup(agent, code=code, notes=cmd.get("notes", ""))
        return {"code": code}

    def _end_wrapup(self, agent: AgentConfig, *, code: str = "", notes: str = "") -> None:
        """End the agent's wrap-up in the model once Asterisk has unpaused its device.

        The model asks for an unpause of each device; the command has sent (and
        awaited) the one of ``devices[0]`` itself, so that one is not sent twice
        and the reply says whether Asterisk carried it out.
        """
        sent = ("Interface", agent.devices[0])
        effects = self.model.end_wrapup(agent.id, self._clock(), code=code, notes=notes)
        self._emit(
            [
                e
                for e in effects
                if not (isinstance(e, SendAction) and e.action == "QueuePause" and sent in e.fields)
            ]
        )

    # ---------------------------------------------------------------- calls

    def _part(self, agent: AgentConfig, interaction: str) -> Part:
        part = self.model.part_of(interaction, agent.id)
        if part is None:
            raise CommandError("no_such_call", f"no call {interaction!r} of this agent")
        return part

    def _agent_channel(self, part: Part) -> str:
        for uid in sorted(part.channels):
            chan = self.model.channels.get(uid)
            if chan is not None:
                return chan.name
        raise CommandError("no_such_call", "the agent has no channel in this call")

    def _customer_channel(self, part: Part) -> str:
        call = self.model.calls.get(part.call_id)
        chan = self.model.channels.get(call.customer_uid) if call is not None else None
        if chan is None:
            raise CommandError("no_such_call", "the call has no customer leg")
        return chan.name

    def _destination(self, target: str) -> tuple[str, str]:
        """(context, exten) for an agent id, a queue name or a number."""
        dialplan = self.config.dialplan
        agent = self._agents.get(target)
        if agent is not None:
            if not agent.extension:
                raise CommandError("bad_request", f"agent {target!r} has no extension configured")
            return dialplan.internal_context, agent.extension
        if target in self._queues:
            return dialplan.internal_context, target
        number = self._numbers.normalize(target)
        if number.kind == "e164":
            return dialplan.dial_context, number.e164
        if number.kind == "extension":
            return dialplan.internal_context, number.e164
        raise CommandError("invalid_number", f"{target!r} is no agent, queue or number")

    async def _dial(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        state = self.model.agents[agent.id]
        if len(state.parts) >= state.limit:
            raise CommandError(
                "limit_reached", f"{len(state.parts)} of {state.limit} interactions open"
            )
        context, exten = self._destination(cmd.get("number"))
        fields = [
            ("Channel", agent.devices[0]),
            ("Context", context),
            ("Exten", exten),
            ("Priority", "1"),
            ("Async", "true"),
            ("Timeout", str(int(self.config.dialplan.dial_timeout_s * 1000))),
            ("Variable", f"CTI_AGENT={agent.id}"),
        ]
        if self.config.dialplan.caller_id:
            fields.append(("CallerID", self.config.dialplan.caller_id))
        if cmd.get("interaction"):
            fields.append(("Variable", f"CTI_INTERACTION={cmd.get('interaction')}"))
        await self._action("Originate", fields)
        return {"number": exten, "context": context}

    async def _hangup(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        part = self._part(agent, cmd.get("interaction"))
        await self._action("Hangup", [("Channel", self._agent_channel(part))])
        return {}

    async def _hold(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        part = self._part(agent, cmd.get("interaction"))
        dialplan = self.config.dialplan
        await self._action(
            "Redirect",
            [
                ("Channel", self._customer_channel(part)),
                ("Context", dialplan.hold_context),
                ("Exten", "s"),
                ("Priority", "1"),
                ("ExtraChannel", self._agent_channel(part)),
                ("ExtraContext", dialplan.hold_agent_context),
                ("ExtraExten", "s"),
                ("ExtraPriority", "1"),
            ],
        )
        return {}

    async def _unhold(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        part = self._part(agent, cmd.get("interaction"))
        await self._action(
            "Bridge",
            [
                ("Channel1", self._agent_channel(part)),
                ("Channel2", self._customer_channel(part)),
                ("Tone", "no"),
            ],
        )
        return {}

    async def _transfer(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        part = self._part(agent, cmd.get("interaction"))
        context, exten = self._destination(cmd.get("to"))
        await self._action(
            "BlindTransfer",
            [("Channel", self._agent_channel(part)), ("Context", context), ("Exten", exten)],
        )
        return {"to": exten}

    async def _consult(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        part = self._part(agent, cmd.get("interaction"))
        context, exten = self._destination(cmd.get("to"))
        await self._action(
            "Atxfer",
            [("Channel", self._agent_channel(part)), ("Context", context), ("Exten", exten)],
        )
        return {"to": exten}

    def _consulting(self, part: Part) -> None:
        others = [
            p
            for p in self.model.parts.values()
            if p.call_id == part.call_id and p.agent != part.agent and p.why == "consult"
        ]
        if not others:
            raise CommandError("no_such_call", "no consultation in progress in this call")

    async def _complete(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        part = self._part(agent, cmd.get("interaction"))
        self._consulting(part)
        await self._action("Hangup", [("Channel", self._agent_channel(part))])
        return {}

    async def _retrieve(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        part = self._part(agent, cmd.get("interaction"))
        self._consulting(part)
        await self._action("CancelAtxfer", [("Channel", self._agent_channel(part))])
        return {}

    async def _conference(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        part = self._part(agent, cmd.get("interaction"))
        self._consulting(part)
        channel = self._agent_channel(part)
        for digit in self.config.dialplan.threeway_dtmf:
            await self._action(
                "PlayDTMF", [("Channel", channel), ("Digit", digit), ("Receive", "true")]
            )
        return {}

    # ---------------------------------------------------------------- the record

    async def _annotate(
        self, agent: AgentConfig, interaction: str, *, notes: str | None, record: str | None
    ) -> None:
        effects = self.model.annotate(
            interaction, agent.id, self._clock(), notes=notes, record=record
        )
        if effects is not None:
            self._emit(effects)
            return
        found = False
        if self._history is not None:
            try:
                found = await self._history.annotate(interaction, agent.id, notes, record)
            except StoreError as exc:
                raise CommandError("internal", "the activity could not be updated") from exc
        if not found:
            raise CommandError("no_such_call", f"no call {interaction!r} of this agent")

    async def _notes(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        await self._annotate(agent, cmd.get("interaction"), notes=cmd.get("text"), record=None)
        return {}

    async def _select(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        interaction, record = cmd.get("interaction"), cmd.get("record")
        call = self.model.calls.get(interaction)
        await self._annotate(agent, interaction, notes=None, record=record)
        if call is not None and self._directory is not None:
            number = self._numbers.normalize(call.customer_raw)
            if number.kind == "e164":
                # Offered first the next time this number calls (issue 4): the
                # model's cached answer for it is stale now.
                self.model.forget_match("number", number.e164)
                try:
                    await self._directory.remember_choice(number.e164, record)
                except (StoreError, ValueError) as exc:
                    log.warning("command.choice_not_remembered", agent=agent.id, error=str(exc))
        return {"record": record}

    async def _search(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        if self._directory is None:
            raise CommandError("internal", "no directory")
        try:
            found = await self._directory.search(
                cmd.get("field"), cmd.get("op"), cmd.get("value"), limit=cmd.get("limit") or 20
            )
        except CtidError as exc:
            raise CommandError("bad_request", str(exc)) from exc
        return {"records": [r.as_payload() for r in found]}

    async def _recent(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        if self._history is None:
            raise CommandError("internal", "no history store")
        limit = cmd.get("limit") or self.config.commands.history_limit
        try:
            items = await self._history.recent(
                agent.id, min(limit, self.config.commands.history_limit)
            )
        except StoreError as exc:
            raise CommandError("internal", "the history could not be read") from exc
        return {"interactions": items}

    async def _replay(self, agent: AgentConfig, cmd: Command) -> dict[str, Any]:
        """Re-send the agent's messages after ``since``, from SQLite (issue 6).

        The reply comes after the re-sent messages. ``lost`` > 0: some are no
        longer kept (beyond ``commands.replay_window``), reload from the
        snapshot; ``more``: ask again with ``since`` = ``last_seq``.
        """
        if self._history is None:
            raise CommandError("internal", "no message store")
        try:
            return await self._history.replay(
                agent.id, cmd.get("since"), self.config.commands.replay_window
            )
        except StoreError as exc:
            raise CommandError("internal", "the stream could not be read") from exc
        except BusError as exc:
            raise CommandError("internal", "the broker went away while re-sending") from exc
