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

    directory = sub.add_parser("directory", help="the contact directory")
    directory_sub = directory.add_subparsers(dest="directory_command", required=True)
    imp = directory_sub.add_parser(
        "import", help="import CRM records from a CSV or JSON file (upsert by CRM id)"
    )
    imp.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    imp.add_argument("file", type=Path)
    imp.add_argument(
        "--format", choices=("csv", "json", "jsonl"), default=None, help="default: guessed"
    )
    imp.add_argument(
        "--delete-missing",
        action="store_true",
        help="full sync: delete every record the file does not name",
    )
    imp.add_argument("--json", action="store_true", help="print the report as JSON")

    look = sub.add_parser("lookup", help="print, as JSON, the match a pop would show")
    look.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    look.add_argument("query", metavar="NUMBER|EMAIL")

    search = sub.add_parser("search", help="quick search of the directory (prints JSON lines)")
    search.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    search.add_argument("field", help="name, number, email or id")
    search.add_argument("op", help="= or like (with %% wildcards; no %% = starts with)")
    search.add_argument("value")
    search.add_argument("--limit", type=int, default=20)

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
        if args.command == "directory" and args.directory_command == "import":
            return _directory_import(
                args.config, args.file, args.format, args.delete_missing, args.json
            )
        if args.command == "lookup":
            return _lookup(args.config, args.query)
        if args.command == "search":
            return _search(args.config, args.field, args.op, args.value, args.limit)
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


def _directory_import(
    config_path: Path, file: Path, fmt: str | None, delete_missing: bool, as_json: bool
) -> int:
    from ctid.adapters.directory import Directory
    from ctid.config import load_config
    from ctid.core.directory import ImportReport
    from ctid.core.numbers import NumberNormalizer
    from ctid.directory_import import ImportFormat

    config = load_config(config_path)
    if not file.is_file():
        print(f"ctid: directory import: no such file: {file}", file=sys.stderr)
        return 2
    normalizer = NumberNormalizer(
        default_region=config.numbers.default_region,
        max_extension_length=config.numbers.max_extension_length,
    )

    async def run() -> ImportReport:
        async with Directory.open(config.store, normalizer=normalizer) as directory:
            form: ImportFormat | None = fmt  # type: ignore[assignment]  # argparse choices
            return await directory.import_file(file, fmt=form, delete_missing=delete_missing)

    report = asyncio.run(run())
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    print(f"{file}: {report.summary()}")
    for note in report.notes:
        print(f"note: {note}")
    for line, message in report.errors:
        print(f"line {line}: error: {message}")
    for line, message in report.warnings:
        print(f"line {line}: warning: {message}")
    unlisted = report.error_count - len(report.errors)
    unlisted += report.warning_count - len(report.warnings)
    if unlisted:
        print(f"… and {unlisted} more errors and warnings (use --json for the counts)")
    return 0


def _lookup(config_path: Path, query: str) -> int:
    from ctid.adapters.directory import Directory
    from ctid.config import load_config
    from ctid.core.directory import Match
    from ctid.core.numbers import NumberNormalizer

    config = load_config(config_path)
    normalizer = NumberNormalizer(
        default_region=config.numbers.default_region,
        max_extension_length=config.numbers.max_extension_length,
    )

    async def run() -> Match:
        async with Directory.open(config.store, normalizer=normalizer) as directory:
            return await directory.lookup(query)

    sys.stdout.buffer.write(orjson.dumps(asyncio.run(run()).as_payload()) + b"\n")
    return 0


def _search(config_path: Path, field: str, op: str, value: str, limit: int) -> int:
    from ctid.adapters.directory import Directory
    from ctid.config import load_config
    from ctid.core.directory import Record, SearchQueryError, build_search
    from ctid.core.numbers import NumberNormalizer

    config = load_config(config_path)
    normalizer = NumberNormalizer(
        default_region=config.numbers.default_region,
        max_extension_length=config.numbers.max_extension_length,
    )
    try:  # a bad field, operator or value is a usage error: say so before opening anything
        build_search(field, op, value, limit=limit, normalizer=normalizer)
    except SearchQueryError as exc:
        print(f"ctid: search: {exc}", file=sys.stderr)
        return 2

    async def run() -> list[Record]:
        async with Directory.open(config.store, normalizer=normalizer) as directory:
            return await directory.search(field, op, value, limit=limit)

    out = sys.stdout.buffer
    for record in asyncio.run(run()):
        out.write(orjson.dumps(record.as_payload()) + b"\n")
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
