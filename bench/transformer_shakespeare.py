"""Character-level tiny shakespeare: best val loss in a wall-clock budget, throughput, and generation speed.

Trains `configs/shakespeare-char.yaml` (or the config given) through `genlab fit` for its
`train.max_time`, then prints the best val loss, tokens/s, and the model's FLOP/s as a fraction
of the matmul peak measured in the same run; then generation speed: genlab's `sample` (256 new
tokens at batch 1 and 16, sliding past the context) and transformers' generate with and without
the KV cache. The anchor is nanoGPT's
CPU recipe for this data (4 layers, width 128, context 64, batch 12, 2000 iterations): a val loss
of about 1.88 in about 108 s on this kind of 2-core machine (DESIGN.md). Figures only.

Usage: python bench/transformer_shakespeare.py [CONFIG] [--set key=value ...]
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
import warnings

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import genlab
from genlab.training.peak import matmul_peak

warnings.filterwarnings("ignore")
ANCHOR = "nanoGPT CPU recipe (published): val loss 1.88 after 2000 iterations, 108 s"


def generation_speed(model, batch: int, new_tokens: int = 256) -> float:
    """Tokens per second of `model.sample` (KV cache; past the context the window slides), greedy."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        texts = model.sample(batch, prompt="\n", max_new_tokens=new_tokens, temperature=0)
        times.append(time.perf_counter() - start)
    made = sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
    return made / statistics.median(times)


def cache_speedup(model, batch: int) -> tuple[float, float]:
    """Tokens/s of transformers' generate with and without the KV cache, within one context."""
    eos, n = model.tokenizer.eos_token_id, model.context - 1
    ids = torch.full((batch, 1), eos)
    rates = []
    for cache in (True, False):
        start = time.perf_counter()
        model.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=cache, pad_token_id=eos)
        rates.append(batch * n / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> None:
    args = sys.argv[1:]
    config = args.pop(0) if args and not args[0].startswith("--") else "configs/shakespeare-char.yaml"
    overrides = [a for flag, a in zip(args[::2], args[1::2], strict=False) if flag == "--set"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {config} {' '.join(overrides)}")
    with tempfile.TemporaryDirectory() as tmp:
        run = genlab.fit(config, overrides=[*overrides, "train.progress=log"], out=f"{tmp}/run")
        s = run.summary
        acc = EventAccumulator(str(run.paths.tb)).Reload()
        val = [(e.step, e.value) for e in acc.Scalars("val/loss")]
        best_step, best = min(val, key=lambda p: p[1])
        model = run.model.eval()
        print(f"\nmodel: {s['parameters'] / 1e6:.2f} M parameters, context {model.context}, "
              f"{run.config.model.layers} layers x {run.config.model.width}, {run.config.train.precision}")
        print(f"trained {s['steps']} steps in {s['seconds']} s ({s['stopped_because']}), "
              f"{s['train_seconds']} s of it training")
        print(f"best val loss: {best:.4f} at step {best_step} (curve: "
              f"{', '.join(f'{st}:{v:.3f}' for st, v in val)})")
        print(f"anchor: {ANCHOR}")
        peak = s["matmul_peak"]
        print(f"throughput: {s['tokens_per_s']:.0f} tokens/s, {s['gflops_per_batch']:.1f} GFLOP per step, "
              f"{100 * s['mfu']:.1f}% of the {peak['dtype']} matmul peak ({peak['gflops']:.0f} GFLOP/s)")
        print(f"matmul peak now: fp32 {matmul_peak(torch.float32) / 1e9:.0f}, "
              f"bf16 {matmul_peak(torch.bfloat16) / 1e9:.0f} GFLOP/s")
        print("\ngeneration, greedy, fp32:")
        for batch in (1, 16):
            with_cache, without = cache_speedup(model, batch)
            print(f"  batch {batch:>2}: genlab sample, 256 new tokens: {generation_speed(model, batch):6.0f} tokens/s; "
                  f"generate within one context: {with_cache:6.0f} tokens/s with the KV cache, {without:6.0f} "
                  f"without ({with_cache / without:.1f}x)")
        print("\nsample (temperature 0.8):")
        print(run.sample(1, seed=0, prompt="ROMEO:\n", max_new_tokens=300, temperature=0.8)[0])
    print(f"\npeak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
