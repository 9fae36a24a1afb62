"""`genlab plan` against measured CPU runs: each config is planned, then trained in a process of its own whose
peak RSS is read; the predicted peak memory and step time are printed beside the measured ones. Figures only.

Usage: python bench/plan_check.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from genlab.study.plan import plan

CASES = [
    ("configs/digits-diffusion.yaml", ["train.max_steps=60", "train.batch_size=128"]),
    ("configs/shakespeare-char.yaml", ["train.max_steps=40"]),
    ("configs/digits-vae.yaml", ["train.max_steps=60", "train.batch_size=256"]),
    ("configs/python-docs-lm.yaml", ["train.max_steps=30", "train.batch_size=32"]),
    ("configs/cancer-tabular.yaml", ["train.max_steps=100"]),
]
RUNNER = ("import json, sys; import genlab; from genlab.study.plan import peak_rss\n"
          "run = genlab.fit(sys.argv[1], overrides=json.loads(sys.argv[2]), out=sys.argv[3])\n"
          "print(json.dumps({'peak': peak_rss(), 'rate': run.summary.get('samples_per_s')}))")


def main() -> None:
    work = Path(tempfile.mkdtemp())
    print(f"{'config':<34} {'predicted MB':>12} {'measured MB':>11} {'error':>7} {'pred s/step':>11} "
          f"{'meas s/step':>11}")
    for i, (config, overrides) in enumerate(CASES):
        over = [*overrides, "train.max_time=null", "train.progress=none"]
        p = plan(config, overrides=over)
        out = subprocess.run([sys.executable, "-c", RUNNER, config, json.dumps(over), str(work / str(i))],
                             capture_output=True, text=True, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        step = p["batch_per_device"] / measured["rate"] if measured["rate"] else float("nan")
        error = p["memory_total"] / measured["peak"] - 1
        print(f"{Path(config).stem + ' ' + ' '.join(overrides):<34.34} {p['memory_total'] / 1e6:>12.0f} "
              f"{measured['peak'] / 1e6:>11.0f} {error:>+7.1%} {p['step_seconds']:>11.3f} {step:>11.3f}", flush=True)
        print(f"    {', '.join(f'{k} {v / 1e6:.0f} MB' for k, v in p['memory'].items())}")


if __name__ == "__main__":
    main()
