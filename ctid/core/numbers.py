"""Phone number normalisation (the CIC seed's rules, and what real trunks send).

A calling number arrives in many shapes (captures README, point 19): PJSIP passes
the SIP From user part verbatim (``030 1234567``, ``+49 30 999888``, even
``sip:4930999888@carrier.example``), IAX2 strips separators, a withheld number is
``anonymous`` or ``<unknown>``. This module turns any of them into one of:

* ``no_ani``    - nothing usable (empty, anonymous, private, a name instead of digits,
  only zeros: CIC's own "0" for a missing number);
* ``extension`` - a short all-digit internal number (an agent's handset);
* ``e164``      - a public number, normalised with phonenumbers and the default region.

Extensions are recognised *before* phonenumbers sees the string, because it
happily reads ``1234`` as the "possible" number ``+491234`` (DESIGN.md pitfalls).
Results are cached: a parse costs 24-75 µs, a cached hit well under 1 µs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

NO_ANI_WORDS = frozenset(
    {
        "",
        "anonymous",
        "privatenumber",
        "private",
        "<unknown>",
        "unknown",
        "unavailable",
        "restricted",
        "withheld",
    }
)
_SEPARATORS = re.compile(r"[\s\-().\[\]/]")
_DIALLABLE = re.compile(r"\+?[0-9]+")


@dataclass(frozen=True, slots=True)
class Number:
    """A normalised number: ``raw`` as received, ``e164`` (or the extension), and its kind."""

    raw: str
    e164: str
    kind: str  # "e164" | "extension" | "no_ani"

    def as_payload(self) -> dict[str, str]:
        return {"raw": self.raw, "e164": self.e164, "kind": self.kind}


class NumberNormalizer:
    """Normalises raw calling numbers for one default region, with an LRU cache."""

    def __init__(
        self,
        *,
        default_region: str = "DE",
        max_extension_length: int = 6,
        cache_size: int = 100_000,
    ) -> None:
        self.default_region = default_region
        self.max_extension_length = max_extension_length
        self.normalize = lru_cache(maxsize=cache_size)(self._normalize)

    def _normalize(self, raw: str) -> Number:
        text = strip_uri(raw)
        if text.lower() in NO_ANI_WORDS or text[:1].isalpha():
            return Number(raw, "", "no_ani")
        compact = _SEPARATORS.sub("", text)
        if not _DIALLABLE.fullmatch(compact) or not compact.strip("+0"):
            # Only zeros: what CIC (and trunks that mimic it) writes for "no number".
            return Number(raw, "", "no_ani")
        if not compact.startswith("+") and len(compact) <= self.max_extension_length:
            return Number(raw, compact, "extension")
        try:
            parsed = phonenumbers.parse(compact, self.default_region)
        except phonenumbers.NumberParseException:
            return Number(raw, "", "no_ani")
        if not phonenumbers.is_possible_number(parsed):
            return Number(raw, "", "no_ani")
        return Number(
            raw, phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), "e164"
        )


def strip_uri(raw: str) -> str:
    """Strip ``sip:``/``sips:``/``tel:``, everything from ``@`` and a leading ``/`` (CIC seed).

    A name-addr (``"Maria" <sip:+4930123456@carrier>``, as some trunks put the whole
    From header into the caller id) is reduced to the URI inside the brackets first.
    """
    text = raw.strip()
    if text.endswith(">") and "<" in text:
        text = text[text.rindex("<") + 1 : -1].strip()
    low = text.lower()
    for scheme in ("sips:", "sip:", "tel:"):
        if low.startswith(scheme):
            text = text[len(scheme) :]
            break
    text = text.split("@", 1)[0].split(";", 1)[0]
    return text.lstrip("/").strip()
