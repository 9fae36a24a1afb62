"""Super-resolution runs: PSNR and SSIM of the upscaled held-out images, beside bicubic upscaling.

Measured as BasicSR measures: on the Y channel of YCbCr (ITU-R BT.601) for colour images, with
`scale` pixels cropped from each border, per image, then averaged. The low-resolution inputs are
the held-out images downscaled the way training made its inputs (bicubic, antialiased).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from genlab.config import EvalConfig
from genlab.data.sources import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation.report import image_rows, write_report
from genlab.models.sr_gan import bicubic, downscale
from genlab.run import Run, write_json


def evaluate_upscaling(run: Run, ev: EvalConfig, options: dict[str, Any]) -> dict[str, Any]:
    dataset = load_dataset(run.config.data)
    held_out, split = (dataset.test, "test") if len(dataset.test) else (dataset.val, "val")
    if not len(held_out):
        raise GenlabError("evaluate: needs held-out images; set data.test_fraction > 0 when training")
    model, scale = run.model, run.model.config.scale
    high = held_out.x[: ev.num_samples] / 2 + 0.5
    low = downscale(high, scale)
    started = time.perf_counter()
    upscaled = torch.cat([model.upscale(low[i : i + ev.batch_size]) for i in range(0, len(low), ev.batch_size)])
    seconds = time.perf_counter() - started
    baseline = bicubic(low, scale).clamp(0, 1)
    ours, theirs = quality(upscaled, high, scale), quality(baseline, high, scale)
    metrics = {"psnr": ours["psnr"], "ssim": ours["ssim"], "psnr_bicubic": theirs["psnr"],
               "ssim_bicubic": theirs["ssim"], "psnr_gain": ours["psnr"] - theirs["psnr"],
               "scale": scale,
               "measured_on": "Y channel (BT.601)" if high.shape[1] == 3 else "grey", "border_cropped": scale,
               "num_images": len(high), "split": split, "image_size": list(high.shape[-2:]),
               "seconds_per_image": seconds / len(high)}
    write_json(run.paths.metrics, metrics)
    rows = [("PSNR (dB; higher is better)", f"{ours['psnr']:.2f} (bicubic {theirs['psnr']:.2f})"),
            ("SSIM", f"{ours['ssim']:.4f} (bicubic {theirs['ssim']:.4f})")]
    setup = [("measured", f"x{scale} on {len(high)} {split} images, {metrics['measured_on']}, {scale}-pixel border "
                          "cropped, as BasicSR"), ("inputs", "held-out images downscaled (bicubic, antialiased)")]
    write_report(run, rows, setup, image_rows(_detail(baseline, upscaled, high), 3, "bicubic, genlab, original"))
    return metrics


def quality(upscaled: torch.Tensor, target: torch.Tensor, scale: int) -> dict[str, float]:
    """Mean per-image PSNR (dB) and SSIM on the luma channel, borders cropped."""
    a, b = (_luma(x)[..., scale:-scale, scale:-scale] for x in (upscaled, target))
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    return {"psnr": psnr.mean().item(), "ssim": ssim.mean().item()}


def _luma(images: torch.Tensor) -> torch.Tensor:
    """Y of YCbCr as BasicSR computes it (16-235 range, in [0, 1]); grey images as they are."""
    if images.shape[1] == 1:
        return images.double()
    weights = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64).view(1, 3, 1, 1) / 255
    return (images.double() * weights).sum(1, keepdim=True) + 16 / 255


def _detail(*images: torch.Tensor, side: int = 96) -> torch.Tensor:
    """The same crop of the first image of each (the busiest `side`-square by variance), side by side."""
    first = images[-1][0]
    side = min(side, *first.shape[-2:])
    windows = first.mean(0).unfold(0, side, side // 2).unfold(1, side, side // 2)
    i, j = divmod(int(windows.flatten(2).var(-1).argmax()), windows.shape[1])
    top, left = i * (side // 2), j * (side // 2)
    return torch.stack([im[0, :, top : top + side, left : left + side] for im in images])
