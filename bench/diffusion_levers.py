"""The diffusion demo's levers one at a time, in its own 240 s budget: FID over the real-vs-real floor.

Each arm changes one thing in `configs/digits-diffusion.yaml` and trains it as a user would (its
`max_time` and `max_steps`, so a lever that slows a step pays for it in steps), then `genlab evaluate`
scores it: FID in the evaluation's feature space divided by the floor two real halves reach.
Rounds interleave the arms, reversing their order every other round; medians are reported.
The demo's goal is 3x the floor, at the evaluation's own seed (0). With EVAL_SEEDS above 1, each model is
also scored at seeds 1, 2, ...: their mean takes out most of the sampling noise (about 15% on one figure),
so a lever's effect on the model reads against less noise. Figures only.

Usage: python bench/diffusion_levers.py [ROUNDS] [ARM,ARM,...] [EVAL_SEEDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings

import genlab

warnings.filterwarnings("ignore")
RECIPE = "configs/digits-diffusion.yaml"
ARMS = {
    "shipped": [],
    "plain MSE (no min-SNR)": ["model.snr_gamma=null"],
    "epsilon (before)": ["model.prediction=epsilon"],
    "cosine noise schedule": ["model.noise_schedule=cosine"],
    "wider UNet 48-96": ["model.block_out_channels=[48,96]"],
    # the EMA's warm-up, min(decay, (1 + n) / (10 + n)), stays below 0.995 for 1,790 steps: in this budget a decay
    # of 0.999 trains the very model the recipe's 0.995 does, so only the warm-up itself is a lever here
    "EMA 0.995 without warm-up": ["train.ema.warmup=false"],
    "batch 128": ["train.batch_size=128"],
    "batch 32": ["train.batch_size=32", "train.max_steps=2000"],
    "lr 0.002 (before)": ["train.optimizer.lr=0.002"],
    "no attention": ["model.attention=[false,false]"],
}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(ARMS)
    if unknown := [name for name in names if name not in ARMS]:
        sys.exit(f"unknown arm(s) {unknown}; the arms are: {', '.join(ARMS)}")
    eval_seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    ratios: dict[str, list[float]] = {name: [] for name in names}
    seed_means: dict[str, list[float]] = {name: [] for name in names}
    steps: dict[str, list[int]] = {name: [] for name in names}
    tmp = tempfile.mkdtemp()
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            run = genlab.fit(RECIPE, out=f"{tmp}/{r}-{len(ratios[name])}-{names.index(name)}",
                             overrides=[*ARMS[name], "train.progress=none"])
            by_seed = [genlab.evaluate(run, seed=seed) for seed in range(eval_seeds)]
            m = by_seed[0]
            ratios[name].append(m["fid"] / m["fid_real_baseline"])
            seed_means[name].append(statistics.mean(e["fid"] / e["fid_real_baseline"] for e in by_seed))
            steps[name].append(run.summary["steps"])
            print(f"round {r}, {name}: FID {m['fid']:.3f}, floor {m['fid_real_baseline']:.3f}, "
                  f"{ratios[name][-1]:.2f}x the floor (mean of {eval_seeds} eval seeds {seed_means[name][-1]:.2f}x), "
                  f"{run.summary['steps']} steps, {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\nmedians of {rounds} round(s) (goal: 3x the floor)")
    for name in names:
        print(f"  {name:<26} {statistics.median(ratios[name]):5.2f}x the floor, "
              f"{statistics.median(steps[name]):.0f} steps   {[round(x, 2) for x in ratios[name]]}; "
              f"mean over eval seeds: median {statistics.median(seed_means[name]):.2f}x")


if __name__ == "__main__":
    main()
