"""Continue text (causal language models): `genlab sample --prompt`, OpenAI's `/v1/completions`,
`/v1/chat/completions` and `/v1/responses` (streamed or not, through continuous batching), and `genlab evaluate`'s
bits per character, perplexity and diversity (evaluation/text.py). The routes answer every text served kind: an
encoder-decoder's (capabilities/text2text.py) too.

A request's sampling options are the family's own (its `Sampling` class): OpenAI's fields under the family's names
(`max_tokens` is `max_new_tokens`; vLLM's `min_tokens` is `min_new_tokens`), any other option of the family's by its
own name, over the model's own options (the run's eval.sampling, kept in its folder).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Literal, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from genlab.capabilities import Capability
from genlab.errors import GenlabError
from genlab.evaluation.figures import Figure
from genlab.serving.generation import (
    Ask,
    Choice,
    Generation,
    account,
    collect,
    final_text,
    new_records,
    refusal,
    sse,
    start,
    stream,
    usage,
)
from genlab.serving.guard import Refused
from genlab.serving.schemas import ModelRequest
from genlab.serving.served import Served
from genlab.serving.server import Server, authorize, served_for


class TextModel(Protocol):
    """What every text family has: its tokenizer, its copy index of the training text, an answer per prompt (what
    the text audit asks), and each text's log-likelihood."""

    tokenizer: Any
    copies: Any  # the training text's window hashes (responsible/memorization.py), or None
    sampling: dict[str, Any]

    def respond(self, prompts: list[str], *, generator: Any = None, **options: Any) -> list[str]: ...
    def log_likelihood(self, texts: list[str]) -> list[float]: ...


class LanguageModel(TextModel, Protocol):
    """A causal LM: the transformers model that the serving engine decodes, and its context."""

    lm: Any
    context: int


# --- request bodies (OpenAI's shapes) ------------------------------------------------------------------------

# the names a request may give the length by, weakest first: when several are sent, the last one sent wins
LENGTHS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens")
OPTION_NAMES = {**dict.fromkeys(LENGTHS, "max_new_tokens"), "min_tokens": "min_new_tokens"}
SAMPLING_FIELDS = (*LENGTHS[:3], "min_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                   "frequency_penalty", "presence_penalty", "stop")
# what a field means when it changes nothing: accepted by a family that has no such option
NEUTRAL = {"frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0, "min_new_tokens": 0,
           "top_k": None, "top_p": 1.0, "stop": []}


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextRequest(ModelRequest):
    """What completions and chat share. The sampling fields are typed here and bounded by the family's options;
    any other field that names one of the family's options (num_beams...) is taken as that option."""

    model_config = ConfigDict(extra="allow")
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # genlab: 0 is no cut
    repetition_penalty: float | None = None  # genlab
    min_tokens: int | None = None  # vLLM's: no end-of-text before this many tokens
    frequency_penalty: float | None = None  # OpenAI's: by a token's count in the output so far
    presence_penalty: float | None = None  # OpenAI's: once a token is in the output
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    logit_bias: dict | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> TextRequest:
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        return self

    def logprobs_asked(self) -> int | None:
        """How many alternatives to return beside each token's logprob; None: no logprobs."""
        return None

    @property
    def usage_asked(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(TextRequest):
    # text, texts, or token ids (one list, or a list per prompt), as OpenAI's API takes them
    prompt: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)  # 0 with echo: score the prompt alone
    echo: bool = False  # the prompt comes back before the completion (and its tokens' logprobs, with logprobs)
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion_only(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.echo and self.stream:
            raise ValueError("echo is answered whole: not with stream")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    def logprobs_asked(self) -> int | None:
        return self.logprobs


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "input_text", "output_text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(TextRequest):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class ResponsesRequest(ModelRequest):
    input: str | list[Message]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # genlab
    stream: bool = False

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: str | list[Message]) -> str | list[Message]:
        if not value:
            raise ValueError("input is empty")
        return value


# --- served kinds ------------------------------------------------------------------------------------------


class ServedText(Served):
    """What the text routes ask of a text model: its prompt's ids, its context, a choice queued, and a chat turned
    into a prompt."""

    gives_logprobs: ClassVar[bool] = False

    def check_filters(self) -> None:
        from genlab.responsible.memorization import INDEX_FILE

        if any(f.type == "memorized" for f in self.config.filters) and self.model.copies is None:
            raise GenlabError(f"{self.folder}: the memorized filter needs the training-text index that `genlab fit` "
                              f"keeps in a text model's folder ({INDEX_FILE}), and this one has none: fit it again")

    def text_options(self, body: BaseModel) -> tuple[dict[str, Any], str | None]:
        """The family's options for a request: what the client set of OpenAI's sampling fields, under the family's
        names, and of the family's own options (extra fields), over the model's own; and the field that set the
        length, if one did (else the length is the model's, fitted to its context)."""
        fields, extra = self.model.Sampling.model_fields, body.model_extra or {}
        sent = [(f, getattr(body, f)) for f in SAMPLING_FIELDS if f in body.model_fields_set]  # in a fixed order
        sent += [(f, extra[f]) for f in sorted(extra) if f in fields]
        given, names, length = {}, {}, None
        for field, value in sent:
            option = OPTION_NAMES.get(field, field)
            if option == "top_k" and value == 0:
                value = None  # the engine's "no cut" is the family's None
            elif value is None:
                continue  # sent as null: not given
            if option == "stop":
                value = [value] if isinstance(value, str) else list(value)
            if option not in fields and NEUTRAL.get(option, ...) == value:
                continue  # an OpenAI field at the value that changes nothing, for a family without it
            given[option], names[field] = value, option
            length = field if option == "max_new_tokens" else length
        names = {field: option for field, option in names.items() if option != "max_new_tokens" or field == length}
        most = self.config.limits.max_tokens  # the server's bound speaks first: it is the one a client can meet
        if length is not None and isinstance(given["max_new_tokens"], int) and given["max_new_tokens"] > most:
            raise Refused(400, f"{length}: {given['max_new_tokens']} new tokens; the limit is {most}",
                          code="invalid_value")
        return self.options(given, names), length

    def encode(self, prompt: str | list[int]) -> list[int]:
        raise NotImplementedError

    def prompt_text(self, prompt: str | list[int]) -> str:
        """A prompt as text (token ids decoded): what echo sends back and the filters read."""
        return prompt if isinstance(prompt, str) else self.model.tokenizer.decode(prompt)

    def generate(self, ids: list[int], prompt: str | list[int], options: dict[str, Any], seed: int | None, ask: Ask,
                 emit: Callable[[tuple], None]) -> Any:
        """Queue one choice; its events go to `emit`. Returns a handle whose `cancelled` stops it, or None."""
        raise NotImplementedError

    def charge(self, options: dict[str, Any]) -> int:
        """Tokens one choice may cost with these options: what the guard reserves before it runs."""
        return options["max_new_tokens"]

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
        raise NotImplementedError


class ServedLM(ServedText):
    """A causal LM through continuous batching, in a process of its own unless the serve config says thread."""

    kind = "text"
    gives_logprobs = True

    def start_worker(self, on_batch: Callable[[int], None] | None) -> Any:
        from genlab.serving.engine import TextEngine
        from genlab.serving.engine_process import FAMILY_LOADER, RemoteEngine

        self.tokenizer, self.context = self.model.tokenizer, self.model.context
        c = self.config
        options = {"max_batch_size": c.max_batch_size, "max_wait_ms": c.max_wait_ms, "max_queue": c.max_queue,
                   "on_step": on_batch}
        if c.engine == "thread" or self.folder is None:
            return TextEngine(self.model.lm, self.tokenizer, **options)
        # a family whose folders transformers reads (merged, or an adapter) is read by transformers alone: the child
        # is ready without importing the training stack, about 3 s sooner; any other by its family's loader
        hub = getattr(self.model, "hub_library", None) == "transformers"
        engine = RemoteEngine(self.folder, load="genlab.models.hf:causal_lm_folder" if hub else FAMILY_LOADER,
                              **options)
        self.model.lm.to("meta")  # the weights live in the engine's process; this copy is never used
        return engine

    @property
    def engine(self) -> Any:
        return self.worker

    def generate(self, ids: list[int], prompt: str | list[int], options: dict[str, Any], seed: int | None, ask: Ask,
                 emit: Callable[[tuple], None]) -> Any:
        from genlab.serving.engine import TextParams

        most = options["max_new_tokens"]
        params = TextParams(max_tokens=most, temperature=options["temperature"], top_p=options["top_p"] or 1.0,
                            top_k=options["top_k"] or 0, repetition_penalty=options["repetition_penalty"],
                            stop=(*options["stop"], *ask.stops), min_tokens=min(options["min_new_tokens"], most),
                            frequency_penalty=options["frequency_penalty"],
                            presence_penalty=options["presence_penalty"], logprobs=ask.logprobs, echo=ask.echo)
        return self.engine.submit(ids, params, seed, emit)

    def encode(self, prompt: str | list[int]) -> list[int]:
        """A prompt's token ids: text is tokenized; ids are checked against the vocabulary (they reach a tensor)."""
        if isinstance(prompt, list):
            vocabulary = len(self.tokenizer)
            bad = next((t for t in prompt if not 0 <= t < vocabulary), None)
            if bad is not None or not prompt:
                raise GenlabError(f"prompt: {'no token ids' if not prompt else f'token id {bad}'}; the model's "
                                  f"vocabulary holds ids 0 to {vocabulary - 1}")
            return list(prompt)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        return ids or [self.tokenizer.eos_token_id]  # an empty prompt starts a new document

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def token_bytes(self, token: int) -> bytes:
        """The token's own bytes: a byte-level BPE token may hold part of a character, which its text cannot show."""
        from tokenizers import decoders

        if isinstance(getattr(self.tokenizer.backend_tokenizer, "decoder", None), decoders.ByteLevel):
            return bytes(_BYTE_OF[c] for c in self.tokenizer.convert_ids_to_tokens(token))
        return self.token_text(token).encode()

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
        """The prompt for chat messages, and the stop strings its template implies.

        With the tokenizer's chat template when it has one; otherwise the plain template
        "System: ...\\nUser: ...\\nAssistant:" and generation stops where the model starts a new "User:" turn."""
        if getattr(self.tokenizer, "chat_template", None):
            from jinja2 import TemplateError

            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except TemplateError as err:  # the template's own rule (roles that alternate, say), in its words
                raise Refused(400, f"messages: the model's chat template refuses them: {err}",
                              code="invalid_value") from None
            return text, ()
        turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
        return f"{turns}Assistant:", ("\nUser:",)


def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet read backwards: printable bytes stand for themselves, the rest for 256 + n."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(moved)}}


_BYTE_OF = _byte_of_char()


# --- routes ----------------------------------------------------------------------------------------------------

router = APIRouter(tags=["text"])


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, identity: str = Depends(authorize)):
    """Text completion, in OpenAI's shape; `stream: true` sends server-sent events ending with [DONE]."""
    server, served = served_for(request, body.model, ServedText, "/v1/completions")
    options, length = served.text_options(body)
    ask = Ask(body.prompts, options, length, body.n, body.seed, body.logprobs_asked(), body.echo)
    gen = start(server, served, identity, ask)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": served.name}

    def logprobs(records: list) -> dict | None:
        from genlab.serving.logprobs import completion_logprobs

        return completion_logprobs(served.token_text, records) if body.logprobs is not None else None

    if not body.stream:
        await collect(gen, request)
        account(server, request, identity, gen)
        return {**head, "choices": [  # an echoed prompt is the start of a choice's text, filtered with it
            {"index": c.index, "text": final_text(c), "finish_reason": c.finish, "logprobs": logprobs(c.logprobs),
             **({"genlab_filter": refusal(c)} if refusal(c) else {})} for c in gen.choices],
            "usage": usage(gen, body.n)}

    def chunk(c: Choice, out: str) -> dict:
        choice = {"index": c.index, "text": out, "finish_reason": c.finish, "logprobs": logprobs(new_records(c))}
        return {**choice, "genlab_filter": refusal(c)} if c.finish == "content_filter" else choice

    return stream(server, request, identity, gen, head, chunk, body.usage_asked, body.n)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, identity: str = Depends(authorize)):
    """Chat completion: the messages become a prompt by the tokenizer's chat template, or genlab's plain one."""
    server, served = served_for(request, body.model, ServedText, "/v1/chat/completions")
    prompt, stops = served.chat_prompt([m.text() for m in body.messages])
    options, length = served.text_options(body)
    gen = start(server, served, identity, Ask([prompt], options, length, body.n, body.seed, body.logprobs_asked(),
                                              stops=stops))
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": served.name}

    def logprobs(records: list) -> dict | None:
        from genlab.serving.logprobs import chat_logprobs

        return chat_logprobs(served.token_text, served.token_bytes, records) if body.logprobs else None

    if not body.stream:
        await collect(gen, request)
        account(server, request, identity, gen)
        return {**head, "choices": [
            {"index": c.index, "message": {"role": "assistant", "content": final_text(c),
                                           **({"refusal": refusal(c)["reason"]} if refusal(c) else {})},
             "finish_reason": c.finish, "logprobs": logprobs(c.logprobs)} for c in gen.choices],
            "usage": usage(gen, body.n)}

    head["object"] = "chat.completion.chunk"
    roles = [{**head, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None}]} for c in gen.choices]  # the role first, as OpenAI does

    def chunk(c: Choice, out: str) -> dict:
        return {"index": c.index, "delta": {"content": out} if out else {}, "finish_reason": c.finish,
                "logprobs": logprobs(new_records(c))}

    return stream(server, request, identity, gen, head, chunk, body.usage_asked, body.n, roles)


@router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request, identity: str = Depends(authorize)):
    """OpenAI's Responses API for plain text input and output, streamed as its typed events or not."""
    server, served = served_for(request, body.model, ServedText, "/v1/responses")
    messages = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else \
        [m.text() for m in body.input]
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    prompt, stops = served.chat_prompt(messages)
    options, length = served.text_options(body)
    gen = start(server, served, identity, Ask([prompt], options, length, 1, body.seed, stops=stops))
    rid, item, created = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", int(time.time())

    def response(status: str) -> dict:
        done = status == "completed"
        content = [{"type": "output_text", "text": final_text(gen.choices[0]), "annotations": []}] if done else []
        output = [{"id": item, "type": "message", "status": status, "role": "assistant", "content": content}]
        counts = usage(gen, 1)
        return {"id": rid, "object": "response", "created_at": created, "model": served.name, "status": status,
                "output": output if done else [], "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
                "temperature": options.get("temperature"), "top_p": options.get("top_p"),
                "max_output_tokens": body.max_output_tokens, "instructions": body.instructions, "error": None,
                "incomplete_details": None,
                "usage": {"input_tokens": counts["prompt_tokens"], "output_tokens": counts["completion_tokens"],
                          "total_tokens": counts["total_tokens"], "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}} if done else None}

    if not body.stream:
        await collect(gen, request)
        account(server, request, identity, gen)
        return response("completed")
    return StreamingResponse(_response_events(server, request, identity, gen, item, response),
                             media_type="text/event-stream")


async def _response_events(server: Server, request: Request, identity: str, gen: Generation, item: str,
                           response: Callable[[str], dict]) -> AsyncIterator[str]:
    """The Responses API's typed events, ending with `response.completed` as OpenAI's stream does."""
    seq = iter(range(1 << 30))
    where = {"item_id": item, "output_index": 0, "content_index": 0}

    def event(kind: str, **data: Any) -> str:
        return sse({"type": kind, "sequence_number": next(seq), **data}, kind)
    try:
        yield event("response.created", response=response("in_progress"))
        yield event("response.output_item.added", output_index=0,
                    item={"id": item, "type": "message", "status": "in_progress", "role": "assistant", "content": []})
        yield event("response.content_part.added", item_id=item, output_index=0, content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []})
        async for _, out in gen.deltas():
            if out:
                yield event("response.output_text.delta", **where, delta=out, logprobs=[])
        account(server, request, identity, gen)
        final = response("completed")
        part = final["output"][0]["content"][0]
        yield event("response.output_text.done", **where, text=part["text"], logprobs=[])
        yield event("response.content_part.done", **where, part=part)
        yield event("response.output_item.done", output_index=0, item=final["output"][0])
        yield event("response.completed", response=final)
    except Refused as err:
        yield event("error", message=err.message, code=err.code, param=None)
    finally:
        gen.cancel()


ServedText.router = router

CAPABILITY = Capability(
    "text", LanguageModel, served=ServedLM, evaluator="genlab.evaluation.text:evaluate_text",
    headline=(Figure("bits_per_character", "bits/char", False), Figure("perplexity", "perplexity", False),
              Figure("distinct_2", "distinct-2", True)),
    audit="genlab.responsible.text_audit:audit_text", hub_task="text-generation")
