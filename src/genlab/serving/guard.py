"""What stands between a request and a model: API keys, per-key rate limits, and output filters."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genlab.errors import GenlabError
from genlab.responsible.offensive import find_offensive, judged_upto
from genlab.responsible.pii import LONGEST, find_pii, redact
from genlab.serving.config import BlocklistFilter, MemorizedFilter, OffensiveFilter, PIIFilter, ServeConfig

if TYPE_CHECKING:
    from genlab.responsible.memorization import CopyIndex

Rule = BlocklistFilter | PIIFilter | OffensiveFilter | MemorizedFilter
_WHAT = {"pii": "personal data", "offensive": "offensive text", "memorized": "text copied from training"}

MAX_IDENTITIES = 10_000  # buckets kept before full ones are forgotten (addresses, when no keys are set)


class Refused(Exception):
    """A request the guard turns away: HTTP status, message, and Retry-After seconds when it may come back."""

    def __init__(self, status: int, message: str, retry_after: float | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after, self.code = status, message, retry_after, code


class _Bucket:
    """A token bucket that refills `per_minute` evenly over a minute."""

    def __init__(self, per_minute: int) -> None:
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        self.level, self.stamp = float(per_minute), time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available (0 when it is)."""
        self.refill()
        return max(0.0, (amount - self.level) / self.rate)


class Guard:
    """API keys (constant-time comparison of bytes), per-identity request and token budgets, and requests in
    flight per identity."""

    def __init__(self, config: ServeConfig) -> None:
        self.keys = [key.encode() for key in sorted(config.keys())]
        self.limits = config.rate_limit
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    def identify(self, authorization: str | None, client: str) -> str:
        """The identity a request is limited under: a digest of its key, or its address when the server has no keys."""
        if not self.keys:
            return f"address:{client}"
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(401, "missing API key: send it as 'Authorization: Bearer <key>'", code="invalid_api_key")
        sent = token.strip().encode("utf-8", "surrogateescape")  # any header bytes compare; none can crash
        if not any(hmac.compare_digest(sent, key) for key in self.keys):
            raise Refused(401, "invalid API key", code="invalid_api_key")
        return f"key:{hashlib.sha256(sent).hexdigest()[:16]}"  # the key itself never reaches a log or a label

    def enter(self, identity: str) -> None:
        """Count a request in flight; 429 when the identity already has `concurrent_requests` of them."""
        cap = self.limits.concurrent_requests
        with self._lock:
            if cap is not None and self._inflight.get(identity, 0) >= cap:
                raise Refused(429, f"concurrency limit of {cap} requests in flight reached", 1.0,
                              "rate_limit_exceeded")
            self._inflight[identity] = self._inflight.get(identity, 0) + 1

    def leave(self, identity: str) -> None:
        with self._lock:
            left = self._inflight.get(identity, 0) - 1
            if left > 0:
                self._inflight[identity] = left
            else:
                self._inflight.pop(identity, None)

    def admit(self, identity: str) -> None:
        """Take one request from the identity's budget; 429 otherwise."""
        with self._lock:
            if self.limits.requests_per_minute:
                bucket = self._bucket(identity, "requests")
                wait = bucket.wait_for(1)
                if wait > 0:
                    raise Refused(429, f"request rate limit of {self.limits.requests_per_minute} per minute reached",
                                  wait, "rate_limit_exceeded")
                bucket.level -= 1

    def reserve(self, identity: str, tokens: int) -> None:
        """Take the most a request may generate from the identity's token budget before it starts; 429 when the
        budget does not hold it (yet, or ever: a request larger than the budget is refused as such)."""
        per_minute = self.limits.tokens_per_minute
        if not per_minute:
            return
        if tokens > per_minute:
            raise Refused(429, f"max_tokens: {tokens} tokens asked for, more than the token rate limit of "
                          f"{per_minute} per minute", None, "rate_limit_exceeded")
        with self._lock:
            bucket = self._bucket(identity, "tokens")
            wait = bucket.wait_for(tokens)
            if wait > 0:
                raise Refused(429, f"token rate limit of {per_minute} per minute reached", wait, "rate_limit_exceeded")
            bucket.level -= tokens

    def refund(self, identity: str, tokens: int) -> None:
        """Give back what a request reserved and did not generate."""
        if self.limits.tokens_per_minute and tokens > 0:
            with self._lock:
                bucket = self._bucket(identity, "tokens")
                bucket.refill()
                bucket.level = min(bucket.capacity, bucket.level + tokens)

    def _bucket(self, identity: str, kind: str) -> _Bucket:
        key = (identity, kind)
        if key not in self._buckets:
            if len(self._buckets) >= MAX_IDENTITIES:  # forget identities whose budget has refilled: they owe nothing
                for old in [k for k, b in self._buckets.items() if b.wait_for(b.capacity) == 0]:
                    del self._buckets[old]
            per_minute = self.limits.tokens_per_minute if kind == "tokens" else self.limits.requests_per_minute
            self._buckets[key] = _Bucket(per_minute)
        return self._buckets[key]


@dataclass
class Verdict:
    name: str  # the filter that acted
    action: str  # "refuse" or "replace"
    reason: str


class OutputFilter:
    """The serve config's filters over one output, fed as it streams.

    Text is released only up to a word boundary at least the longest term's (or personal datum's, or copy
    window's) length back from the end, and never inside a finding, so a term split across tokens is judged
    whole before any of it is sent. `copies` is the model's training-text index, for a memorized rule."""

    def __init__(self, filters: list[Rule], copies: CopyIndex | None = None) -> None:
        self.rules = [(f, re.compile(r"\b(?:" + "|".join(map(re.escape, f.terms)) + r")\b", re.IGNORECASE))
                      for f in filters if isinstance(f, BlocklistFilter) and f.terms]
        self.finders = [f for f in filters if isinstance(f, PIIFilter | OffensiveFilter | MemorizedFilter)]
        if copies is None and any(isinstance(f, MemorizedFilter) for f in filters):
            raise GenlabError("a memorized filter needs the model's copy index (training_windows.npy, written by "
                              "`genlab fit` for text models)")
        self.copies = copies
        held = [LONGEST] * any(isinstance(f, PIIFilter) for f in filters)
        held += [f.min_chars for f in filters if isinstance(f, MemorizedFilter)]  # a copy is whole at min_chars
        self.hold = max([len(t) for f, _ in self.rules for t in f.terms] + held, default=0)
        self.text, self.released, self.finished = "", 0, False
        self.verdict: Verdict | None = None

    def feed(self, delta: str) -> str:
        """Text that may be sent now."""
        self.text += delta
        if not self.rules and not self.finders:
            return self._release(len(self.text))
        return self._release(self.text.rfind(" ", self.released, max(len(self.text) - self.hold, 0)) + 1)

    def finish(self) -> str:
        """The rest of the text, once the output is complete."""
        self.finished = True
        return self._release(len(self.text))

    def _judge(self, verdict: Verdict) -> None:
        if self.verdict is None or self.verdict.action == "flag":  # refusing or changing outranks flagging
            self.verdict = verdict

    def _release(self, upto: int) -> str:
        if self.verdict and self.verdict.action == "refuse":
            return ""
        for rule, pattern in self.rules:
            if rule.action == "refuse" and pattern.search(self.text):
                self.verdict = Verdict(rule.type, "refuse", "the output contains a blocked term")
                return ""
        for rule in self.finders:
            upto = self._findings(rule, upto)
            if self.verdict and self.verdict.action == "refuse":
                return ""
        end = len(self.text) - upto  # measured from the end: replacements change lengths before it
        for rule, pattern in self.rules:
            if rule.action == "replace":
                tail, count = pattern.subn(rule.replacement, self.text[self.released:])
                if count:
                    self.text = self.text[:self.released] + tail
                    self._judge(Verdict(rule.type, "replace", "blocked terms were replaced"))
        upto = len(self.text) - end
        if upto <= self.released:
            return ""
        out, self.released = self.text[self.released:upto], upto
        return out

    def _findings(self, rule: PIIFilter | OffensiveFilter | MemorizedFilter, upto: int) -> int:
        """Act on the rule's findings that end before `upto` (release held back to a finding's start, never inside
        it; an offensive sentence is judged once it has ended); returns where release may go now."""
        what = _WHAT[rule.type]
        if isinstance(rule, OffensiveFilter):
            if not self.finished:
                upto = self.released + judged_upto(self.text[self.released:upto])
            found = find_offensive(self.text[self.released:upto], rule.threshold)
        else:
            found = (self.copies.find_copies(self.text[self.released:], rule.min_chars)
                     if isinstance(rule, MemorizedFilter) else find_pii(self.text[self.released:], rule.kinds))
            for f in found:
                if f.start < upto - self.released < f.end:
                    upto = self.released + f.start
        final = [f for f in found if f.end <= upto - self.released]
        if not final:
            return upto
        kinds = ", ".join(sorted({f.kind for f in final}))
        if rule.action == "refuse":
            self.verdict = Verdict(rule.type, "refuse", f"the output holds {what} ({kinds})")
        elif rule.action == "flag":
            self._judge(Verdict(rule.type, "flag", f"the output holds {what} ({kinds})"))
        else:
            part = redact(self.text[self.released:upto], final)
            self.text = self.text[:self.released] + part + self.text[upto:]
            upto = self.released + len(part)
            self._judge(Verdict(rule.type, "redact", f"{what} redacted ({kinds})"))
        return upto
