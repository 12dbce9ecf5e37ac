"""The ``ctid`` command line.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
Secrets never travel on the command line: they come from the config file or
files it names.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from ctid import __version__
from ctid.errors import ConfigError, CtidError

DEFAULT_CONFIG = Path("/etc/ctid/ctid.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctid", description="CTI daemon for Asterisk")
    parser.add_argument("--version", action="version", version=f"ctid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)

    check = sub.add_parser(
        "check-config", help="validate a config and print it with secrets masked"
    )
    check.add_argument("path", type=Path, nargs="?", default=None)
    check.add_argument("-c", "--config", type=Path, default=None)

    rep = sub.add_parser(
        "replay", help="print, as JSON lines, every message ctid would publish for a capture"
    )
    rep.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    rep.add_argument("capture", type=Path)

    broker = sub.add_parser(
        "broker-config", help="write mosquitto.conf, acl, passwd and credentials.json"
    )
    broker.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    broker.add_argument("outdir", type=Path)
    broker.add_argument(
        "--reuse", type=Path, default=None, help="keep the passwords of this credentials.json"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctid`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.path or args.config or DEFAULT_CONFIG)
        if args.command == "run":
            return _run(args.config)
        if args.command == "replay":
            return _replay(args.config, args.capture)
        if args.command == "broker-config":
            return _broker_config(args.config, args.outdir, args.reuse)
    except ConfigError as exc:
        print(f"ctid: config: {exc}", file=sys.stderr)
        return 2
    except CtidError as exc:
        print(f"ctid: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `ctid replay … | head` closed the pipe: not an error of ours.
        return 0
    return 2


def _check_config(path: Path) -> int:
    from ctid.config import load_config, render_effective

    config = load_config(path)
    sys.stdout.write(render_effective(config))
    return 0


def _run(path: Path) -> int:
    from ctid.app import Daemon
    from ctid.config import load_config
    from ctid.logs import setup_logging

    config = load_config(path)
    setup_logging(config.log.level, config.log.format)
    asyncio.run(Daemon(config).run())
    return 0


def _replay(config_path: Path, capture: Path) -> int:
    from ctid.config import load_config
    from ctid.replay import replay

    config = load_config(config_path)
    if not capture.is_file():
        print(f"ctid: replay: no such capture file: {capture}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    for line in replay(config, capture):
        out.write(orjson.dumps(line) + b"\n")
    out.flush()
    return 0


def _broker_config(config_path: Path, outdir: Path, reuse: Path | None) -> int:
    from ctid.broker_config import mosquitto_cannot_reach, write_broker_config
    from ctid.config import load_config

    config = load_config(config_path)
    # Re-running keeps existing passwords, so agents' browsers keep working.
    files = write_broker_config(config, outdir, reuse=reuse or outdir / "credentials.json")
    print(f"wrote broker configuration to {outdir} ({len(files.credentials)} users)")
    blocked = mosquitto_cannot_reach(files.passwd)
    if blocked is not None:
        print(f"warning: the mosquitto user cannot enter {blocked}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
