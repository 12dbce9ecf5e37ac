"""ctid.sim.capture: the recorded sessions, split into events, list items and responses."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ctid.sim import load_capture, parse_capture

CAPTURE_DIR = Path(os.environ.get("CTID_CAPTURES", "/work/shared/ami-captures"))
CAPTURES = sorted(CAPTURE_DIR.glob("*.ami"))
pytestmark = pytest.mark.skipif(not CAPTURES, reason=f"no captures in {CAPTURE_DIR}")


@pytest.mark.parametrize("path", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_every_capture_loads(path: Path) -> None:
    capture = load_capture(path)
    assert capture.name == path.stem
    assert capture.banner_version == "11.0.0"
    assert capture.to_bytes() == path.read_bytes()
    # Every message is exactly one of event, list item, response.
    assert len(capture.events) + len(capture.list_items) + len(capture.responses) == len(
        capture.messages
    )
    assert capture.responses[0].get("Message") == "Authentication accepted"
    assert capture.responses[-1].response == "Goodbye"
    assert capture.events[0].event == "FullyBooted"
    assert capture.events[0].timestamp is None
    # Only FullyBooted lacks a Timestamp among the unsolicited events (README point 18).
    assert [m.event for m in capture.events if m.timestamp is None] == ["FullyBooted"]
    assert all(m.timestamp is None for m in capture.list_items)


def test_burst_loads_fast() -> None:
    start = time.perf_counter()
    capture = load_capture(CAPTURE_DIR / "burst.ami")
    assert time.perf_counter() - start < 5
    assert len(capture.events) == 6884
    assert 60 < capture.duration < 70


def test_list_items_are_told_apart_from_unsolicited_events() -> None:
    capture = load_capture(CAPTURE_DIR / "reconnect.ami")
    items = [m.event for m in capture.list_items]
    assert items.count("DeviceStateChange") == 36
    assert "CoreShowChannelsComplete" in items
    assert all(not m.action_id for m in capture.events if m.event == "DeviceStateChange")


def test_broadcast_events_with_an_action_id_are_events() -> None:
    # OriginateResponse and an action's UserEvent carry ActionID and Timestamp:
    # every session gets them, so they are scenario events, not answers.
    outbound = load_capture(CAPTURE_DIR / "outbound_busy_noanswer_failed.ami")
    assert sum(m.event == "OriginateResponse" for m in outbound.events) >= 3
    callback = load_capture(CAPTURE_DIR / "callback_userevent.ami")
    heartbeat = [m for m in callback.events if m.get("UserEvent") == "CtiHeartbeat"]
    assert len(heartbeat) == 1
    assert heartbeat[0].action_id == "cti-2"


def test_first_timestamp_and_replay_events() -> None:
    capture = load_capture(CAPTURE_DIR / "inbound_answered.ami")
    assert capture.first_timestamp == pytest.approx(1795308161.261253)
    assert capture.replay_events[0].event == "ChallengeSent"
    assert len(capture.replay_events) == len(capture.events) - 2


def test_parse_capture_tolerates_a_cut_tail_and_no_banner() -> None:
    capture = parse_capture(b"Event: Hangup\r\nPrivilege: call,all\r\nTimestamp: 1.5\r\nCause: 16")
    assert capture.banner_version == ""
    (hangup,) = capture.events
    assert hangup.get("Cause") == "16"
    assert hangup.timestamp == 1.5
