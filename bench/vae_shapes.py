"""Disentanglement on the shapes set: MIG of `configs/shapes-vae.yaml` (beta-TCVAE) against the same model and
steps with beta = 1 (a plain VAE), over seeds, with the median per arm and MIG per factor. Runs go to WORKERS
processes of one thread each; the step count is fixed (max_time off), so a run's figures do not depend on how
many share the machine. Figures only; nothing is asserted.

Usage: python bench/vae_shapes.py [SEEDS, e.g. 0,1,2] [WORKERS] [ARMS, e.g. recipe,beta1,beta4]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

RECIPE = "configs/shapes-vae.yaml"
ARMS = {
    "recipe": ("beta-TCVAE, tc_beta 6 (the recipe)", []),
    "beta1": ("beta = 1 (plain VAE)", ["model.tc_beta=null", "model.beta=1"]),
    "beta4": ("beta = 4 (beta-VAE)", ["model.tc_beta=null", "model.beta=4"]),
}
SEEDS = [int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [0, 1, 2]
WORKERS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
CHOSEN = sys.argv[3].split(",") if len(sys.argv) > 3 else ["recipe", "beta1"]


def one_run(arm: str, seed: int) -> dict:
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import genlab

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = genlab.fit(RECIPE, out=f"{tmp}/run", overrides=[
            *ARMS[arm][1], f"train.seed={seed}", "train.max_time=null", "train.progress=none", "eval.num_samples=200",
            "eval.feature_steps=100", "eval.likelihood_samples=4"])  # MIG needs neither FID's nor IWAE's precision
        m, steps = genlab.evaluate(run), run.summary["steps"]
    return {"arm": arm, "seed": seed, "mig": m["mig"], "per": m["mig_per_factor"], "kl": m["kl"],
            "active": m["active_units"], "recon": m["reconstruction_nll"], "steps": steps,
            "seconds": time.perf_counter() - started}


def main() -> None:
    jobs = [(arm, seed) for seed in SEEDS for arm in CHOSEN]
    print(f"{RECIPE}: {len(SEEDS)} seeds x {len(CHOSEN)} arms, {WORKERS} workers of 1 thread")
    results: dict[str, list[dict]] = {arm: [] for arm in CHOSEN}
    with ProcessPoolExecutor(WORKERS) as pool:
        for r in pool.map(one_run, *zip(*jobs)):
            results[r["arm"]].append(r)
            per = " ".join(f"{k} {v:.3f}" for k, v in r["per"].items())
            print(f"  {ARMS[r['arm']][0]:<36} seed {r['seed']}: MIG {r['mig']:.3f}  ({per})  KL {r['kl']:.1f}, "
                  f"{r['active']} active, recon {r['recon']:.1f}, {r['steps']} steps, {r['seconds']:.0f} s", flush=True)
    print(f"\nmedians over seeds {SEEDS}:")
    medians = {arm: statistics.median(r["mig"] for r in runs) for arm, runs in results.items()}
    for arm, runs in results.items():
        factors = runs[0]["per"]
        per = " ".join(f"{k} {statistics.median(r['per'][k] for r in runs):.3f}" for k in factors)
        each = ", ".join(f"{r['mig']:.3f}" for r in runs)
        print(f"  {ARMS[arm][0]:<36} MIG {medians[arm]:.3f}  [{each}]  per factor: {per}")
    if "recipe" in medians and "beta1" in medians:
        print(f"\nrecipe / beta = 1: {medians['recipe'] / medians['beta1']:.2f}x (goal: 2x)")


if __name__ == "__main__":
    main()
