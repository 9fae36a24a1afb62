"""beta-VAE on the shapes set: MIG for each beta on the same budget (steps, data, seed), with the
training images/s, KL, active units and reconstruction, one line each. Figures only; nothing is asserted.

Usage: python bench/vae_shapes.py [STEPS] [BETAS, e.g. 1,4,8]
"""

from __future__ import annotations

import sys
import tempfile
import warnings

import genlab

warnings.filterwarnings("ignore")
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 600
BETAS = [float(b) for b in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1.0, 4.0]
SHARED = ["data.source=shapes", "data.image_size=32", "data.limit=10000", "model.family=vae", "model.latent_dim=6",
          "model.channels=[32,32,64]", "model.hidden=128", "train.batch_size=64", f"train.max_steps={STEPS}",
          "train.max_time=null", "train.val_every=100000", "train.optimizer.lr=0.001", "train.schedule.name=constant",
          "train.ema.enabled=false", "train.grad_clip=null", "train.progress=none", "eval.num_samples=200",
          "eval.feature_steps=100", "eval.likelihood_samples=4", "eval.latent_images=1000"]


def main() -> None:
    print(f"shapes 32x32, 10,000 images, 6-d latent, {STEPS} steps of 64 per beta")
    print(f"{'beta':>5} {'MIG':>6} {'img/s':>6} {'KL':>6} {'active':>6} {'recon':>7}  MIG per factor")
    with tempfile.TemporaryDirectory() as tmp:
        for beta in BETAS:
            run = genlab.fit(None, overrides=[*SHARED, f"model.beta={beta}"], out=f"{tmp}/beta{beta}")
            m = genlab.evaluate(run)
            per = " ".join(f"{k} {v:.3f}" for k, v in m["mig_per_factor"].items())
            print(f"{beta:>5g} {m['mig']:>6.3f} {run.summary['samples_per_s']:>6.0f} {m['kl']:>6.1f} "
                  f"{m['active_units']:>6} {m['reconstruction_nll']:>7.1f}  {per}", flush=True)


if __name__ == "__main__":
    main()
