"""Reading directory import files: CSV or JSON, one row at a time, with line numbers.

Formats (DESIGN "Directory import"; README "Contact directory"):

* **JSON list**: ``[{"id": "crm-17", "kind": "person", "name": "…", "numbers":
  [{"type": "work", "number": "…"}], "emails": ["…"]}, …]``;
* **JSON lines**: one such object per line (blank lines are skipped);
* **CSV** with a header row (``,``, ``;`` or tab separated): columns ``id``,
  ``kind``, ``name``, ``organization``, ``deleted``, ``numbers`` (items separated
  by ``;``, each ``type=number`` or a bare number of type ``other``), any number of
  ``number_<type>`` columns (``number_work``, ``number_mobile``: ``;``-separated
  numbers of that type) and ``emails`` (or ``email``; ``;``- or ``,``-separated).
  Other columns are ignored and named in the report. One record per line: a quoted
  field cannot span lines (no directory field holds a line break).

A row whose deletion flag is set (``"deleted": true``, or ``1``/``true``/``yes`` in
CSV) deletes that record. A row that cannot be read (bad JSON on one line, a CSV
row with too many fields, bytes that are not UTF-8) becomes a ``SourceRow`` with an
error (its id unknown: a full sync then deletes nothing); a file that cannot be read
at all, such as a JSON list with a syntax error anywhere, raises ``ImportFileError``
(naming the line where it can) before any row is produced.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from ctid.errors import ImportFileError

ImportFormat = Literal["csv", "json", "jsonl"]
_KNOWN_COLUMNS = frozenset({"id", "kind", "name", "organization", "deleted", "numbers"})
_EMAIL_COLUMNS = frozenset({"emails", "email"})
_NUMBER_COLUMN = re.compile(r"number_([a-z][a-z0-9_-]{0,31})")
_SURROGATE = re.compile(r"[\udc80-\udcff]")  # undecodable bytes under surrogateescape
_SUFFIXES: dict[str, ImportFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row of an import file: its first line and its fields, or why it is unreadable."""

    line: int
    fields: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass(slots=True)
class ImportSource:
    """An opened import file: its format, notes about it, and its rows (an iterator)."""

    path: Path
    format: ImportFormat
    rows: Iterator[SourceRow]
    notes: list[str] = field(default_factory=list)


def open_source(path: Path, fmt: ImportFormat | None = None) -> ImportSource:
    """Open ``path`` for import, guessing the format from its suffix or content.

    Raises ``ImportFileError`` if the file is unreadable, empty, not UTF-8 where it
    matters (the CSV header), or neither JSON nor a CSV with an ``id`` column.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    head = text.lstrip()
    if not head:
        raise ImportFileError(f"{path}: the file is empty")
    if fmt is None:
        fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        fmt = "json" if head[0] == "[" else "jsonl" if head[0] == "{" else "csv"
    if fmt == "json":
        return ImportSource(path, fmt, _json_list(path, text))
    if fmt == "jsonl":
        return ImportSource(path, fmt, _json_lines(text))
    source = ImportSource(path, fmt, iter(()))
    source.rows = _csv_rows(path, text, source.notes)
    return source


def _undecodable(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _json_list(path: Path, text: str) -> Iterator[SourceRow]:
    if _undecodable(text):
        line = text.count("\n", 0, _SURROGATE.search(text).start()) + 1  # type: ignore[union-attr]
        raise ImportFileError(f"{path}: line {line}: not UTF-8")
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # Unlike lines of CSV or JSON lines, a list cannot resume after a syntax error.
        raise ImportFileError(
            f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}); "
            "a JSON list is rejected whole"
        ) from exc
    if not isinstance(items, list):
        raise ImportFileError(f"{path}: a JSON import is a list of objects (or one per line)")
    del items  # only checked: the walk below gives each element its line number
    return _json_list_rows(text)


def _json_list_rows(text: str) -> Iterator[SourceRow]:
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    pos = ws.match(text, text.index("[") + 1).end()  # type: ignore[union-attr]
    line, counted = 1, 0
    while text[pos] != "]":
        value, end = decoder.raw_decode(text, pos)
        line += text.count("\n", counted, pos)
        counted = pos
        if isinstance(value, dict):
            yield SourceRow(line, value)
        else:
            yield SourceRow(line, error=f"expected an object, got {type(value).__name__}")
        pos = ws.match(text, end).end()  # type: ignore[union-attr]
        if text[pos] == ",":
            pos = ws.match(text, pos + 1).end()  # type: ignore[union-attr]


def _json_lines(text: str) -> Iterator[SourceRow]:
    # Only "\n" ends a line: str.splitlines() would also split at U+2028, valid inside JSON.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if _undecodable(line):
            yield SourceRow(number, error="not UTF-8")
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            # exc's own "line 1" would be the line within this line: give the column only.
            yield SourceRow(number, error=f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        if isinstance(value, dict):
            yield SourceRow(number, value)
        else:
            yield SourceRow(number, error=f"expected an object, got {type(value).__name__}")


def _csv_rows(path: Path, text: str, notes: list[str]) -> Iterator[SourceRow]:
    # newline="": only \n, \r and \r\n end a line (not U+2028), as the csv module wants.
    lines = io.StringIO(text, newline="").readlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), 0)
    header_line = lines[first]
    if _undecodable(header_line):
        raise ImportFileError(f"{path}: neither JSON nor CSV (the first line is not UTF-8 text)")
    delimiter = max(",;\t", key=header_line.count)
    header = [h.strip().lower() for h in next(csv.reader([header_line], delimiter=delimiter))]
    if "id" not in header:
        first_line = header_line.strip()[:80]
        raise ImportFileError(
            f"{path}: neither JSON nor CSV with an 'id' column (first line: {first_line!r})"
        )
    duplicates = sorted({h for h in header if h and header.count(h) > 1})
    if duplicates:
        raise ImportFileError(f"{path}: CSV header repeats {', '.join(duplicates)}")
    ignored = [
        h
        for h in header
        if h not in _KNOWN_COLUMNS and h not in _EMAIL_COLUMNS and not _NUMBER_COLUMN.fullmatch(h)
    ]
    if ignored:
        notes.append(f"ignored CSV columns: {', '.join(ignored)}")
    return _csv_records(lines[first + 1 :], first + 2, header, delimiter)


def _csv_records(
    lines: list[str], first_line: int, header: list[str], delimiter: str
) -> Iterator[SourceRow]:
    # One record per physical line: no directory field holds a line break, and a stray
    # quote must not swallow the rows after it (csv would read on to the next quote).
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        if _undecodable(line):
            yield SourceRow(number, error="not UTF-8")
            continue
        try:
            values = next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter, strict=True))
        except csv.Error as exc:
            yield SourceRow(number, error=f"not valid CSV: {exc}")
            continue
        if len(values) > len(header):
            yield SourceRow(number, error=f"{len(values)} fields, the header has {len(header)}")
        else:
            yield SourceRow(number, _csv_fields(dict(zip(header, values, strict=False))))


def _split(text: str, separators: str) -> list[str]:
    return [p.strip() for p in re.split(f"[{separators}]", text) if p.strip()]


def _csv_fields(raw: dict[str, str]) -> dict[str, Any]:
    """A CSV row in the JSON shape ``build_entry`` validates."""
    fields: dict[str, Any] = {k: raw.get(k, "") for k in ("id", "kind", "name", "organization")}
    fields["deleted"] = raw.get("deleted", "")
    numbers: list[dict[str, str]] = []
    for item in _split(raw.get("numbers", ""), ";"):
        kind, sep, number = item.partition("=")
        numbers.append({"type": kind.strip(), "number": number} if sep else {"number": item})
    for column, value in raw.items():
        if m := _NUMBER_COLUMN.fullmatch(column):
            numbers.extend({"type": m.group(1), "number": n} for n in _split(value, ";"))
    fields["numbers"] = numbers
    fields["emails"] = [e for c in _EMAIL_COLUMNS for e in _split(raw.get(c, ""), ";,")]
    return fields
