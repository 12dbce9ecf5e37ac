"""Reading import files: formats, line numbers, whole-file errors, and junk that never wins."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctid.adapters.directory import Directory
from ctid.directory_import import SourceRow, open_source
from ctid.errors import ImportFileError

HEADER = "id,kind,name,organization,numbers,emails\n"


def rows(path: Path) -> list[SourceRow]:
    return list(open_source(path).rows)


def test_csv_columns_become_the_json_shape(tmp_path: Path) -> None:
    """CSV numbers (type=number; number_<type> columns) and emails match the JSON format."""
    path = tmp_path / "d.csv"
    path.write_text(
        "id,kind,name,organization,numbers,number_mobile,email,deleted,crm_owner\n"
        'c1,contact,"Muster, Maria",o1,work=030 123456; 0301 999,0171 1;0171 2,'
        "m@x.de;n@x.de,,bob\n"
        "p9,,,,,,,yes,\n",
        encoding="utf-8",
    )
    source = open_source(path)
    assert source.notes == ["ignored CSV columns: crm_owner"]
    assert [
        SourceRow(
            2,
            {
                "id": "c1",
                "kind": "contact",
                "name": "Muster, Maria",
                "organization": "o1",
                "deleted": "",
                "numbers": [
                    {"type": "work", "number": "030 123456"},
                    {"number": "0301 999"},
                    {"type": "mobile", "number": "0171 1"},
                    {"type": "mobile", "number": "0171 2"},
                ],
                "emails": ["m@x.de", "n@x.de"],
            },
        ),
        SourceRow(
            3,
            {
                "id": "p9",
                "kind": "",
                "name": "",
                "organization": "",
                "deleted": "yes",
                "numbers": [],
                "emails": [],
            },
        ),
    ] == list(source.rows)


def test_csv_semicolon_and_bom(tmp_path: Path) -> None:
    """A German Excel export (BOM, ';' separated) reads like a plain CSV."""
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffID;Kind;Name\np1;person;Jörg\n".encode())
    assert [
        SourceRow(
            2,
            {
                "id": "p1",
                "kind": "person",
                "name": "Jörg",
                "organization": "",
                "deleted": "",
                "numbers": [],
                "emails": [],
            },
        )
    ] == rows(path)


def test_csv_row_errors_carry_their_line(tmp_path: Path) -> None:
    """Too many fields, a stray quote and bytes that are not UTF-8 fail only their own line."""
    path = tmp_path / "d.csv"
    path.write_bytes(
        b'id,kind,name\np1,person,A,extra\np2,person,"B\n\np3,person,\xff\xfe\np4,person,D\n'
    )
    got = rows(path)
    assert [(r.line, r.error) for r in got] == [
        (2, "4 fields, the header has 3"),
        (3, "not valid CSV: unexpected end of data"),
        (5, "not UTF-8"),
        (6, ""),
    ]
    assert got[-1].fields["id"] == "p4"


def test_json_list_elements_carry_their_line(tmp_path: Path) -> None:
    """Each element of a JSON list is reported with the line it starts on."""
    path = tmp_path / "d.json"
    path.write_text('[\n  {"id": "a"},\n\n  {"id": "b",\n   "name": "x"}, 3,\n{"id": "c"}]\n')
    assert [(r.line, r.fields.get("id"), r.error) for r in rows(path)] == [
        (2, "a", ""),
        (4, "b", ""),
        (5, None, "expected an object, got int"),
        (6, "c", ""),
    ]


def test_json_lines_bad_lines_are_row_errors(tmp_path: Path) -> None:
    """In JSON lines, a broken line is an error of that line; U+2028 inside a string is fine."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "name": "x\u2028y"}\n\n{"id": \n[1]\n{"id": "b"}\n')
    got = rows(path)
    assert [(r.line, r.fields.get("id"), bool(r.error)) for r in got] == [
        (1, "a", False),
        (3, None, True),
        (4, None, True),
        (5, "b", False),
    ]
    assert got[0].fields["name"] == "x\u2028y"
    # The column within the line: orjson's own "line 1" would contradict the row's line.
    assert got[1].error.startswith("not valid JSON: ")
    assert got[1].error.endswith("(column 8)")


def test_format_is_guessed_from_content(tmp_path: Path) -> None:
    """Without a telling suffix, '[' means a JSON list, '{' JSON lines, anything else CSV."""
    for text, fmt in (('[{"id": "a"}]', "json"), ('{"id": "a"}', "jsonl"), ("id\na\n", "csv")):
        path = tmp_path / "export.txt"
        path.write_text(text)
        source = open_source(path)
        assert fmt == source.format
        assert [r.fields["id"] for r in source.rows] == ["a"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "empty"),
        ("blank.json", b"  \n", "empty"),
        ("broken.json", b'[{"id": "a"},', "line 1, column 14: not valid JSON"),
        ("comma.json", b'[\n {"id": "a"}\n {"id": "b"}\n]', "line 3, column 2: not valid JSON"),
        ("object.json", b'{"id": "a"}', "a list of objects"),
        ("latin1.json", b'[{"name": "J\xf6rg"}]', "line 1: not UTF-8"),
        ("noid.csv", b"name,kind\nx,person\n", "neither JSON nor CSV with an 'id' column"),
        ("binary.dat", b"\x89PNG\r\n\x1a\n\x00\x00", "neither JSON nor CSV"),
        ("dup.csv", b"id,name,name\n", "repeats name"),
    ],
)
def test_whole_file_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    """A file unusable as a whole is one clear ImportFileError naming the file."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=message) as info:
        open_source(path)
    assert str(path) in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing file (or a folder) is an ImportFileError, not an OSError."""
    with pytest.raises(ImportFileError, match="cannot read"):
        open_source(tmp_path / "missing.csv")
    with pytest.raises(ImportFileError, match="cannot read"):
        open_source(tmp_path)


# -- junk never wins: a property over the real importer -------------------------------

names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=15
).filter(lambda s: s.strip() != "")
# Junk is bytes (not always UTF-8), one line each; "valid-" is reserved for the valid rows.
junk = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b'"', b'x,"y', b"p,person", b"q,person,Q,,work=030 1234567", b",,,,,,,"]),
).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ").replace(b"valid-", b"v-"))


@settings(
    max_examples=10,  # each example is a fresh database; the reader-level property does more
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    valid=st.lists(st.tuples(names, st.integers(0, 10**7)), min_size=1, max_size=8),
    junk_lines=st.lists(junk, max_size=8),
    order=st.randoms(use_true_random=False),
)
async def test_csv_junk_never_loses_a_valid_row(
    valid: list[tuple[str, int]], junk_lines: list[bytes], order: object
) -> None:
    """Random junk lines among valid CSV rows never crash the importer nor lose a valid row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    lines: list[bytes] = []
    for index, (name, local) in enumerate(valid):
        out.seek(0)
        out.truncate()
        writer.writerow([f"valid-{index}", "person", name, "", f"work=030 {local:07d}", ""])
        lines.append(out.getvalue().encode())
    lines += [j + b"\n" for j in junk_lines]
    order.shuffle(lines)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.csv"
        path.write_bytes(HEADER.encode() + b"".join(lines))
        async with Directory.open(Path(folder) / "db.sqlite3") as directory:
            report = await directory.import_file(path)
            assert report.rows <= len(lines)
            for index, (name, local) in enumerate(valid):
                found = await directory.search("id", "=", f"valid-{index}")
                assert [(f"valid-{index}", " ".join(name.split()))] == [
                    (r.id, r.name) for r in found
                ]
                match = await directory.lookup_number(f"+4930{local:07d}")
                assert f"valid-{index}" in {r.id for r in match.records}


@settings(max_examples=100, deadline=None)
@given(
    valid=st.lists(st.tuples(names, st.integers(0, 10**7)), min_size=1, max_size=8),
    junk_lines=st.lists(junk, max_size=8),
    order=st.randoms(use_true_random=False),
)
def test_csv_reader_junk_never_hides_a_valid_row(
    valid: list[tuple[str, int]], junk_lines: list[bytes], order: object
) -> None:
    """The reader alone, many more examples: every valid line comes out whole, with its line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    lines: list[tuple[bytes, int | None]] = []
    for index, (name, local) in enumerate(valid):
        out.seek(0)
        out.truncate()
        writer.writerow([f"valid-{index}", "person", name, "", f"work=030 {local:07d}", ""])
        lines.append((out.getvalue().encode(), index))
    lines += [(j + b"\n", None) for j in junk_lines]
    order.shuffle(lines)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.csv"
        path.write_bytes(HEADER.encode() + b"".join(line for line, _ in lines))
        got = {r.line: r for r in open_source(path).rows}
    for number, (_, which) in enumerate(lines, start=2):
        if which is not None:
            name, local = valid[which]
            assert got[number].fields["id"] == f"valid-{which}"
            assert got[number].fields["name"] == name
            assert got[number].fields["numbers"] == [{"type": "work", "number": f"030 {local:07d}"}]


def test_json_list_round_trip(tmp_path: Path) -> None:
    """orjson-dumped rows read back as the same objects, with lines 1..n for one per line."""
    items = [{"id": f"p{i}", "kind": "person", "name": f"N{i}"} for i in range(5)]
    path = tmp_path / "d.json"
    path.write_bytes(b"[" + b",\n".join(orjson.dumps(i) for i in items) + b"]")
    assert [(i + 1, item) for i, item in enumerate(items)] == [
        (r.line, r.fields) for r in rows(path)
    ]
