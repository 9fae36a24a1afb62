"""Text routes in OpenAI's shapes: /v1/completions, /v1/chat/completions and /v1/responses, streamed or not.

Each choice is one sequence in the model's worker; its events come back to the event loop through
an asyncio queue. A stream is server-sent events ending with `data: [DONE]` (the Responses API
ends with its `response.completed` event instead, as OpenAI's does). A client that goes away
cancels its sequences, which leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import json
import queue
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from genlab.errors import GenlabError
from genlab.serving.engine import TextParams
from genlab.serving.engine_process import EngineStopped
from genlab.serving.guard import Guard, OutputFilter, Refused
from genlab.serving.logprobs import chat_logprobs, completion_logprobs
from genlab.serving.models import ServedLM, ServedSeq2Seq
from genlab.serving.schemas import ChatRequest, CompletionRequest, ResponsesRequest, Sampling
from genlab.serving.server import Server, authorize
from genlab.serving.workers import QueueFull

router = APIRouter(tags=["text"])
TEXT_KINDS = ("text", "text2text")


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
    logprobs: list = field(default_factory=list)  # (token, logprob, top) per drawn token, when asked for
    prompt_logprobs: list = field(default_factory=list)  # the prompt's own tokens scored (echo)
    shown_logprobs: int = 0  # records already sent in a stream


@dataclass
class Generation:
    """The choices of one request, and their events as they arrive."""

    served: ServedLM | ServedSeq2Seq
    choices: list[Choice]
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    guard: Guard | None = None  # where its reserved tokens go back to
    identity: str = ""
    reserved: int = 0  # tokens taken from the identity's budget at admission

    async def deltas(self) -> AsyncIterator[tuple[Choice, str]]:
        """(choice, released text) as text arrives; (choice, "") once more when a choice finishes.
        Events that arrived together are merged per choice, so a client that lags gets fewer, larger chunks."""
        open_ = len(self.choices)
        while open_:
            events = [await self.events.get()]
            while not self.events.empty():
                events.append(self.events.get_nowait())
            released: dict[int, str] = {}
            for index, event in events:
                choice = self.choices[index]
                if event[0] == "delta":
                    out = choice.filter.feed(event[1])
                elif event[0] == "logprob":
                    choice.logprobs.append(event[1:])
                    continue
                elif event[0] == "prompt":
                    choice.prompt_logprobs = event[1]
                    continue
                elif event[0] == "error":
                    raise Refused(500, event[1], code="generation_failed")
                else:
                    _, choice.finish, choice.prompt_tokens, choice.tokens, choice.batch = event
                    out = choice.filter.finish()
                    open_ -= 1
                released[index] = released.get(index, "") + out
            for index, out in released.items():
                choice = self.choices[index]
                if choice.filter.verdict is not None and choice.filter.verdict.action != "flag" \
                        and choice.finish is not None:
                    choice.finish = "content_filter"
                if out and choice.first_at is None:
                    choice.first_at = time.perf_counter()
                choice.text += out
                if out or choice.finish is not None:
                    yield choice, out

    def cancel(self) -> None:
        for choice in self.choices:
            if choice.finish is None and choice.handle is not None:
                choice.handle.cancelled = True
        self.settle()

    def settle(self) -> None:
        """Refund, once, what was reserved and not generated: a finished choice's tokens, and what a cancelled
        one had generated when it stopped, are charged (a choice with no count of its own is charged whole)."""
        if self.guard is None:
            return
        each = self.reserved // max(1, len(self.choices))
        used = sum(c.tokens if c.finish is not None else c.handle.generated if c.handle is not None else each
                   for c in self.choices)
        self.guard.refund(self.identity, self.reserved - used)
        self.guard = None


def start(server: Server, served: ServedLM | ServedSeq2Seq, identity: str, prompts: list[str], body: Sampling,
          max_tokens: int | None, extra_stops: tuple[str, ...] = ()) -> Generation:
    """Validate against the model's limits, then queue n choices per prompt; Refused names the field at fault."""
    limits = server.config.limits
    n = len(prompts) * body.n
    if n > limits.max_n:
        raise Refused(400, f"n: {n} choices asked for ({len(prompts)} prompts x n={body.n}); the limit is "
                      f"{limits.max_n}", code="invalid_value")
    if body.top_logprobs_asked() is not None and isinstance(served, ServedSeq2Seq):
        raise Refused(400, "logprobs: a seq2seq model does not return them", code="invalid_value")
    for prompt in prompts:
        if len(prompt) > limits.max_prompt_chars:
            raise Refused(400, f"prompt: {len(prompt)} characters, more than the limit of {limits.max_prompt_chars}",
                          code="invalid_value")
    loop = asyncio.get_running_loop()
    gen = Generation(served, [Choice(i, OutputFilter(server.config.filters, served.model.copies)) for i in range(n)])
    params = [_params(served, p, body, max_tokens, extra_stops, limits.max_tokens) for p in prompts]
    if served.depth + n > server.config.max_queue:
        raise Refused(503, "server busy: the queue is full", retry_after=1.0, code="overloaded")
    gen.reserved = sum(params[i // body.n][1].max_tokens for i in range(n))
    server.guard.reserve(identity, gen.reserved)  # the most it may generate, refunded as far as unused
    gen.guard, gen.identity = server.guard, identity
    try:
        for i, choice in enumerate(gen.choices):
            ids, p = params[i // body.n]
            seed = None if body.seed is None else body.seed + i % body.n
            emit = _emitter(loop, gen.events, i)
            if isinstance(served, ServedLM):
                choice.handle = served.engine.submit(ids, p, seed, emit)
            else:
                _seq2seq(served, prompts[i // body.n], p, seed, emit)
    except (queue.Full, QueueFull, EngineStopped) as err:
        server.guard.refund(identity, gen.reserved)  # nothing of it ran
        gen.guard = None
        gen.cancel()
        if isinstance(err, EngineStopped):
            raise Refused(503, f"model: {served.name!r} cannot generate: {err}; the server is not ready",
                          code="unavailable") from None
        raise Refused(503, "server busy: the queue is full", retry_after=1.0, code="overloaded") from None
    return gen


def _params(served, prompt: str, body: Sampling, max_tokens: int | None, stops: tuple[str, ...], most: int
            ) -> tuple[list[int], TextParams]:
    """The prompt's ids and its settings, `max_tokens` within the model's context and the server's `most`."""
    if max_tokens is not None and max_tokens > most:
        raise Refused(400, f"max_tokens: {max_tokens} new tokens; the limit is {most}", code="invalid_value")
    try:
        ids = served.encode(prompt)
    except GenlabError as err:
        raise Refused(400, str(err), code="invalid_value") from None
    context = served.context
    if context is not None:
        room = context - len(ids)
        if room < 1:
            raise Refused(400, f"prompt: {len(ids)} tokens, and the model's context is {context}",
                          code="context_length_exceeded")
        if max_tokens is not None and max_tokens > room:
            raise Refused(400, f"max_tokens: {max_tokens} new tokens after a prompt of {len(ids)} exceed the model's "
                          f"context of {context}; at most {room}", code="context_length_exceeded")
        max_tokens = min(room if max_tokens is None else max_tokens, most)
    max_tokens = 64 if max_tokens is None else max_tokens
    params = TextParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                        top_k=body.top_k, repetition_penalty=body.repetition_penalty,
                        stop=(*body.stop, *stops), min_tokens=min(body.min_tokens, max_tokens),
                        frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
                        logprobs=body.top_logprobs_asked(), echo=body.echoes())
    return ids, params


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


def _seq2seq(served: ServedSeq2Seq, source: str, p: TextParams, seed: int | None, emit) -> None:
    """A seq2seq choice through the batching worker; its whole text arrives as one delta."""
    key = tuple(sorted({"max_new_tokens": p.max_tokens, "temperature": p.temperature,
                        **({"top_p": p.top_p} if p.temperature else {}),
                        **({"top_k": p.top_k} if p.temperature and p.top_k else {})}.items()))
    future = served.submit(key, [(source, seed or 0)])

    def done(f) -> None:
        if f.exception() is not None:
            emit(("error", f"generation failed: {f.exception()}"))
            return
        text = f.result()[0]
        cuts = [text.find(s) for s in p.stop if s in text]
        text = text[:min(cuts)] if cuts else text
        tokens = len(served.model.tokenizer(text, add_special_tokens=False)["input_ids"])
        emit(("delta", text))
        emit(("done", "stop" if cuts or tokens < p.max_tokens else "length", len(served.encode(source)), tokens,
              getattr(f, "batch_size", 1)))
    future.add_done_callback(done)


def _usage(gen: Generation, per_prompt: int) -> dict:
    prompt = sum(c.prompt_tokens for c in gen.choices[::per_prompt])
    completion = sum(c.tokens for c in gen.choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _account(server: Server, request: Request, identity: str, gen: Generation) -> None:
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


async def _collect(gen: Generation) -> None:
    try:
        async for _ in gen.deltas():
            pass
    except BaseException:
        gen.cancel()
        raise


def _sse(data: dict | str, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def _refusal(choice: Choice) -> dict | None:
    v = choice.filter.verdict
    return {"filter": v.name, "action": v.action, "reason": v.reason} if v else None


def _final_text(choice: Choice) -> str:
    v = choice.filter.verdict
    return "" if v is not None and v.action == "refuse" else choice.text


# --- /v1/completions -------------------------------------------------------------------------------------

@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, identity: str = Depends(authorize)):
    """Text completion, in OpenAI's shape; `stream: true` sends server-sent events ending with [DONE]."""
    server: Server = request.app.state.server
    served = server.model(body.model, TEXT_KINDS, "/v1/completions")
    request.state.model = served.name
    gen = start(server, served, identity, body.prompts, body, body.max_tokens)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": served.name}
    prompts = [p if isinstance(p, str) else served.tokenizer.decode(p) for p in body.prompts]
    logprobs = (lambda records: completion_logprobs(served.token_text, records)) \
        if body.logprobs is not None else (lambda records: None)
    if not body.stream:
        await _collect(gen)
        _account(server, request, identity, gen)
        return {**head, "choices": [
            {"index": c.index, "text": (prompts[c.index // body.n] if body.echo else "") + _final_text(c),
             "finish_reason": c.finish, "logprobs": logprobs([*c.prompt_logprobs, *c.logprobs]),
             **({"genlab_filter": _refusal(c)} if _refusal(c) else {})} for c in gen.choices],
            "usage": _usage(gen, body.n)}

    def chunk(c: Choice, out: str) -> dict:
        choice = {"index": c.index, "text": out, "finish_reason": c.finish, "logprobs": logprobs(_new_records(c))}
        return {**choice, "genlab_filter": _refusal(c)} if c.finish == "content_filter" else choice

    return _stream(server, request, identity, gen, head, chunk, body)


# --- /v1/chat/completions -------------------------------------------------------------------------------

@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, identity: str = Depends(authorize)):
    """Chat completion: the messages become a prompt by the tokenizer's chat template, or genlab's plain one."""
    server: Server = request.app.state.server
    served = server.model(body.model, TEXT_KINDS, "/v1/chat/completions")
    request.state.model = served.name
    prompt, stops = _chat_prompt(served, [m.text() for m in body.messages])
    gen = start(server, served, identity, [prompt], body, body.limit, stops)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "chat.completion", "created": created, "model": served.name}
    logprobs = ((lambda records: chat_logprobs(served.token_text, served.token_bytes, records)) if body.logprobs
                else (lambda r: None))
    if not body.stream:
        await _collect(gen)
        _account(server, request, identity, gen)
        return {**head, "choices": [
            {"index": c.index, "message": {"role": "assistant", "content": _final_text(c),
                                           **({"refusal": _refusal(c)["reason"]} if _refusal(c) else {})},
             "finish_reason": c.finish, "logprobs": logprobs(c.logprobs)} for c in gen.choices],
            "usage": _usage(gen, body.n)}

    head["object"] = "chat.completion.chunk"
    roles = [{**head, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None}]} for c in gen.choices]  # the role first, as OpenAI does

    def chunk(c: Choice, out: str) -> dict:
        return {"index": c.index, "delta": {"content": out} if out else {}, "finish_reason": c.finish,
                "logprobs": logprobs(_new_records(c))}

    return _stream(server, request, identity, gen, head, chunk, body, roles)


def _stream(server: Server, request: Request, identity: str, gen: Generation, head: dict, chunk, body: Sampling,
            opening: list[dict] = ()) -> StreamingResponse:
    """Server-sent events: `opening`, a chunk per delta, usage if asked for, then `data: [DONE]`."""
    async def events() -> AsyncIterator[str]:
        try:
            for event in opening:
                yield _sse(event)
            async for c, out in gen.deltas():
                yield _sse({**head, "choices": [chunk(c, out)]})
            _account(server, request, identity, gen)
            if body.stream_options and body.stream_options.include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(gen, body.n)})
        except Refused as err:
            yield _sse({"error": {"message": err.message, "type": "server_error", "code": err.code}})
        finally:
            gen.cancel()
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def _new_records(c: Choice) -> list:
    """The logprob records of a choice not yet sent in its stream."""
    new, c.shown_logprobs = c.logprobs[c.shown_logprobs:], len(c.logprobs)
    return new


def _chat_prompt(served, messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
    if isinstance(served, ServedSeq2Seq):  # an encoder-decoder answers the last user message
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise Refused(400, "messages: a seq2seq model needs a user message to transform", code="invalid_value")
        return users[-1], ()
    return served.chat_prompt(messages)


# --- /v1/responses ----------------------------------------------------------------------------------------

@router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request, identity: str = Depends(authorize)):
    """OpenAI's Responses API for plain text input and output, streamed as its typed events or not."""
    server: Server = request.app.state.server
    served = server.model(body.model, TEXT_KINDS, "/v1/responses")
    request.state.model = served.name
    messages = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else \
        [m.text() for m in body.input]
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    prompt, stops = _chat_prompt(served, messages)
    sampling = Sampling(model=body.model, temperature=body.temperature, top_p=body.top_p, seed=body.seed)
    gen = start(server, served, identity, [prompt], sampling, body.max_output_tokens, stops)
    rid, item = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    created = int(time.time())

    def response(status: str) -> dict:
        c = gen.choices[0]
        done = status == "completed"
        content = [{"type": "output_text", "text": _final_text(c), "annotations": []}] if done else []
        output = [{"id": item, "type": "message", "status": status, "role": "assistant", "content": content}]
        usage = _usage(gen, 1)
        return {"id": rid, "object": "response", "created_at": created, "model": served.name, "status": status,
                "output": output if done else [], "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
                "temperature": body.temperature, "top_p": body.top_p, "max_output_tokens": body.max_output_tokens,
                "instructions": body.instructions, "error": None, "incomplete_details": None,
                "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                          "total_tokens": usage["total_tokens"],
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}} if done else None}

    if not body.stream:
        await _collect(gen)
        _account(server, request, identity, gen)
        return response("completed")

    async def events() -> AsyncIterator[str]:
        seq = iter(range(1 << 30))
        where = {"item_id": item, "output_index": 0, "content_index": 0}

        def event(kind: str, **data) -> str:
            return _sse({"type": kind, "sequence_number": next(seq), **data}, kind)
        try:
            yield event("response.created", response=response("in_progress"))
            yield event("response.output_item.added", output_index=0,
                        item={"id": item, "type": "message", "status": "in_progress", "role": "assistant",
                              "content": []})
            yield event("response.content_part.added", item_id=item, output_index=0, content_index=0,
                        part={"type": "output_text", "text": "", "annotations": []})
            async for _, out in gen.deltas():
                if out:
                    yield event("response.output_text.delta", **where, delta=out, logprobs=[])
            _account(server, request, identity, gen)
            final = response("completed")
            text = final["output"][0]["content"][0]["text"]
            yield event("response.output_text.done", **where, text=text, logprobs=[])
            yield event("response.content_part.done", **where, part=final["output"][0]["content"][0])
            yield event("response.output_item.done", output_index=0, item=final["output"][0])
            yield event("response.completed", response=final)
        except Refused as err:
            yield event("error", message=err.message, code=err.code, param=None)
        finally:
            gen.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")
