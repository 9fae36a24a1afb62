"""Diffusion training throughput: the plain diffusers loop against `genlab fit`, by one clock.

The plain loop is the one a user writes from the diffusers docs (the `UNet2DModel` training example):
same UNet, data, batch and precision. genlab runs twice: lean (no EMA, no clipping: the work the
plain loop does) and with the demo's defaults (EMA, clipping, NaN guard, checkpoints). All three
are timed the same way: wall-clock seconds from the start of step WARMUP to the end of the last
step, images per second over those steps. Rounds interleave the three (in a rotating order, so
drift in machine load hits each alike); medians are reported. Figures only; nothing is asserted.

Usage: python bench/diffusion_throughput.py [STEPS_PER_RUN] [ROUNDS] [BATCH] [PRECISIONS, e.g. 32-true,bf16-mixed]
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from clock import timed_fit
from torch.utils.flop_counter import FlopCounterMode

import genlab
from genlab.data import load_dataset
from genlab.models import Diffusion
from genlab.training.peak import matmul_peak

warnings.filterwarnings("ignore")
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 60
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
BATCH = int(sys.argv[3]) if len(sys.argv) > 3 else 128
PRECISIONS = sys.argv[4].split(",") if len(sys.argv) > 4 else ["32-true", "bf16-mixed"]
WARMUP = 3
DEMO = genlab.load_config("configs/digits-diffusion.yaml", [f"train.batch_size={BATCH}", "train.progress=none"])
DATA = load_dataset(DEMO.data)


def plain_loop(precision: str) -> float:
    torch.manual_seed(0)
    unet, sched = (m := Diffusion(DEMO.model, DATA.spec)).unet, m.scheduler
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    x = DATA.train.x
    for step in range(STEPS):
        if step == WARMUP:
            start = time.perf_counter()
        b = x[torch.randint(0, len(x), (BATCH,))]
        noise, t = torch.randn_like(b), torch.randint(0, 1000, (BATCH,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = F.mse_loss(unet(sched.add_noise(b, noise, t), t).sample.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (STEPS - WARMUP) * BATCH / (time.perf_counter() - start)


def genlab_fit(precision: str, lean: bool) -> float:
    extra = ["train.ema.enabled=false", "train.grad_clip=null", "train.checkpoint_every=100000"] if lean else []
    return timed_fit(DEMO, [f"train.precision={precision}", *extra], WARMUP, STEPS, BATCH)


def flops_per_image(precision: str) -> float:
    unet, sched = (m := Diffusion(DEMO.model, DATA.spec)).unet, m.scheduler
    b = DATA.train.x[:BATCH]
    noise, t = torch.randn_like(b), torch.randint(0, 1000, (BATCH,))
    with FlopCounterMode(display=False) as counter, torch.autocast("cpu", torch.bfloat16,
                                                                   enabled=precision == "bf16-mixed"):
        F.mse_loss(unet(sched.add_noise(b, noise, t), t).sample.float(), noise).backward()
    return counter.get_total_flops() / BATCH


def sampling_seconds_per_image(model: Diffusion, sampler: str, steps: int, n: int) -> float:
    model.sample(2, sampler=sampler, steps=2)  # warm-up
    start = time.perf_counter()
    model.sample(n, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=steps)
    return (time.perf_counter() - start) / n


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, {STEPS} steps per run "
          f"(timed from step {WARMUP}), {ROUNDS} interleaved rounds, medians")
    runs = {"plain": lambda p: plain_loop(p), "genlab lean": lambda p: genlab_fit(p, lean=True),
            "genlab defaults": lambda p: genlab_fit(p, lean=False)}
    print(f"{'precision':<11} {'plain img/s':>11} {'lean img/s':>10} {'lean/plain':>10} {'defaults img/s':>14} "
          f"{'defaults/plain':>14} {'of peak':>8}")
    for precision in PRECISIONS:
        figures: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(ROUNDS):
            order = list(runs)[r % 3:] + list(runs)[: r % 3]
            for name in order:
                figures[name].append(runs[name](precision))
        med = {name: statistics.median(v) for name, v in figures.items()}
        peak = matmul_peak(torch.bfloat16 if precision.startswith("bf16") else torch.float32)
        used = med["genlab defaults"] * flops_per_image(precision) / peak
        print(f"{precision:<11} {med['plain']:>11.0f} {med['genlab lean']:>10.0f} "
              f"{med['genlab lean'] / med['plain']:>10.3f} {med['genlab defaults']:>14.0f} "
              f"{med['genlab defaults'] / med['plain']:>14.3f} {used:>8.1%}", flush=True)
        for name, values in figures.items():
            print(f"    {name:<16} rounds: {' '.join(f'{v:.0f}' for v in values)}")
        paired = [lean / plain for lean, plain in zip(figures["genlab lean"], figures["plain"], strict=True)]
        print(f"    lean/plain within each round: median {statistics.median(paired):.3f}")
    print(f"matmul peak: fp32 {matmul_peak(torch.float32) / 1e9:.0f} GFLOP/s, "
          f"bf16 {matmul_peak(torch.bfloat16) / 1e9:.0f} GFLOP/s")

    print("\nsampling, seconds per image (batch 64; DDPM batch 16):")
    model = Diffusion(DEMO.model, DATA.spec).eval()
    for sampler, steps, n in (("ddpm", 1000, 16), ("ddim", 50, 64), ("dpm-solver", 20, 64)):
        print(f"  {sampler}-{steps}: {sampling_seconds_per_image(model, sampler, steps, n) * 1000:.1f} ms")
    print(f"\npeak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
