"""``ctid replay`` of every capture equals its reviewed golden file in tests/golden/.

The golden files were read against each capture's ``.md`` (with
``scripts/golden.py show NAME``) before they were committed; a change to the
model that changes what ctid publishes shows here as a diff to review, and is
accepted only by regenerating and re-reading them (``scripts/golden.py update``).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ctid.config import load_config
from ctid.replay import replay

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT.parent / "shared" / "ami-captures"
GOLDEN = ROOT / "tests" / "golden"
NAMES = sorted(p.stem for p in CAPTURES.glob("*.ami"))


def test_every_capture_has_a_golden_file() -> None:
    """No capture is left without its reviewed expectation, and no golden file is orphaned."""
    assert NAMES
    assert sorted(p.stem for p in GOLDEN.glob("*.jsonl")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_replay_matches_golden(name: str) -> None:
    """Message by message, in order: topic, payload, retain and QoS."""
    config = load_config(ROOT / "tests" / "data" / "captures.toml")
    got = [orjson.loads(orjson.dumps(m)) for m in replay(config, CAPTURES / f"{name}.ami")]
    want = [orjson.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_bytes().splitlines()]
    for n, (g, w) in enumerate(zip(got, want, strict=False)):
        assert g == w, f"{name}: message {n} differs"
    assert len(got) == len(want), f"{name}: {len(got)} messages, golden has {len(want)}"
