"""Agent commands end to end: MQTT in, AMI actions out, one reply back.

Every test publishes as the agent itself (its own broker credentials, the
generated ACL) on ``ctid/v1/agents/{agent}/cmd`` of a real Mosquitto, runs the
real daemon, and checks the exact actions the AMI simulator received (action,
every field, nothing more) and the exact reply on ``…/reply``. Calls come from
real captures cut at the right moment: ``inbound_answered`` after alice's
BridgeEnter (alice talks to the customer), ``attended_transfer`` while alice
consults bob, ``agent_ring_noanswer`` while bob (not alice) talks.
Each code of ``ERROR_CODES`` has a test here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ctid.config import Config
from ctid.core.agents import Presence
from ctid.core.ami import AmiMessage
from ctid.core.commands import ERROR_CODES, MAX_PAYLOAD
from ctid.sim.server import error
from tests.command_rig import (
    ALICE_LEG,
    CALL,
    CAPTURES,
    CUSTOMER,
    Rig,
    bridge_enter,
    command_rig,
    commands_config,
    cut_after,
    expect,
    fields_of,
    logged_in,
    until,
)

# attended_transfer: alice's leg consults bob (the Atxfer of the capture).
CONSULT_CALL = "1795308280.21"
ALICE_CONSULT_LEG = "PJSIP/1001-00000016"
BOB_CONSULT_LEG = "PJSIP/1002-00000017"
# agent_ring_noanswer: alice rang without answering, then bob took the call.
BOBS_CALL = "1795308207.9"


@pytest.fixture
def ctid_config(tmp_path: Path) -> Config:
    """alice (support, sales) and bob (support); reasons Lunch, EndOfShift and Sale."""
    return commands_config(tmp_path)


def ok(command_id: object, **result: Any) -> dict[str, Any]:
    return {"type": "reply", "v": 1, "id": command_id, "ok": True, "result": result}


def refused(reply: dict[str, Any], code: str, command_id: object) -> str:
    """Assert ``reply`` is a refusal with ``code`` for ``command_id``; return its message."""
    assert code in ERROR_CODES
    assert set(reply) == {"type", "v", "id", "ok", "error"}, reply
    assert (reply["type"], reply["v"], reply["id"], reply["ok"]) == ("reply", 1, command_id, False)
    assert reply["error"]["code"] == code, reply
    assert set(reply["error"]) == {"code", "message"}
    message = reply["error"]["message"]
    assert isinstance(message, str)
    assert message
    return message


def names(actions: list[AmiMessage]) -> list[str]:
    return [a.get("Action") for a in actions]


async def talking(rig: Rig) -> None:
    """Replay inbound_answered until alice and the customer are bridged."""
    stop = cut_after("inbound_answered", bridge_enter(CUSTOMER))
    await rig.sim.replay(CAPTURES / "inbound_answered.ami", None, stop=stop)
    model = rig.daemon.model
    await until(
        lambda: (p := model.part_of(CALL, "alice")) is not None and p.answered_at is not None,
        what="alice talking",
    )


async def consulting(rig: Rig) -> None:
    """Replay attended_transfer until bob has answered alice's consultation."""
    stop = cut_after("attended_transfer", bridge_enter(BOB_CONSULT_LEG))
    await rig.sim.replay(CAPTURES / "attended_transfer.ami", None, stop=stop)
    model = rig.daemon.model

    def ready() -> bool:
        bob = model.part_of(CONSULT_CALL, "bob")
        return (
            model.part_of(CONSULT_CALL, "alice") is not None
            and bob is not None
            and (bob.why == "consult" and bob.answered_at is not None)
        )

    await until(ready, what="bob consulted")


async def bob_talking(rig: Rig) -> None:
    """Replay agent_ring_noanswer until bob talks to the customer alice did not answer."""
    stop = cut_after("agent_ring_noanswer", bridge_enter("PJSIP/carrier-00000009"))
    await rig.sim.replay(CAPTURES / "agent_ring_noanswer.ami", None, stop=stop)
    model = rig.daemon.model
    await until(
        lambda: (
            (p := model.part_of(BOBS_CALL, "bob")) is not None
            and p.answered_at is not None
            and model.part_of(BOBS_CALL, "alice") is None
        ),
        what="bob talking",
    )


# ---------------------------------------------------------------- presence


async def test_login_adds_the_device_to_every_queue_and_writes_queue_log(
    ctid_config: Config,
) -> None:
    """login: QueueAdd (member name, state interface) then QueueLog AGENTLOGIN, per queue."""
    async with command_rig(ctid_config) as rig:
        reply, actions = await rig.command({"id": "c1", "cmd": "login"})
    assert reply == ok("c1", queues=["support", "sales"], paused=False)
    member = [
        ("Interface", "PJSIP/1001"),
        ("MemberName", "Alice Example"),
        ("StateInterface", "PJSIP/1001"),
    ]
    log = [("Event", "AGENTLOGIN"), ("Interface", "PJSIP/1001")]
    assert [fields_of(a) for a in actions] == [
        expect("QueueAdd", ("Queue", "support"), *member),
        expect("QueueLog", ("Queue", "support"), *log),
        expect("QueueAdd", ("Queue", "sales"), *member),
        expect("QueueLog", ("Queue", "sales"), *log),
    ]


async def test_login_with_a_reason_joins_paused(ctid_config: Config) -> None:
    """login with a not-ready reason: QueueAdd Paused/Reason, and the reason in queue_log."""
    async with command_rig(ctid_config) as rig:
        reply, actions = await rig.command({"id": 7, "cmd": "login", "reason": "Lunch"})
    assert reply == ok(7, queues=["support", "sales"], paused=True)
    member = [
        ("Interface", "PJSIP/1001"),
        ("MemberName", "Alice Example"),
        ("StateInterface", "PJSIP/1001"),
        ("Paused", "true"),
        ("Reason", "Lunch"),
    ]
    log = [("Event", "AGENTLOGIN"), ("Interface", "PJSIP/1001"), ("Message", "Lunch")]
    assert [fields_of(a) for a in actions] == [
        expect("QueueAdd", ("Queue", "support"), *member),
        expect("QueueLog", ("Queue", "support"), *log),
        expect("QueueAdd", ("Queue", "sales"), *member),
        expect("QueueLog", ("Queue", "sales"), *log),
    ]


async def test_login_accepts_a_member_asterisk_already_has(ctid_config: Config) -> None:
    """QueueAdd answering "Already there" (a static member) counts as logged in."""
    async with command_rig(ctid_config) as rig:
        rig.sim.set_handler(
            "QueueAdd", lambda a: [error(a, "Unable to add interface: Already there")]
        )
        reply, actions = await rig.command({"id": "c1", "cmd": "login"})
    assert reply == ok("c1", queues=["support", "sales"], paused=False)
    assert names(actions) == ["QueueAdd", "QueueLog", "QueueAdd", "QueueLog"]


async def test_logout_removes_the_device_from_every_queue(ctid_config: Config) -> None:
    """logout: QueueRemove then QueueLog AGENTLOGOFF with the reason, per queue it is in;
    "Not there" from Asterisk (removed meanwhile) is no failure."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.READY)
        rig.sim.set_handler(
            "QueueRemove",
            lambda a: [
                error(a, "Unable to remove interface: Not there")
                if a.get("Queue") == "sales"
                else AmiMessage.build(
                    [("Response", "Success"), ("Message", "Removed interface from queue")]
                )
            ],
        )
        reply, actions = await rig.command({"id": "c1", "cmd": "logout", "reason": "EndOfShift"})
    assert reply == ok("c1", queues=["sales", "support"], reason="EndOfShift")
    log = [("Event", "AGENTLOGOFF"), ("Interface", "PJSIP/1001"), ("Message", "EndOfShift")]
    assert [fields_of(a) for a in actions] == [
        expect("QueueRemove", ("Queue", "sales"), ("Interface", "PJSIP/1001")),
        expect("QueueLog", ("Queue", "sales"), *log),
        expect("QueueRemove", ("Queue", "support"), ("Interface", "PJSIP/1001")),
        expect("QueueLog", ("Queue", "support"), *log),
    ]


async def test_not_ready_pauses_in_every_queue_with_the_reason(ctid_config: Config) -> None:
    """not_ready: one QueuePause without Queue (all queues) with the Reason, and PAUSEALL."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.READY)
        reply, actions = await rig.command({"id": "c1", "cmd": "not_ready", "reason": "Lunch"})
    assert reply == ok("c1", reason="Lunch")
    assert [fields_of(a) for a in actions] == [
        expect("QueuePause", ("Interface", "PJSIP/1001"), ("Paused", "true"), ("Reason", "Lunch")),
        expect(
            "QueueLog",
            ("Queue", "NONE"),
            ("Event", "PAUSEALL"),
            ("Interface", "PJSIP/1001"),
            ("Message", "Lunch"),
        ),
    ]


async def test_ready_unpauses_in_every_queue(ctid_config: Config) -> None:
    """ready: one QueuePause Paused=false without Queue, and UNPAUSEALL in queue_log."""
    async with command_rig(ctid_config, members=logged_in("alice", paused_reason="Lunch")) as rig:
        await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.NOT_READY)
        reply, actions = await rig.command({"id": "c1", "cmd": "ready"})
    assert reply == ok("c1")
    assert [fields_of(a) for a in actions] == [
        expect("QueuePause", ("Interface", "PJSIP/1001"), ("Paused", "false")),
        expect("QueueLog", ("Queue", "NONE"), ("Event", "UNPAUSEALL"), ("Interface", "PJSIP/1001")),
    ]


def with_wrapup(config: Config) -> Config:
    return dataclasses.replace(config, calls=dataclasses.replace(config.calls, wrapup_s=600.0))


async def after_call_in_wrapup(rig: Rig) -> None:
    """The whole inbound_answered call, then alice in automatic wrap-up."""
    await rig.sim.replay(CAPTURES / "inbound_answered.ami", None)
    await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.WRAP_UP)
    # The model pauses the agent for wrap-up by itself.
    pause = await rig.sim.wait_for_action("QueuePause")
    assert fields_of(pause) == expect(
        "QueuePause", ("Interface", "PJSIP/1001"), ("Paused", "true"), ("Reason", "wrap-up")
    )


async def test_wrapup_done_unpauses_and_completes_the_activity(ctid_config: Config) -> None:
    """wrapup_done with a code and notes: QueuePause Paused=false, and the call's activity
    published again with the wrap-up code, the notes and the wrap-up time."""
    async with command_rig(ctid_config, members=logged_in("alice"), adjust=with_wrapup) as rig:
        await after_call_in_wrapup(rig)
        alice = rig.users["alice"]
        start = len(alice.got)
        reply, actions = await rig.command(
            {"id": "w1", "cmd": "wrapup_done", "code": "Sale", "notes": "sold 3 licences"}
        )
        assert reply == ok("w1", code="Sale")
        assert [fields_of(a) for a in actions] == [
            expect("QueuePause", ("Interface", "PJSIP/1001"), ("Paused", "false"))
        ]
        _, activity = await alice.wait_for(
            lambda t, p: t == "ctid/v1/agents/alice/activity" and p["wrapup_code"] == "Sale",
            start=start,
        )
        assert activity["interaction_id"] == CALL
        assert activity["notes"] == "sold 3 licences"
        assert activity["wrapup_s"] >= 0
        _, state = await alice.wait_for(
            lambda t, p: t == "ctid/v1/agents/alice/state" and p["presence"] == "ready",
            start=start,
        )
        assert state["reason"] == ""


async def test_ready_during_wrapup_ends_it_with_one_unpause(ctid_config: Config) -> None:
    """ready while in wrap-up ends the wrap-up and unpauses once (not once per path)."""
    async with command_rig(ctid_config, members=logged_in("alice"), adjust=with_wrapup) as rig:
        await after_call_in_wrapup(rig)
        reply, actions = await rig.command({"id": "r1", "cmd": "ready"})
        await asyncio.sleep(0.1)  # an unpause sent behind the reply's back would show now
        late = rig.actions_since(0)
    assert reply == ok("r1")
    assert [fields_of(a) for a in actions] == [
        expect("QueuePause", ("Interface", "PJSIP/1001"), ("Paused", "false")),
        expect("QueueLog", ("Queue", "NONE"), ("Event", "UNPAUSEALL"), ("Interface", "PJSIP/1001")),
    ]
    assert [a.get("Paused") for a in late if a.get("Action") == "QueuePause"] == ["true", "false"]


# ---------------------------------------------------------------- calls


async def test_dial_originates_from_the_agents_device(ctid_config: Config) -> None:
    """dial: Originate from alice's device into the dial context with the E.164 number; a
    national number is normalised, a short one goes to the internal context."""
    async with command_rig(ctid_config) as rig:
        reply, actions = await rig.command({"id": "d1", "cmd": "dial", "number": "+49 89 101555"})
        assert reply == ok("d1", number="+4989101555", context="ctid-outbound")
        common = [
            ("Channel", "PJSIP/1001"),
            ("Priority", "1"),
            ("Async", "true"),
            ("Timeout", "30000"),
            ("Variable", "CTI_AGENT=alice"),
        ]
        assert [fields_of(a) for a in actions] == [
            expect("Originate", ("Context", "ctid-outbound"), ("Exten", "+4989101555"), *common)
        ]

        reply, actions = await rig.command({"id": "d2", "cmd": "dial", "number": "089 101555"})
        assert reply == ok("d2", number="+4989101555", context="ctid-outbound")
        assert [fields_of(a) for a in actions] == [
            expect("Originate", ("Context", "ctid-outbound"), ("Exten", "+4989101555"), *common)
        ]

        reply, actions = await rig.command({"id": "d3", "cmd": "dial", "number": "1002"})
        assert reply == ok("d3", number="1002", context="ctid-internal")
        assert [fields_of(a) for a in actions] == [
            expect("Originate", ("Context", "ctid-internal"), ("Exten", "1002"), *common)
        ]


async def test_dial_for_a_callback_tags_the_interaction_and_sets_caller_id(
    ctid_config: Config,
) -> None:
    """dial with an interaction (callback, call list entry) and a configured caller id."""

    def caller_id(config: Config) -> Config:
        dialplan = dataclasses.replace(
            config.dialplan, caller_id='"ACME Support" <+49301234500>', dial_timeout_s=12.5
        )
        return dataclasses.replace(config, dialplan=dialplan)

    async with command_rig(ctid_config, adjust=caller_id) as rig:
        reply, actions = await rig.command(
            {"id": "d1", "cmd": "dial", "number": "+4930999888", "interaction": "cb-17"}
        )
    assert reply == ok("d1", number="+4930999888", context="ctid-outbound")
    assert [fields_of(a) for a in actions] == [
        expect(
            "Originate",
            ("Channel", "PJSIP/1001"),
            ("Context", "ctid-outbound"),
            ("Exten", "+4930999888"),
            ("Priority", "1"),
            ("Async", "true"),
            ("Timeout", "12500"),
            ("Variable", "CTI_AGENT=alice"),
            ("Variable", "CTI_INTERACTION=cb-17"),
            ("CallerID", '"ACME Support" <+49301234500>'),
        )
    ]


async def test_hangup_hangs_up_the_agents_own_leg(ctid_config: Config) -> None:
    """hangup: Hangup of alice's channel in the call, never the customer's."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await talking(rig)
        reply, actions = await rig.command({"id": "h1", "cmd": "hangup", "interaction": CALL})
    assert reply == ok("h1")
    assert [fields_of(a) for a in actions] == [expect("Hangup", ("Channel", ALICE_LEG))]


async def test_hold_and_unhold(ctid_config: Config) -> None:
    """hold: one dual Redirect (customer to music, agent to the waiting context);
    unhold: Bridge of the two legs again."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await talking(rig)
        reply, actions = await rig.command({"id": "h1", "cmd": "hold", "interaction": CALL})
        assert reply == ok("h1")
        assert [fields_of(a) for a in actions] == [
            expect(
                "Redirect",
                ("Channel", CUSTOMER),
                ("Context", "ctid-hold"),
                ("Exten", "s"),
                ("Priority", "1"),
                ("ExtraChannel", ALICE_LEG),
                ("ExtraContext", "ctid-hold-agent"),
                ("ExtraExten", "s"),
                ("ExtraPriority", "1"),
            )
        ]
        reply, actions = await rig.command({"id": "h2", "cmd": "unhold", "interaction": CALL})
        assert reply == ok("h2")
        assert [fields_of(a) for a in actions] == [
            expect("Bridge", ("Channel1", ALICE_LEG), ("Channel2", CUSTOMER), ("Tone", "no"))
        ]


async def test_transfer_to_an_agent_a_queue_or_a_number(ctid_config: Config) -> None:
    """transfer: BlindTransfer of alice's leg (its peer, the customer, moves) to bob's
    extension, to a queue, or to an external number."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await talking(rig)
        cases = [
            ("bob", "ctid-internal", "1002"),
            ("support", "ctid-internal", "support"),
            ("+4930999888", "ctid-outbound", "+4930999888"),
            ("1003", "ctid-internal", "1003"),
        ]
        for n, (to, context, exten) in enumerate(cases):
            reply, actions = await rig.command(
                {"id": n, "cmd": "transfer", "interaction": CALL, "to": to}
            )
            assert reply == ok(n, to=exten)
            assert [fields_of(a) for a in actions] == [
                expect(
                    "BlindTransfer",
                    ("Channel", ALICE_LEG),
                    ("Context", context),
                    ("Exten", exten),
                )
            ]


async def test_consult_starts_an_attended_transfer(ctid_config: Config) -> None:
    """consult: Atxfer on alice's leg to bob's extension (as in the attended_transfer capture)."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await talking(rig)
        reply, actions = await rig.command(
            {"id": "x1", "cmd": "consult", "interaction": CALL, "to": "bob"}
        )
    assert reply == ok("x1", to="1002")
    assert [fields_of(a) for a in actions] == [
        expect("Atxfer", ("Channel", ALICE_LEG), ("Context", "ctid-internal"), ("Exten", "1002"))
    ]


async def test_complete_retrieve_and_conference_during_a_consultation(
    ctid_config: Config,
) -> None:
    """During alice's consultation with bob: complete hangs up alice's leg (Asterisk then
    joins customer and bob), retrieve is CancelAtxfer, conference injects atxferthreeway."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await consulting(rig)
        reply, actions = await rig.command(
            {"id": "r", "cmd": "retrieve", "interaction": CONSULT_CALL}
        )
        assert reply == ok("r")
        assert [fields_of(a) for a in actions] == [
            expect("CancelAtxfer", ("Channel", ALICE_CONSULT_LEG))
        ]

        reply, actions = await rig.command(
            {"id": "f", "cmd": "conference", "interaction": CONSULT_CALL}
        )
        assert reply == ok("f")
        assert [fields_of(a) for a in actions] == [
            expect("PlayDTMF", ("Channel", ALICE_CONSULT_LEG), ("Digit", "*"), ("Receive", "true")),
            expect("PlayDTMF", ("Channel", ALICE_CONSULT_LEG), ("Digit", "3"), ("Receive", "true")),
        ]

        reply, actions = await rig.command(
            {"id": "c", "cmd": "complete", "interaction": CONSULT_CALL}
        )
        assert reply == ok("c")
        assert [fields_of(a) for a in actions] == [expect("Hangup", ("Channel", ALICE_CONSULT_LEG))]


async def test_consultation_commands_need_a_consultation(ctid_config: Config) -> None:
    """complete, retrieve and conference on a call without a consultation: no_such_call,
    and nothing reaches Asterisk."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await talking(rig)
        for cmd in ("complete", "retrieve", "conference"):
            reply, actions = await rig.command({"id": cmd, "cmd": cmd, "interaction": CALL})
            refused(reply, "no_such_call", cmd)
            assert actions == []


async def test_notes_and_select_go_into_the_activity(ctid_config: Config) -> None:
    """notes and select send no action; the call's activity carries the notes and the chosen
    record when it ends, and history lists it afterwards."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await talking(rig)
        reply, actions = await rig.command(
            {"id": "n1", "cmd": "notes", "interaction": CALL, "text": "wants a quote\nby Friday"}
        )
        assert (reply, actions) == (ok("n1"), [])
        reply, actions = await rig.command(
            {"id": "s1", "cmd": "select", "interaction": CALL, "record": "crm-17"}
        )
        assert (reply, actions) == (ok("s1", record="crm-17"), [])

        start = cut_after("inbound_answered", bridge_enter(CUSTOMER))
        await rig.sim.replay(CAPTURES / "inbound_answered.ami", None, start=start)
        _, activity = await rig.users["alice"].wait_for(
            lambda t, p: t == "ctid/v1/agents/alice/activity"
        )
        assert activity["notes"] == "wants a quote\nby Friday"
        assert activity["customer"]["record"] == "crm-17"

        async def listed() -> list[dict[str, Any]]:
            reply, _ = await rig.command({"id": "h", "cmd": "history", "limit": 5})
            assert reply["ok"] is True
            items: list[dict[str, Any]] = reply["result"]["interactions"]
            return items

        # The activity is stored before it is published; history reads the store.
        items = await listed()
        assert [(i["interaction_id"], i["notes"]) for i in items] == [
            (CALL, "wants a quote\nby Friday")
        ]


# ---------------------------------------------------------------- every error code


async def test_malformed_payloads_bad_json_too_large_bad_request_unknown_command(
    ctid_config: Config,
) -> None:
    """bad_json, too_large, bad_request and unknown_command, each with the id when one can be
    read and null otherwise; none of them reaches Asterisk."""
    cases: list[tuple[bytes | dict[str, Any], str, object]] = [
        (b"not json", "bad_json", None),
        (b"", "bad_json", None),
        (b'["id", "cmd"]', "bad_json", None),
        (b'{"id": "a", "cmd": "ready"', "bad_json", None),
        (b'\xff\xfe{"id": "a"}', "bad_json", None),
        (b'{"id": "big", "cmd": "notes", "x": "' + b"a" * MAX_PAYLOAD + b'"}', "too_large", None),
        ({"cmd": "ready"}, "bad_request", None),
        ({"id": "a\r\nAction: Command", "cmd": "ready"}, "bad_request", None),
        ({"id": True, "cmd": "ready"}, "bad_request", None),
        ({"id": "b1", "cmd": 5}, "bad_request", "b1"),
        ({"id": "b2", "cmd": "not_ready"}, "bad_request", "b2"),
        ({"id": "b3", "cmd": "not_ready", "reason": "Lunch", "queue": "x"}, "bad_request", "b3"),
        ({"id": "b4", "cmd": "not_ready", "reason": 5}, "bad_request", "b4"),
        (
            {"id": "b5", "cmd": "not_ready", "reason": "Lunch\r\nAction: Command"},
            "bad_request",
            "b5",
        ),
        ({"id": "b6", "cmd": "dial", "number": "+49 89\r\n1"}, "bad_request", "b6"),
        ({"id": "b7", "cmd": "hangup", "interaction": ["x"]}, "bad_request", "b7"),
        ({"id": "b8", "cmd": "history", "limit": 1000}, "bad_request", "b8"),
        ({"id": "u1", "cmd": "fly"}, "unknown_command", "u1"),
        ({"id": "u3", "cmd": "Action: Command\r\n"}, "unknown_command", "u3"),
    ]
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        mark = len(rig.sim.actions)
        for payload, code, reply_id in cases:
            reply, _ = await rig.command(payload, reply_id=reply_id)
            message = refused(reply, code, reply_id)
            assert "\r" not in message
            assert "\n" not in message
        assert rig.actions_since(mark) == []
        # Exactly one reply each.
        assert len(rig.users["alice"].on("ctid/v1/agents/alice/reply")) == len(cases)


async def test_not_logged_in_and_already_logged_in(ctid_config: Config) -> None:
    """Presence commands check the presence first: nothing is sent when they cannot apply."""
    async with command_rig(ctid_config) as rig:
        for n, payload in enumerate(
            [
                {"cmd": "not_ready", "reason": "Lunch"},
                {"cmd": "ready"},
                {"cmd": "logout", "reason": "EndOfShift"},
            ]
        ):
            reply, actions = await rig.command({"id": n, **payload})
            refused(reply, "not_logged_in", n)
            assert actions == []
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.READY)
        reply, actions = await rig.command({"id": "l", "cmd": "login"})
        refused(reply, "already_logged_in", "l")
        assert actions == []


async def test_unknown_reason(ctid_config: Config) -> None:
    """A reason that is not configured, or configured for another purpose, is refused."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.READY)
        for n, payload in enumerate(
            [
                {"cmd": "not_ready", "reason": "Coffee"},
                {"cmd": "not_ready", "reason": "EndOfShift"},  # a logout reason
                {"cmd": "not_ready", "reason": "lunch"},  # codes are exact
                {"cmd": "logout", "reason": "Lunch"},  # a not-ready reason
            ]
        ):
            reply, actions = await rig.command({"id": n, **payload})
            refused(reply, "unknown_reason", n)
            assert actions == []


async def test_unknown_reason_at_login_and_wrapup(ctid_config: Config) -> None:
    """login's optional reason must be a not-ready one; wrapup_done's code a wrap-up one."""
    async with command_rig(ctid_config, members=logged_in("alice"), adjust=with_wrapup) as rig:
        await after_call_in_wrapup(rig)
        reply, actions = await rig.command({"id": "w", "cmd": "wrapup_done", "code": "Lunch"})
        refused(reply, "unknown_reason", "w")
        assert actions == []
    async with command_rig(ctid_config) as rig:
        reply, actions = await rig.command({"id": "l", "cmd": "login", "reason": "Sale"})
        refused(reply, "unknown_reason", "l")
        assert actions == []


def swapped_devices(config: Config) -> Config:
    """bob's handset is PJSIP/1001, alice's PJSIP/1002: the captures' 1001 calls are bob's."""
    alice, bob = config.agents
    return dataclasses.replace(
        config,
        agents=(
            dataclasses.replace(alice, devices=bob.devices, extension=bob.extension),
            dataclasses.replace(bob, devices=alice.devices, extension=alice.extension),
        ),
    )


async def test_no_such_call_including_another_agents_call(ctid_config: Config) -> None:
    """An unknown interaction, and bob's live call (alice never took part in it) named on
    alice's own topic: no_such_call for every call command, nothing sent; bob himself can
    hang his call up."""
    async with command_rig(ctid_config, users=("alice", "bob"), adjust=swapped_devices) as rig:
        stop = cut_after("inbound_answered", bridge_enter(CUSTOMER))
        await rig.sim.replay(CAPTURES / "inbound_answered.ami", None, stop=stop)
        model = rig.daemon.model
        await until(
            lambda: (p := model.part_of(CALL, "bob")) is not None and p.answered_at is not None,
            what="bob talking",
        )
        for interaction in ("1795308161.99", CALL):
            for cmd, extra in [
                ("hangup", {}),
                ("hold", {}),
                ("unhold", {}),
                ("transfer", {"to": "1003"}),
                ("consult", {"to": "1003"}),
                ("complete", {}),
                ("retrieve", {}),
                ("conference", {}),
                ("notes", {"text": "mine now"}),
                ("select", {"record": "crm-1"}),
            ]:
                reply, actions = await rig.command(
                    {"id": cmd, "cmd": cmd, "interaction": interaction, **extra}
                )
                refused(reply, "no_such_call", cmd)
                assert actions == []
        reply, actions = await rig.command(
            {"id": "mine", "cmd": "hangup", "interaction": CALL}, agent="bob"
        )
    assert reply == ok("mine")
    # PJSIP/1001 is bob's handset in this test.
    assert [fields_of(a) for a in actions] == [expect("Hangup", ("Channel", ALICE_LEG))]


async def test_a_call_that_rang_an_agent_is_not_hers_to_control(ctid_config: Config) -> None:
    """alice was rung for the call bob then answered (agent_ring_noanswer): she cannot
    control it; her notes go to her own record of the missed call, never to bob's."""
    async with command_rig(ctid_config, users=("alice", "bob")) as rig:
        await bob_talking(rig)
        for cmd in ("hangup", "hold", "complete"):
            reply, actions = await rig.command({"id": cmd, "cmd": cmd, "interaction": BOBS_CALL})
            refused(reply, "no_such_call", cmd)
            assert actions == []
        # Her part ended with her ringing; once its activity is out (stored first) …
        _, missed = await rig.users["alice"].wait_for(
            lambda t, p: t == "ctid/v1/agents/alice/activity"
        )
        assert (missed["interaction_id"], missed["outcome"]) == (BOBS_CALL, "missed")
        reply, _ = await rig.command(
            {"id": "n", "cmd": "notes", "interaction": BOBS_CALL, "text": "missed it"}
        )
        assert reply == ok("n")
        # … the notes update that activity of hers.
        _, noted = await rig.users["alice"].wait_for(
            lambda t, p: t == "ctid/v1/agents/alice/activity" and p["notes"] == "missed it"
        )
        assert noted["id"] == missed["id"]
        bobs_part = rig.daemon.model.part_of(BOBS_CALL, "bob")
        assert bobs_part is not None
        assert bobs_part.notes == ""


async def test_invalid_number(ctid_config: Config) -> None:
    """Numbers that are neither E.164 nor an extension are refused before any Originate."""
    async with command_rig(ctid_config) as rig:
        for n, number in enumerate(["*97", "+0", "()", "0049891015550000000000"]):
            reply, actions = await rig.command({"id": n, "cmd": "dial", "number": number})
            refused(reply, "invalid_number", n)
            assert actions == []
        await talking(rig)
        reply, actions = await rig.command(
            {"id": "t", "cmd": "transfer", "interaction": CALL, "to": "nobody"}
        )
        refused(reply, "invalid_number", "t")
        assert actions == []


async def test_limit_reached(ctid_config: Config) -> None:
    """With interaction_limit 1 and a call open, dial is refused without an Originate."""

    def one(config: Config) -> Config:
        return dataclasses.replace(
            config, calls=dataclasses.replace(config.calls, interaction_limit=1)
        )

    async with command_rig(ctid_config, members=logged_in("alice"), adjust=one) as rig:
        await talking(rig)
        reply, actions = await rig.command({"id": "d", "cmd": "dial", "number": "+4930999888"})
    message = refused(reply, "limit_reached", "d")
    assert "1 of 1" in message
    assert actions == []


async def test_not_in_wrapup(ctid_config: Config) -> None:
    """wrapup_done while ready (no wrap-up running) is refused and sends nothing."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.READY)
        reply, actions = await rig.command({"id": "w", "cmd": "wrapup_done"})
    refused(reply, "not_in_wrapup", "w")
    assert actions == []


async def test_pbx_down(ctid_config: Config) -> None:
    """With Asterisk unreachable a command that needs it says so at once."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.READY)
        await rig.sim.stop_accepting()
        await until(lambda: not rig.daemon.ami.ready.is_set(), what="link down")
        reply, actions = await rig.command(
            {"id": "p", "cmd": "not_ready", "reason": "Lunch"}, within_s=2
        )
        refused(reply, "pbx_down", "p")
        reply, _ = await rig.command({"id": "q", "cmd": "dial", "number": "+4930999888"})
        refused(reply, "pbx_down", "q")
    assert actions == []


async def test_pbx_error_carries_asterisks_message(ctid_config: Config) -> None:
    """Response: Error from Asterisk becomes pbx_error with the action and Asterisk's text."""
    async with command_rig(ctid_config, members=logged_in("alice")) as rig:
        await until(lambda: rig.daemon.model.agents["alice"].presence == Presence.READY)
        rig.sim.set_handler("QueuePause", lambda a: [error(a, "Interface not found")])
        reply, actions = await rig.command({"id": "e", "cmd": "not_ready", "reason": "Lunch"})
    assert refused(reply, "pbx_error", "e") == "QueuePause: Interface not found"
    # Nothing goes to queue_log for a pause Asterisk refused.
    assert names(actions) == ["QueuePause"]


async def test_timeout_when_asterisk_does_not_answer(ctid_config: Config) -> None:
    """An action Asterisk never answers ends in timeout after ami.action_timeout_s."""

    def short(config: Config) -> Config:
        return dataclasses.replace(
            # Short, but not so short that a loaded CI machine times out the next,
            # answered, action too.
            config,
            ami=dataclasses.replace(config.ami, action_timeout_s=1.0),
        )

    async with command_rig(ctid_config, adjust=short) as rig:
        rig.sim.set_handler("Originate", lambda a: None)
        reply, actions = await rig.command({"id": "t", "cmd": "dial", "number": "+4930999888"})
        assert names(actions) == ["Originate"]
        refused(reply, "timeout", "t")
        # The link stays up and the next command works.
        rig.sim.set_handler("Originate", None)
        rig.sim.set_handler(
            "QueueAdd", lambda a: [error(a, "Unable to add interface to queue: No such queue")]
        )
        reply, _ = await rig.command({"id": "n", "cmd": "login"})
        assert refused(reply, "pbx_error", "n") == (
            "QueueAdd: Unable to add interface to queue: No such queue"
        )


async def test_rate_limited(ctid_config: Config) -> None:
    """Beyond the burst a command is refused with rate_limited (its id kept), per agent."""

    def tight(config: Config) -> Config:
        commands = dataclasses.replace(config.commands, burst=3, rate_per_minute=1)
        return dataclasses.replace(config, commands=commands)

    async with command_rig(ctid_config, users=("alice", "bob"), adjust=tight) as rig:
        for n in range(3):
            reply, _ = await rig.command({"id": n, "cmd": "wrapup_done"})
            refused(reply, "not_in_wrapup", n)
        reply, actions = await rig.command({"id": "x", "cmd": "dial", "number": "+4930999888"})
        refused(reply, "rate_limited", "x")
        assert actions == []
        # Even a payload that is no command counts, and still gets its one reply.
        reply, _ = await rig.command(b"garbage", reply_id=None)
        refused(reply, "rate_limited", None)
        # bob has his own bucket.
        reply, _ = await rig.command({"id": "b", "cmd": "wrapup_done"}, agent="bob")
        refused(reply, "not_in_wrapup", "b")


async def test_internal_when_the_store_fails(ctid_config: Config) -> None:
    """internal is the answer to a failure of ctid itself: here the SQLite file lost its
    activities table under the running daemon (no mock), so history cannot be read."""
    async with command_rig(ctid_config) as rig:

        def lose_the_table() -> None:
            # In a thread: the daemon runs on this loop, and a write transaction of its
            # store (its per-agent message log) can only finish while the loop runs.
            db = sqlite3.connect(ctid_config.store.path, timeout=30)
            try:
                db.execute("ALTER TABLE activities RENAME TO activities_lost")
                db.commit()
            finally:
                db.close()

        await asyncio.to_thread(lose_the_table)
        reply, actions = await rig.command({"id": "i", "cmd": "history"})
        assert refused(reply, "internal", "i") == "the history could not be read"
        assert actions == []
        # ctid keeps serving commands.
        reply, _ = await rig.command({"id": "j", "cmd": "wrapup_done"})
        refused(reply, "not_in_wrapup", "j")


def test_every_error_code_has_a_test() -> None:
    """This module refers to each code of ERROR_CODES (a new code needs a test here)."""
    source = Path(__file__).read_text(encoding="utf-8")
    missing = [code for code in ERROR_CODES if f'"{code}"' not in source]
    assert missing == []


# ---------------------------------------------------------------- broker ACL, through the daemon


async def test_acl_alice_cannot_command_bob_nor_read_his_pops_and_crm_reads_both(
    ctid_config: Config,
) -> None:
    """With the generated ACL on a real Mosquitto: alice's command on bob's cmd topic never
    reaches ctid (no action, no reply on bob's reply topic; MQTT does not tell ctid who
    published, so the broker is what stops it), while bob's own identical command works;
    alice, subscribed to bob's topics, receives none of his pops or replies; crm receives
    both agents' pops."""
    subscribe = {
        "alice": ("ctid/v1/agents/alice/#", "ctid/v1/agents/bob/#", "ctid/v1/agents/+/pop"),
        "bob": ("ctid/v1/agents/bob/#",),
        "crm": ("ctid/v1/agents/+/pop", "ctid/v1/agents/+/reply"),
    }
    async with command_rig(ctid_config, users=("alice", "bob", "crm"), subscribe=subscribe) as rig:
        await bob_talking(rig)  # alice was rung first, then bob answered: both got pops
        alice, bob, crm = rig.users["alice"], rig.users["bob"], rig.users["crm"]
        await bob.wait_for(lambda t, p: t.endswith("/pop") and p["phase"] == "accepted")

        start = len(bob.got)
        mark = len(rig.sim.actions)
        hostile = [
            {"id": "evil1", "cmd": "hangup", "interaction": BOBS_CALL},
            {"id": "evil2", "cmd": "logout", "reason": "EndOfShift"},
            {"id": "evil3", "cmd": "dial", "number": "+4930999888"},
        ]
        for payload in hostile:
            await rig.publish("alice", "ctid/v1/agents/bob/cmd", payload)
        # bob's own command right behind them: its reply shows the others had their chance.
        reply, actions = await rig.command(
            {"id": "mine", "cmd": "hangup", "interaction": BOBS_CALL}, agent="bob"
        )
        assert reply == ok("mine")
        assert [fields_of(a) for a in actions] == [
            expect("Hangup", ("Channel", "PJSIP/1002-0000000b"))
        ]
        assert rig.actions_since(mark) == actions
        assert [p["id"] for p in bob.on("ctid/v1/agents/bob/reply", start)] == ["mine"]

        # alice's session got only her own messages.
        assert {t.split("/")[3] for t, _ in alice.got} == {"alice"}
        assert [p["phase"] for p in alice.on("ctid/v1/agents/alice/pop")][:1] == ["alerting"]
        assert not [p for t, p in alice.got if p.get("agent") == "bob"]
        # crm saw both agents' pops (and bob's reply).
        await crm.wait_for(lambda t, p: t == "ctid/v1/agents/bob/reply")
        pops = {(p["agent"], p["phase"]) for t, p in crm.got if t.endswith("/pop")}
        assert {("alice", "alerting"), ("bob", "alerting"), ("bob", "accepted")} <= pops
