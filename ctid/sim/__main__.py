"""Run an AMI simulator from the command line (used by the demo).

    CTID_SIM_SECRET=… python -m ctid.sim --port 5038 --username ctid \\
        [--replay CAPTURE.ami … [--loop]] [--traffic --agents 5 --callers 50] [--speed 1.0]

The secret is never a command-line argument, where ``ps`` would show it: it
comes from the environment variable named by ``--secret-env`` (default
``CTID_SIM_SECRET``) or from ``--secret-file``. Once listening, the simulator
prints ``ctid.sim listening on HOST:PORT`` (useful with ``--port 0``). Replays
and generated traffic start when the first client has logged in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ctid.sim.server import AmiSimulator
from ctid.sim.traffic import generate, queue_status_items

DEFAULT_SECRET_ENV = "CTID_SIM_SECRET"  # noqa: S105 - the variable's name, not a secret


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m ctid.sim``."""
    p = argparse.ArgumentParser(
        prog="python -m ctid.sim", description="Run an AMI simulator (a fake Asterisk)."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5038, help="0 picks a free port")
    p.add_argument("--username", default="ctid")
    p.add_argument(
        "--secret-env",
        default=DEFAULT_SECRET_ENV,
        metavar="NAME",
        help=f"environment variable holding the secret (default {DEFAULT_SECRET_ENV})",
    )
    p.add_argument("--secret-file", type=Path, help="file holding the secret (first line)")
    p.add_argument("--uptime", type=float, default=3600.0, help="Uptime reported in FullyBooted")
    p.add_argument("--replay", type=Path, nargs="+", default=[], metavar="CAPTURE")
    p.add_argument("--loop", action="store_true", help="repeat the replay or the traffic forever")
    p.add_argument("--traffic", action="store_true", help="generate contact-center traffic")
    p.add_argument("--agents", type=int, default=5)
    p.add_argument("--callers", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="time scale of replays and traffic; 0 sends as fast as the client reads",
    )
    return p


def read_secret(args: argparse.Namespace) -> str:
    """The AMI secret from ``--secret-file`` or the environment; ``SystemExit`` if neither."""
    if args.secret_file is not None:
        try:
            lines = args.secret_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SystemExit(f"ctid.sim: cannot read secret file: {exc}") from None
        if lines and lines[0]:
            return str(lines[0])
        raise SystemExit(f"ctid.sim: secret file {args.secret_file} is empty")
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        raise SystemExit(f"ctid.sim: no secret: set {args.secret_env} or pass --secret-file")
    return secret


async def _feed(sim: AmiSimulator, args: argparse.Namespace) -> None:
    speed = args.speed or None
    for round_no in itertools.count():
        await sim.wait_for_clients(1, timeout=None)
        if args.traffic:
            # Each round is new traffic starting now, so Uniqueids and time move on.
            stream = generate(
                agents=args.agents,
                callers=args.callers,
                seed=args.seed + round_no,
                start_ts=time.time(),
            )
            await sim.replay(stream, speed)
        for capture in args.replay:
            # A looped capture would go back in time; retime its Timestamps.
            await sim.replay(capture, speed, retime=args.loop)
        if not args.loop:
            return


async def run(args: argparse.Namespace, secret: str) -> None:
    """Serve until SIGINT/SIGTERM."""
    sim = AmiSimulator(
        username=args.username,
        secret=secret,
        host=args.host,
        port=args.port,
        uptime=args.uptime,
    )
    if args.traffic:
        sim.set_list("QueueStatus", queue_status_items(args.agents))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        print(f"ctid.sim listening on {sim.host}:{sim.port}", flush=True)
        feeder = asyncio.create_task(_feed(sim, args))
        await stop.wait()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    for capture in args.replay:
        if not capture.is_file():
            print(f"ctid.sim: no such capture: {capture}", file=sys.stderr)
            return 2
    secret = read_secret(args)
    asyncio.run(run(args, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
