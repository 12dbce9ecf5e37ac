"""Golden files of ``ctid replay`` for every capture: write them, and show them for review.

    .venv/bin/python scripts/golden.py update [NAME ...]   # rewrite tests/golden/NAME.jsonl
    .venv/bin/python scripts/golden.py show NAME           # a readable timeline to review

A golden file is the exact ``ctid replay`` output (config tests/data/captures.toml).
``show`` prints one line per message with the time since the first event, so it
can be read against the capture's ``.md`` before the file is committed; a
golden file is never accepted without that read.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ctid.config import load_config
from ctid.replay import replay

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT.parent / "shared" / "ami-captures"
GOLDEN = ROOT / "tests" / "golden"
CONFIG = ROOT / "tests" / "data" / "captures.toml"


def lines_for(name: str) -> list[bytes]:
    config = load_config(CONFIG)
    return [orjson.dumps(m) for m in replay(config, CAPTURES / f"{name}.ami")]


def update(names: list[str]) -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = GOLDEN / f"{name}.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in lines_for(name)))
        print(f"wrote {path.relative_to(ROOT)}")


def _t(iso: str | None, t0: float) -> str:
    if not iso:
        return "-"
    return f"{datetime.fromisoformat(iso.replace('Z', '+00:00')).timestamp() - t0:7.2f}"


def describe(p: dict[str, Any], t0: float) -> str:
    kind = p["type"]
    if kind == "agent_state":
        paused = ",".join(
            f"{q}:{v['reason'] or 'paused'}" for q, v in p["queues"].items() if v["paused"]
        )
        return (
            f"{p['presence']}{'(' + p['reason'] + ')' if p['reason'] else ''} phone={p['phone']}"
            f" open={p['interactions']} pbx={p['pbx']}{' paused=' + paused if paused else ''}"
        )
    if kind == "pop":
        number = p["number"]["e164"] or p["number"]["kind"]
        return (
            f"{p['phase']} {p['direction']} why={p['why']} {number}"
            f" '{p['caller_name']}' queue={p['queue']}"
            f" match={p['match']['kind']} lookup={p['lookup']}"
        )
    if kind == "call":
        return f"{p['state']} {p['direction']} {p['number']['e164'] or p['number']['kind']}"
    if kind == "activity":
        return (
            f"{p['id']} {p['outcome']} {p['direction']} {p['customer']['e164'] or '-'}"
            f" offered={_t(p['offered_at'], t0)} answered={_t(p['answered_at'], t0)}"
            f" ended={_t(p['ended_at'], t0)} ring={p['ring_s']} talk={p['talk_s']}"
            f" hold={p['hold_s']} wrapup={p['wrapup_s']}"
            f"{' to=' + p['transfer_to'] if p['transfer_to'] else ''}"
            f"{' DISCONNECTED' if p['ended_while_disconnected'] else ''}"
        )
    if kind == "call_record":
        return (
            f"{p['interaction_id']} {p['outcome']} {p['direction']} {p['customer']['e164'] or '-'}"
            f" queue={p['queue']} wait={p['wait_s']} talk={p['talk_s']} hold={p['hold_s']}"
            f" agents={','.join(p['agents'])} transfers={p['transfers']}"
        )
    if kind == "inbox":
        return f"{p['inbox']}: " + "; ".join(
            f"{i['number']['raw']} {i['reason']} {i['queue']}" for i in p["items"]
        )
    if kind == "queue_state":
        a = p["agents"]
        return (
            f"waiting={p['waiting']} longest={p['longest_wait_s']}"
            f" ready={a['ready']} busy={a['busy']} paused={a['paused']}"
        )
    if kind == "snapshot":
        return f"open: {[i['interaction_id'] for i in p['interactions']]}"
    return f"pbx={p.get('pbx')} daemon={p.get('daemon')}"


def show(name: str) -> None:
    path = GOLDEN / f"{name}.jsonl"
    messages = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    t0 = datetime.fromisoformat(messages[0]["payload"]["ts"].replace("Z", "+00:00")).timestamp()
    for m in messages:
        p = m["payload"]
        topic = m["topic"].removeprefix("ctid/v1/")
        if topic.startswith("crm/activity"):
            continue  # the same payload as the agent's activity
        print(f"{_t(p['ts'], t0)} {topic:28} {describe(p, t0)}")


def main() -> None:
    ap = argparse.ArgumentParser(description="golden files of ctid replay")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("update")
    up.add_argument("names", nargs="*")
    sh = sub.add_parser("show")
    sh.add_argument("name")
    args = ap.parse_args()
    if args.cmd == "update":
        update(args.names or sorted(p.stem for p in CAPTURES.glob("*.ami")))
    else:
        show(args.name)


if __name__ == "__main__":
    main()
