"""The diffusion demo's levers one at a time, in its own 240 s budget: FID over the real-vs-real floor.

Each arm changes one thing in `configs/digits-diffusion.yaml` and trains it as a user would (its
`max_time` and `max_steps`, so a lever that slows a step pays for it in steps), then `genlab evaluate`
scores it: FID in the evaluation's feature space divided by the floor two real halves reach.
Rounds interleave the arms, reversing their order every other round; medians are reported.
The demo's goal is 3x the floor. Figures only.

Usage: python bench/diffusion_levers.py [ROUNDS] [ARM,ARM,...]
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
    "wider UNet (48, 96)": ["model.block_out_channels=[48,96]"],
    "EMA decay 0.999": ["train.ema.decay=0.999"],
    "batch 128": ["train.batch_size=128"],
}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(ARMS)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    steps: dict[str, list[int]] = {name: [] for name in names}
    tmp = tempfile.mkdtemp()
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            run = genlab.fit(RECIPE, out=f"{tmp}/{r}-{len(ratios[name])}-{names.index(name)}",
                             overrides=[*ARMS[name], "train.progress=none"])
            m = genlab.evaluate(run)
            ratios[name].append(m["fid"] / m["fid_real_baseline"])
            steps[name].append(run.summary["steps"])
            print(f"round {r}, {name}: FID {m['fid']:.3f}, floor {m['fid_real_baseline']:.3f}, "
                  f"{ratios[name][-1]:.2f}x the floor, {run.summary['steps']} steps, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    print(f"\nmedians of {rounds} round(s) (goal: 3x the floor)")
    for name in names:
        print(f"  {name:<26} {statistics.median(ratios[name]):5.2f}x the floor, "
              f"{statistics.median(steps[name]):.0f} steps   {[round(x, 2) for x in ratios[name]]}")


if __name__ == "__main__":
    main()
