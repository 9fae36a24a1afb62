"""Super-resolution runs: PSNR and SSIM of each held-out photograph upscaled, beside bicubic upscaling.

Measured as BasicSR measures: on the Y channel of YCbCr (ITU-R BT.601) for colour images, with
`scale` pixels cropped from each border, per image, then averaged. The low-resolution inputs are
the held-out images downscaled the way training made its inputs (bicubic, antialiased, 8 bits).
Bicubic is reported twice, torch's and Pillow's (they differ by about 0.1 dB); a photograph counts as
above bicubic only when it beats the better of the two. Sharpness (mean luma gradient, no reference
needed) says how much detail a GAN-trained upscaler draws beyond what PSNR rewards.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from genlab.config import EvalConfig
from genlab.data.sources import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation.report import Scored, image_rows
from genlab.models.sr_gan import bicubic, low_resolution
from genlab.run import Run

METHODS = ("genlab", "bicubic", "pillow")  # the model; torch's bicubic; Pillow's bicubic


def evaluate_upscaling(run: Run, ev: EvalConfig, options: dict[str, Any]) -> Scored:
    dataset = load_dataset(run.config.data)
    held_out, split = (dataset.test, "test") if len(dataset.test) else (dataset.val, "val")
    if not len(held_out):
        raise GenlabError("evaluate: needs held-out images; set data.test_fraction > 0 when training")
    model, scale = run.model, run.model.scale
    photos = [x / 2 + 0.5 for x in held_out.x[: ev.num_samples]]
    names = held_out.names or [f"{split} {i}" for i in range(len(photos))]
    rows, seconds, first = [], 0.0, None
    for name, high in zip(names, photos, strict=False):
        high = high[None, :, : high.shape[-2] - high.shape[-2] % scale, : high.shape[-1] - high.shape[-1] % scale]
        low = low_resolution(high, scale)
        started = time.perf_counter()
        ours = model.upscale(low)
        seconds += time.perf_counter() - started
        upscaled = {"genlab": ours, "bicubic": bicubic(low, scale).clamp(0, 1), "pillow": pillow_bicubic(low, scale)}
        figures = {m: quality(x, high, scale) for m, x in upscaled.items()}
        rows.append({"image": name, "size": list(high.shape[-2:]), "sharpness_original": sharpness(high, scale),
                     **{f"{k}_{m}": v for m, f in figures.items() for k, v in f.items()}})
        first = first if first is not None else (upscaled["bicubic"], ours, high)
    mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key not in ("image", "size")}
    gains = [r["psnr_genlab"] - max(r["psnr_bicubic"], r["psnr_pillow"]) for r in rows]
    metrics = {"psnr": mean["psnr_genlab"], "ssim": mean["ssim_genlab"], "psnr_bicubic": mean["psnr_bicubic"],
               "ssim_bicubic": mean["ssim_bicubic"], "psnr_pillow": mean["psnr_pillow"],
               "ssim_pillow": mean["ssim_pillow"], "psnr_gain": mean["psnr_genlab"] - mean["psnr_bicubic"],
               "worst_gain": min(gains), "images_above_bicubic": sum(g > 0 for g in gains),
               "sharpness": mean["sharpness_genlab"], "sharpness_bicubic": mean["sharpness_bicubic"],
               "sharpness_original": mean["sharpness_original"], "per_image": rows, "scale": scale,
               "measured_on": "Y channel (BT.601)" if photos[0].shape[0] == 3 else "grey", "border_cropped": scale,
               "num_images": len(rows), "split": split, "image_size": rows[0]["size"],
               "seconds_per_image": seconds / len(rows)}
    table = [("PSNR (dB; higher is better)", f"{metrics['psnr']:.2f} (bicubic: torch {metrics['psnr_bicubic']:.2f}, "
                                              f"Pillow {metrics['psnr_pillow']:.2f})"),
             ("SSIM", f"{metrics['ssim']:.4f} (bicubic {metrics['ssim_bicubic']:.4f})"),
             ("above the better bicubic", f"{metrics['images_above_bicubic']} of {len(rows)} images; worst "
                                          f"{metrics['worst_gain']:+.2f} dB"),
             ("sharpness (mean luma gradient)", f"{metrics['sharpness']:.4f} (bicubic "
                                                f"{metrics['sharpness_bicubic']:.4f}, original "
                                                f"{metrics['sharpness_original']:.4f})"),
             *((f"  {r['image']}", f"{r['psnr_genlab']:.2f} dB (bicubic {r['psnr_bicubic']:.2f}, Pillow "
                                   f"{r['psnr_pillow']:.2f})") for r in rows)]
    setup = [("measured", f"x{scale} on {len(rows)} {split} images, {metrics['measured_on']}, {scale}-pixel border "
                          "cropped, as BasicSR"),
             ("inputs", "held-out images downscaled (bicubic, antialiased) and stored in 8 bits")]
    return Scored(metrics, table, setup, image_rows(_detail(*first), 3, "bicubic, genlab, original"))


def quality(upscaled: torch.Tensor, target: torch.Tensor, scale: int) -> dict[str, float]:
    """Mean per-image PSNR (dB), SSIM and sharpness on the luma channel, borders cropped."""
    a, b = (_luma(x)[..., scale:-scale, scale:-scale] for x in (upscaled, target))
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    return {"psnr": psnr.mean().item(), "ssim": ssim.mean().item(), "sharpness": sharpness(upscaled, scale)}


def sharpness(images: torch.Tensor, scale: int) -> float:
    """Mean gradient magnitude of the luma, borders cropped: a no-reference measure of drawn detail."""
    y = _luma(images)[..., scale:-scale, scale:-scale]
    dx, dy = y[..., :, 1:] - y[..., :, :-1], y[..., 1:, :] - y[..., :-1, :]
    return float((dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2).sqrt().mean())


def pillow_bicubic(low: torch.Tensor, scale: int) -> torch.Tensor:
    """Pillow's bicubic upscaling of 8-bit images (N, C, h, w) in [0, 1], as a user's image viewer would show it."""
    from PIL import Image

    out = []
    for image in low:
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        im = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        big = np.asarray(im.resize((im.width * scale, im.height * scale), Image.BICUBIC), dtype=np.float32) / 255
        out.append(torch.from_numpy(big.reshape(*big.shape[:2], -1)).permute(2, 0, 1))
    return torch.stack(out)


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
