"""Number normalisation: the CIC seed's formatting rules and DESIGN's phonenumbers pitfalls."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctid.core.numbers import Number, NumberNormalizer, strip_uri

DE = NumberNormalizer(default_region="DE")

# (raw, expected e164-or-extension, kind). The first block is the CIC seed's own table.
CASES = [
    # CIC seed 004, "Phone number formatting": strip sip:, @ and after; / from extensions;
    # a string beginning with a letter is no number (CIC writes 0; ctid says no_ani).
    ("sip:1234@example.com", "1234", "extension"),
    ("/1234", "1234", "extension"),
    ("aaa111", "", "no_ani"),
    ("PrivateNumber", "", "no_ani"),
    ("1234", "1234", "extension"),
    # Withheld numbers as Asterisk and trunks present them.
    ("anonymous", "", "no_ani"),
    ("Anonymous", "", "no_ani"),
    ("<unknown>", "", "no_ani"),
    ("unknown", "", "no_ani"),
    ("", "", "no_ani"),
    ("   ", "", "no_ani"),
    ("sip:anonymous@anonymous.invalid", "", "no_ani"),
    ("restricted", "", "no_ani"),
    # CIC's own output for "no number" (and what some trunks send): only zeros.
    ("0", "", "no_ani"),
    ("00", "", "no_ani"),
    ("+000", "", "no_ani"),
    # One number, however written (DESIGN: region DE).
    ("030 123456", "+4930123456", "e164"),
    ("004930123456", "+4930123456", "e164"),
    ("+4930123456", "+4930123456", "e164"),
    ("+49 (0)30 123456", "+4930123456", "e164"),
    ("0049 30 123456", "+4930123456", "e164"),
    ("030/123456", "+4930123456", "e164"),
    ("030-123456", "+4930123456", "e164"),
    ("tel:+49-30-123456", "+4930123456", "e164"),
    ("tel:+49-30-123456;phone-context=example.com", "+4930123456", "e164"),
    ("sip:+4930123456@carrier.example:5060", "+4930123456", "e164"),
    ("sips:004930123456@carrier.example", "+4930123456", "e164"),
    ("<sip:+4930123456@carrier.example>", "+4930123456", "e164"),
    ('"Maria" <sip:030123456@carrier.example>', "+4930123456", "e164"),
    ("0171 2345678", "+491712345678", "e164"),
    ("001 212 555 0100", "+12125550100", "e164"),
    ("+1 212 555 0100", "+12125550100", "e164"),
    # Extensions are recognised before phonenumbers, which would read 1234 as +491234.
    ("sip:1001@pbx", "1001", "extension"),
    ("PJSIP-1001", "", "no_ani"),
    ("123456", "123456", "extension"),
    ("1234567", "+491234567", "e164"),
    # Not diallable, or not a possible number.
    ("+1234", "", "no_ani"),
    ("030-CALL-NOW", "", "no_ani"),
    ("+", "", "no_ani"),
    ("12ab", "", "no_ani"),
]


@pytest.mark.parametrize(("raw", "e164", "kind"), CASES)
def test_normalize_table(raw: str, e164: str, kind: str) -> None:
    """Every row of the table normalises to its expected value and kind, keeping raw as given."""
    assert Number(raw, e164, kind) == DE.normalize(raw)


def test_one_number_three_spellings() -> None:
    """`030 123456`, `004930123456` and `+4930123456` are one number in region DE."""
    assert {DE.normalize(s).e164 for s in ("030 123456", "004930123456", "+4930123456")} == {
        "+4930123456"
    }


def test_default_region_decides_national_numbers() -> None:
    """A national number belongs to the configured region; an international one does not."""
    ch = NumberNormalizer(default_region="CH")
    assert ch.normalize("044 668 18 00").e164 == "+41446681800"
    assert ch.normalize("+4930123456").e164 == "+4930123456"


@pytest.mark.parametrize(
    ("length", "raw", "kind"),
    [
        (4, "1234", "extension"),
        (4, "12345", "e164"),  # phonenumbers: a "possible" +4912345
        (8, "12345678", "extension"),
        (0, "1", "no_ani"),
    ],
)
def test_extension_length_is_configurable(length: int, raw: str, kind: str) -> None:
    """Up to ``max_extension_length`` digits is an extension; longer goes to phonenumbers."""
    assert NumberNormalizer(max_extension_length=length).normalize(raw).kind == kind


def test_results_are_cached() -> None:
    """A second normalisation of the same string is a cache hit (the same object)."""
    normalizer = NumberNormalizer()
    first = normalizer.normalize("030 123456")
    assert normalizer.normalize("030 123456") is first


@pytest.mark.parametrize(
    ("raw", "stripped"),
    [
        ("sip:1234@example.com", "1234"),
        ("SIP:1234@example.com", "1234"),
        ("tel:+4930;ext=1", "+4930"),
        ("/1234", "1234"),
        ("<sip:1234@pbx>", "1234"),
        ("<unknown>", "unknown"),
        ("  030 123  ", "030 123"),
    ],
)
def test_strip_uri(raw: str, stripped: str) -> None:
    """strip_uri removes scheme, @-part, URI parameters, a leading slash and angle brackets."""
    assert stripped == strip_uri(raw)


@settings(deadline=None)  # the machine may be loaded by other work
@given(st.text(max_size=40))
def test_any_text_normalises_to_a_known_kind(raw: str) -> None:
    """Whatever a trunk sends, normalising never raises and yields a consistent Number."""
    number = DE.normalize(raw)
    assert number.raw == raw
    assert number.kind in {"e164", "extension", "no_ani"}
    if number.kind == "e164":
        assert number.e164.startswith("+")
        assert number.e164[1:].isdigit()
    elif number.kind == "extension":
        assert number.e164.isdigit()
        assert len(number.e164) <= DE.max_extension_length
    else:
        assert number.e164 == ""
