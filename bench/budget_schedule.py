"""The char LM recipe in its time budget, as a user meets it: does the run use its budget on any machine?

`configs/shakespeare-char.yaml` gives 180 s (`train.max_time`) and a `train.max_steps` beyond what they hold,
so the clock ends the run. With `train.schedule.follow_time` (the default) the schedule is as far along as the
larger of steps and time gone, so it anneals by the end of the budget. The arms marked "before" end the run
at 580 steps (what 180 s held here once): a faster machine stopped with budget left, and without follow_time a
slower one stopped mid-cosine. A single thread stands in for the slower machine (about half the speed here).

Each run trains the recipe as shipped (its own max_time), then its exported folder is scored by transformers'
own loader on the held-out last 10% of the text: nats per character (the recipe's goal is 1.50). Arms are
interleaved round by round and medians reported. Figures only.

Usage: python bench/budget_schedule.py [ROUNDS] [--fast-only | ARM,ARM,...]
"""

from __future__ import annotations

import gzip
import math
import statistics
import sys
import tempfile
import time
import warnings
from importlib.resources import files
from pathlib import Path

import torch

import genlab

warnings.filterwarnings("ignore")
RECIPE = "configs/shakespeare-char.yaml"
ARMS = {  # name: (threads, overrides); the recipe's max_steps (2,000) is beyond what its 180 s hold
    "2 threads: shipped (the clock ends the run)": (2, []),
    "1 thread:  shipped": (1, []),
    "2 threads: 580 steps end it (before)": (2, ["train.max_steps=580"]),
    "1 thread:  580 steps, steps only (before that)": (1, ["train.max_steps=580", "train.schedule.follow_time=false"]),
    "2 threads: windows at every offset": (2, ["model.window_stride=1"]),
}


def held_out_nats_per_char(folder: Path) -> float:
    """Mean next-character loss of the exported folder on the last 10% of tiny shakespeare, windows of its context."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = gzip.decompress(files("genlab.data").joinpath("files/tinyshakespeare.txt.gz").read_bytes()).decode()
    tail = text[int(0.9 * len(text)):]
    tokenizer, lm = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor(tokenizer(tail, add_special_tokens=False)["input_ids"])
    context = lm.config.max_position_embeddings
    windows = ids[: len(ids) // context * context].view(-1, context)
    total = 0.0
    with torch.no_grad():
        for batch in windows.split(64):
            logits = lm(input_ids=batch[:, :-1]).logits
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
    return float(total) / windows[:, 1:].numel()


def one_run(threads: int, overrides: list[str], tmp: str) -> dict:
    torch.set_num_threads(threads)
    out = Path(tempfile.mkdtemp(dir=tmp))
    start = time.perf_counter()
    run = genlab.fit(RECIPE, overrides=[*overrides, "train.progress=none", "train.grid_size=0"], out=out / "run")
    wall = time.perf_counter() - start
    torch.set_num_threads(2)
    s = run.summary
    return {"nats": held_out_nats_per_char(run.paths.model), "steps": s["steps"], "stopped": s["stopped_because"],
            "wall": wall}


def main() -> None:
    rounds = int(next((a for a in sys.argv[1:] if a.isdigit()), 2))
    chosen = next((a.split(",") for a in sys.argv[1:] if not a.isdigit() and not a.startswith("--")), list(ARMS))
    if unknown := [k for k in chosen if k not in ARMS]:
        sys.exit(f"unknown arm(s) {unknown}; the arms are: {', '.join(ARMS)}")
    arms = {k: ARMS[k] for k in chosen if "--fast-only" not in sys.argv or k.startswith("2")}
    results: dict[str, list[dict]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, (threads, overrides) in arms.items():
                res = one_run(threads, overrides, tmp)
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['nats']:.4f} nats/char ({res['nats'] / math.log(2):.3f} bits), "
                      f"{res['steps']} steps, stopped by {res['stopped']}, {res['wall']:.0f} s", flush=True)
    print(f"\nmedians over {rounds} rounds (the last 10% of tiny shakespeare, the exported folder in transformers):")
    for name, runs in results.items():
        nats = statistics.median(r["nats"] for r in runs)
        steps = statistics.median(r["steps"] for r in runs)
        print(f"  {name}: {nats:.4f} nats/char, {steps:.0f} steps  (goal 1.50)")


if __name__ == "__main__":
    main()
