"""The directory's pure core: row validation, match kinds, quick-search queries, the LRU."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctid.core.directory import (
    BuiltRow,
    Deletion,
    DirectoryEntry,
    EntryNumber,
    LruCache,
    Match,
    OrgRef,
    Record,
    RowError,
    SearchQueryError,
    build_entry,
    build_match,
    build_search,
    classify,
    looks_like_email,
    normalize_email,
)
from ctid.core.numbers import NumberNormalizer

DE = NumberNormalizer()
ACME = OrgRef("o1", "ACME GmbH")


def person(rid: str, name: str = "Paul") -> Record:
    return Record(rid, "person", name)


def org(rid: str = "o1", name: str = "ACME GmbH") -> Record:
    return Record(rid, "organization", name)


def contact(rid: str, organization: OrgRef = ACME, name: str = "Maria") -> Record:
    return Record(rid, "contact", name, organization)


# -- build_entry ------------------------------------------------------------------


def test_build_entry_normalises_numbers_and_addresses() -> None:
    """A full row keeps raw numbers beside E.164, lower-cases addresses, drops duplicates."""
    built = build_entry(
        {
            "id": "crm-17",
            "kind": "Contact",
            "name": "  Maria   Muster ",
            "organization": "crm-3",
            "numbers": [
                {"type": "work", "number": "030 123456"},
                {"type": "WORK", "number": "+49 30 123456"},  # same type and number
                {"type": "mobile", "number": "0171 2345678"},
                "sip:1001@pbx",
            ],
            "emails": ["Maria@Example.COM", "maria@example.com", "mailto:m2@example.com"],
        },
        DE,
    )
    assert built == BuiltRow(
        DirectoryEntry(
            "crm-17",
            "contact",
            "Maria Muster",
            "crm-3",
            (
                EntryNumber("work", "030 123456", "+4930123456"),
                EntryNumber("mobile", "0171 2345678", "+491712345678"),
                EntryNumber("other", "sip:1001@pbx", "1001"),
            ),
            ("maria@example.com", "m2@example.com"),
        )
    )


def test_bad_number_and_address_are_dropped_with_warnings() -> None:
    """One unusable number or address does not hide the record: it is skipped and reported."""
    built = build_entry(
        {
            "id": "p1",
            "kind": "person",
            "name": "Paul",
            "numbers": ["n/a", "030 123456"],
            "emails": ["not-an-address"],
        },
        DE,
    )
    assert isinstance(built.item, DirectoryEntry)
    assert [n.e164 for n in built.item.numbers] == ["+4930123456"]
    assert built.item.emails == ()
    assert built.warnings == (
        "numbers[0]: 'n/a' is not a phone number; skipped",
        "emails[0]: 'not-an-address' is not an e-mail address; skipped",
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "person", "name": "x"}, "id: missing"),
        ({"id": "  ", "kind": "person", "name": "x"}, "id: missing"),
        ({"id": "p1", "kind": "alien", "name": "x"}, "kind: 'alien' is not one of"),
        ({"id": "p1", "name": "x"}, "kind: missing"),
        ({"id": "p1", "kind": "person"}, "name: missing"),
        ({"id": "p1", "kind": "person", "name": ["x"]}, "name: must be a string"),
        ({"id": "c1", "kind": "contact", "name": "x"}, "organization: a contact needs"),
        ({"id": "c1", "kind": "contact", "name": "x", "organization": "c1"}, "its own"),
        ({"id": "p1", "kind": "person", "name": "x", "organization": "o1"}, "only contacts"),
        ({"id": "p1", "kind": "person", "name": "x\x00"}, "name: contains control"),
        (
            {"id": "p1", "kind": "person", "name": "x", "numbers": {"a": 1}},
            "numbers: must be a list",
        ),
        ({"id": "p1", "kind": "person", "name": "x", "numbers": [["030"]]}, "numbers[0]: must be"),
        (
            {
                "id": "p1",
                "kind": "person",
                "name": "x",
                "numbers": [{"type": "w k", "number": "1"}],
            },
            "numbers[0].type",
        ),
        ({"id": "p1", "kind": "person", "name": "x", "emails": [1]}, "emails[0]: must be a string"),
        ({"id": "p1", "kind": "person", "name": "x", "numbers": ["1"] * 21}, "at most 20"),
        ({"id": "p1", "deleted": "maybe"}, "deleted: must be true or false"),
        ({"id": "x" * 201, "kind": "person", "name": "x"}, "id: longer than 200"),
    ],
)
def test_build_entry_rejects_bad_rows(fields: dict[str, Any], message: str) -> None:
    """A row that cannot be imported raises RowError naming the field."""
    with pytest.raises(RowError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_entry(fields, DE)


@pytest.mark.parametrize("flag", [True, 1, "yes", "TRUE", "1", "x"])
def test_deleted_flag_makes_a_deletion(flag: object) -> None:
    """``deleted`` set (JSON true, CSV 1/true/yes/x) deletes by id; other fields do not matter."""
    assert build_entry({"id": "p1", "deleted": flag}, DE) == BuiltRow(Deletion("p1"))


def test_numeric_ids_are_text() -> None:
    """A CRM that exports numeric ids in JSON gets the same record as with string ids."""
    built = build_entry({"id": 17, "kind": "person", "name": "x"}, DE)
    assert built.item.id == "17"


def test_digest_ignores_order_and_sees_content() -> None:
    """The digest is stable under reordering of numbers and addresses, and changes with content."""
    a = build_entry(
        {
            "id": "p",
            "kind": "person",
            "name": "x",
            "numbers": ["030 123456", "0171 2345678"],
            "emails": ["a@b.de", "c@d.de"],
        },
        DE,
    ).item
    b = build_entry(
        {
            "id": "p",
            "kind": "person",
            "name": "x",
            "numbers": ["0171 2345678", "030 123456"],
            "emails": ["c@d.de", "a@b.de"],
        },
        DE,
    ).item
    c = build_entry({"id": "p", "kind": "person", "name": "y"}, DE).item
    assert isinstance(a, DirectoryEntry)
    assert isinstance(b, DirectoryEntry)
    assert isinstance(c, DirectoryEntry)
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
row_keys = st.sampled_from(
    ["id", "kind", "name", "organization", "numbers", "emails", "deleted", "x"]
)


@settings(deadline=None)  # the machine may be loaded by other work
@given(st.dictionaries(row_keys, json_values | st.sampled_from(["person", "contact", "o1"])))
def test_build_entry_accepts_or_raises_row_error(fields: dict[str, Any]) -> None:
    """Any JSON object either builds an entry/deletion or raises RowError, nothing else."""
    try:
        built = build_entry(fields, DE)
    except RowError:
        return
    assert isinstance(built.item, DirectoryEntry | Deletion)
    assert built.item.id


# -- match kinds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidates", "kind", "org_id"),
    [
        ([], "none", ""),
        ([person("p1")], "single", ""),
        ([person("p1"), person("p2")], "multiple", ""),
        ([contact("c1")], "org_contact", ""),
        ([org()], "organization", "o1"),
        # The switchboard copied onto contacts: still the organization.
        ([org(), contact("c1"), contact("c2")], "organization", "o1"),
        # Two contacts of one organization, the organization not matched: the agent chooses.
        ([contact("c1"), contact("c2")], "multiple", ""),
        ([org(), person("p1")], "multiple", ""),
        ([org("o1"), org("o2")], "multiple", ""),
        ([org("o1"), contact("c9", OrgRef("o2", "Other"))], "multiple", ""),
    ],
)
def test_classify(candidates: list[Record], kind: str, org_id: str) -> None:
    """The CIC seed's pop cases from the distinct records a lookup found."""
    assert (kind, org_id) == classify(candidates)


def test_match_payloads_have_the_pop_shape() -> None:
    """The match is the pop's ``match``: kind, records (organization on contacts), contacts."""
    assert build_match([]).as_payload() == {"kind": "none", "records": []}
    assert build_match([contact("c1")]).as_payload() == {
        "kind": "org_contact",
        "records": [
            {
                "id": "c1",
                "kind": "contact",
                "name": "Maria",
                "organization": {"id": "o1", "name": "ACME GmbH"},
            }
        ],
    }
    contacts = [Record("c1", "contact", "Maria"), Record("c2", "contact", "Karl")]
    assert build_match([org()], contacts).as_payload() == {
        "kind": "organization",
        "records": [{"id": "o1", "kind": "organization", "name": "ACME GmbH"}],
        "contacts": [
            {"id": "c1", "kind": "contact", "name": "Maria"},
            {"id": "c2", "kind": "contact", "name": "Karl"},
        ],
    }


def test_remembered_choice_comes_first() -> None:
    """The record an agent chose before is offered first among several, and named."""
    match = build_match([person("p1"), person("p2"), person("p3")], chosen="p3")
    assert [r.id for r in match.records] == ["p3", "p1", "p2"]
    assert match.as_payload()["remembered"] == "p3"
    # A choice that is no longer a candidate changes nothing.
    stale = build_match([person("p1"), person("p2")], chosen="gone")
    assert Match("multiple", (person("p1"), person("p2"))) == stale
    # Among an organization's contacts, too.
    contacts = [Record("c1", "contact", "A"), Record("c2", "contact", "B")]
    assert [c.id for c in build_match([org()], contacts, chosen="c2").contacts] == ["c2", "c1"]


# -- e-mail -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("Maria@Example.COM", "maria@example.com"),
        (" <maria@example.com> ", "maria@example.com"),
        ("mailto:maria@example.com", "maria@example.com"),
        ("maria@localhost", None),
        ("maria example@x.de", None),
        ("a@b@c.de", None),
        ("", None),
    ],
)
def test_normalize_email(text: str, address: str | None) -> None:
    """Addresses are lower-cased; anything that is not one address is None."""
    assert address == normalize_email(text)


@pytest.mark.parametrize(
    ("text", "is_email"),
    [
        ("maria@example.com", True),
        ("sip:1234@pbx.example.com", False),
        ("4930123456@carrier.example", False),
        ("+49 30 123456@carrier.example", False),
        ("030 123456", False),
        ("anonymous", False),
    ],
)
def test_looks_like_email(text: str, is_email: bool) -> None:
    """SIP URIs and numbers with a host are numbers (the CIC rule); addresses are addresses."""
    assert is_email == looks_like_email(text)


# -- LRU --------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_and_counts() -> None:
    """The oldest unused key goes first; hits and misses are counted; clear empties it."""
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    cache.clear()
    assert len(cache) == 0
    disabled: LruCache[str, int] = LruCache(0)
    disabled.put("a", 1)
    assert disabled.get("a") is None


# -- quick search -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "op", "value", "message"),
    [
        ("nam", "=", "x", "unknown field 'nam'"),
        ("name", "~", "x", "unknown operator '~'"),
        ("name", "between", "x", "unknown operator"),
        ("name", "like", "%%", "give some text"),
        ("name", "=", "  ", "give some text"),
        ("number", "like", "abc%", "not a number pattern"),
        ("number", "=", "anonymous", "not a phone number"),
    ],
)
def test_search_validation(field: str, op: str, value: str, message: str) -> None:
    """Unknown fields and operators and unusable values are clear errors."""
    with pytest.raises(SearchQueryError, match=message):
        build_search(field, op, value, normalizer=DE)


@pytest.mark.parametrize("limit", [0, -1, 501])
def test_search_limit_is_bounded(limit: int) -> None:
    """The result count is limited: 1 to 500."""
    with pytest.raises(SearchQueryError, match="limit"):
        build_search("name", "=", "x", limit=limit, normalizer=DE)


@pytest.mark.parametrize(
    ("field", "op", "value", "params"),
    [
        ("name", "=", "Maria  MÜLLER", ("maria müller", 20)),
        ("name", "like", "Mar", ("mar", "mar\U0010ffff", "mar*", 20)),
        ("name", "like", "Ma%", ("ma", "ma\U0010ffff", "ma*", 20)),
        ("name", "like", "%ria", ("*ria", 20)),
        ("name", "like", "%ari%", ("*ari*", 20)),
        (
            "name",
            "like",
            "a_b*c?[d",
            ("a_b*c?[d", "a_b*c?[d\U0010ffff", "a_b[*]c[?][[]d*", 20),
        ),
        ("number", "=", "030 123456", ("+4930123456", 20, 20)),
        ("number", "like", "030 12%", ("+493012", "+493012\U0010ffff", "+493012*", 20, 20)),
        ("number", "like", "0049 30%", ("+4930", "+4930\U0010ffff", "+4930*", 20, 20)),
        ("number", "like", "4930 123%", ("+4930123", "+4930123\U0010ffff", "+4930123*", 20, 20)),
        ("number", "like", "12%", ("12", "12\U0010ffff", "12*", 20, 20)),  # an extension
        ("email", "LIKE", "%@Example.com", ("*@example.com", 20, 20)),
        ("id", "=", "crm-17", ("crm-17", 20)),
    ],
)
def test_search_parameters(field: str, op: str, value: str, params: tuple[Any, ...]) -> None:
    """Values travel as parameters: a prefix range plus a GLOB with user text escaped."""
    query = build_search(field, op, value, normalizer=DE)
    assert params == query.params
    assert value not in query.sql


@settings(deadline=None)  # the machine may be loaded by other work
@given(
    st.sampled_from(["name", "number", "email", "id"]),
    st.sampled_from(["=", "like"]),
    st.text(max_size=30),
)
def test_search_sql_is_valid_for_any_value(field: str, op: str, value: str) -> None:
    """Any value either fails validation or yields SQL that SQLite can prepare and run."""
    try:
        query = build_search(field, op, value, normalizer=DE)
    except SearchQueryError:
        return
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE directory_entries (id, kind, name, name_key, organization)")
        db.execute("CREATE TABLE directory_numbers (e164, entry)")
        db.execute("CREATE TABLE directory_emails (email, entry)")
        assert db.execute(query.sql, query.params).fetchall() == []
    finally:
        db.close()
