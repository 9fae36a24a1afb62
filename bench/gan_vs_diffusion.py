"""FID against training time: the digits GAN beside the digits diffusion demo, on the same data and
the same wall-clock budgets (`train.max_time`; each config keeps its own max_steps and schedule),
scored by `genlab evaluate` in the same feature space (the FeatureNet is seeded and trained on the
same split, so both runs get the same extractor).
Figures only; nothing is asserted.

Usage: python bench/gan_vs_diffusion.py [BUDGETS in seconds, e.g. 60,120,240]
"""

from __future__ import annotations

import sys
import tempfile
import warnings

import genlab

warnings.filterwarnings("ignore")
BUDGETS = [int(b) for b in sys.argv[1].split(",")] if len(sys.argv) > 1 else [60, 120, 240]
CONFIGS = {"gan": "configs/digits-gan.yaml", "diffusion": "configs/digits-diffusion.yaml"}


def main() -> None:
    print(f"{'budget s':>8} {'family':<10} {'steps':>6} {'train s':>8} {'FID':>7} {'KID':>8} {'real floor':>10} "
          f"{'ms/sample':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for budget in BUDGETS:
            for family, config in CONFIGS.items():
                over = [f"train.max_time={budget}", "train.progress=none",
                        "train.val_every=100000"]
                run = genlab.fit(config, overrides=over, out=f"{tmp}/{family}-{budget}")
                m = genlab.evaluate(run)
                s = run.summary
                print(f"{budget:>8} {family:<10} {s['steps']:>6} {s['train_seconds']:>8.0f} {m['fid']:>7.3f} "
                      f"{m['kid_mean']:>8.4f} {m['fid_real_baseline']:>10.3f} {1000 * m['seconds_per_sample']:>9.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
