"""The super-resolution recipes as shipped, on photographs they never train on, beside bicubic.

Trains `configs/photos-sr.yaml` (L1 only) at x2 and x4 and `configs/photos-sr-gan.yaml` at x4, each in
its own 300 s budget, then scores the three held-out photographs whole (Y channel, border
cropped, inputs downscaled and stored in 8 bits): PSNR beside torch's and Pillow's bicubic, the
gain over the better of the two per photograph, SSIM, and sharpness (mean luma gradient, no
reference) beside bicubic's and the original's. Rounds interleave the recipes, one split seed
per round (the held-out photographs stay the same; the crops differ); medians are reported.
The goals: the PSNR recipe above bicubic on every photograph, by 0.5 dB at x2 and 0.3 dB at x4 on
average; the GAN recipe within 0.5 dB of bicubic and sharper. Figures only.

Usage: python bench/sr_recipes.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import warnings

import genlab

warnings.filterwarnings("ignore")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
ARMS = {
    "PSNR recipe, x2": ("configs/photos-sr.yaml", ["model.scale=2"]),
    "PSNR recipe, x4": ("configs/photos-sr.yaml", []),
    "GAN recipe, x4": ("configs/photos-sr-gan.yaml", []),
}
FIGURES = ("psnr_genlab", "psnr_bicubic", "psnr_pillow", "ssim_genlab", "ssim_bicubic", "sharpness_genlab",
           "sharpness_bicubic", "sharpness_original")


def main() -> None:
    tmp = tempfile.mkdtemp()
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for r in range(ROUNDS):
        for arm, (config, over) in ARMS.items():
            run = genlab.fit(config, out=f"{tmp}/{r}-{len(results[arm])}-{arm[:3]}{over}",
                             overrides=[*over, f"data.split_seed={r}", "train.progress=none"])
            metrics = genlab.evaluate(run)
            metrics["steps"] = run.summary.get("steps")
            results[arm].append(metrics)
            print(f"round {r}, {arm}: {metrics['psnr']:.2f} dB (bicubic {metrics['psnr_bicubic']:.2f}), "
                  f"{metrics['steps']} steps", flush=True)

    print(f"\nmedians of {ROUNDS} round(s); PSNR in dB on the Y channel; gain over the better bicubic")
    print(f"  {'recipe':<18} {'photograph':<10} {'genlab':>7} {'torch bic':>9} {'Pillow bic':>10} {'gain':>6} "
          f"{'SSIM':>6} {'bic SSIM':>8} {'sharpness':>9} {'bicubic':>8} {'original':>8}")
    for arm, runs in results.items():
        rows = [[m["per_image"][i] for m in runs] for i in range(len(runs[0]["per_image"]))]
        means = [{k: m[k.replace("_genlab", "")] if k.endswith("_genlab") else m[k] for k in FIGURES} for m in runs]
        for name, per_run in [*((r[0]["image"], r) for r in rows), ("mean", means)]:
            f = {k: statistics.median(x[k] for x in per_run) for k in FIGURES}
            gain = statistics.median(x["psnr_genlab"] - max(x["psnr_bicubic"], x["psnr_pillow"]) for x in per_run)
            print(f"  {arm:<18} {name:<10} {f['psnr_genlab']:7.2f} {f['psnr_bicubic']:9.2f} {f['psnr_pillow']:10.2f} "
                  f"{gain:+6.2f} {f['ssim_genlab']:6.4f} {f['ssim_bicubic']:8.4f} {f['sharpness_genlab']:9.4f} "
                  f"{f['sharpness_bicubic']:8.4f} {f['sharpness_original']:8.4f}")
        print(f"  {arm:<18} photographs above the better bicubic: "
              f"{statistics.median(m['images_above_bicubic'] for m in runs):.0f} of {len(rows)}; "
              f"{statistics.median(m['steps'] for m in runs):.0f} steps")


if __name__ == "__main__":
    main()
