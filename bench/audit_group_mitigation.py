"""The group mitigations, measured by the audit on a deliberately skewed set. Figures only.

Tables: rows where group b is 8% and lives elsewhere in feature space (its x1 and x2 are shifted and tied
differently to the outcome). The tabular VAE is trained on them four ways for the same steps: as they come,
with batches that draw each group equally (`data.balance_by: group`), with each group's mean loss counted
equally (`model.group_weighted_loss: group`), and with group DRO's adaptive weights on top
(`model.group_dro_step: 0.001`). Each run is audited by group against parity: b's share of the synthetic rows
with its interval, and the fidelity (mean KS / total variation of the other columns) within each group, with
its interval and the floor that b's held-out real rows reach.

Images: a class-conditional diffusion model on digits where 0s are rare, audited with guidance 1 and 3 (the
same model): how often a 0 asked for is drawn as a 0, with a Wilson interval.

Usage: python bench/audit_group_mitigation.py [STEPS] [SEEDS] [--images]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import genlab
from genlab.api import audit as audit_run


def skewed_table(rows: int, share_b: float = 0.08, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    b = rng.random(rows) < share_b
    x1 = np.where(b, rng.normal(2.5, 0.5, rows), rng.normal(0, 1, rows))
    x2 = np.where(b, -0.8 * x1 + rng.normal(0, 0.3, rows), rng.normal(0, 1, rows))
    score = np.where(b, x2 + 2.0, x1 + 0.5 * x2) + rng.normal(scale=0.3, size=rows)
    return pd.DataFrame({"group": np.where(b, "b", "a"), "x1": x1, "x2": x2,
                         "outcome": np.where(score > 0.5, "yes", "no")})


def tables(work: Path, steps: int, seeds: int) -> None:
    csv = work / "skewed.csv"
    skewed_table(4000).to_csv(csv, index=False)
    base = ["model.family=tabular_vae", "model.hidden=[64,64]", "train.batch_size=64", f"train.max_steps={steps}",
            "train.max_time=null", f"train.val_every={steps}", f"train.checkpoint_every={steps}",
            "train.progress=none", "data.source=table", f"data.path={csv}", "data.target=outcome"]
    ways = {"as the rows come": [], "balance_by: group": ["data.balance_by=group"],
            "equal group loss": ["model.group_weighted_loss=group"],
            "group DRO 0.001": ["model.group_weighted_loss=group", "model.group_dro_step=0.001"]}
    print(f"tables: 4,000 rows, group b 8% and shifted; tabular VAE, {steps} steps; audit by group, target parity")
    print(f"{'training':<18} {'seed':>4} {'b share [90%]':>22} {'fidelity a':>10} {'fidelity b [90%]':>24} "
          f"{'b floor':>7} {'seconds':>8}")
    for seed in range(seeds):
        for name, extra in ways.items():
            began = time.perf_counter()
            run = genlab.fit(None, out=work / f"{name.split(':')[0].replace(' ', '-').replace('.', '')}-{seed}",
                             overrides=[*base, *extra, f"train.seed={seed}"])
            result = audit_run(run, 4000, group="group", target="parity")
            by = {c["class"]: c for c in result["classes"]}
            low, high = by["b"]["generated_interval"]
            b_low, b_high = by["b"]["fidelity_interval"]
            print(f"{name:<18} {seed:>4} {by['b']['generated_share']:>8.3f} [{low:.3f}, {high:.3f}] "
                  f"{by['a']['fidelity']:>10.3f} {by['b']['fidelity']:>8.3f} [{b_low:.3f}, {b_high:.3f}] "
                  f"{by['b']['fidelity_real']:>7.3f} {time.perf_counter() - began:>8.0f}", flush=True)


def images(work: Path, rare: int = 20) -> None:
    from audit_mitigation import imbalanced_digits  # the GAN bench's data: digits with class 0 cut to `rare`

    folder = imbalanced_digits(work / "digits", rare)
    run = genlab.fit("configs/digits-diffusion.yaml", out=work / "conditional", overrides=[
        "model.class_conditional=true", "data.source=image_folder", f"data.path={folder}", "train.progress=none",
        "data.test_fraction=0.2"])
    print(f"images: digits with class 0 cut to {rare} images; the digits-diffusion recipe made class-conditional "
          "(its 240 s); every class asked for equally")
    print(f"{'guidance':>8} {'0s drawn as 0 [90%]':>22} {'mean label accuracy':>20} {'flags on 0':>24}")
    for scale in (1.0, 3.0):
        run.model.sampling["guidance_scale"] = scale  # the same model, guided toward the label asked for
        result = audit_run(run, 500)
        zero = next(c for c in result["classes"] if c["class"] == "0")
        low, high = zero["label_accuracy_interval"]
        mean = np.mean([c["label_accuracy"] for c in result["classes"]])
        flags = ", ".join(f["kind"] for f in result["flags"] if f["class"] == "0") or "none"
        print(f"{scale:>8.1f} {zero['label_accuracy']:>8.3f} [{low:.3f}, {high:.3f}] {mean:>20.3f} {flags:>24}",
              flush=True)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    steps, seeds = (int(args[0]) if args else 1500), (int(args[1]) if len(args) > 1 else 3)
    work = Path(tempfile.mkdtemp())
    if "--images" in sys.argv:
        images(work)
    else:
        tables(work, steps, seeds)


if __name__ == "__main__":
    main()
