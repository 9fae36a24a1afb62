"""Image files: tensors in [0, 1] to PNG grids and back, and Pillow's complaints about a file as genlab notes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one uint8 (H', W', C) array, `nrow` images a row (default: square)."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, img in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write `images` as one PNG grid, each pixel `scale` pixels wide (small images are hard to see)."""
    grid = image_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@contextmanager
def decoder_notes(where: str, notes: list[str]) -> Iterator[None]:
    """Pillow's warnings while a file is read (corrupt EXIF, skipped tags) become one note naming the file,
    instead of raw lines with Pillow's source location; the image itself is kept."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    said = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    if said:
        notes.append(f"{where}: {'; '.join(said)} (read all the same)")


def read_image(path: str | Path, notes: list[str] | None = None) -> torch.Tensor:
    """An image file as (C, H, W) in [0, 1], with the channels its mode has (L: 1, RGB: 3, RGBA: 4)."""
    with decoder_notes(Path(path).name, notes if notes is not None else []), Image.open(path) as im:
        if im.mode in ("P", "CMYK", "YCbCr", "1"):  # palettes and bilevel images as what they show (0 to 255)
            im = im.convert("L" if im.mode == "1" else "RGB")
        # 16-bit files open as I;16 or I: by the mode, so a dark one (all values under 256) is not read as 8-bit
        scale = 65535.0 if im.mode.startswith("I") else 255.0
        array = np.asarray(im, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy()) / scale


def write_image(image: torch.Tensor, path: str | Path) -> Path:
    """(C, H, W) in [0, 1] -> an 8-bit PNG (or whatever the suffix says)."""
    array = (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path
