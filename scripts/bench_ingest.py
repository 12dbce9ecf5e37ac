"""Benchmark: AMI ingest through ctid's pure core (parser, then model).

Prints events/s for parsing and for applying, per-event apply latency
percentiles, peak memory, and what a checkpoint of the model costs (bytes and
time to take, every 50 events along the capture), for a real capture (default:
the 50-call ``burst`` recorded from Asterisk 22). No assertions: a benchmark
reports.

    .venv/bin/python scripts/bench_ingest.py [CAPTURE] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

from ctid import checkpoint
from ctid.core.ami import AmiParser
from ctid.core.model import AgentSpec, Model, ModelSettings
from ctid.core.numbers import NumberNormalizer

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "ami-captures" / "burst.ami"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("capture", type=Path, nargs="?", default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = args.capture.read_bytes()
    agents = tuple(
        AgentSpec(id=f"agent{n}", devices=(f"PJSIP/{n}", f"IAX2/{n}")) for n in range(1001, 1011)
    )

    parse_rates: list[float] = []
    apply_rates: list[float] = []
    latencies: list[float] = []
    events = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        msgs = AmiParser().feed(data)
        parse_rates.append(len(msgs) / (time.perf_counter() - t0))
        events = [m for m in msgs if m.event and (m.timestamp is not None or not m.action_id)]
        model = Model(ModelSettings(agents=agents), NumberNormalizer())
        t0 = time.perf_counter()
        for msg in events:
            s = time.perf_counter()
            model.apply(msg, msg.timestamp or 0.0)
            latencies.append(time.perf_counter() - s)
        apply_rates.append(len(events) / (time.perf_counter() - t0))

    # The checkpoint the daemon takes (at most every 0.2 s after a change), along the way.
    model = Model(ModelSettings(agents=agents), NumberNormalizer())
    taken: list[tuple[int, int, float]] = []  # (open calls, bytes, seconds)
    for n, msg in enumerate(events):
        model.apply(msg, msg.timestamp or 0.0)
        if n % 50 == 0:
            s = time.perf_counter()
            blob = checkpoint.dumps(model.state())
            taken.append((len(model.calls), len(blob), time.perf_counter() - s))

    tracemalloc.start()
    model = Model(ModelSettings(agents=agents), NumberNormalizer())
    for msg in AmiParser().feed(data):
        if msg.event:
            model.apply(msg, msg.timestamp or 0.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    latencies.sort()
    q = statistics.quantiles(latencies, n=1000)
    size_mb = len(data) / 1e6
    print(f"capture: {args.capture.name} ({size_mb:.1f} MB, {len(events)} events), x{args.repeat}")
    print(f"parse:  {statistics.median(parse_rates):,.0f} messages/s (median)")
    print(f"apply:  {statistics.median(apply_rates):,.0f} events/s (median)")
    p50, p99, worst = q[499] * 1e6, q[989] * 1e6, latencies[-1] * 1e6
    print(f"apply latency per event: p50 {p50:.1f} µs, p99 {p99:.1f} µs, max {worst:.0f} µs")
    print(f"peak traced memory (parse + apply once): {peak / 1e6:.1f} MB")
    busiest = max(taken)
    times = sorted(t for _, _, t in taken)
    print(
        f"checkpoint: {len(taken)} taken; at the most open calls ({busiest[0]}) "
        f"{busiest[1] / 1e3:.1f} kB in {busiest[2] * 1e3:.2f} ms; "
        f"time p50 {statistics.median(times) * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
