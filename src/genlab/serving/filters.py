"""The serve config's output filters over one output, fed as it streams, and over what goes out with it.

Everything is judged in the output's own characters as generated (`raw`): a rule's findings are spans of it, and
`decided` is how far it has been judged. Text past `len(raw) - hold` may still be part of a finding that has not
ended (a blocked term, a personal datum, a copy window), so it waits; anything before it is released, changed or
withheld at once, at any character, so a stream of text without spaces flows as any other and each delta costs
what it adds plus `hold`. A logprob record goes out when the text of its token has been judged, and only if that
text went out unchanged; a top alternative that is itself a blocked term is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genlab.errors import GenlabError
from genlab.responsible.offensive import find_offensive, judged_upto
from genlab.responsible.pii import LONGEST, find_pii
from genlab.serving.config import BlocklistFilter, MemorizedFilter, OffensiveFilter, PIIFilter

if TYPE_CHECKING:
    from genlab.responsible.memorization import CopyIndex

Rule = BlocklistFilter | PIIFilter | OffensiveFilter | MemorizedFilter
PII_CONTEXT = 4 * LONGEST  # characters before the judged text that the personal-data finders read again
_WHAT = {"pii": "personal data", "offensive": "offensive text", "memorized": "text copied from training"}


@dataclass
class Verdict:
    name: str  # the filter that acted
    action: str  # "refuse", "replace", "redact" or "flag"
    reason: str


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    tag: str  # what the span becomes
    kind: str  # what was found, for the verdict's reason
    whole: bool = True  # never split (a term, a datum, a sentence); a copy is judged character by character


class OutputFilter:
    """The filters over one output. `copies` is the model's training-text index, for a memorized rule; `prompt`
    is the text the output continues (a memorized rule with `prompt: true` counts copies that start in it);
    `token_text` names a logprob record's alternatives, to drop blocked ones; `echo`, the prompt sent back before
    the output (judged with it, so a term split between the two is whole)."""

    def __init__(self, filters: list[Rule], copies: CopyIndex | None = None, prompt: str = "",
                 token_text: Callable[[int], str] | None = None, echo: str = "") -> None:
        self.rules = [(f, re.compile(r"\b(?:" + "|".join(map(re.escape, f.terms)) + r")\b", re.IGNORECASE))
                      for f in filters if isinstance(f, BlocklistFilter) and f.terms]
        self.finders = [f for f in filters if isinstance(f, PIIFilter | OffensiveFilter | MemorizedFilter)]
        if copies is None and any(isinstance(f, MemorizedFilter) for f in filters):
            raise GenlabError("a memorized filter needs the model's copy index (training_windows.npy, written by "
                              "`genlab fit` for text models)")
        self.copies, self.prompt, self.token_text = copies, prompt, token_text
        held = [LONGEST] * any(isinstance(f, PIIFilter) for f in filters)
        held += [f.min_chars for f in filters if isinstance(f, MemorizedFilter)]  # a copy is whole at min_chars
        # +1: a term's word boundary is decided by the character after it
        self.hold = max([len(t) + 1 for f, _ in self.rules for t in f.terms] + held, default=0)
        self.active = bool(self.rules or self.finders)
        self.raw, self.decided, self.finished, self.echoed = echo, 0, False, len(echo)
        self.changed: list[tuple[int, int]] = []  # spans of raw that did not go out as they were
        self.verdict: Verdict | None = None
        self._records: list[tuple[int, int, tuple]] = []  # (start, end, record) waiting for their text's verdict
        self._record_end = 0
        self._change = 0  # the first change a waiting record may touch: records and changes both go forward

    def feed(self, delta: str) -> str:
        """Text that may be sent now."""
        self.raw += delta
        return self._decide(len(self.raw) if not self.active else max(self.decided, len(self.raw) - self.hold))

    def finish(self) -> str:
        """The rest of the text, once the output is complete."""
        self.finished = True
        return self._decide(len(self.raw))

    @property
    def refused(self) -> bool:
        return self.verdict is not None and self.verdict.action == "refuse"

    # --- logprob records -------------------------------------------------------------------------------------

    def note(self, record: tuple, end: int, echoed: bool = False) -> None:
        """A logprob record whose token's text ends at character `end` of the output as generated (of the echoed
        prompt, when `echoed`)."""
        end += 0 if echoed else self.echoed
        start, self._record_end = self._record_end, max(self._record_end, end)
        self._records.append((start, end, record))

    def records(self) -> list[tuple]:
        """The records whose text has been judged and went out unchanged, each without its blocked alternatives;
        none once the output is refused, nor the records of text a stop string cut off."""
        judged = len(self.raw) if self.finished else self.decided
        out = []
        while self._records and (self._records[0][1] <= judged or self.finished):
            start, end, record = self._records.pop(0)
            cut = self.finished and start >= len(self.raw) and end > start
            if not self.refused and not cut and not self._touches_change(start, max(end, start + 1)):
                out.append(self._screened(record))
        return out

    def _touches_change(self, start: int, end: int) -> bool:
        changes = self.changed
        while self._change < len(changes) and changes[self._change][1] <= start:
            self._change += 1
        return self._change < len(changes) and changes[self._change][0] < end

    def _screened(self, record: tuple) -> tuple:
        token, logprob, top = record
        if not self.rules or not top or self.token_text is None:
            return record
        kept = {t: v for t, v in top.items() if not any(p.search(self.token_text(t)) for _, p in self.rules)}
        return token, logprob, kept

    # --- judging ---------------------------------------------------------------------------------------------

    def _decide(self, upto: int) -> str:
        """Judge raw[decided:upto], less what a finding not whole yet holds back, and return what of it goes out."""
        if self.refused:
            return ""
        found: list[tuple[Rule, _Span]] = []
        for rule, pattern in self.rules:
            for m in pattern.finditer(self.raw, self.decided):  # pos, not a slice: \b sees the character before
                if m.start() >= upto:
                    break
                found.append((rule, _Span(m.start(), m.end(), rule.replacement, "blocked term")))
        for rule in self.finders:
            upto, spans = self._find(rule, upto)
            found += [(rule, span) for span in spans]
        while not self.finished:  # a finding is never split: hold back to its start
            crossing = [s.start for _, s in found if s.whole and s.start < upto < s.end]
            if not crossing:
                break
            upto = min(crossing)
        found = [(rule, span) for rule, span in found if span.start < upto]
        rules = list({id(rule): rule for rule, _ in found}.values())  # in order, each once
        for rule in rules:
            kinds = ", ".join(sorted({s.kind for r, s in found if r is rule}))
            if rule.action == "refuse":
                return self._refuse(rule.type, "the output contains a blocked term" if rule.type == "blocklist"
                                    else f"the output holds {_WHAT[rule.type]} ({kinds})")
            if rule.action == "flag":
                self._judge(Verdict(rule.type, "flag", f"the output holds {_WHAT[rule.type]} ({kinds})"))
            elif rule.type == "blocklist":
                self._judge(Verdict(rule.type, "replace", "blocked terms were replaced"))
            else:
                self._judge(Verdict(rule.type, "redact", f"{_WHAT[rule.type]} redacted ({kinds})"))
        return self._release(upto, [span for rule, span in found if rule.action != "flag"])

    def _find(self, rule: PIIFilter | OffensiveFilter | MemorizedFilter, upto: int) -> tuple[int, list[_Span]]:
        """The rule's findings that start in raw[decided:upto], and how far judging may go for it."""
        at = self.decided
        if isinstance(rule, OffensiveFilter):
            if not self.finished:  # a sentence is judged once it has ended
                upto = at + judged_upto(self.raw[at:upto])
            return upto, [_Span(f.start + at, f.end + at, "[OFFENSIVE]", "offensive")
                          for f in find_offensive(self.raw[at:upto], rule.threshold)]
        if isinstance(rule, MemorizedFilter):  # the characters before count: a copy may have begun in them
            before = ((self.prompt if rule.prompt else "") + self.raw[:at])[-rule.min_chars:]
            shift = at - len(before)
            copies = self.copies.find_copies(before + self.raw[at:], rule.min_chars)
            return upto, [_Span(max(f.start + shift, at), f.end + shift, "[MEMORIZED]", "memorized", whole=False)
                          for f in copies if at < f.end + shift and f.start + shift < upto]
        # what precedes a finding decides some (a digit before a number), and a datum longer than the hold (a long
        # email) is only recognized once part of it is out: its rest is redacted
        context = max(0, at - PII_CONTEXT)
        return upto, [_Span(max(f.start + context, at), f.end + context, f"[{f.kind.upper()}]", f.kind)
                      for f in find_pii(self.raw[context:], rule.kinds)
                      if f.end + context > at and f.start + context < upto]

    def _release(self, upto: int, spans: list[_Span]) -> str:
        """raw[decided:upto] with each span replaced by its tag (overlapping spans as one), judged done."""
        pieces, at = [], self.decided
        for span in sorted(spans, key=lambda s: (s.start, -s.end)):
            end = span.end if span.whole else min(span.end, upto)
            if end <= at:
                continue
            start = max(span.start, at)
            if start > at or not self.changed or self.changed[-1][1] != at:
                pieces += [self.raw[at:start], span.tag]
                self.changed.append((start, end))
            else:  # it overlaps or continues the last change (a copy goes on past what was judged): one tag
                self.changed[-1] = (self.changed[-1][0], end)
            at = end
        pieces.append(self.raw[at:max(at, upto)])
        self.decided = max(at, upto)
        return "".join(pieces)

    def _refuse(self, name: str, reason: str) -> str:
        self.verdict = Verdict(name, "refuse", reason)
        return ""

    def _judge(self, verdict: Verdict) -> None:
        if self.verdict is None or self.verdict.action == "flag":  # refusing or changing outranks flagging
            self.verdict = verdict

