"""The contact directory, pure part: entries, match kinds, quick-search queries.

Everything here is I/O-free; ``ctid.adapters.directory`` runs it against SQLite.

* **Entries** (DESIGN "Directory import"): a CRM record is a ``person``, an
  ``organization`` or a ``contact`` (a person inside an organization, named by the
  organization's CRM id). Numbers are typed (``work``, ``mobile``, ``home``…) and kept
  raw and normalised (E.164, or the digits of an internal extension); e-mail
  addresses are lower-cased. ``build_entry`` validates one imported row.
* **Match kinds** (CIC seed 004, issue 4): ``no_ani``, ``none``, ``single`` (one
  person), ``multiple`` (all candidates), ``org_contact`` (one contact: the contact
  and its organization), ``organization`` (the organization and its contacts).
  ``classify`` decides the kind from the candidates one lookup found.
* **Quick search** (CRM.COM seed 003): a field, ``=`` or ``like`` with ``%``
  wildcards, and a value; ``build_search`` validates them and returns parameterised
  SQL. User text never becomes SQL text.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import orjson
import phonenumbers

from ctid.core.numbers import NumberNormalizer, strip_uri
from ctid.errors import CtidError

EntryKind = Literal["person", "organization", "contact"]
MatchKind = Literal["no_ani", "none", "single", "multiple", "org_contact", "organization"]
ENTRY_KINDS: tuple[EntryKind, ...] = ("person", "organization", "contact")
MATCH_KINDS: tuple[MatchKind, ...] = (
    "no_ani",
    "none",
    "single",
    "multiple",
    "org_contact",
    "organization",
)

MAX_ID_LENGTH = 200
MAX_NAME_LENGTH = 300
MAX_NUMBERS = 20  # per entry
MAX_EMAILS = 20  # per entry
DEFAULT_NUMBER_TYPE = "other"
_NUMBER_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Deliberately loose (RFC 5322 is not what CRMs hold): one @, no spaces, a dot in the domain.
_EMAIL = re.compile(r"[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]+")
_NUMBER_LIKE = re.compile(r"[+0-9\s\-().\[\]/]+")


class RowError(ValueError):
    """One imported row is invalid; the message says which field and why."""


class SearchQueryError(CtidError):
    """A quick search names an unknown field or operator, or an unusable value."""


# -- entries ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryNumber:
    """One typed number of an entry: as the CRM wrote it and normalised."""

    type: str
    raw: str
    e164: str  # E.164, or an extension's digits


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """A validated CRM record, ready to store."""

    id: str
    kind: EntryKind
    name: str
    organization: str = ""  # the organization's CRM id (contacts only)
    numbers: tuple[EntryNumber, ...] = ()
    emails: tuple[str, ...] = ()

    def digest(self) -> bytes:
        """A fingerprint of the content: an unchanged re-import writes nothing."""
        content = (
            self.kind,
            self.name,
            self.organization,
            sorted((n.type, n.raw, n.e164) for n in self.numbers),
            sorted(self.emails),
        )
        return hashlib.blake2b(orjson.dumps(content), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Deletion:
    """A row that deletes the record with this CRM id (``"deleted": true``)."""

    id: str


@dataclass(frozen=True, slots=True)
class BuiltRow:
    """What one imported row became, plus warnings about parts that were dropped."""

    item: DirectoryEntry | Deletion
    warnings: tuple[str, ...] = ()


def name_key(name: str) -> str:
    """The form names are compared and searched in: case-folded, spaces collapsed."""
    return " ".join(name.casefold().split())


def normalize_email(text: str) -> str | None:
    """``text`` as a lower-cased address (``mailto:`` and ``<…>`` removed), or None."""
    address = text.strip()
    if address[:1] == "<" and address[-1:] == ">":
        address = address[1:-1].strip()
    if address[:7].lower() == "mailto:":
        address = address[7:]
    address = address.lower()
    return address if _EMAIL.fullmatch(address) else None


def looks_like_email(text: str) -> bool:
    """Whether ``text`` is an e-mail address rather than a number or a SIP URI.

    ``sip:1234@pbx`` and ``4930123@carrier`` are numbers (the CIC rule strips the
    ``@`` part); ``maria@example.com`` is an address.
    """
    stripped = text.strip()
    if stripped.lower().startswith(("sip:", "sips:", "tel:")) or "@" not in stripped:
        return False
    local = stripped.split("@", 1)[0].lstrip("<")
    if local[:7].lower() == "mailto:":
        local = local[7:]
    return not _NUMBER_LIKE.fullmatch(local) and normalize_email(stripped) is not None


def _text(fields: Mapping[str, Any], key: str, *, required: bool) -> str:
    value = fields.get(key)
    if value is None:
        value = ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowError(f"{key}: must be a string, not {type(value).__name__}")
    text = str(value).strip()
    if required and not text:
        raise RowError(f"{key}: missing")
    if _CONTROL.search(text):
        raise RowError(f"{key}: contains control characters")
    return text


_TRUE = frozenset({"1", "true", "yes", "y", "x"})
_FALSE = frozenset({"", "0", "false", "no", "n"})


def _flag(fields: Mapping[str, Any], key: str) -> bool:
    value = fields.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RowError(f"{key}: must be true or false, not {value!r}")


def _list(fields: Mapping[str, Any], key: str, most: int) -> list[Any]:
    value = fields.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, list):
        raise RowError(f"{key}: must be a list, not {type(value).__name__}")
    if len(value) > most:
        raise RowError(f"{key}: {len(value)} items, at most {most} allowed")
    return value


def _numbers(
    items: list[Any], normalizer: NumberNormalizer, warnings: list[str]
) -> tuple[EntryNumber, ...]:
    numbers: dict[tuple[str, str], EntryNumber] = {}
    for index, item in enumerate(items):
        where = f"numbers[{index}]"
        if isinstance(item, str | int) and not isinstance(item, bool):
            kind, raw = DEFAULT_NUMBER_TYPE, str(item)
        elif isinstance(item, Mapping):
            given_type = item.get("type") or DEFAULT_NUMBER_TYPE
            given = item.get("number")
            if not isinstance(given_type, str) or not _NUMBER_TYPE.fullmatch(
                given_type.strip().lower()
            ):
                raise RowError(f"{where}.type: must be a word like work, mobile or home")
            if isinstance(given, bool) or not isinstance(given, str | int):
                raise RowError(f"{where}.number: missing or not a string")
            kind, raw = given_type.strip().lower(), str(given)
        else:
            raise RowError(f"{where}: must be an object with type and number")
        raw = raw.strip()
        if not raw:
            continue
        number = normalizer.normalize(raw)
        if number.kind == "no_ani":
            # One bad number must not hide the whole record from pops: drop it, say so.
            warnings.append(f"{where}: {raw!r} is not a phone number; skipped")
            continue
        numbers.setdefault((kind, number.e164), EntryNumber(kind, raw, number.e164))
    return tuple(numbers.values())


def _emails(items: list[Any], warnings: list[str]) -> tuple[str, ...]:
    emails: dict[str, None] = {}
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise RowError(f"emails[{index}]: must be a string")
        if not item.strip():
            continue
        address = normalize_email(item)
        if address is None:
            warnings.append(f"emails[{index}]: {item.strip()!r} is not an e-mail address; skipped")
            continue
        emails[address] = None
    return tuple(emails)


def row_id(fields: Mapping[str, Any]) -> str | None:
    """The row's CRM id if it has a usable one (a row with errors still names its record)."""
    try:
        text = _text(fields, "id", required=True)
    except RowError:
        return None
    return text if len(text) <= MAX_ID_LENGTH else None


def build_entry(fields: Mapping[str, Any], normalizer: NumberNormalizer) -> BuiltRow:
    """Validate one imported row (JSON-shaped: DESIGN "Directory import").

    Raises ``RowError`` for a row that cannot be imported. Numbers and addresses
    that are not usable are dropped with a warning; the rest of the row imports.
    """
    record_id = _text(fields, "id", required=True)
    if len(record_id) > MAX_ID_LENGTH:
        raise RowError(f"id: longer than {MAX_ID_LENGTH} characters")
    if _flag(fields, "deleted"):
        return BuiltRow(Deletion(record_id))
    kind = _text(fields, "kind", required=True).lower()
    if kind not in ENTRY_KINDS:
        raise RowError(f"kind: {kind!r} is not one of {', '.join(ENTRY_KINDS)}")
    name = " ".join(_text(fields, "name", required=True).split())
    if len(name) > MAX_NAME_LENGTH:
        raise RowError(f"name: longer than {MAX_NAME_LENGTH} characters")
    organization = _text(fields, "organization", required=False)
    if kind == "contact":
        if not organization:
            raise RowError("organization: a contact needs its organization's id")
        if organization == record_id:
            raise RowError("organization: a contact cannot be its own organization")
    elif organization:
        raise RowError(f"organization: only contacts belong to an organization, not a {kind}")
    warnings: list[str] = []
    numbers = _numbers(_list(fields, "numbers", MAX_NUMBERS), normalizer, warnings)
    emails = _emails(_list(fields, "emails", MAX_EMAILS), warnings)
    entry = DirectoryEntry(record_id, kind, name, organization, numbers, emails)
    return BuiltRow(entry, tuple(warnings))


# -- matches ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrgRef:
    """The organization a contact belongs to (``name`` is "" if it is not imported)."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Record:
    """A directory record as a pop shows it."""

    id: str
    kind: EntryKind
    name: str
    organization: OrgRef | None = None

    def as_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "name": self.name}
        if self.organization is not None:
            out["organization"] = {"id": self.organization.id, "name": self.organization.name}
        return out


@dataclass(frozen=True, slots=True)
class Match:
    """What a lookup found: the pop's ``match`` field."""

    kind: MatchKind
    records: tuple[Record, ...] = ()
    contacts: tuple[Record, ...] = ()  # kind "organization" only: the organization's contacts
    remembered: str = ""  # the record id an agent chose before, offered first

    def as_payload(self) -> dict[str, Any]:
        """``{kind, records: [{id, kind, name, organization?}]}`` (+ ``contacts``)."""
        out: dict[str, Any] = {"kind": self.kind, "records": [r.as_payload() for r in self.records]}
        if self.kind == "organization":
            out["contacts"] = [c.as_payload() for c in self.contacts]
        if self.remembered:
            out["remembered"] = self.remembered
        return out


NO_ANI = Match("no_ani")
NO_MATCH = Match("none")


def classify(candidates: Sequence[Record]) -> tuple[MatchKind, str]:
    """The match kind for the distinct records one number or address matched.

    Returns the kind and, for ``organization``, the organization whose contacts the
    pop lists. One organization together with only contacts of that same
    organization is ``organization`` too: a switchboard number is often copied
    onto the organization's contacts, and the caller is then the organization.
    """
    if not candidates:
        return "none", ""
    orgs = [c for c in candidates if c.kind == "organization"]
    if len(candidates) == 1:
        only = candidates[0]
        if only.kind == "organization":
            return "organization", only.id
        if only.kind == "contact":
            return "org_contact", ""
        return "single", ""
    if len(orgs) == 1 and all(
        c is orgs[0]
        or (c.kind == "contact" and c.organization is not None and c.organization.id == orgs[0].id)
        for c in candidates
    ):
        return "organization", orgs[0].id
    return "multiple", ""


def _chosen_first(records: Sequence[Record], chosen: str) -> tuple[tuple[Record, ...], str]:
    for index, record in enumerate(records):
        if record.id == chosen:
            return (record, *records[:index], *records[index + 1 :]), chosen
    return tuple(records), ""


def build_match(
    candidates: Sequence[Record], contacts: Sequence[Record] = (), *, chosen: str = ""
) -> Match:
    """The match for ``candidates`` (sorted as they should show).

    ``contacts`` are the organization's contacts when ``classify`` asked for them;
    ``chosen`` is the record an agent picked last time for this number or address:
    it is moved to the front of ``multiple`` records or of an organization's contacts.
    """
    kind, org_id = classify(candidates)
    if kind == "organization":
        org = next(c for c in candidates if c.id == org_id)
        ordered, remembered = _chosen_first(contacts, chosen)
        return Match(kind, (org,), ordered, remembered)
    if kind == "multiple":
        ordered, remembered = _chosen_first(candidates, chosen)
        return Match(kind, ordered, (), remembered)
    return Match(kind, tuple(candidates))


# -- cache ------------------------------------------------------------------------

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(slots=True)
class LruCache(Generic[_K, _V]):
    """A plain LRU map with hit/miss counters (negative results are values too)."""

    maxsize: int
    hits: int = 0
    misses: int = 0
    _data: OrderedDict[_K, _V] = field(default_factory=OrderedDict)

    def get(self, key: _K) -> _V | None:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def peek(self, key: _K) -> _V | None:
        """The value without counting or refreshing it."""
        return self._data.get(key)

    def put(self, key: _K, value: _V) -> None:
        if self.maxsize <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def discard(self, key: _K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# -- quick search -----------------------------------------------------------------

SearchField = Literal["name", "number", "email", "id"]
SEARCH_FIELDS: tuple[SearchField, ...] = ("name", "number", "email", "id")
SEARCH_OPS = ("=", "like")
MAX_SEARCH_LIMIT = 500
_TOP = "\U0010ffff"  # sorts after every character: prefix <= s < prefix + _TOP
_NUMBER_PATTERN = re.compile(r"\+?[0-9%]+")

_RECORD_COLUMNS = "e.id, e.kind, e.name, e.organization, o.name"
_FROM = "directory_entries e LEFT JOIN directory_entries o ON o.id = e.organization"


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Parameterised SQL for a quick search; rows are (id, kind, name, org id, org name)."""

    sql: str
    params: tuple[Any, ...]


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _pattern(value: str) -> tuple[str, str]:
    """A ``like`` value as (literal prefix, GLOB pattern).

    ``%`` is the only wildcard (the seed's); without one the value is a prefix.
    ``_`` and GLOB's own metacharacters are literal.
    """
    if "%" not in value:
        value += "%"
    parts = value.split("%")
    glob = "*".join(_glob_escape(p) for p in parts)
    return parts[0], glob


def _number_value(value: str, normalizer: NumberNormalizer) -> str:
    """A number pattern in E.164 terms: ``030%`` → ``+4930%``, ``0049…`` → ``+49…``,
    ``4930123%`` → ``+4930123%``. After a leading ``%`` (contains, ends with) the digits
    are matched as stored, in E.164: ``%171%``, not ``%0171%``."""
    compact = re.sub(r"[\s\-().\[\]/]", "", strip_uri(value))
    if not _NUMBER_PATTERN.fullmatch(compact):
        raise SearchQueryError(
            f"number: {value!r} is not a number pattern (digits, a leading +, %)"
        )
    if compact.startswith("00"):
        return "+" + compact[2:]
    if compact.startswith("0"):
        return f"+{phonenumbers.country_code_for_region(normalizer.default_region)}{compact[1:]}"
    digits = compact.replace("%", "")
    if compact[:1].isdigit() and len(digits) > normalizer.max_extension_length:
        # International digits without their + (``4930…``): stored numbers have it.
        # Shorter ones may be an extension's start, stored as its digits.
        return "+" + compact
    return compact


def build_search(
    field_name: str,
    op: str,
    value: str,
    *,
    limit: int = 20,
    normalizer: NumberNormalizer,
) -> SearchQuery:
    """Validate a quick search and build its SQL.

    ``field_name``: ``name`` (case-insensitive), ``number`` (in E.164 terms: ``=``
    normalises the value like a calling number), ``email`` (case-insensitive) or
    ``id`` (exact). ``op``: ``=`` or ``like`` (``%ria``, ``Ma%``, ``%ari%``; ``Mar``
    = starts with). At most ``limit`` records, ordered by name.
    """
    fld = field_name.strip().lower()
    operator = op.strip().lower()
    if fld not in SEARCH_FIELDS:
        raise SearchQueryError(
            f"unknown field {field_name!r}: use one of {', '.join(SEARCH_FIELDS)}"
        )
    if operator not in SEARCH_OPS:
        raise SearchQueryError(f"unknown operator {op!r}: use = or like")
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise SearchQueryError(f"limit: must be 1 to {MAX_SEARCH_LIMIT}, not {limit}")
    text = value.strip()
    if not text.replace("%", "") or _CONTROL.search(text):
        raise SearchQueryError("value: give some text to search for (not only %)")

    column, inner = {
        "name": ("e.name_key", ""),
        "id": ("e.id", ""),
        "number": ("e164", "directory_numbers"),
        "email": ("email", "directory_emails"),
    }[fld]
    if fld == "name":
        text = name_key(text)
    elif fld == "email":
        text = text.lower()
    elif fld == "number":
        if operator == "=":
            number = normalizer.normalize(text)
            if number.kind == "no_ani":
                raise SearchQueryError(f"number: {value!r} is not a phone number")
            text = number.e164
        else:
            text = _number_value(text, normalizer)

    if operator == "=":
        condition, params = f"{column} = ?", [text]
    else:
        prefix, glob = _pattern(text)
        if prefix:
            condition = f"{column} >= ? AND {column} < ? AND {column} GLOB ?"
            params = [prefix, prefix + _TOP, glob]
        else:
            condition, params = f"{column} GLOB ?", [glob]
    order = "ORDER BY e.name_key, e.id LIMIT ?"
    if inner:
        # The number and e-mail tables are keyed by value: the range walks their primary key.
        sql = (
            f"SELECT {_RECORD_COLUMNS} FROM {_FROM} WHERE e.id IN "  # noqa: S608
            f"(SELECT DISTINCT entry FROM {inner} WHERE {condition} LIMIT ?) {order}"
        )
        return SearchQuery(sql, (*params, limit, limit))
    sql = f"SELECT {_RECORD_COLUMNS} FROM {_FROM} WHERE {condition} {order}"  # noqa: S608
    return SearchQuery(sql, (*params, limit))


def record_from_row(row: Sequence[Any]) -> Record:
    """A ``Record`` from (id, kind, name, organization id, organization name)."""
    record_id, kind, name, org_id, org_name = row[:5]
    org = OrgRef(org_id, org_name or "") if org_id else None
    return Record(record_id, kind, name, org)


def records_from_rows(rows: Iterable[Sequence[Any]]) -> list[Record]:
    return [record_from_row(r) for r in rows]


# -- import report ----------------------------------------------------------------


@dataclass(slots=True)
class ImportReport:
    """What an import did. Errors and warnings are (line, message), the first ``max_listed``."""

    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    error_count: int = 0
    warning_count: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Rows whose CRM id is unknown (unreadable, or no usable id) and the first lines:
    # such a row may carry any entry, so a full sync must not delete what it misses.
    unidentified: int = 0
    unidentified_lines: list[int] = field(default_factory=list)
    deletions_skipped: bool = False  # --delete-missing deleted nothing (see notes)
    max_listed: int = 1000

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)

    def error(self, line: int, message: str, *, unidentified: bool = False) -> None:
        """Count a row error; ``unidentified``: the row names no CRM id that could be read."""
        self.error_count += 1
        if len(self.errors) < self.max_listed:
            self.errors.append((line, message))
        if unidentified:
            self.unidentified += 1
            if len(self.unidentified_lines) < self.max_listed:
                self.unidentified_lines.append(line)

    def skip_deletions(self) -> None:
        """Record that a full sync deleted nothing because some rows name no id."""
        self.deletions_skipped = True
        count = self.unidentified
        rows = "1 row" if count == 1 else f"{count} rows"
        shown = self.unidentified_lines[:10]
        lines = ", ".join(str(n) for n in shown) + (", …" if count > len(shown) else "")
        self.notes.append(
            f"deletions skipped: {rows} could not be read or had no usable id "
            f"(line{'' if count == 1 else 's'} {lines}), so the file may not name every "
            f"entry; fix {'it' if count == 1 else 'them'} and import again"
        )

    def warning(self, line: int, message: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < self.max_listed:
            self.warnings.append((line, message))

    def summary(self) -> str:
        """One line: the counts."""
        return (
            f"{self.rows} rows: {self.inserted} inserted, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.deleted} deleted, "
            f"{self.error_count} errors, {self.warning_count} warnings"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "error_count": self.error_count,
            "warning_count": self.warning_count,
            "errors": [{"line": n, "message": m} for n, m in self.errors],
            "warnings": [{"line": n, "message": m} for n, m in self.warnings],
            "notes": list(self.notes),
            "unidentified": self.unidentified,
            "deletions_skipped": self.deletions_skipped,
        }
