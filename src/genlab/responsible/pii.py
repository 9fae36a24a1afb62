"""Personal data in generated text, found offline: emails, phone numbers, payment cards (Luhn-checked), IBANs
(mod-97 checked), IPv4 and IPv6 addresses, US social security numbers. Patterns and checksums only, as
Presidio's pattern recognizers work (its default NLP engine downloads a spaCy model; these need nothing).

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


# kind -> (pattern, a check on the match, words just before it that make it something else)
RECOGNIZERS: dict[str, tuple[re.Pattern, Callable[[str], bool], re.Pattern | None]] = {
    "email": (re.compile(r"\b[A-Za-z0-9._%+-]{1,40}@[A-Za-z0-9-]{1,40}(?:\.[A-Za-z0-9-]{1,40})*\.[A-Za-z]{2,12}\b"),
              _always, None),
    "card": (re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _luhn, None),
    "iban": (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), _iban, None),
    "ssn": (re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"), _always, None),
    "ipv4": (re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"), _ipv4,
             re.compile(r"(?:\bv|\bversion\s*|\brelease\s*|\bpython\s*|\bbuild\s*)$", re.IGNORECASE)),
    "ipv6": (re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|[0-9A-Fa-f]{1,4})[0-9A-Fa-f:]{0,30}(?![\w:])"),
             _ipv6, None),
    # +CC then groups; (area) then two groups; or the North American 3-3-4: never a run of digit groups in general
    "phone": (re.compile(r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,3}"
                         r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}|\d{3}[ .-]\d{3}[ .-]\d{4})(?!\w|[ .-]\d)"),
              _always, re.compile(r"(?:\bv|\bversion\s*|\bpage\s*|\bpp?\.\s*)$", re.IGNORECASE)),
}
KINDS = tuple(RECOGNIZERS)


def find_pii(text: str, kinds: tuple[str, ...] | list[str] = KINDS) -> list[Finding]:
    """Every finding in `text`, in order; where two overlap, the longer (then the earlier kind) wins."""
    found = []
    for kind in kinds:
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
