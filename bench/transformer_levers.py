"""One lever at a time: training tokens/s of the shakespeare model under each speed lever, by one clock.

The model is `configs/shakespeare-char.yaml`'s (genlab's Transformer.build on the same data); each
variant runs the same training step (forward, loss, backward, AdamW or genlab's Muon) for STEPS steps
after warm-up.
Rounds interleave the variants and medians are reported. torch.compile is timed once, with its
warm-up printed apart: in a 180 s budget the warm-up is part of the cost. Figures only.

Usage: python bench/transformer_levers.py [STEPS] [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import torch

import genlab
from genlab.config import OptimizerConfig
from genlab.data import load_dataset
from genlab.models import Transformer
from genlab.training.optim import build_optimizer

warnings.filterwarnings("ignore")
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
WARMUP = 3
CONFIG = genlab.load_config("configs/shakespeare-char.yaml")
DATA = load_dataset(CONFIG.data)
BATCH = CONFIG.train.batch_size


def tokens_per_s(precision: str, attention: str, fused: bool | None = None, compiled: bool = False,
                 steps: int = STEPS, optimizer: str = "adamw") -> tuple[float, float]:
    """(tokens/s after warm-up, seconds spent in warm-up) of the training step."""
    torch.manual_seed(0)
    model, data = Transformer.build(CONFIG.model, DATA)
    model.lm.set_attn_implementation(attention)
    optimizer = build_optimizer(model, OptimizerConfig(name=optimizer, lr=1e-3, weight_decay=0.1, fused=fused))
    lm = torch.compile(model.lm) if compiled else model.lm
    x, began = data.train.x, time.perf_counter()
    for step in range(WARMUP + steps):
        if step == WARMUP:
            start = time.perf_counter()
        batch = x[torch.randint(0, len(x), (BATCH,))]
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            logits = lm(input_ids=batch[:, :-1], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch[:, 1:].numel() / (time.perf_counter() - start), start - began


def main() -> None:
    c = CONFIG.model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; llama {c.layers} x {c.width}, {c.heads} "
          f"heads, context {c.context}, batch {BATCH}; {STEPS} steps after {WARMUP} of warm-up, {ROUNDS} rounds")
    variants = {
        "fp32, sdpa attention": ("fp32", "sdpa", None),
        "fp32, eager attention": ("fp32", "eager", None),
        "bf16 autocast, sdpa": ("bf16", "sdpa", None),
        "bf16 autocast, eager (genlab's CPU default)": ("bf16", "eager", None),
        "bf16, eager, fused AdamW": ("bf16", "eager", True),
        "bf16, eager, Muon on hidden matrices + AdamW": ("bf16", "eager", None, False, STEPS, "muon"),
    }
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(ROUNDS):
        names = list(variants)
        for name in names[r % len(names):] + names[: r % len(names)]:
            figures[name].append(tokens_per_s(*variants[name])[0])
    base = statistics.median(figures["fp32, sdpa attention"])
    for name, values in figures.items():
        med = statistics.median(values)
        rounds = " ".join(f"{v:.0f}" for v in values)
        print(f"  {name:<44} {med:7.0f} tokens/s  {med / base:5.2f}x   (rounds: {rounds})")
    rate, warmup = tokens_per_s("bf16", "eager", compiled=True)
    print(f"  {'bf16, eager, torch.compile':<44} {rate:7.0f} tokens/s  {rate / base:5.2f}x   "
          f"after {warmup:.0f} s of compilation")


if __name__ == "__main__":
    main()
