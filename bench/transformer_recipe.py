"""The shakespeare recipe's choices one at a time, by best val loss in its 180 s budget; then the recipe on other text.

Part 1 (levers): each variant changes one thing in `configs/shakespeare-char.yaml` (optimizer, shape,
batch, learning rate, schedule). Its `train.max_steps` is set to what the budget holds at the
variant's own speed, measured by a short fit at the start of the run, so every cosine schedule
anneals within the budget; the runs then train to that step count with `train.max_time` off, so
their losses do not depend on what else the machine is doing meanwhile. Rounds interleave the
variants, one seed per round, and medians are reported; past the first round only the optimizer
pair is repeated (the recipe's spread over seeds is the noise floor a single-round lever reads against).

Part 2 (any English text): the recipe against nanoGPT's CPU recipe (4 x 128, context 64, batch 12,
2000 iterations of AdamW at 1e-3, fp32) reproduced in genlab, on text that is not shakespeare:
CPython's documentation (built in) and, where this machine has it, vim's help files. Bits per
character make the figures comparable across corpora. Figures only.

Usage: python bench/transformer_recipe.py [levers|text|all] [ROUNDS]
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import genlab

warnings.filterwarnings("ignore")
RECIPE = "configs/shakespeare-char.yaml"
BUDGET_STEPS = 580  # what the recipe's 180 s holds at its own speed (its train.max_steps)

LEVERS: dict[str, list[str]] = {
    "recipe (muon, 4 x 192, context 128, batch 32, lr 3e-3, cosine)": [],
    "adamw instead of muon": ["train.optimizer.name=adamw"],
    "deeper: 6 x 128, 2 heads": ["model.layers=6", "model.width=128", "model.heads=2"],
    "wider: 2 x 256, 4 heads": ["model.layers=2", "model.width=256", "model.heads=4"],
    "context 64": ["model.context=64"],
    "context 256": ["model.context=256"],
    "batch 16": ["train.batch_size=16"],
    "batch 64": ["train.batch_size=64"],
    "lr 1.5e-3": ["train.optimizer.lr=0.0015"],
    "lr 6e-3": ["train.optimizer.lr=0.006"],
    "constant lr after warm-up": ["train.schedule.name=constant"],
}

NANOGPT = ["model.architecture=gpt2", "model.layers=4", "model.width=128", "model.heads=4", "model.context=64",
           "train.batch_size=12", "train.max_steps=2000", "train.max_time=null", "train.precision=32-true",
           "train.optimizer.name=adamw", "train.optimizer.lr=0.001", "train.schedule.warmup_steps=100",
           "train.val_every=500", "train.checkpoint_every=1000"]


def fresh(tmp: str) -> str:
    """A run directory of its own for every fit (genlab refuses to overwrite a run)."""
    return f"{tempfile.mkdtemp(dir=tmp)}/run"


def steps_per_s(overrides: list[str], tmp: str) -> float:
    """Training steps per second of a variant, from a short fit with no validation."""
    run = genlab.fit(RECIPE, overrides=[*overrides, "train.max_steps=40", "train.val_every=1000",
                                        "train.checkpoint_every=1000", "train.progress=none"], out=fresh(tmp))
    return run.summary["steps"] / run.summary["train_seconds"]


def best_val(overrides: list[str], tmp: str) -> tuple[float, int]:
    """(best val loss, steps trained) of one fit, from its TensorBoard log."""
    run = genlab.fit(RECIPE, overrides=[*overrides, "train.max_time=null", "train.progress=none"], out=fresh(tmp))
    val = EventAccumulator(str(run.paths.tb)).Reload().Scalars("val/loss")
    return min(e.value for e in val), run.summary["steps"]


def with_budget(overrides: list[str], rate: float, recipe_rate: float) -> list[str]:
    steps = max(40, round(BUDGET_STEPS * rate / recipe_rate))
    return [*overrides, f"train.max_steps={steps}", f"train.val_every={steps // 4}",
            f"train.checkpoint_every={steps // 2}"]


def levers(rounds: int) -> None:
    print(f"part 1: one lever at a time, {rounds} rounds (seeds 0..{rounds - 1}), best val loss in 180 s")
    with tempfile.TemporaryDirectory() as tmp:
        steps_per_s([], tmp)  # discarded: a process's first fit runs ~25% slower (lazy imports, first kernels)
        rates = {name: steps_per_s(o, tmp) for name, o in LEVERS.items()}
        recipe_rate = rates[next(iter(LEVERS))]
        figures: dict[str, list[float]] = {name: [] for name in LEVERS}
        steps: dict[str, int] = {}
        names = list(LEVERS)
        for r in range(rounds):
            order = names if r == 0 else names[r % 2:2] + names[:r % 2]  # alternate which goes first
            for name in order:
                o = LEVERS[name] if name == names[0] else with_budget(LEVERS[name], rates[name], recipe_rate)
                loss, steps[name] = best_val([*o, f"train.seed={r}"], tmp)
                figures[name].append(loss)
                print(f"  round {r} {name}: {loss:.4f} ({steps[name]} steps)", flush=True)
    base = statistics.median(figures[names[0]])
    print(f"\n  {'variant':<62} {'steps/s':>7} {'steps':>6} {'median':>7} {'vs recipe':>9}  rounds")
    for name, values in figures.items():
        med = statistics.median(values)
        print(f"  {name:<62} {rates[name]:7.2f} {steps[name]:6d} {med:7.4f} {med - base:+9.4f}  "
              + " ".join(f"{v:.4f}" for v in values))


def english_texts(tmp: str) -> dict[str, list[str]]:
    """Corpora that are not shakespeare: the built-in python_docs, and vim's help files when present."""
    texts = {"python_docs (CPython's pydoc topics, built in)": ["data.source=python_docs"]}
    vim = sorted(Path("/usr/share/vim").glob("vim*/doc/*.txt"))
    if vim:
        corpus = "".join(p.read_text(errors="ignore") for p in vim)[:1_115_394]  # tiny shakespeare's size
        path = Path(tmp) / "vim-help.txt"
        path.write_text(corpus)
        texts["vim help files, first 1.1 MB"] = [f"data.path={path}"]
    return texts


def other_text() -> None:
    print("\npart 2: the recipe against nanoGPT's CPU recipe (in genlab), on text that is not shakespeare")
    print(f"  {'corpus':<50} {'recipe':>8} {'nanoGPT':>8} {'(best val loss, nats per char)':>32}")
    with tempfile.TemporaryDirectory() as tmp:
        corpora = {"tiny shakespeare (for reference)": [], **english_texts(tmp)}
        for name, data in corpora.items():
            ours, _ = best_val(data, tmp)
            anchor, _ = best_val([*data, *NANOGPT], tmp)
            print(f"  {name:<50} {ours:8.4f} {anchor:8.4f}   recipe is {anchor - ours:.3f} nats "
                  f"({(anchor - ours) / math.log(2):.3f} bits) per char lower", flush=True)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; recipe {RECIPE}")
    if what in ("levers", "all"):
        levers(rounds)
    if what in ("text", "all"):
        other_text()


if __name__ == "__main__":
    main()
