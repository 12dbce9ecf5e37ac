"""ctid.core.ami: the incremental AMI parser and action framing, against real captures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctid.core.ami import AmiMessage, AmiParser, UnsafeActionError, format_action

CAPTURE_DIR = Path(os.environ.get("CTID_CAPTURES", "/work/shared/ami-captures"))
CAPTURES = sorted(CAPTURE_DIR.glob("*.ami"))

needs_captures = pytest.mark.skipif(not CAPTURES, reason=f"no captures in {CAPTURE_DIR}")


def parse_whole(data: bytes, *, expect_banner: bool = True) -> list[AmiMessage]:
    return AmiParser(expect_banner=expect_banner).feed(data)


def parse_chunks(data: bytes, cuts: list[int], *, expect_banner: bool = True) -> list[AmiMessage]:
    parser = AmiParser(expect_banner=expect_banner)
    out: list[AmiMessage] = []
    start = 0
    for cut in [*cuts, len(data)]:
        out += parser.feed(data[start:cut])
        start = cut
    assert not parser.pending
    return out


def parse_bytewise(data: bytes) -> list[AmiMessage]:
    parser = AmiParser()
    feed = parser.feed
    out: list[AmiMessage] = []
    for i in range(len(data)):
        out += feed(data[i : i + 1])
    return out


# Feeding one byte costs a few microseconds, so the 3 MB burst capture is fed
# byte by byte only for its first part, and in small odd-sized chunks whole.
BYTEWISE_LIMIT = 150_000


@needs_captures
@pytest.mark.parametrize("path", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_byte_at_a_time_equals_one_chunk(path: Path) -> None:
    data = path.read_bytes()
    whole = parse_whole(data)
    assert whole[0].is_banner
    assert whole[0].banner_version == "11.0.0"
    if len(data) <= BYTEWISE_LIMIT:
        assert parse_bytewise(data) == whole
    else:
        prefix = data[:BYTEWISE_LIMIT]
        assert parse_bytewise(prefix) == parse_whole(prefix)
        assert parse_chunks(data, list(range(61, len(data), 61))) == whole


@needs_captures
@pytest.mark.parametrize("path", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_capture_reencodes_to_the_same_bytes(path: Path) -> None:
    data = path.read_bytes()
    assert b"".join(m.to_bytes() for m in parse_whole(data)) == data


@needs_captures
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from([p for p in CAPTURES if p.stat().st_size < 150_000] or CAPTURES[:1]),
    data=st.data(),
)
def test_random_chunkings_parse_identically(path: Path, data: st.DataObject) -> None:
    raw = path.read_bytes()
    cuts = data.draw(
        st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=400).map(sorted),
        label="cuts",
    )
    assert parse_chunks(raw, cuts) == parse_whole(raw)


def test_utf8_name_split_across_reads_arrives_intact() -> None:
    raw = "Event: Newchannel\r\nCallerIDName: Müller\r\n\r\n".encode()
    u_umlaut = raw.index("ü".encode())
    # Cut between the two bytes of "ü" (0xC3 0xBC), which panoramisk loses.
    for cut in (u_umlaut + 1, u_umlaut, u_umlaut + 2):
        (msg,) = parse_chunks(raw, [cut], expect_banner=False)
        assert msg.get("CallerIDName") == "Müller"


def test_every_split_of_a_multibyte_name() -> None:
    raw = "Event: UserEvent\r\nCallerIDName: Jürgen Müller-Lüdenscheidt\r\n\r\n".encode()
    for cut in range(len(raw) + 1):
        (msg,) = parse_chunks(raw, [cut], expect_banner=False)
        assert msg.get("CallerIDName") == "Jürgen Müller-Lüdenscheidt"


def test_trailing_empty_header_is_kept() -> None:
    raw = (
        b"Event: ChallengeSent\r\nPrivilege: security,all\r\n"
        b"RemoteAddress: IPV4/UDP/127.0.0.1/5071\r\nChallenge: \r\n\r\n"
    )
    (msg,) = parse_whole(raw, expect_banner=False)
    assert msg.headers[-1] == ("Challenge", "")
    assert "Challenge" in msg
    assert msg.to_bytes() == raw


@needs_captures
def test_trailing_empty_header_in_real_challengesent() -> None:
    msgs = parse_whole((CAPTURE_DIR / "inbound_answered.ami").read_bytes())
    challenge = next(m for m in msgs if m.event == "ChallengeSent")
    assert challenge.headers[-1] == ("Challenge", "")


@needs_captures
def test_duplicate_uniqueid_in_userevent_kept_in_order() -> None:
    msgs = parse_whole((CAPTURE_DIR / "callback_userevent.ami").read_bytes())
    event = next(m for m in msgs if m.get("UserEvent") == "CallbackRequest")
    keys = [k for k, _ in event.headers]
    first, second = (i for i, k in enumerate(keys) if k == "Uniqueid")
    # The channel's Uniqueid comes with the snapshot, the user's after UserEvent.
    assert first < keys.index("UserEvent") < second
    assert event.get_all("Uniqueid") == [event.headers[first][1], event.headers[second][1]]
    assert event.get("Uniqueid") == event.headers[first][1]


def test_duplicate_headers_with_different_values_keep_order() -> None:
    raw = b"Event: UserEvent\r\nUniqueid: 111.1\r\nUserEvent: X\r\nUniqueid: 222.2\r\n\r\n"
    (msg,) = parse_whole(raw, expect_banner=False)
    assert msg.get_all("Uniqueid") == ["111.1", "222.2"]
    assert msg.get("uniqueid") == "111.1"
    assert msg.as_dict()["Uniqueid"] == "111.1"


def test_banner_then_login_response_without_blank_line() -> None:
    raw = (
        b"Asterisk Call Manager/11.0.0\r\n"
        b"Response: Success\r\nActionID: cti-1\r\nMessage: Authentication accepted\r\n\r\n"
    )
    for msgs in (parse_whole(raw), parse_bytewise(raw)):
        banner, login = msgs
        assert banner.is_banner
        assert banner.banner_version == "11.0.0"
        assert login.response == "Success"
        assert login.action_id == "cti-1"
        assert login.get("Message") == "Authentication accepted"


def test_server_side_parser_takes_no_banner() -> None:
    raw = b"Action: Login\r\nUsername: ctid\r\nSecret: x\r\n\r\n"
    (msg,) = parse_whole(raw, expect_banner=False)
    assert msg.get("Action") == "Login"


def test_bare_lf_lines() -> None:
    crlf = (
        b"Asterisk Call Manager/11.0.0\r\n"
        b"Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n"
        b"Event: Hangup\r\nPrivilege: call,all\r\nCause: 16\r\n\r\n"
    )
    lf = crlf.replace(b"\r\n", b"\n")
    mixed = crlf.replace(b"Cause: 16\r\n", b"Cause: 16\n")
    expected = parse_whole(crlf)
    assert len(expected) == 3
    assert parse_whole(lf) == expected
    assert parse_whole(mixed) == expected
    assert parse_chunks(lf, list(range(len(lf)))) == expected


def test_value_keeps_colons_and_extra_spaces() -> None:
    raw = b"Event: Newexten\r\nAppData: a: b\r\nMessage:  two spaces\r\nEmpty:\r\n\r\n"
    (msg,) = parse_whole(raw, expect_banner=False)
    assert msg.get("AppData") == "a: b"
    assert msg.get("Message") == " two spaces"
    assert msg.get_all("Empty") == [""]


def test_pending_reports_an_unfinished_message() -> None:
    parser = AmiParser(expect_banner=False)
    assert parser.feed(b"Event: Hangup\r\nCause: 16\r\n") == []
    assert parser.pending
    (msg,) = parser.feed(b"\r\n")
    assert msg.get("Cause") == "16"
    assert not parser.pending


def test_format_action_frames_fields_in_order() -> None:
    raw = format_action("QueuePause", [("ActionID", "cti-7"), ("Interface", "PJSIP/1001")])
    assert raw == b"Action: QueuePause\r\nActionID: cti-7\r\nInterface: PJSIP/1001\r\n\r\n"
    (msg,) = parse_whole(raw, expect_banner=False)
    assert msg.headers == (
        ("Action", "QueuePause"),
        ("ActionID", "cti-7"),
        ("Interface", "PJSIP/1001"),
    )


def test_format_action_accepts_a_mapping_and_utf8() -> None:
    raw = format_action("UserEvent", {"UserEvent": "Note", "Text": "Müller"})
    (msg,) = parse_whole(raw, expect_banner=False)
    assert msg.get("Text") == "Müller"


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nAction: Hangup", "nul\x00", "\n"])
def test_format_action_rejects_cr_lf_nul_in_values(bad: str) -> None:
    with pytest.raises(UnsafeActionError):
        format_action("Originate", [("CallerID", bad)])


@pytest.mark.parametrize(
    "key", ["Caller\rID", "Caller\nID", "Caller\x00ID", "", "Caller ID", "Caller:ID", "1abc"]
)
def test_format_action_rejects_bad_keys(key: str) -> None:
    with pytest.raises(UnsafeActionError):
        format_action("Originate", [(key, "x")])


@pytest.mark.parametrize("action", ["Ping\r\nAction: Hangup", "Ping\n", "Pi\x00ng"])
def test_format_action_rejects_bad_action_names(action: str) -> None:
    with pytest.raises(UnsafeActionError):
        format_action(action, [])


@given(value=st.text(max_size=40))
def test_format_action_never_emits_a_second_header(value: str) -> None:
    try:
        raw = format_action("UserEvent", [("UserEvent", "X"), ("Data", value)])
    except UnsafeActionError:
        assert any(c in value for c in "\r\n\x00")
        return
    (msg,) = parse_whole(raw, expect_banner=False)
    assert [k for k, _ in msg.headers] == ["Action", "UserEvent", "Data"]


@pytest.mark.parametrize("name", ["", "Queue Pause", "-x"])
def test_format_action_rejects_empty_or_malformed_action_names(name: str) -> None:
    """The action name itself is checked like a header name: no empty, spaced or CR/LF names."""
    with pytest.raises(UnsafeActionError):
        format_action(name, [])


@pytest.mark.parametrize("key", ["Interface\n", "Interface\r\n"])
def test_format_action_rejects_a_trailing_newline_in_a_key(key: str) -> None:
    """A regex "$" would accept a key ending in a newline and let it split the header."""
    with pytest.raises(UnsafeActionError):
        format_action("QueuePause", [(key, "PJSIP/1001")])
