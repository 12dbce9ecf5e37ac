"""Property-based tests of the model, fed with the real captures in ``shared/ami-captures``.

The captures are interleaved (re-keyed so that they do not collide), duplicated,
cut short, mutated and salted with unknown events; see ``tests/fuzz_support.py``
for how a ``Scenario`` becomes a stream. A failing example prints its
``Scenario``; ``run_stream(build_stream(scenario))`` replays it.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings

from tests.fuzz_support import (
    Rewrite,
    Scenario,
    build_stream,
    capture_names,
    duration_violations,
    leftovers,
    records,
    run_stream,
    scenarios,
    seq_violations,
)

# Sized for the whole file to pass in about 25 s on a 2-core machine (a failure's
# shrinking takes longer).
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=_HEALTH)
FUZZ_MORE = settings(max_examples=60, deadline=None, suppress_health_check=_HEALTH)

damaged = scenarios(mutations=True, inserts=True, known_inserts=True, cut=True)
complete = scenarios(inserts=True, known_inserts=False)


# ---------------------------------------------------------------------- whole captures


@pytest.mark.parametrize("name", capture_names())
def test_complete_capture_ends_clean(name: str) -> None:
    """Property 2 (with 3 and 4) on each capture alone: after the last hang-up the model holds
    no call, channel or agent part, every agent is idle with no open interaction, no record
    has a negative duration, and every agent's ``seq`` strictly increases."""
    model, effects = run_stream(build_stream(Scenario(captures=(name,))))
    assert leftovers(model) == []
    assert duration_violations(effects) == []
    assert seq_violations(effects) == []


@pytest.mark.parametrize("name", capture_names())
def test_complete_capture_duplicated_adds_no_records(name: str) -> None:
    """Property 5 on each capture alone: every event delivered twice in a row gives the same
    activity and call records as the clean stream (no extra record, nothing counted twice)."""
    _, clean = run_stream(build_stream(Scenario(captures=(name,))))
    _, doubled = run_stream(build_stream(Scenario(captures=(name,), duplicates="all")))
    assert records(doubled) == records(clean)


# ---------------------------------------------------------------------- damaged interleavings


@FUZZ_MORE
@given(damaged)
def test_never_raises_on_damaged_interleavings(scenario: Scenario) -> None:
    """Property 1: 2-3 captures interleaved at random, with duplicated events, mutated headers
    (removed, garbage, aliasing another channel's ids), random extra events and a random cut:
    ``Model.apply`` never raises."""
    run_stream(build_stream(scenario))


@FUZZ
@given(damaged)
# Garbage in the one header that feeds a duration straight through (HoldTime of
# QueueCallerAbandon) is too rare a draw to be found reliably; pinned here.
@example(Scenario(captures=("inbound_abandoned",), rewrites=(Rewrite("HoldTime", "-5"),)))
@example(Scenario(captures=("inbound_abandoned",), rewrites=(Rewrite("HoldTime", "nan"),)))
def test_no_negative_durations_on_damaged_interleavings(scenario: Scenario) -> None:
    """Property 3 under any damage: no activity (ring/talk/hold/wrap-up) or call (wait/talk/
    hold) record carries a negative or non-finite duration, and ``answered_at``/``ended_at``
    are never before ``offered_at``/``started_at``."""
    _, effects = run_stream(build_stream(scenario))
    assert duration_violations(effects) == []


@FUZZ
@given(damaged)
def test_seq_increases_on_damaged_interleavings(scenario: Scenario) -> None:
    """Property 4 under any damage: per agent, the ``seq`` of every payload published on
    ``v1/agents/{id}/…`` strictly increases."""
    _, effects = run_stream(build_stream(scenario))
    assert seq_violations(effects) == []


# ---------------------------------------------------------------------- complete interleavings


@FUZZ
@given(complete)
def test_complete_interleavings_end_clean(scenario: Scenario) -> None:
    """Property 2 (with 3 and 4): 2-3 whole captures interleaved at random, with events
    delivered twice in a row and unknown events sprinkled in: at the end the model holds no
    call, channel or part, every agent is idle with no open interaction, durations are not
    negative and ``seq`` strictly increases per agent."""
    model, effects = run_stream(build_stream(scenario))
    assert leftovers(model) == []
    assert duration_violations(effects) == []
    assert seq_violations(effects) == []


@FUZZ
@given(scenarios(min_captures=1, duplicates=True))
def test_duplicates_add_no_records(scenario: Scenario) -> None:
    """Property 5: delivering events twice in a row (as Asterisk repeats DialEnd) gives the
    same activity and call records as the clean stream: no extra record, nothing double-counted."""
    clean = Scenario(captures=scenario.captures, segments=scenario.segments)
    _, want = run_stream(build_stream(clean))
    _, got = run_stream(build_stream(scenario))
    want_recs, got_recs = records(want), records(got)
    assert Counter(r.id for r in got_recs.activities) == Counter(r.id for r in want_recs.activities)
    assert Counter(r.interaction_id for r in got_recs.calls) == Counter(
        r.interaction_id for r in want_recs.calls
    )
    assert got_recs == want_recs
