"""ctid against the ground truth of every real AMI capture.

Each capture in ``shared/ami-captures`` has a ``.truth.json`` written by the
scenario driver, independent of the AMI stream. ``tests/truth.py`` replays the
capture through ctid's model and lists every disagreement; a capture passes when
that list is empty. The last tests check the harness itself: a wrong message
must be reported, so that an empty report means something.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ctid.config import Config, load_config
from ctid.replay import replay
from tests.truth import CAPTURES, CONFIG, all_captures, check_capture, compare, load_truth

ALL = all_captures()
Json = dict[str, Any]


@cache
def config() -> Config:
    return load_config(CONFIG)


@cache
def replayed(name: str) -> tuple[Json, ...]:
    return tuple(replay(config(), CAPTURES / f"{name}.ami"))


def mutated(name: str, change: Callable[[list[Json]], None]) -> list[str]:
    """The report for capture ``name`` after ``change`` edited a copy of its messages."""
    messages = copy.deepcopy(list(replayed(name)))
    change(messages)
    return compare(load_truth(CAPTURES / f"{name}.ami"), messages, config())


def test_every_capture_has_a_truth_file() -> None:
    """The captures are present, each with its truth file."""
    assert len(ALL) >= 17
    missing = [p.name for p in ALL if not p.with_suffix(".truth.json").is_file()]
    assert not missing


def test_captures_config_has_the_lab_agents() -> None:
    """The captures' config: agents 1001..1010, id = extension, PJSIP and IAX2 devices."""
    cfg = config()
    assert [a.id for a in cfg.agents] == [f"10{n:02d}" for n in range(1, 11)]
    for a in cfg.agents:
        assert a.extension == a.id
        assert a.devices == (f"PJSIP/{a.id}", f"IAX2/{a.id}")
    queues = {a.id: set(a.queues) for a in cfg.agents}
    assert {a for a, q in queues.items() if "support" in q} == {"1001", "1002"}
    assert {a for a, q in queues.items() if "sales" in q} == {
        "1001",
        "1002",
        "1003",
        "1004",
        "1005",
    }


@pytest.mark.parametrize("capture", ALL, ids=[p.stem for p in ALL])
def test_capture_matches_truth(capture: Path) -> None:
    """Calls, pops, activities, call records and agent states agree with the truth file."""
    report = check_capture(capture, config())
    if report:
        pytest.fail(
            f"{len(report)} mismatch(es) with the truth:\n" + "\n".join(report), pytrace=False
        )


# --------------------------------------------------------------------------- the harness itself


def test_harness_reports_a_wrong_outcome() -> None:
    """An abandoned call's ringing agent shown as answering is reported in plain words."""

    def answer_1002(messages: list[Json]) -> None:
        for m in messages:
            p = m["payload"]
            if p["type"] == "activity" and p["agent"] == "1002":
                p["outcome"] = "answered"
                p["answered_at"] = p["ended_at"]

    report = mutated("inbound_abandoned", answer_1002)
    assert "inbound_abandoned c1: agent 1002 expected outcome missed, got answered" in report
    assert any("activity claims an answer" in line for line in report)


def test_harness_reports_transfer_details() -> None:
    """A wrong transfer target, talk time or pop reason of a transfer is reported."""

    def spoil(messages: list[Json]) -> None:
        for m in messages:
            p = m["payload"]
            if p["type"] == "activity" and p["agent"] == "1001":
                p["transfer_to"] = "somewhere"
                p["talk_s"] = 9.0
            if p["type"] == "pop" and p["agent"] == "1002":
                p["why"] = "inbound"

    report = mutated("blind_transfer", spoil)
    assert "blind_transfer c1: agent 1001 expected transfer_to 1002, got 'somewhere'" in report
    assert "blind_transfer c1: agent 1001 expected talk_s 3.00, got 9.00" in report
    assert "blind_transfer c1: agent 1002 alerting pop why inbound, expected transfer" in report


def test_harness_reports_duplicates_and_missing_activities() -> None:
    """A duplicated activity and a missing consult activity are both reported."""

    def spoil(messages: list[Json]) -> None:
        extra = [
            copy.deepcopy(m)
            for m in messages
            if m["payload"]["type"] == "activity" and m["payload"]["agent"] == "1001"
        ]
        for m in extra:
            m["payload"]["id"] += "-dup"
        messages[:] = [
            m
            for m in messages
            if not (m["payload"]["type"] == "activity" and m["payload"]["agent"] == "1002")
        ]
        messages.extend(extra)

    report = mutated("consult_then_retrieve", spoil)
    assert any(
        line.startswith("consult_then_retrieve c1: agent 1001 expected 1 activity, got 2")
        for line in report
    )
    assert any("agent 1002 expected an answered consult activity" in line for line in report)


def test_harness_reports_presence_and_contract() -> None:
    """A pause that never shows, a bad ``v`` and a ``seq`` going backwards are reported."""

    def spoil(messages: list[Json]) -> None:
        for m in messages:
            p = m["payload"]
            if p["type"] == "agent_state" and p["agent"] == "1001":
                for q in (p.get("queues") or {}).values():
                    q["paused"] = False
        messages[0]["payload"]["v"] = 2
        states = [m for m in messages if m["topic"] == "ctid/v1/agents/1002/state"]
        states[-1]["payload"]["seq"] = 0

    report = mutated("agent_pause_unpause", spoil)
    assert (
        "agent_pause_unpause agent 1001: expected support paused (Lunch) at t=0.50, "
        "got support not paused"
    ) in report
    assert any("has v=2" in line for line in report)
    assert any("agent 1002 seq not increasing" in line for line in report)


def test_harness_reports_a_missing_hold() -> None:
    """A hold the truth scheduled but the agent's call states never show is reported."""

    def unhold_first(messages: list[Json]) -> None:
        for m in messages:
            p = m["payload"]
            if p["type"] == "call" and p["state"] == "held":
                p["state"] = "talking"
                break

    report = mutated("hold_unhold", unhold_first)
    assert any(
        line.startswith("hold_unhold c1: agent 1001 expected call state held at t=6.04")
        for line in report
    )
