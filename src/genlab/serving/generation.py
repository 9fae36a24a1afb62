"""Text generation as the text routes run it, whatever model makes the text: each choice of a request is one
sequence in the model's worker, its events (deltas, logprobs, the end) brought back to the event loop through an
asyncio queue, passed through the output filters, charged to the caller, and sent whole or as server-sent events.

A text served kind (`capabilities/text.py`'s ServedText) has `encode`, `context` (None: no limit),
`gives_logprobs`, `charge(options)` and `generate(ids, prompt, options, seed, ask, emit) -> handle` (whose
`cancelled` it honours). A client that goes away, streamed or not, cancels its sequences, which leave the batch at
the next step. The filters judge each burst of events off the event loop (filters.py): their cost grows with the text.
"""

from __future__ import annotations

import asyncio
import collections
import json
import queue
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from genlab.errors import GenlabError
from genlab.serving.filters import OutputFilter
from genlab.serving.guard import Guard, Refused
from genlab.serving.server import Server, unless_gone
from genlab.serving.workers import EngineStopped, QueueFull


@dataclass
class Choice:
    index: int
    filter: OutputFilter
    text: str = ""  # what was released to the client
    finish: str | None = None
    prompt_tokens: int = 0
    tokens: int = 0
    batch: int = 0
    handle: object = None  # the engine's sequence, to cancel it
    first_at: float | None = None
    # (token, logprob, top) per token the filters let out: the echoed prompt's first, then the drawn ones
    logprobs: list = field(default_factory=list)
    scored: int = 0  # prompt tokens scored for echo: charged as generated ones
    shown_logprobs: int = 0  # records already sent in a stream


@dataclass
class Generation:
    """The choices of one request, and their events as they arrive."""

    served: Any  # a text served kind (capabilities/text.py)
    choices: list[Choice]
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    guard: Guard | None = None  # where its reserved tokens and queue places go back to
    identity: str = ""
    reserved: int = 0  # tokens taken from the identity's budget at admission
    filtering: bool = False  # the serve config has output filters: events are judged off the event loop

    async def deltas(self) -> AsyncIterator[tuple[Choice, str]]:
        """(choice, released text) as text arrives; (choice, "") once more when a choice finishes.
        Events that arrived together are merged per choice, so a client that lags gets fewer, larger chunks."""
        open_ = len(self.choices)
        while open_:
            events = [await self.events.get()]
            while not self.events.empty():
                events.append(self.events.get_nowait())
            released = await asyncio.to_thread(self._judge, events) if self.filtering else self._judge(events)
            for index, out in released.items():
                choice = self.choices[index]
                if out and choice.first_at is None:
                    choice.first_at = time.perf_counter()
                choice.text += out
                open_ -= choice.finish is not None
                yield choice, out

    def _judge(self, events: list[tuple[int, tuple]]) -> dict[int, str]:
        """Pass a burst of events through the choices' filters: {choice index: text released}."""
        released: dict[int, str] = {}
        for index, event in events:
            choice = self.choices[index]
            if event[0] == "delta":
                out = choice.filter.feed(event[1])
            elif event[0] == "logprob":  # (token, logprob, top) and where its text ends in the output
                choice.filter.note(event[1:4], event[4])
                continue
            elif event[0] == "echo":  # the prompt's records, and where each token's text ends in it
                for record, end in zip(event[1], event[2], strict=True):
                    choice.filter.note(record, end, echoed=True)
                choice.scored = len(event[1])
                continue
            elif event[0] == "error":  # the cause is in the server's log, never in a response
                raise Refused(500, "generation failed", code="generation_failed")
            elif event[0] == "unavailable":  # (message, seconds to wait): the engine is replaced or full
                raise Refused(503, f"model: {self.served.name!r} {event[1]}; retry", retry_after=event[2],
                              code="unavailable")
            else:
                _, finish, choice.prompt_tokens, choice.tokens, choice.batch = event
                out = choice.filter.finish()
                verdict = choice.filter.verdict
                choice.finish = "content_filter" if verdict is not None and verdict.action != "flag" else finish
            released[index] = released.get(index, "") + out
        for index in released:
            choice = self.choices[index]
            choice.logprobs += choice.filter.records()
            if choice.filter.refused:  # what a refused output's records would say, unsent, goes with its text
                del choice.logprobs[choice.shown_logprobs:]
        return {i: out for i, out in released.items() if out or self.choices[i].finish is not None}

    def cancel(self) -> None:
        for choice in self.choices:
            if choice.finish is None and choice.handle is not None:
                choice.handle.cancelled = True
        self.settle()

    def settle(self) -> None:
        """Refund, once, what was reserved and not generated, and give back the queue places: a finished choice's
        tokens, and what a cancelled one had generated when it stopped, are charged (one never queued is not)."""
        if self.guard is None:
            return
        used = sum(c.scored + (c.tokens if c.finish is not None else c.handle.generated if c.handle is not None
                               else 0) for c in self.choices)
        self.guard.refund(self.identity, self.reserved - used)
        self.guard.release(self.identity, self.served.name, len(self.choices))
        self.guard = None


@dataclass
class Ask:
    """One text request in the family's terms: its prompts, the family's sampling options (typed, the model's
    own updated by the request's: `max_new_tokens` among them), and what the route adds."""

    prompts: list[str | list[int]]
    options: dict[str, Any]
    length_given: str | None = None  # the request field that set max_new_tokens; None: fitted to the context
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    echo: bool = False  # the prompt's own tokens scored too
    stops: tuple[str, ...] = ()  # a chat template's own, beside the request's


def start(server: Server, served: Any, identity: str, ask: Ask) -> Generation:
    """Check the request against the server's limits and the model's context, reserve its tokens, then queue n
    choices per prompt; Refused names the field at fault."""
    limits = server.config.limits
    n = len(ask.prompts) * ask.n
    if n > limits.max_n:
        raise Refused(400, f"n: {n} choices asked for ({len(ask.prompts)} prompts x n={ask.n}); the limit is "
                      f"{limits.max_n}", code="invalid_value")
    if ask.logprobs is not None and not served.gives_logprobs:
        raise Refused(400, f"logprobs: a {served.family} model does not return them", code="invalid_value")
    for prompt in ask.prompts:
        if len(prompt) > limits.max_prompt_chars:
            raise Refused(400, f"prompt: {len(prompt)} characters, more than the limit of {limits.max_prompt_chars}",
                          code="invalid_value")
    loop = asyncio.get_running_loop()
    planned = [_fitted(served, prompt, ask, limits.max_tokens) for prompt in ask.prompts]
    filters, token_text = server.config.filters, getattr(served, "token_text", None)
    texts = [served.prompt_text(p) if filters or ask.echo else "" for p in ask.prompts]
    gen = Generation(served, [Choice(i, OutputFilter(filters, served.model.copies, texts[i // ask.n], token_text,
                                                     echo=texts[i // ask.n] if ask.echo else ""))
                              for i in range(n)], filtering=bool(filters))
    scored = ask.echo and ask.logprobs is not None  # the prompt's tokens are scored: charged as generated ones
    gen.reserved = sum(served.charge(planned[i // ask.n][1]) + scored * len(planned[i // ask.n][0])
                       for i in range(n))
    server.guard.take_share(identity, served.name, n, server.config.max_queue)
    try:
        if served.depth + n > server.config.max_queue:
            raise Refused(503, "server busy: the queue is full", retry_after=1.0, code="overloaded")
        server.guard.reserve(identity, gen.reserved)  # the most it may generate, refunded as far as unused
    except BaseException:
        server.guard.release(identity, served.name, n)
        raise
    gen.guard, gen.identity = server.guard, identity
    try:
        for i, choice in enumerate(gen.choices):
            ids, options = planned[i // ask.n]
            seed = None if ask.seed is None else ask.seed + i % ask.n
            choice.handle = served.generate(ids, ask.prompts[i // ask.n], options, seed, ask,
                                            _emitter(loop, gen.events, i))
    except BaseException as err:
        gen.cancel()  # what was queued leaves; its share and the tokens it did not draw go back
        if isinstance(err, EngineStopped):
            raise Refused(503, f"model: {served.name!r} {err}; retry", retry_after=err.retry_after,
                          code="unavailable") from None
        if isinstance(err, queue.Full | QueueFull):
            raise Refused(503, "server busy: the queue is full", retry_after=1.0, code="overloaded") from None
        raise
    return gen


def _fitted(served: Any, prompt: str | list[int], ask: Ask, most: int) -> tuple[list[int], dict[str, Any]]:
    """The prompt's ids and the options it runs with: max_new_tokens within the model's context and the server's
    `most` (an error when the request set it past them, cut to fit when it came from the model's own options)."""
    wanted, field = ask.options["max_new_tokens"], ask.length_given
    try:
        ids = served.encode(prompt)
    except GenlabError as err:
        raise Refused(400, str(err), code="invalid_value") from None
    room = most
    if served.context is not None:
        room = served.context - len(ids)
        if room < 1:
            raise Refused(400, f"prompt: {len(ids)} tokens, and the model's context is {served.context}",
                          code="context_length_exceeded")
        if field is not None and wanted > room:
            raise Refused(400, f"{field}: {wanted} new tokens after a prompt of {len(ids)} exceed the model's "
                          f"context of {served.context}; at most {room}", code="context_length_exceeded")
    return ids, {**ask.options, "max_new_tokens": min(wanted, room, most)}


class _Dispatcher:
    """Events from worker threads into one event loop, with one wake-up per burst rather than per token:
    a decoding step emits a token for every sequence in the batch, and each wake-up costs a system call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.pending, self.scheduled = loop, collections.deque(), False

    def put(self, events: asyncio.Queue, item: tuple) -> None:  # any thread
        self.pending.append((events, item))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:  # the loop's thread
        self.scheduled = False
        while self.pending:
            events, item = self.pending.popleft()
            events.put_nowait(item)


_dispatchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _emitter(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int):
    dispatcher = _dispatchers.get(loop) or _dispatchers.setdefault(loop, _Dispatcher(loop))

    def emit(event: tuple) -> None:
        dispatcher.put(events, (index, event))
    return emit


def usage(gen: Generation, per_prompt: int) -> dict:
    prompt = sum(c.prompt_tokens for c in gen.choices[::per_prompt])
    completion = sum(c.tokens for c in gen.choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def account(server: Server, request: Request, identity: str, gen: Generation) -> None:
    """Charge the tokens, count them and the filtered outputs, and note them for the log line."""
    tokens = sum(c.tokens for c in gen.choices)
    gen.settle()
    m, name = server.metrics, gen.served.name
    m.tokens.labels(name).inc(tokens)
    for c in gen.choices:
        if c.filter.verdict is not None:
            m.filtered.labels(name, c.filter.verdict.name, c.filter.verdict.action).inc()
    request.state.tokens = tokens
    request.state.batch_size = max((c.batch for c in gen.choices), default=0)


async def collect(gen: Generation, request: Request) -> None:
    """Wait for every choice to finish; a client that goes away first cancels them."""
    async def read() -> None:
        async for _ in gen.deltas():
            pass

    try:
        await unless_gone(request, read())
    except BaseException:
        gen.cancel()
        raise


def sse(data: dict | str, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def refusal(choice: Choice) -> dict | None:
    v = choice.filter.verdict
    return {"filter": v.name, "action": v.action, "reason": v.reason} if v else None


def final_text(choice: Choice) -> str:
    v = choice.filter.verdict
    return "" if v is not None and v.action == "refuse" else choice.text




def new_records(c: Choice) -> list:
    """The logprob records of a choice not yet sent in its stream."""
    new, c.shown_logprobs = c.logprobs[c.shown_logprobs:], len(c.logprobs)
    return new


def stream(server: Server, request: Request, identity: str, gen: Generation, head: dict, chunk, usage_asked: bool,
           n: int, opening: list[dict] = ()) -> StreamingResponse:
    """Server-sent events: `opening`, a chunk per delta, usage if asked for, then `data: [DONE]`."""
    async def events() -> AsyncIterator[str]:
        try:
            for event in opening:
                yield sse(event)
            async for c, out in gen.deltas():
                yield sse({**head, "choices": [chunk(c, out)]})
            account(server, request, identity, gen)
            if usage_asked:
                yield sse({**head, "choices": [], "usage": usage(gen, n)})
        except Refused as err:
            yield sse({"error": {"message": err.message, "type": "server_error", "code": err.code}})
        finally:
            gen.cancel()
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")
