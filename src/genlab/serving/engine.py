"""Continuous batching for causal language models: requests join the running batch between decoding steps.

One worker thread owns the model. Each step it prefills the requests that arrived (left-padded
among themselves), writes their keys and values into free rows of the running batch's cache
(kv_cache.py), decodes one token for every sequence, and frees the rows of the sequences that
finished, so a short request never waits for a long one.
Every sequence keeps its own sampling settings and random generator, so a seeded request gives
the same text alone or in a crowd. Positions are per sequence and padding is masked, so left
padding changes nothing but the cache's width, which shrinks when sequences leave.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tokenizers.decoders import DecodeStream
from transformers import DynamicCache

from genlab.serving.kv_cache import SlotCache

log = logging.getLogger("genlab.serve")

# ("delta", text) | ("done", finish_reason, prompt_tokens, completion_tokens, largest batch) | ("error", message)
# | ("logprob", token id, logprob, {id: logprob} of the top alternatives, where the token's text ends in the output)
# | ("echo", [(token id, logprob or None, {id: logprob})], [where each token's text ends]): the prompt scored, first
Emit = Callable[[tuple], None]


@dataclass(frozen=True)
class TextParams:
    """One request's sampling settings."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no cut
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # the end-of-text token is not drawn before this many (fixed lengths for benchmarks)
    frequency_penalty: float = 0.0  # OpenAI's: minus this times a token's count in the output so far
    presence_penalty: float = 0.0  # OpenAI's: minus this once a token is in the output
    logprobs: int | None = None  # each drawn token's logprob and this many top alternatives (from the raw logits)
    echo: bool = False  # score the prompt's own tokens too (with `logprobs`)


@dataclass
class _Sequence:
    ids: list[int]
    params: TextParams
    generator: torch.Generator
    emit: Emit
    prompt_len: int = 0
    text: str = ""  # the generated text so far
    sent: int = 0  # characters of `text` already emitted
    prefix: int = 0  # incremental detokenization: tokens before `read` that are decoded for context only
    read: int = 0
    cancelled: bool = False
    finish: str | None = None
    batch: int = 0  # the largest batch it was decoded in
    stream: DecodeStream | None = None  # incremental detokenization, primed with the prompt

    @property
    def generated(self) -> int:
        return len(self.ids) - self.prompt_len


@dataclass
class _Batch:
    seqs: list[_Sequence] = field(default_factory=list)  # seqs[i] is the cache's row i
    cache: SlotCache = field(default_factory=SlotCache)


class TextEngine:
    """Continuous batching over one transformers causal LM; `submit` is safe to call from any thread."""

    def __init__(self, lm: torch.nn.Module, tokenizer, *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, on_step: Callable[[int], None] | None = None,
                 after_step: Callable[[], None] | None = None) -> None:
        self.lm, self.tokenizer = lm.eval(), tokenizer
        self.eos = tokenizer.eos_token_id
        self.backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's own (Rust) tokenizer
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.incoming: queue.Queue[_Sequence] = queue.Queue(maxsize=max_queue)
        self.on_step = on_step or (lambda size: None)
        self.after_step = after_step or (lambda: None)  # once per turn of the loop, its events all emitted
        self.batch = _Batch()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genlab-text-engine", daemon=True)
        self._thread.start()

    # --- the public side ---------------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: TextParams, seed: int | None, emit: Emit) -> _Sequence:
        """Queue one sequence; raises queue.Full when the queue is at its bound."""
        generator = torch.Generator()
        generator.manual_seed(seed) if seed is not None else generator.seed()
        seq = _Sequence(list(prompt_ids), params, generator, emit, prompt_len=len(prompt_ids))
        if self.backend is not None:
            seq.stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=False)
        seq.prefix = seq.read = len(prompt_ids)
        self.incoming.put_nowait(seq)
        return seq

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def healthy(self) -> bool:
        return self.alive

    @property
    def depth(self) -> int:
        """Sequences waiting or decoding."""
        return self.incoming.qsize() + len(self.batch.seqs)

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Finish what is queued and running (up to `drain_seconds`), then stop the worker."""
        end = time.monotonic() + drain_seconds
        while self.depth and time.monotonic() < end and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(timeout=5)

    # --- the worker ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            joiners = self._take()
            try:
                with torch.inference_mode():
                    if joiners:
                        self._prefill(joiners)
                    if self.batch.seqs:
                        self.on_step(len(self.batch.seqs))
                        self._decode_step()
            except Exception:  # a bug must not hang every client: fail the batch, keep serving
                log.exception("generation failed")  # the cause stays in the log: a client sees no internals
                for seq in [*self.batch.seqs, *joiners]:
                    if seq.finish is None:
                        seq.finish = "error"
                        seq.emit(("error", "generation failed"))
                self.batch = _Batch()
            self.after_step()

    def _take(self) -> list[_Sequence]:
        """Sequences to join this step: whatever has arrived (waiting up to max_wait_ms for company when idle)."""
        free = self.max_batch_size - len(self.batch.seqs)
        taken: list[_Sequence] = []
        if free <= 0:
            return taken
        if not self.batch.seqs:
            try:
                taken.append(self.incoming.get(timeout=0.05))
            except queue.Empty:
                return taken
            deadline = time.monotonic() + self.max_wait
            while len(taken) < free and (left := deadline - time.monotonic()) > 0:
                try:
                    taken.append(self.incoming.get(timeout=left))
                except queue.Empty:
                    break
        while len(taken) < free:
            try:
                taken.append(self.incoming.get_nowait())
            except queue.Empty:
                break
        return [s for s in taken if not s.cancelled]

    def _prefill(self, joiners: list[_Sequence]) -> None:
        """Prefill the joiners together, but each one that scores its prompt (echo) alone: its logits over the
        whole prompt are a vocabulary per token, which the others need not pay for."""
        scoring = [s for s in joiners if s.params.echo and s.params.logprobs is not None]
        plain = [s for s in joiners if s not in scoring]
        for group in [plain] * bool(plain) + [[s] for s in scoring]:
            self._prefill_group(group, scores=group[0] in scoring)

    def _prefill_group(self, joiners: list[_Sequence], scores: bool) -> None:
        width = max(len(s.ids) for s in joiners)
        ids = torch.tensor([[self.eos] * (width - len(s.ids)) + s.ids for s in joiners])
        mask = torch.tensor([[0] * (width - len(s.ids)) + [1] * len(s.ids) for s in joiners])
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                      logits_to_keep=0 if scores else 1).logits
        if scores:
            seq = joiners[0]
            seq.emit(("echo", _prompt_logprobs(out[0].float(), seq.ids, seq.params.logprobs), self._ends(seq.ids)))
        self.batch.cache.admit(cache, mask)
        self.batch.seqs += joiners
        self._advance(joiners, out[:, -1].float())

    def _decode_step(self) -> None:
        b = self.batch
        ids = torch.tensor([[s.ids[-1]] for s in b.seqs])
        positions = torch.tensor([[len(s.ids) - 1] for s in b.seqs])
        mask = b.cache.open_column()
        logits = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=b.cache,
                         use_cache=True).logits[:, -1].float()
        b.cache.advance()
        self._advance(b.seqs, logits)

    def _advance(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Sample one token per sequence, emit its text, and drop the sequences that finished. A sequence whose
        settings or text fail ends with an error of its own; the others carry on."""
        scored = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        logp = F.log_softmax(logits[scored], dim=1) if scored else None  # the model's own, before any sampling rule
        for i, (seq, token) in enumerate(zip(seqs, self._tokens(seqs, logits), strict=True)):
            seq.batch = max(seq.batch, len(self.batch.seqs))
            try:
                record = None
                if logp is not None and i in scored and isinstance(token, int):
                    row = logp[scored.index(i)]
                    record = (token, float(row[token]), _top(row, seq.params.logprobs))
                self._step(seq, token, record)
            except Exception:
                log.exception("generation failed")
                seq.finish = "error"
                seq.emit(("error", "generation failed"))
        if any(s.finish is not None for s in self.batch.seqs):
            self._drop_finished()

    def _step(self, seq: _Sequence, token: int | Exception, record: tuple | None = None) -> None:
        """Append the token (and emit its logprob `record`, after its text), or finish the sequence."""
        if isinstance(token, Exception):
            raise token
        if seq.generated >= seq.params.max_tokens:  # max_tokens 0: the prompt scored (echo), nothing drawn
            seq.finish = "length"
        elif seq.cancelled:
            seq.finish = "cancelled"
        elif token == self.eos:
            seq.finish = "stop"
        else:
            seq.ids.append(token)
            self._detokenize(seq)
            if record is not None:  # where its text ends: a character still incomplete counts as one more
                seq.emit(("logprob", *record, len(seq.text) + (seq.read < len(seq.ids))))
            if seq.finish is None and seq.generated >= seq.params.max_tokens:
                seq.finish = "length"
        if seq.finish is not None and seq.finish != "cancelled":
            if seq.read < len(seq.ids):  # it ended inside a character: the held-back bytes as they decode, as
                # the logprobs already name them
                seq.text += self.tokenizer.decode(seq.ids[seq.prefix:])[
                    len(self.tokenizer.decode(seq.ids[seq.prefix:seq.read])):]
            if seq.sent < len(seq.text):
                seq.emit(("delta", seq.text[seq.sent:]))
            seq.emit(("done", seq.finish, seq.prompt_len, seq.generated, seq.batch))

    def _tokens(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[int | Exception]:
        """`_pick` over the batch; when it fails, row by row, so that only the rows at fault get their exception.
        Each row's uniform number is drawn once, before either, so a neighbour's failure changes no row's token."""
        draws = _uniforms(seqs)
        try:
            return self._pick(seqs, logits, draws)
        except Exception:
            out: list[int | Exception] = []
            for i, seq in enumerate(seqs):
                try:
                    out.append(self._pick([seq], logits[i : i + 1], draws[i : i + 1])[0])
                except Exception as err:
                    out.append(err)
            return out

    def _pick(self, seqs: list[_Sequence], logits: torch.Tensor, draws: torch.Tensor | None = None) -> list[int]:
        """One token per row under that row's settings, from its uniform number in `draws` (drawn from the row's own
        generator when not given). `logits` is left as it was (a failed batch is picked again row by row)."""
        if any(s.generated < s.params.min_tokens or s.params.repetition_penalty != 1.0
               or s.params.frequency_penalty or s.params.presence_penalty for s in seqs):
            logits = logits.clone()
        for i, seq in enumerate(seqs):
            if seq.generated < seq.params.min_tokens:
                logits[i, self.eos] = float("-inf")
            if (seq.params.frequency_penalty or seq.params.presence_penalty) and seq.generated:
                counts = torch.bincount(torch.tensor(seq.ids[seq.prompt_len:]), minlength=logits.shape[1])
                logits[i] -= seq.params.frequency_penalty * counts + seq.params.presence_penalty * (counts > 0)
            penalty = seq.params.repetition_penalty
            if penalty != 1.0:  # as transformers' RepetitionPenaltyLogitsProcessor, over prompt and output
                seen = torch.tensor(sorted(set(seq.ids)))
                score = logits[i, seen]
                logits[i, seen] = torch.where(score < 0, score * penalty, score / penalty)
        vocab = logits.shape[1]
        temps = torch.tensor([s.params.temperature for s in seqs])
        greedy = temps == 0
        # a tiny repetition_penalty or temperature overflows a logit to +inf, whose softmax is NaN: the largest float
        # keeps it the likeliest
        scaled = (logits / temps.clamp(min=1e-6).unsqueeze(1)).clamp_(max=torch.finfo(logits.dtype).max)
        draws = _uniforms(seqs) if draws is None else draws
        # A row that cuts its tail draws from its head in descending order: its top_k logits (torch.topk: 3 ms for
        # 32 rows of GPT-2's 50,257 where sorting them whole takes 115), or its whole row for top_p alone. The
        # others draw in vocabulary order, unsorted. Rows are grouped by head width, so which way a row draws
        # depends on its own settings only, and a seed gives the same text alone or in a crowd (equal logits too:
        # each row's head is taken on its own).
        heads: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            width = min(s.params.top_k or vocab, vocab)
            if not greedy[i] and (width < vocab or s.params.top_p < 1):
                heads.setdefault(width, []).append(i)
        cut = {i for group in heads.values() for i in group}
        plain = [i for i in range(len(seqs)) if not greedy[i] and i not in cut]
        best, sampled = logits.max(1)  # the greedy rows'; the others' are drawn below, each row once
        if best.isnan().any():  # only the model makes a NaN (no setting does): that row would draw token 0 to its end
            raise ValueError("the model's logits are NaN")
        if plain:
            rows = slice(None) if len(plain) == len(seqs) else torch.tensor(plain)  # all plain: no copy
            sampled[rows] = _inverse_cdf(F.softmax(scaled[rows], dim=1), draws[rows])
        for width, group in heads.items():
            rows = torch.tensor(group)
            ordered, order = scaled[rows].topk(width, dim=1)  # sorted, descending
            probs = F.softmax(ordered, dim=1)
            top_p = torch.tensor([seqs[i].params.top_p for i in group]).unsqueeze(1)
            probs = probs.masked_fill(probs.cumsum(1) - probs >= top_p, 0.0)  # the smallest head reaching top_p
            sampled[rows] = order.gather(1, _inverse_cdf(probs, draws[rows]).unsqueeze(1)).squeeze(1)
        return sampled.tolist()

    def _detokenize(self, seq: _Sequence) -> None:
        """Append the newest token's text (byte-level tokens may need the next one to complete a character)."""
        if seq.stream is not None:  # tokenizers' incremental decoder: one call in Rust per token
            new = seq.stream.step(self.backend, seq.ids[-1])
        else:
            before = self.tokenizer.decode(seq.ids[seq.prefix:seq.read])
            now = self.tokenizer.decode(seq.ids[seq.prefix:])
            new = None if now.endswith("\ufffd") else now[len(before):]
        if new is None:
            return
        seq.text += new
        seq.prefix, seq.read = seq.read, len(seq.ids)
        stops = seq.params.stop
        cuts = [seq.text.find(s) for s in stops if s in seq.text]
        if cuts:
            seq.text, seq.finish = seq.text[:min(cuts)], "stop"
            return
        safe = len(seq.text) - max((len(s) for s in stops), default=1) + 1  # hold back a possible stop's start
        if safe > seq.sent:
            seq.emit(("delta", seq.text[seq.sent:safe]))
            seq.sent = safe

    def _ends(self, ids: list[int]) -> list[int]:
        """Where each token's text ends in the decoded ids (a token inside a character: one past what is decoded)."""
        ends, length = [], 0
        if self.backend is not None:
            stream = DecodeStream(skip_special_tokens=False)
            for token in ids:
                new = stream.step(self.backend, token)
                length += len(new or "")
                ends.append(length + (new is None))
            return ends
        return [len(self.tokenizer.decode(ids[:i + 1])) for i in range(len(ids))]

    def _drop_finished(self) -> None:
        b = self.batch
        order = b.cache.drop([i for i, s in enumerate(b.seqs) if s.finish is not None])
        b.seqs = [b.seqs[i] for i in order]


def _uniforms(seqs: list[_Sequence]) -> torch.Tensor:
    """A (rows, 1) column of uniform numbers in [0, 1), each from its row's own generator."""
    return torch.stack([torch.rand((), generator=s.generator) for s in seqs]).unsqueeze(1)


def _inverse_cdf(probs: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Each row's index where its cumulative probability passes its draw in [0, 1), scaled by the row's total (a
    long row's float sum falls short of 1, and the shortfall would land on its last index)."""
    cumulative = probs.cumsum(1)
    return (cumulative < draws * cumulative[:, -1:]).sum(1).clamp(max=probs.shape[1] - 1)


def _top(logp: torch.Tensor, k: int) -> dict[int, float]:
    """The k likeliest tokens of a row of logprobs, as {id: logprob}."""
    if k <= 0:
        return {}
    values, ids = logp.topk(k)
    return dict(zip(ids.tolist(), values.tolist(), strict=True))


def _prompt_logprobs(logits: torch.Tensor, ids: list[int], k: int) -> list[tuple[int, float | None, dict]]:
    """Each prompt token's logprob given the tokens before it (the first has none), with the top k alternatives."""
    logp = F.log_softmax(logits[:-1], dim=1)
    chosen = logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()
    values, top = logp.topk(k, dim=1) if k > 0 else (logp[:, :0], logp[:, :0].long())
    tops = [dict(zip(i, v, strict=True)) for i, v in zip(top.tolist(), values.tolist(), strict=True)]
    return [(ids[0], None, {}), *zip(ids[1:], chosen, tops, strict=True)]
