"""Image augmentation on the fly, in torch: flips, random resized crops, small rotations, colour jitter.

One affine warp per image does the crop and the rotation (`affine_grid` + `grid_sample`), so a
batch costs two small kernels whatever is switched on. Randomness comes from torch's global
generator, which the training core reseeds from (seed, step) before each batch: an augmented run
resumes exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genlab.config.prepare import Augment


def augment_images(x: torch.Tensor, opts: Augment) -> torch.Tensor:
    """A batch (N, C, H, W) in [-1, 1], augmented per image; the same shape and range come back."""
    n = len(x)
    if opts.crop_scale is not None or opts.rotation:
        area = torch.empty(n).uniform_(*(opts.crop_scale or (1.0, 1.0)))
        side = area.sqrt()  # the crop's side as a fraction of the image's
        angle = torch.empty(n).uniform_(-opts.rotation, opts.rotation) * math.pi / 180
        shift = (1 - side).unsqueeze(1) * torch.empty(n, 2).uniform_(-1, 1)  # the crop stays inside the image
        cos, sin = angle.cos() * side, angle.sin() * side
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if opts.hflip:
        flip = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if opts.color_jitter:
        x = _jitter(x, opts.color_jitter)
    return x


def _jitter(x: torch.Tensor, amount: float) -> torch.Tensor:
    def factor() -> torch.Tensor:
        return torch.empty(len(x), 1, 1, 1, device=x.device).uniform_(1 - amount, 1 + amount)

    unit = (x + 1) / 2
    unit = unit * factor()  # brightness
    mean = unit.mean(dim=(1, 2, 3), keepdim=True)
    unit = (unit - mean) * factor() + mean  # contrast
    if x.shape[1] == 3:
        grey = (unit * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        unit = (unit - grey) * factor() + grey  # saturation
    return (unit.clamp(0, 1) * 2 - 1).to(x.dtype)


def augment_options(data) -> Augment | None:
    """The augment step of a data config's pipeline, or of the prepared set it trains on (None: none)."""
    steps = list(data.pipeline or [])
    if not steps and data.prepared is not None:
        import json
        from pathlib import Path

        manifest = Path(data.prepared) / "prepared.json"
        if manifest.is_file():
            raw = json.loads(manifest.read_text()).get("data", {}).get("pipeline") or []
            steps = [Augment.model_validate(s) for s in raw if s.get("step") == "augment"]
    return next((s for s in steps if isinstance(s, Augment)), None)
