"""GAN training throughput: a plain PyTorch GAN loop against `genlab fit`, by one clock.

The plain loop is what a user writes by hand: the same G and D (genlab's modules), hinge loss,
Adam, batch and data, one D update and one G update per batch, D frozen during G's backward.
genlab runs twice: lean (no EMA, no clipping: the plain loop's work) and with the digits-gan
config's defaults (EMA of G). All are timed alike: wall-clock seconds from the start of step
WARMUP to the end of the last step. Rounds interleave them in a rotating order; medians are
reported, and the lean/plain ratio within each round. Figures only; nothing is asserted.

Usage: python bench/gan_throughput.py [STEPS_PER_RUN] [ROUNDS] [BATCH]
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from clock import interleaved, timed_fit

import genlab
from genlab.data import load_dataset
from genlab.models.gan import GAN
from genlab.training.peak import matmul_peak

warnings.filterwarnings("ignore")
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 60
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
BATCH = int(sys.argv[3]) if len(sys.argv) > 3 else 64
WARMUP = 3
DEMO = genlab.load_config("configs/digits-gan.yaml", [f"train.batch_size={BATCH}", "train.progress=none"])
DATA = load_dataset(DEMO.data)


def plain_loop() -> float:
    torch.manual_seed(0)
    model = GAN(DEMO.model, DATA.spec)
    g, d, latent = model.generator, model.discriminator, DEMO.model.latent_dim
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.99))
    x = DATA.train.x
    for step in range(STEPS):
        if step == WARMUP:
            start = time.perf_counter()
        real = x[torch.randint(0, len(x), (BATCH,))]
        fake = g(torch.randn(BATCH, latent))
        d_real, d_fake = d(torch.cat([real, fake.detach()])).chunk(2)
        d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        d.requires_grad_(False)
        g_loss = -d(fake).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        d.requires_grad_(True)
    return (STEPS - WARMUP) * BATCH / (time.perf_counter() - start)


def genlab_fit(lean: bool) -> float:
    extra = ["train.ema.enabled=false", "train.checkpoint_every=100000"] if lean else []
    return timed_fit(DEMO, extra, WARMUP, STEPS, BATCH)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {STEPS} steps per run "
          f"(timed from step {WARMUP}), {ROUNDS} interleaved rounds, medians; G/D widths {DEMO.model.channels}")
    runs = {"plain": plain_loop, "genlab lean": lambda: genlab_fit(lean=True),
            "genlab defaults": lambda: genlab_fit(lean=False)}
    figures = interleaved(runs, ROUNDS)
    med = {name: statistics.median(v) for name, v in figures.items()}
    print(f"{'plain img/s':>11} {'lean img/s':>10} {'lean/plain':>10} {'defaults img/s':>14} {'defaults/plain':>14}")
    print(f"{med['plain']:>11.0f} {med['genlab lean']:>10.0f} {med['genlab lean'] / med['plain']:>10.3f} "
          f"{med['genlab defaults']:>14.0f} {med['genlab defaults'] / med['plain']:>14.3f}")
    for name, values in figures.items():
        print(f"    {name:<16} rounds: {' '.join(f'{v:.0f}' for v in values)}")
    for name in ("genlab lean", "genlab defaults"):
        paired = [ours / plain for ours, plain in zip(figures[name], figures["plain"], strict=True)]
        print(f"    {name}/plain within each round: median {statistics.median(paired):.3f}")
    print(f"matmul peak: fp32 {matmul_peak(torch.float32) / 1e9:.0f} GFLOP/s")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
