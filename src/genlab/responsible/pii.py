"""Personal data in generated text, found offline: emails, phone numbers, payment cards (Luhn-checked), IBANs
(mod-97 checked), IPv4 and IPv6 addresses, US social security numbers. Patterns and checksums, as Presidio's
pattern recognizers work (its default NLP engine downloads a spaCy model; these need nothing), and phone numbers
by libphonenumber's matcher and metadata, as Presidio's phone recognizer finds them.

    find_pii(text) -> [Finding(kind, start, end, text)]      redact(text) -> text with [EMAIL], [CARD]...
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

LONGEST = 64  # characters: no finding is longer, so a stream holding back this much never splits one


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    text: str


def _luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:  # 0000 0000 0000 0000 passes Luhn, and is no card
        return False
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _iban(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ipv4(text: str) -> bool:
    return all(int(part) <= 255 and (part == "0" or not part.startswith("0")) for part in text.split("."))


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _always(text: str) -> bool:
    return True


def _ssn(text: str) -> bool:
    return text not in VOIDED_SSNS


VOIDED_SSNS = {"078-05-1120", "219-09-9999"}  # printed on sample cards, then voided: examples, not people
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN")  # national formats read as these countries' (+CC works anywhere)


def _phones(text: str, regions: tuple[str, ...] = PHONE_REGIONS) -> list[tuple[int, int]]:
    """Spans of valid phone numbers, by libphonenumber's matcher (offline metadata, the one Presidio uses)."""
    import phonenumbers

    spans = set()
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            spans.add((m.start, m.end))
    return sorted(spans)


# kind -> (pattern, a check on the match, words just before it that make it something else)
RECOGNIZERS: dict[str, tuple[re.Pattern, Callable[[str], bool], re.Pattern | None]] = {
    "email": (re.compile(r"\b[A-Za-z0-9._%+-]{1,40}@[A-Za-z0-9-]{1,40}(?:\.[A-Za-z0-9-]{1,40})*\.[A-Za-z]{2,12}\b"),
              _always, None),
    "card": (re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _luhn, None),
    "iban": (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), _iban, None),
    "ssn": (re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"), _ssn, None),
    "ipv4": (re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"), _ipv4,
             re.compile(r"(?:\bv|\bversion\s*|\brelease\s*|\bpython\s*|\bbuild\s*)$", re.IGNORECASE)),
    # at least two colons and a hex digit; the address itself is checked by the standard library
    "ipv6": (re.compile(r"(?<![\w:])(?=[0-9A-Fa-f:]*[0-9A-Fa-f])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"),
             _ipv6, None),
}
KINDS = (*RECOGNIZERS, "phone")


def find_pii(text: str, kinds: tuple[str, ...] | list[str] = KINDS) -> list[Finding]:
    """Every finding in `text`, in order; where two overlap, the longer (then the earlier kind) wins."""
    found = [Finding("phone", a, b, text[a:b]) for a, b in _phones(text)] if "phone" in kinds else []
    for kind in (k for k in kinds if k != "phone"):
        pattern, check, not_after = RECOGNIZERS[kind]
        for m in pattern.finditer(text):
            if check(m.group()) and not (not_after and not_after.search(text[max(0, m.start() - 12) : m.start()])):
                found.append(Finding(kind, m.start(), m.end(), m.group()))
    found.sort(key=lambda f: (f.start, -(f.end - f.start)))
    kept: list[Finding] = []
    for f in found:
        if not kept or f.start >= kept[-1].end:
            kept.append(f)
    return kept


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with each finding replaced by its kind in capitals: [EMAIL], [CARD]..."""
    out, at = [], 0
    for f in findings:
        out += [text[at : f.start], f"[{f.kind.upper()}]"]
        at = f.end
    return "".join(out) + text[at:]
