"""Audio diffusion throughput: the plain diffusers loop against `genlab fit` on the spoken-digits recipe, by one
clock; then sampling seconds per clip and the vocoder's round trip.

The plain loop is what a user writes from the diffusers docs: the same UNet and scheduler, each batch of
waveforms turned into log-mels by the same torch front end, MSE on the noise, AdamW. genlab runs lean (no EMA,
no clipping: the plain loop's work) and with the recipe's defaults. Each is timed from the start of step WARMUP
to the end of the last, in rounds that rotate the order; medians are reported. Figures only; nothing asserted.

`recipe` instead trains the recipe in its budget and one step of it (the untrained anchor), evaluates both
with the same classifier, and prints the figures the recipe is held to: FID at most half the untrained
model's, label accuracy of "say N" at least 0.6 (chance 0.1).

Usage: python bench/audio_diffusion.py [STEPS_PER_RUN] [ROUNDS]
       python bench/audio_diffusion.py recipe [OUT_DIR]
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from clock import interleaved, timed_fit
from torch.utils.flop_counter import FlopCounterMode

import genlab
from genlab.data import load_dataset
from genlab.models.audio_diffusion import AudioDiffusion
from genlab.training.peak import matmul_peak

warnings.filterwarnings("ignore")
RECIPE_MODE = len(sys.argv) > 1 and sys.argv[1] == "recipe"
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 and not RECIPE_MODE else 40
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 and not RECIPE_MODE else 3
WARMUP = 3
RECIPE = genlab.load_config("configs/spoken-digits-diffusion.yaml", ["train.progress=none"])
BATCH = RECIPE.train.batch_size
DATA = load_dataset(RECIPE.data)


def plain_loop() -> float:
    torch.manual_seed(0)
    model = AudioDiffusion(RECIPE.model, DATA.spec)
    unet, scheduler, mel = model.diffusion.unet, model.diffusion.scheduler, model.mel
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    x, y = DATA.train.x, DATA.train.y
    for step in range(STEPS):
        if step == WARMUP:
            start = time.perf_counter()
        idx = torch.randint(0, len(x), (BATCH,))
        images = mel.encode(x[idx])
        noise, t = torch.randn_like(images), torch.randint(0, 1000, (BATCH,))
        loss = F.mse_loss(unet(scheduler.add_noise(images, noise, t), t, class_labels=y[idx]).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (STEPS - WARMUP) * BATCH / (time.perf_counter() - start)


def genlab_fit(lean: bool) -> float:
    extra = ["train.ema.enabled=false", "train.grad_clip=null", "train.checkpoint_every=100000"] if lean else []
    return timed_fit(RECIPE, extra, WARMUP, STEPS, BATCH)


def flops_per_clip() -> float:
    model = AudioDiffusion(RECIPE.model, DATA.spec)
    batch = {"x": DATA.train.x[:BATCH], "y": DATA.train.y[:BATCH]}
    with FlopCounterMode(display=False) as counter:
        model.diffusion.diffusion_loss(model.spectrograms(batch)).backward()
    return counter.get_total_flops() / BATCH


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {STEPS} steps per run "
          f"(timed from step {WARMUP}), {ROUNDS} interleaved rounds, medians; mels "
          f"{RECIPE.model.n_mels}x{RECIPE.model.frames} from {DATA.spec.shape[-1]}-sample clips")
    runs = {"plain": plain_loop, "genlab lean": lambda: genlab_fit(lean=True),
            "genlab defaults": lambda: genlab_fit(lean=False)}
    figures = interleaved(runs, ROUNDS)
    med = {name: statistics.median(v) for name, v in figures.items()}
    used = med["genlab defaults"] * flops_per_clip() / matmul_peak(torch.float32)
    print(f"training mels/s: plain {med['plain']:.1f}, genlab lean {med['genlab lean']:.1f} "
          f"({med['genlab lean'] / med['plain']:.3f}x), genlab defaults {med['genlab defaults']:.1f} "
          f"({med['genlab defaults'] / med['plain']:.3f}x), {used:.1%} of the float32 matmul peak")
    for name, values in figures.items():
        print(f"    {name:<16} rounds: {' '.join(f'{v:.1f}' for v in values)}")

    model = AudioDiffusion(RECIPE.model, DATA.spec).eval()
    options = dict(RECIPE.eval.sampling)
    model.sample(2, labels=[0, 1], steps=2, griffin_lim_iters=2)  # warm-up
    for n in (1, 16):
        start = time.perf_counter()
        model.sample(n, generator=torch.Generator().manual_seed(0), labels=torch.arange(n) % 10, **options)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            start = time.perf_counter()
            model.mel.decode(torch.zeros(n, 1, RECIPE.model.n_mels, RECIPE.model.frames),
                             options.get("griffin_lim_iters", 32))
            vocoder = time.perf_counter() - start
        print(f"sampling {n:>2} clip(s) at once ({options}): {seconds / n:.3f} s per clip, "
              f"of which Griffin-Lim {vocoder / n:.3f} s")
    clips = DATA.test.x[:200]
    with torch.no_grad():
        for iterations in (0, 8, 32, 64):
            rebuilt = model.mel.decode(model.mel.encode(clips), iterations)
            error = (model.mel.encode(rebuilt) - model.mel.encode(clips)).abs().mean()
            print(f"vocoder round trip on {len(clips)} real clips, {iterations:>2} Griffin-Lim iterations: spectral "
                  f"convergence {model.mel.spectral_convergence(clips, rebuilt):.3f}, log-mel error {error:.4f} "
                  "(of the [-1, 1] range)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def recipe(out: str) -> None:
    started = time.perf_counter()
    config = "configs/spoken-digits-diffusion.yaml"
    trained = genlab.fit(config, overrides=["train.progress=log"], out=f"{out}/recipe")
    seconds = time.perf_counter() - started
    untrained = genlab.fit(config, overrides=["train.progress=none", "train.max_steps=1"], out=f"{out}/untrained")
    good, bad = genlab.evaluate(trained), genlab.evaluate(untrained)
    print(f"recipe: {trained.summary['steps']} steps in {seconds:.0f} s of fit ({trained.summary['stopped_because']})")
    for key in ("fid", "kid_mean", "label_accuracy", "inception_score", "precision", "recall"):
        print(f"    {key:<16} trained {good[key]:.4g}   untrained {bad[key]:.4g}")
    print(f"    FID floor (real vs real) {good['fid_real_baseline']:.4g}; the vocoder alone (real vs vocoded real) "
          f"{good['fid_vocoded_real']:.4g}; classifier accuracy on real {good['classifier_accuracy']:.3f}, on "
          f"vocoded real {good['classifier_accuracy_vocoded']:.3f}; spectral convergence of the vocoder "
          f"{good['vocoder_spectral_convergence']:.3f}; {good['seconds_per_sample']:.3f} s per sampled clip")
    print(f"goals: FID <= half the untrained model's: {good['fid'] <= 0.5 * bad['fid']} "
          f"({good['fid'] / bad['fid']:.3f}); label accuracy >= 0.6: {good['label_accuracy'] >= 0.6}")


if __name__ == "__main__":
    if RECIPE_MODE:
        recipe(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="audio-recipe-"))
    else:
        main()
