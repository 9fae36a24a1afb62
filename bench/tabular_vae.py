"""The tabular VAE beside scikit-learn on breast_cancer: training rows/s, then the imputation table
(z-scored RMSE at 20% MCAR over three mask seeds) and the anomaly table (AUROC, benign rows for
training, malignant rows as anomalies), each with its timing. Figures only; nothing is asserted.

Usage: python bench/tabular_vae.py [CONFIG] [--set key=value ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings

import genlab

warnings.filterwarnings("ignore")
CONFIG = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "configs/cancer-tabular.yaml"
OVERRIDES = [a for a in sys.argv[1:] if "=" in a]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = genlab.fit(CONFIG, overrides=[*OVERRIDES, "train.progress=none"], out=f"{tmp}/run")
        s = run.summary
        print(f"{CONFIG}: {s['steps']} steps in {s['train_seconds']} s of training, "
              f"{s['samples_per_s']:.0f} rows/s, {100 * s['mfu']:.0f}% of the fp32 matmul peak")
        started = time.perf_counter()
        m = genlab.evaluate(run)
        print(f"evaluate: {time.perf_counter() - started:.1f} s (imputation over 3 seeds: "
              f"{m['imputation_seconds']:.1f} s)\n")
    print(f"imputation, 20% MCAR on {m['imputation_rows']} held-out rows (not anomalies):")
    print(f"  {'method':<22} {'RMSE (z)':>9} {'cat. acc':>9}")
    for method, f in sorted(m["imputation"].items(), key=lambda kv: kv[1].get("rmse", 0)):
        accuracy = f"{f['accuracy']:.3f}" if "accuracy" in f else "-"
        print(f"  {method:<22} {f.get('rmse', float('nan')):>9.3f} {accuracy:>9}")
    if "anomaly" in m and "auroc" in m["anomaly"]:
        a = m["anomaly"]
        print(f"\nanomaly detection, {a['normal']} normal and {a['anomalies']} anomalous test rows:")
        for method, auc in sorted(a["auroc"].items(), key=lambda kv: -kv[1]):
            print(f"  {method:<22} AUROC {auc:.3f}")
    syn = m["synthetic"]
    print(f"\nsynthetic rows ({syn['rows']}): mean KS {syn['mean_ks']:.3f}, correlation difference "
          f"{syn['correlation_difference']:.3f}"
          + (f", train-on-synthetic {syn['train_on_synthetic']:.3f} vs train-on-real {syn['train_on_real']:.3f}"
             if "train_on_synthetic" in syn else ""))


if __name__ == "__main__":
    main()
