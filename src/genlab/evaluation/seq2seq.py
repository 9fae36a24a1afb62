"""Seq2seq runs: BLEU and chrF (sacrebleu), ROUGE-L and exact match on held-out pairs, each beside the
trivial baseline that copies the source, plus the held-out loss."""

from __future__ import annotations

import time
from typing import Any

import sacrebleu
import torch

from genlab.config import EvalConfig
from genlab.data.sources import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation.report import Scored, text_samples
from genlab.run import Run


def rouge_l(prediction: str, reference: str) -> float:
    """F1 of the longest common subsequence of words (Lin, 2004)."""
    a, b = prediction.split(), reference.split()
    if not a or not b:
        return float(a == b)
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    lcs = row[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


def scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
        "rouge_l": 100 * sum(map(rouge_l, predictions, references)) / len(references),
        "exact_match": sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
        / len(references),
    }


@torch.no_grad()
def evaluate_pairs(run: Run, ev: EvalConfig, options: dict[str, Any]) -> Scored:
    dataset = load_dataset(run.config.data)
    split, pairs = ("test", dataset.test.x) if dataset.test.x else ("val", dataset.val.x)
    if not pairs:
        raise GenlabError("evaluate: needs held-out pairs; train with data.test_fraction > 0 (or val_fraction)")
    pairs = pairs[: ev.num_samples]
    model = run.model.eval()
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    x, y = model.encode(pairs)
    loss = sum(float(model.seq2seq_loss({"x": x[i : i + ev.batch_size], "y": y[i : i + ev.batch_size]}))
               * len(x[i : i + ev.batch_size]) for i in range(0, len(x), ev.batch_size)) / len(x)
    started = time.perf_counter()
    predictions = []
    for i, start in enumerate(range(0, len(sources), ev.batch_size)):
        chunk = sources[start : start + ev.batch_size]
        predictions += model.sample(len(chunk), generator=torch.Generator().manual_seed(ev.seed * 1000 + i),
                                    source=chunk, **options)
    seconds = time.perf_counter() - started
    ours, copy = scores(predictions, references), scores(sources, references)
    metrics = {
        **ours, "loss": loss, "copy_source_baseline": copy, "split": split, "num_pairs": len(pairs),
        "sampling": options, "seed": ev.seed, "seconds_per_sample": seconds / len(pairs),
        "examples": [{"source": s, "target": t, "output": p}
                     for s, t, p in zip(sources[:8], references[:8], predictions[:8], strict=True)],
    }
    rows = [(name, f"{ours[key]:.4g} (copying the source: {copy[key]:.4g})") for key, name in
            (("bleu", "BLEU"), ("chrf", "chrF"), ("rouge_l", "ROUGE-L"), ("exact_match", "exact match"))]
    rows.append((f"loss on {split} (nats/token)", f"{loss:.4f}"))
    setup = [("scored", f"{len(pairs)} pairs of the {split} split"),
             ("sampling", ", ".join(f"{k} {v}" for k, v in options.items()) + f", seed {ev.seed}")]
    shown = [f"{s}\n-> " for s in sources[:8]]
    return Scored(metrics, rows, setup, text_samples(shown, [f"{p}   (reference: {t})" for p, t in
                                                             zip(predictions[:8], references[:8], strict=True)]))
