"""Text runs: loss, perplexity and bits per character on held-out text; diversity of generations.

Bits per character divide the total negative log-likelihood (in bits) by the characters the
scored tokens decode to, so models with different tokenizers compare. Distinct-n is the share of
unique word n-grams among all n-grams of the generated continuations (Li et al., 2016); self-BLEU and MAUVE
(evaluation/diversity.py) set them beside the held-out text's own continuations of the same openings; and
the share of continuations that copy 50+ characters of the training text comes from the model's copy index.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from genlab.config import EvalConfig
from genlab.data.sources import load_dataset
from genlab.data.streaming import TextShards
from genlab.errors import GenlabError
from genlab.evaluation.diversity import mauve, self_bleu, sentence_embeddings
from genlab.evaluation.report import Scored, text_samples
from genlab.responsible.memorization import WINDOW
from genlab.run import Run

PROMPT_TOKENS = 16  # each continuation starts from this many tokens of a held-out window
HELD_OUT_CHARS = 4 << 20  # a streamed set's held-out text scored: its first documents, up to this many characters


@torch.no_grad()
def held_out_loss(model, windows: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Mean token loss, perplexity and bits per character of `windows` under `model`."""
    model.eval()
    nats = 0.0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size].to(model.device)
        nats += float(model.lm_loss(batch, reduction="sum"))
    tokens = windows[:, 1:].numel()
    chars = sum(len(t) for t in model.tokenizer.batch_decode(windows[:, 1:], skip_special_tokens=True))
    loss = nats / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_character": nats / math.log(2) / max(chars, 1),
            "tokens": tokens, "characters": chars}


def _mauve(real: list[str], generated: list[str], seed: int) -> dict[str, float | None]:
    """MAUVE of the continuations against the held-out text's own, on MiniLM embeddings (None without them)."""
    p, q = sentence_embeddings(real), sentence_embeddings(generated)
    if p is None or len(real) < 10:
        return {"mauve": None}
    return {"mauve": mauve(p, q, seed=seed)}


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def evaluate_text(run: Run, ev: EvalConfig, options: dict[str, Any]) -> Scored:
    dataset = load_dataset(run.config.data)
    split, docs = ("test", dataset.test.x) if dataset.test.x else ("val", dataset.val.x)
    if isinstance(docs, TextShards):  # a streamed set: the split's opening, as much as a set in memory would hold
        docs = docs.head(chars=HELD_OUT_CHARS)
    if not docs:
        raise GenlabError("evaluate: needs held-out text; train with data.test_fraction > 0 (or val_fraction)")
    model = run.model
    windows = model.encode(docs)
    scores = held_out_loss(model, windows, ev.batch_size)

    picks = torch.linspace(0, len(windows) - 1, ev.num_samples).long()  # openings spread over the held-out text
    prompts = model.tokenizer.batch_decode(windows[picks, :PROMPT_TOKENS], skip_special_tokens=True)
    started = time.perf_counter()
    texts = []
    for i, start in enumerate(range(0, len(prompts), ev.batch_size)):
        chunk = prompts[start : start + ev.batch_size]
        texts += model.sample(len(chunk), generator=torch.Generator().manual_seed(ev.seed * 1000 + i), prompt=chunk,
                              **options)
    seconds = time.perf_counter() - started
    new_tokens = int(options.get("max_new_tokens") or 64)
    real = model.tokenizer.batch_decode(windows[picks, PROMPT_TOKENS : PROMPT_TOKENS + new_tokens],
                                        skip_special_tokens=True)  # what the held-out text went on to say
    metrics = {
        **scores,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        # the share of continuations holding a 50+ character copy of the training text (None: no index kept)
        "copied_share": None if model.copies is None else model.copies.copied_share(texts),
        # the same for the held-out text's own continuations: the floor set by phrases the corpus repeats
        "copied_share_real": None if model.copies is None else model.copies.copied_share(real),
        "self_bleu": self_bleu(texts),
        "self_bleu_real": self_bleu(real),
        **_mauve(real, texts, ev.seed),
        "split": split,
        "num_generated": len(texts),
        "sampling": options,
        "seed": ev.seed,
        "seconds_per_sample": seconds / len(texts),
        "examples": [{"prompt": p, "output": t} for p, t in zip(prompts[:8], texts[:8], strict=True)],
    }
    rows = [(f"loss on {split} (nats/token)", f"{scores['loss']:.4f}"), ("perplexity", f"{scores['perplexity']:.4g}"),
            ("bits per character", f"{scores['bits_per_character']:.4f}"),
            ("distinct-1 / distinct-2 of generations", f"{metrics['distinct_1']:.3f} / {metrics['distinct_2']:.3f}")]
    rows.append(("self-BLEU of generations (real continuations)",
                 f"{metrics['self_bleu'] or 0:.3f} ({metrics['self_bleu_real'] or 0:.3f})"))
    if metrics["mauve"] is not None:
        rows.append((f"MAUVE against the real continuations (MiniLM, {len(texts)} texts)", f"{metrics['mauve']:.3f}"))
    if metrics["copied_share"] is not None:
        rows.append((f"continuations copying {WINDOW}+ characters of the training text (held-out text's own)",
                     f"{metrics['copied_share']:.1%} ({metrics['copied_share_real']:.1%})"))
    setup = [("scored", f"{scores['tokens']:,} tokens, {scores['characters']:,} characters of the {split} split"),
             ("generated", f"{len(texts)} continuations of {PROMPT_TOKENS}-token openings"),
             ("sampling", ", ".join(f"{k} {v}" for k, v in options.items()) + f", seed {ev.seed}")]
    return Scored(metrics, rows, setup, text_samples(prompts[:8], texts[:8]))
