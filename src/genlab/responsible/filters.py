"""The post-generation filters by kind, as `genlab filter` and the library use them: personal data (pii.py) and
offensive sentences (offensive.py). The server applies the same finders as text streams (serving/guard.py)."""

from __future__ import annotations

from genlab.errors import GenlabError
from genlab.responsible.offensive import THRESHOLD, available, find_offensive
from genlab.responsible.pii import KINDS, Finding, find_pii, redact

ALL_KINDS = (*KINDS, "offensive")


def chosen_kinds(kinds: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The kinds asked for, checked; none asked: every personal-data kind, and offensive text when its model is
    installed."""
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        raise GenlabError(f"--kind: {', '.join(unknown)} not one of {', '.join(ALL_KINDS)}")
    return tuple(kinds) or (*KINDS, *(("offensive",) if available() else ()))


def find(text: str, kinds: tuple[str, ...], threshold: float = THRESHOLD) -> list[Finding]:
    """Every finding of the kinds in `text`, in order and not overlapping (an offensive sentence holds whatever
    personal data it contains)."""
    found = find_pii(text, [k for k in kinds if k != "offensive"]) if set(kinds) - {"offensive"} else []
    if "offensive" in kinds:
        found += find_offensive(text, threshold)
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.start, -f.end)):
        if not kept or f.start >= kept[-1].end:
            kept.append(f)
    return kept


__all__ = ["ALL_KINDS", "chosen_kinds", "find", "redact"]
