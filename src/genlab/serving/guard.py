"""What stands between a request and a model: API keys and per-key rate limits (output filters: filters.py)."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator

from genlab.serving.config import ServeConfig

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
        self._queued: dict[tuple[str, str], int] = {}  # (identity, model): sequences or items waiting or running
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

    def take_share(self, identity: str, model: str, count: int, queue: int) -> None:
        """Count `count` sequences or items of the identity as waiting or running on `model`; 429 past its share of
        the model's queue, so that one key cannot fill it for everyone."""
        share = self.limits.queue_share  # 1: no share of its own, only the queue's bound
        most = max(1, int(queue * share))
        if share < 1 and count > most:  # never, however long it waits
            raise Refused(400, f"n: {count} sequences or items, more than one key's share of model {model!r}'s "
                          f"queue ({most})", code="invalid_value")
        with self._lock:
            held = self._queued.get((identity, model), 0)
            if share < 1 and held + count > most:
                raise Refused(429, f"queue share: {held} of this key's sequences are waiting or running on model "
                              f"{model!r} and {count} more were asked for; one key may hold {most} "
                              f"(rate_limit.queue_share {self.limits.queue_share} of its queue)", 1.0,
                              "rate_limit_exceeded")
            self._queued[identity, model] = held + count

    def release(self, identity: str, model: str, count: int) -> None:
        with self._lock:
            left = self._queued.get((identity, model), 0) - count
            if left > 0:
                self._queued[identity, model] = left
            else:
                self._queued.pop((identity, model), None)

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


class MemoryBudget:
    """Bytes that the running jobs of every model hold together (a container has one memory limit). A job takes its
    share in its model's worker thread just before it runs, in the order jobs came, and gives it back when done: a
    job still in a model's queue holds nothing, so requests waiting there cannot keep other models' jobs out."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._line: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, need: int) -> Iterator[None]:
        """Wait until `need` bytes fit beside what is held (never past a job that came earlier), hold them within."""
        ticket = object()
        with self._cond:
            self._line.append(ticket)
            self._cond.wait_for(lambda: self._line[0] is ticket and self.used + need <= self.total)
            self._line.popleft()
            self.used += need
            self._cond.notify_all()  # the next in line may fit beside it
        try:
            yield
        finally:
            with self._cond:
                self.used -= need
                self._cond.notify_all()
