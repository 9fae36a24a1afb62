"""Text to image on captioned_shapes: the two recipes (autoencoder, then latent diffusion) and what the judge finds.

Trains the autoencoder recipe once, then latent diffusion at the recipe's budget with each text encoder asked for
(the frozen pretrained MiniLM, and a small encoder trained from scratch: the baseline), and a one-step model (the
untrained floor). Prints, per arm and for seen and unseen shape-colour pairs, the attribute accuracy the judge
finds, beside the judge's ceiling on real images and a model that ignores the prompt, and the wall-clock time of
each stage. Figures only.

Usage: python bench/text_to_image.py [ENCODERS] [SEEDS]   (ENCODERS: comma-separated, default "minilm,scratch")
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import genlab

warnings.filterwarnings("ignore")
ENCODERS = sys.argv[1].split(",") if len(sys.argv) > 1 else ["minilm", "scratch"]
SEEDS = int(sys.argv[2]) if len(sys.argv) > 2 else 1
ROOT = Path(__file__).resolve().parents[1] / "configs"


def fit(config: str, out: Path, overrides: list[str]) -> tuple[genlab.Run, float]:
    started = time.perf_counter()
    run = genlab.fit(str(ROOT / config), out=out, overrides=["train.progress=none", *overrides])
    return run, time.perf_counter() - started


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    ae, ae_seconds = fit("captioned-shapes-autoencoder.yaml", tmp / "ae", [])
    print(f"autoencoder: {ae.summary['steps']} steps in {ae_seconds:.0f} s")
    arms = {"untrained (1 step)": ["train.max_steps=1", "train.max_time=null", "train.ema.decay=null"]}
    arms |= {f"{name} encoder": [f"model.text_encoder={name}"] for name in ENCODERS}
    rows: dict[str, list[dict]] = {name: [] for name in arms}
    for seed in range(SEEDS):
        for name, overrides in arms.items():
            run, seconds = fit("captioned-shapes-t2i.yaml", tmp / f"{name.split()[0]}-{seed}",
                               [f"model.autoencoder={ae.path}", f"train.seed={seed}", *overrides])
            metrics = genlab.evaluate(run)
            rows[name].append({**metrics, "seconds": seconds, "steps": run.summary["steps"]})
            print(f"  {name}, seed {seed}: {run.summary['steps']} steps in {seconds:.0f} s, adherence seen "
                  f"{metrics['adherence_seen']:.3f}, unseen {metrics['adherence_unseen']:.3f}, "
                  f"FID {metrics['fid']:.3g}", flush=True)
    first = next(iter(rows.values()))[0]
    print(f"\nprompt adherence (attributes the judge finds as asked; medians of {SEEDS}), autoencoder "
          f"{ae_seconds:.0f} s")
    print(f"  {'':<24} {'seen':>7} {'unseen':>7} {'all seen':>9} {'all unseen':>11} {'FID':>7} {'steps':>6} {'s':>5}")
    for label, key in (("the judge on real images", "ceiling"), ("prompt ignored", "prompt_ignored")):
        a = first["adherence"]
        print(f"  {label:<24} {a[f'seen_{key}']['attributes']:7.3f} {a[f'unseen_{key}']['attributes']:7.3f} "
              f"{a[f'seen_{key}']['all']:9.3f} {a[f'unseen_{key}']['all']:11.3f}")
    def med(runs: list[dict], key: str, part: str | None = None) -> float:
        return statistics.median(r["adherence"][part][key] if part else r[key] for r in runs)

    for name, runs in rows.items():
        print(f"  {name:<24} {med(runs, 'adherence_seen'):7.3f} {med(runs, 'adherence_unseen'):7.3f} "
              f"{med(runs, 'all', 'seen'):9.3f} {med(runs, 'all', 'unseen'):11.3f} {med(runs, 'fid'):7.3g} "
              f"{med(runs, 'steps'):6.0f} {med(runs, 'seconds'):5.0f}")
    per = ("shape", "colour", "size", "place", "count", "relation")
    print("\nper attribute, unseen pairs (medians)")
    print("  " + " " * 24 + "".join(f"{k:>9}" for k in per))
    for name, runs in rows.items():
        print(f"  {name:<24}" + "".join(f"{statistics.median(r['adherence']['unseen'][k] for r in runs):9.3f}"
                                         for k in per))


if __name__ == "__main__":
    main()
