"""A sweep of the digits diffusion recipe, killed halfway and resumed: what the search finds against the recipe's
own setting (trial 0), and how many trials the median pruner stopped. Figures only.

Two keys: the learning rate and the EMA decay. Each trial trains STEPS steps (a step budget, not a time budget,
so that another process on the machine cannot change a trial's result); the objective is the validation loss.
The sweep runs in a process of its own that is killed once half the trials have finished, then started again.

Usage: python bench/sweep_digits.py [TRIALS] [STEPS]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from genlab.config import load_config
from genlab.study.sweep import study_of, sweep

SPACE = {"train.optimizer.lr": {"log_uniform": [5.0e-4, 8.0e-3]}, "train.ema.decay": {"uniform": [0.99, 0.999]}}


def main(trials: int = 12, steps: int = 300) -> None:
    from optuna.trial import TrialState

    work = Path(tempfile.mkdtemp())
    cfg = load_config("configs/digits-diffusion.yaml", [f"train.max_steps={steps}", "train.max_time=null",
                                                         f"train.val_every={steps // 4}", "train.progress=none",
                                                         f"train.checkpoint_every={steps // 4}"])
    (work / "recipe.yaml").write_text(cfg.to_yaml())
    (work / "space.yaml").write_text(yaml.safe_dump(SPACE))
    out = work / "sweep"
    args = [sys.executable, "-m", "genlab", "sweep", str(work / "recipe.yaml"), "--space", str(work / "space.yaml"),
            "--trials", str(trials), "--out", str(out)]
    began = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    while proc.poll() is None:
        if (out / "study.journal").is_file() and len(study_of(out).get_trials(states=done)) >= trials // 2:
            break
        time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cut = len(study_of(out).get_trials(states=done))
    result = sweep(work / "recipe.yaml", space=work / "space.yaml", trials=trials, out=out)
    study = study_of(out)
    baseline = study.get_trials()[0]
    print(f"digits-diffusion, {steps} steps a trial, {trials} trials; killed after {cut} had finished, then resumed "
          f"({time.perf_counter() - began:.0f} s in all)")
    print(f"{'trial':>5} {'state':>9} {'val/loss':>9}  lr        ema decay")
    for t in study.get_trials():
        value = t.value if t.value is not None else float("nan")
        print(f"{t.number:>5} {t.state.name.lower():>9} {value:>9.4f}  {t.params.get('train.optimizer.lr', 0):.2e}  "
              f"{t.params.get('train.ema.decay', 0):.4f}")
    best = result["best"][0]
    print(f"recipe's own setting (trial 0): {baseline.value:.4f}; best: trial {best['number']} {best['value']:.4f}; "
          f"{result['counts']['pruned']} pruned, {result['counts']['fail']} failed (the kill)")
    print(f"importances: {result['importances']}; report: {out / 'sweep.html'}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
