"""Offensive sentences in generated text, found offline by alt-profanity-check (a linear model on character and
word n-grams that ships in its wheel: `pip install 'genlab[audit]'`).

A text is judged sentence by sentence, so that redacting takes out the sentence and a stream can release each
sentence once it has ended and been judged.

    find_offensive(text, threshold) -> [Finding("offensive", start, end, sentence)]
"""

from __future__ import annotations

import re

from genlab.errors import GenlabError
from genlab.responsible.pii import Finding

THRESHOLD = 0.8  # the model's probability from which a sentence is offensive
LONGEST_SENTENCE = 300  # characters a stream holds before it judges an unended sentence at a word boundary
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


def available() -> bool:
    try:
        import profanity_check  # noqa: F401
    except ImportError:
        return False
    return True


def find_offensive(text: str, threshold: float = THRESHOLD) -> list[Finding]:
    """The sentences of `text` whose offensiveness probability reaches `threshold`."""
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise GenlabError("offensive: needs alt-profanity-check: pip install 'genlab[audit]'") from None
    spans = []
    for m in _SENTENCE.finditer(text):
        start = m.start() + len(m.group()) - len(m.group().lstrip())
        end = m.start() + len(m.group().rstrip())
        if end > start:
            spans.append((start, end))
    if not spans:
        return []
    probabilities = predict_prob([text[s:e] for s, e in spans])
    return [Finding("offensive", s, e, text[s:e]) for (s, e), p in zip(spans, probabilities, strict=True)
            if p >= threshold]


def judged_upto(text: str) -> int:
    """How much of a streamed `text` is whole sentences (through the last sentence end), or, when an unended
    sentence has grown past LONGEST_SENTENCE, up to its last word boundary."""
    end = max(text.rfind(c) for c in ".!?\n") + 1
    if end == 0 and len(text) > LONGEST_SENTENCE:
        end = text.rfind(" ", 0, LONGEST_SENTENCE) + 1 or LONGEST_SENTENCE
    return end
