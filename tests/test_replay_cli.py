"""``ctid replay`` on every real capture: exits 0 and prints valid JSON lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT.parent / "shared" / "ami-captures"
ALL = sorted(CAPTURES.glob("*.ami"))


def test_captures_are_present() -> None:
    """The shared captures sit beside the checkout (the replay tests below need them)."""
    assert len(ALL) >= 17


@pytest.mark.parametrize("capture", ALL, ids=[p.stem for p in ALL])
def test_replay_prints_json_lines(capture: Path) -> None:
    """Every line is one message: topic under ctid/v1, a typed v1 payload, retain and qos."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctid",
            "replay",
            "-c",
            str(ROOT / "config" / "ctid.toml"),
            "--no-store",  # config/ctid.toml stores in /var/lib/ctid
            str(capture),
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    lines = proc.stdout.splitlines()
    assert lines, "a capture always yields at least the status and the agents' states"
    for line in lines:
        msg = orjson.loads(line)
        assert set(msg) == {"topic", "payload", "retain", "qos"}
        assert msg["topic"].startswith("ctid/v1/")
        assert msg["payload"]["v"] == 1
        assert msg["payload"]["type"] in {
            "status",
            "agent_state",
            "snapshot",
            "pop",
            "call",
            "activity",
            "call_record",
            "inbox",
            "queue_state",
        }
        assert msg["qos"] in (0, 1)
        assert isinstance(msg["retain"], bool)
    first = orjson.loads(lines[0])
    assert first["topic"] == "ctid/v1/status"


def test_replay_of_a_missing_file_is_a_clear_error() -> None:
    """A wrong path is named on stderr with exit code 2, not a traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ctid",
            "replay",
            "-c",
            str(ROOT / "config" / "ctid.toml"),
            "--no-store",
            "/nonexistent.ami",
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"no such capture file: /nonexistent.ami" in proc.stderr
    assert b"Traceback" not in proc.stderr
