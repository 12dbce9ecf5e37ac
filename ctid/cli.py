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
from typing import TYPE_CHECKING, Any

import orjson

from ctid import __version__
from ctid.core.records import EXPORT_KINDS, ExportKind
from ctid.errors import ConfigError, CtidError

if TYPE_CHECKING:
    from ctid.config import Config

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
    rep.add_argument(
        "--no-store",
        action="store_true",
        help="only print; by default the replay is also stored in [store] path, as the daemon "
        "would store it (idempotent: replaying a capture again adds nothing)",
    )

    sync = sub.add_parser("sync", help="CRM sync: export rows after a seq, acknowledge, reconcile")
    sync_sub = sync.add_subparsers(dest="sync_command", required=True)
    exp = sync_sub.add_parser(
        "export",
        help="print the rows with seq > SEQ in seq order (summary on stderr)",
        description="Print the rows of one kind with seq > SEQ, in seq order. Read-only and "
        "idempotent: the same command prints the same rows until new ones are written.",
    )
    exp.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    exp.add_argument(
        "--since",
        type=_non_negative,
        default=None,
        metavar="SEQ",
        help="default: the consumer's acknowledged cursor",
    )
    exp.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    exp.add_argument("--kind", choices=EXPORT_KINDS, default="activities")
    exp.add_argument("--limit", type=_positive, default=None, metavar="N")
    exp.add_argument("--consumer", default=None, help="cursor name (default: crm/<kind>)")
    ack = sync_sub.add_parser("ack", help="record that the CRM has every row up to SEQ")
    ack.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    ack.add_argument("seq", type=_non_negative, metavar="SEQ")
    ack.add_argument("--kind", choices=EXPORT_KINDS, default="activities")
    ack.add_argument("--consumer", default=None, help="cursor name (default: crm/<kind>)")
    rec = sync_sub.add_parser(
        "reconcile",
        help="list calls without activities and doubtful activities (JSON lines)",
    )
    rec.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    rec.add_argument(
        "--since",
        type=_non_negative,
        default=0,
        metavar="SEQ",
        help="check the interactions with a call or activity row after SEQ (default: all)",
    )

    directory = sub.add_parser("directory", help="the contact directory")
    directory_sub = directory.add_subparsers(dest="directory_command", required=True)
    imp = directory_sub.add_parser(
        "import",
        help="import CRM records from a CSV or JSON file (upsert by CRM id)",
        epilog=_IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    imp.add_argument("file", type=Path)
    imp.add_argument(
        "--format", choices=("csv", "json", "jsonl"), default=None, help="default: guessed"
    )
    imp.add_argument(
        "--delete-missing",
        action="store_true",
        help="full sync: delete every record the file does not name (see below)",
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


_IMPORT_EPILOG = """\
exit status:
  0  every row imported (or was already up to date)
  1  some rows had errors: they are listed, the other rows were imported;
     or the import failed on the way (a database error, on stderr)
  2  nothing imported: the file is missing or unusable as a whole (e.g. a
     JSON list with a syntax error), or bad configuration or usage

--delete-missing deletes nothing if any row could not be read or has no
usable id (the file may not name every entry); the other rows still import.
"""


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctid`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.path or args.config or DEFAULT_CONFIG)
        if args.command == "run":
            return _run(args.config)
        if args.command == "replay":
            return _replay(args.config, args.capture, store=not args.no_store)
        if args.command == "sync" and args.sync_command == "export":
            return _sync_export(
                args.config,
                since=args.since,
                fmt=args.format,
                kind=args.kind,
                limit=args.limit,
                consumer=args.consumer,
            )
        if args.command == "sync" and args.sync_command == "ack":
            return _sync_ack(args.config, args.seq, args.kind, args.consumer)
        if args.command == "sync" and args.sync_command == "reconcile":
            return _sync_reconcile(args.config, args.since)
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


def _replay(config_path: Path, capture: Path, *, store: bool) -> int:
    from ctid.config import load_config
    from ctid.replay import DurableEffect, replay, store_replayed

    config = load_config(config_path)
    if not capture.is_file():
        print(f"ctid: replay: no such capture file: {capture}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    if not store:
        for line in replay(config, capture):
            out.write(orjson.dumps(line) + b"\n")
        out.flush()
        return 0
    # Store before publish, as the daemon: the rows are committed before a line is printed.
    durable: list[DurableEffect] = []
    lines = [orjson.dumps(line) + b"\n" for line in replay(config, capture, durable=durable)]

    async def run() -> None:
        from ctid.adapters.store import Store

        async with Store.open(config.store, service_level_s=config.stats.service_level_s) as db:
            await store_replayed(db, durable)

    asyncio.run(run())
    out.writelines(lines)
    out.flush()
    return 0


def _open_existing(config_path: Path, what: str) -> tuple[Config, bool]:
    """The config, and whether its store exists (a message on stderr when it does not)."""
    from ctid.config import load_config

    config = load_config(config_path)
    if not config.store.path.is_file():
        print(
            f"ctid: {what}: no store at {config.store.path} (ctid run or ctid replay writes it)",
            file=sys.stderr,
        )
        return config, False
    return config, True


def _sync_export(
    config_path: Path,
    *,
    since: int | None,
    fmt: str,
    kind: ExportKind,
    limit: int | None,
    consumer: str | None,
) -> int:
    from ctid.adapters.store import Store
    from ctid.sync import default_consumer, export_rows, write_csv, write_jsonl

    config, exists = _open_existing(config_path, "sync export")
    if not exists:
        return 1
    name = consumer or default_consumer(kind)

    async def run() -> tuple[int, list[dict[str, Any]], bool, int]:
        async with Store.open(config.store) as store:
            start = await store.cursor(name) if since is None else since
            rows, more = await export_rows(store, start, kind, limit)
            return start, rows, more, await store.max_seq()

    start, rows, more, last = asyncio.run(run())
    if fmt == "csv":
        write_csv(rows, kind, sys.stdout)
        sys.stdout.flush()
    else:
        write_jsonl(rows, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    origin = f"cursor of {name}" if since is None else "--since"
    if not rows:
        print(
            f"ctid: sync export: no {kind} rows after seq {start} ({origin}; last seq {last})",
            file=sys.stderr,
        )
        return 0
    top = rows[-1]["seq"]
    options = "" if kind == "activities" else f" --kind {kind}"
    options += "" if consumer is None else f" --consumer {consumer}"
    print(
        f"ctid: sync export: {len(rows)} {kind} rows, seq {rows[0]['seq']}..{top} "
        f"(after {start}, {origin}); when stored: ctid sync ack -c {config_path}{options} {top}",
        file=sys.stderr,
    )
    if more:
        print(f"ctid: sync export: more rows follow: --since {top}", file=sys.stderr)
    return 0


def _sync_ack(config_path: Path, seq: int, kind: str, consumer: str | None) -> int:
    from ctid.adapters.store import Store
    from ctid.sync import default_consumer

    config, exists = _open_existing(config_path, "sync ack")
    if not exists:
        return 1
    name = consumer or default_consumer(kind)

    async def run() -> tuple[int, int]:
        async with Store.open(config.store) as store:
            last, before = await store.max_seq(), await store.cursor(name)
            if seq <= last:
                await store.ack(name, seq)
            return last, before

    last, before = asyncio.run(run())
    if seq > last:
        print(
            f"ctid: sync ack: seq {seq} is beyond the last seq written ({last}): no export "
            f"gave it, and acknowledging it would skip rows written later; {name} stays at "
            f"{before}",
            file=sys.stderr,
        )
        return 1
    note = " (moved back: those rows will be exported again)" if seq < before else ""
    print(f"{name}: acknowledged up to seq {seq} (was {before}){note}")
    return 0


def _sync_reconcile(config_path: Path, since: int) -> int:
    import time

    from ctid.adapters.store import Store
    from ctid.sync import reconcile

    config, exists = _open_existing(config_path, "sync reconcile")
    if not exists:
        return 1

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with Store.open(config.store) as store:
            return await store.interaction_rows(since)

    calls, activities = asyncio.run(run())
    problems = reconcile(
        calls, activities, now=time.time(), max_call_age_s=config.calls.max_call_age_s
    )
    out = sys.stdout.buffer
    for problem in problems:
        out.write(orjson.dumps(problem) + b"\n")
    out.flush()
    checked = len({c["interaction_id"] for c in calls} | {a["interaction_id"] for a in activities})
    errors = sum(p["severity"] == "error" for p in problems)
    print(
        f"ctid: sync reconcile: {checked} interactions after seq {since} checked "
        f"({len(calls)} calls, {len(activities)} activities): {errors} problems, "
        f"{len(problems) - errors} notes",
        file=sys.stderr,
    )
    return 0


def _directory_import(
    config_path: Path, file: Path, fmt: str | None, delete_missing: bool, as_json: bool
) -> int:
    from ctid.adapters.directory import Directory
    from ctid.config import load_config
    from ctid.core.directory import ImportReport
    from ctid.core.numbers import NumberNormalizer
    from ctid.directory_import import ImportFormat
    from ctid.errors import ImportFileError

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

    try:
        report = asyncio.run(run())
    except ImportFileError as exc:
        # Raised before any row is read: 2, unlike 1 for a file imported in part.
        print(f"ctid: directory import: {exc} (nothing imported)", file=sys.stderr)
        return 2
    status = 1 if report.error_count else 0  # the epilog's exit status
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        return status
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
    return status


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
