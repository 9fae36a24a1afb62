"""The machine's matmul peak, so throughput reads as a fraction of what the hardware can do.

One timing reads low whenever the machine is briefly busy, and a low peak inflates the fraction
past 100%. So the peak is the best of several short trials, taken at the start of training and
again at its end (`Throughput` keeps the higher), and `PEAK_METHOD` says so in train.json. The
hardware's peak does not change within a process: a later reading adds one trial to the best of
the earlier ones, and once the process has run MAX_TRIALS it returns their best, so a sweep's or a
bake-off's runs share one peak and do not pay for it each (0.2 s of a tiny run's 0.6 on a CPU).
"""

from __future__ import annotations

import functools
import time

import torch

SIZE, TRIALS, SECONDS_PER_TRIAL, MAX_TRIALS = 1024, 5, 0.06, 20
PEAK_METHOD = (f"best of {TRIALS} trials x {SECONDS_PER_TRIAL} s of {SIZE}x{SIZE} matmuls, measured at the start "
               "and at the end of training (and of every earlier reading in the process, up to "
               f"{MAX_TRIALS} trials); the higher is kept")
_best: dict[tuple[str, str], float] = {}  # this process's best reading, by dtype and device
_trials: dict[tuple[str, str], int] = {}  # and how many trials it took


def matmul_peak(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> float:
    """FLOP/s of a square matmul in `dtype` on `device`: the fastest single product over several trials, and
    over this process's earlier readings (after the first, one more trial each, up to MAX_TRIALS in all)."""
    key = (str(dtype), str(device))
    if _trials.get(key, 0) >= MAX_TRIALS:
        return _best[key]
    a = torch.randn(SIZE, SIZE, device=device).to(dtype)
    b = torch.randn(SIZE, SIZE, device=device).to(dtype)
    a @ b  # warm-up: the first call pays for kernel selection
    best = _best.get(key, 0.0)
    trials = 1 if key in _best else TRIALS
    for _ in range(trials):
        deadline = time.perf_counter() + SECONDS_PER_TRIAL
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            a @ b
            if a.device.type == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * SIZE**3 / (time.perf_counter() - start))
    _best[key], _trials[key] = best, _trials.get(key, 0) + trials
    return best


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 or AMX on x86, BF16 on Arm). Without them a bf16
    matmul takes a reference path: 1.0 against fp32's 66 GFLOP/s on one core of an AVX2-only EPYC."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: keep what the config asks
        return True
