"""Diffusion training throughput, plain diffusers loop vs `genlab fit`, side by side; sampling time per image.

The plain loop is the one a user writes from the diffusers docs (shared/bench/anchor_diffusion.py):
same UNet, data, batch and precision. genlab runs twice: with the work the plain loop does (no EMA,
no clipping, no validation) to show Lightning's overhead, and with the demo's defaults (EMA, clipping).
Figures only; nothing is asserted.

Usage: python bench/diffusion_throughput.py [SECONDS_PER_RUN] [BATCH]
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

import genlab
from genlab.data import load_dataset
from genlab.models import Diffusion
from genlab.training.peak import matmul_peak

warnings.filterwarnings("ignore")
SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 30
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 128
CONFIG = genlab.load_config(None, [f"train.batch_size={BATCH}", "train.progress=none", "train.log_every=5"])


def plain_loop(precision: str) -> float:
    data = load_dataset(CONFIG.data)
    torch.manual_seed(0)
    model = Diffusion(CONFIG.model, data.spec)
    unet, sched = model.unet, model.scheduler
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    x, n, steps, t0 = data.train.x, 0, 0, None
    while True:
        b = x[torch.randint(0, len(x), (BATCH,))]
        noise, t = torch.randn_like(b), torch.randint(0, 1000, (BATCH,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = F.mse_loss(unet(sched.add_noise(b, noise, t), t).sample.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if steps == 3:
            t0 = time.perf_counter()  # skip warm-up
        elif t0 and time.perf_counter() - t0 >= SECONDS:
            return n / (time.perf_counter() - t0)
        if t0:
            n += BATCH


def genlab_fit(precision: str, lean: bool) -> tuple[float, float]:
    extra = ["train.ema.enabled=false", "train.grad_clip=null"] if lean else []
    over = [f"train.precision={precision}", "train.max_steps=100000", f"train.max_time={SECONDS + 5}",
            "train.val_every=100000", "train.grid_size=0", "train.schedule.name=constant", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        run = genlab.fit(CONFIG, overrides=over, out=f"{tmp}/run")
        return run.summary["samples_per_s"], run.summary["mfu"]


def sampling_seconds_per_image(model: Diffusion, sampler: str, steps: int, n: int) -> float:
    model.sample(2, sampler=sampler, steps=2)  # warm-up
    start = time.perf_counter()
    model.sample(n, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=steps)
    return (time.perf_counter() - start) / n


def main() -> None:
    peaks = {p: matmul_peak(torch.bfloat16 if p.startswith("bf16") else torch.float32) for p in ("32-true",
                                                                                                  "bf16-mixed")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {SECONDS:.0f} s per run")
    print(f"matmul peak: fp32 {peaks['32-true'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16-mixed'] / 1e9:.0f} GFLOP/s")
    model = Diffusion(CONFIG.model, load_dataset(CONFIG.data).spec)
    print(f"UNet2DModel: {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f} M parameters, 16x16x1 images\n")
    print(f"{'precision':<11} {'plain img/s':>11} {'genlab img/s':>12} {'ratio':>6} {'of peak':>8} "
          f"{'+EMA,clip img/s':>16}")
    for precision in ("32-true", "bf16-mixed"):
        plain = plain_loop(precision)
        lean, mfu = genlab_fit(precision, lean=True)
        full, _ = genlab_fit(precision, lean=False)
        print(f"{precision:<11} {plain:>11.0f} {lean:>12.0f} {lean / plain:>6.2f} {mfu:>8.1%} {full:>16.0f}",
              flush=True)
    print("\nsampling, seconds per image (batch 64; DDPM batch 16):")
    model.eval()
    for sampler, steps, n in (("ddpm", 1000, 16), ("ddim", 50, 64), ("dpm-solver", 20, 64)):
        print(f"  {sampler}-{steps}: {sampling_seconds_per_image(model, sampler, steps, n) * 1000:.1f} ms")
    print(f"\npeak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
