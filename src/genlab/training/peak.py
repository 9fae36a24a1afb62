"""The machine's matmul peak, measured at start-up, so throughput reads as a fraction of it."""

from __future__ import annotations

import functools
import time

import torch


@functools.cache
def matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu", size: int = 1024,
                seconds: float = 0.25) -> float:
    """FLOP/s of a square `size` matmul in `dtype` on `device`: the best of repeated timed runs."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up: first call pays for kernel selection
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best
