"""`shapes`: a procedural set in the spirit of dSprites, drawn from a seed with no download.

Five factors, as dSprites has them: shape (square, ellipse, heart), 6 scales, 40 rotations, and
32 x and 32 y positions, rendered as 64x64 binary images (then resized to `data.image_size`).
The full product is 737,280 images; `data.limit` (default 20,000) draws that many factor
combinations at random (`data.split_seed`). The factor indices are kept (`Split.factors`), so
`genlab evaluate` can score disentanglement (MIG); the shape is also the class label.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genlab.data.sources import Loaded, _to_model_range

SHAPES = ("square", "ellipse", "heart")
FACTORS = {"shape": 3, "scale": 6, "rotation": 40, "x": 32, "y": 32}
SIDE = 64
DEFAULT_COUNT = 20_000


def shapes(cfg) -> Loaded:
    rng = np.random.default_rng(cfg.split_seed)
    n = cfg.limit or DEFAULT_COUNT
    factors = torch.from_numpy(np.stack([rng.integers(0, k, n) for k in FACTORS.values()], axis=1))
    images = torch.cat([render(factors[i : i + 2048]) for i in range(0, n, 2048)])
    return Loaded(_to_model_range(images, cfg.image_size, cfg.channels), factors[:, 0].clone(), list(SHAPES),
                  notes=[f"shapes: {n} of {math.prod(FACTORS.values())} factor combinations, seed {cfg.split_seed}"],
                  factors=factors, factor_names=tuple(FACTORS))


def render(factors: torch.Tensor) -> torch.Tensor:
    """(N, 5) factor indices -> (N, 1, 64, 64) binary images in {0, 1}."""
    shape, scale, rotation, x, y = factors.T.double()
    size = 0.5 + 0.5 * scale / (FACTORS["scale"] - 1)  # dSprites' scales: 0.5 to 1
    angle = rotation / FACTORS["rotation"] * 2 * math.pi
    # positions keep the largest shape inside the frame (units: the frame is [0, 1])
    cx = 0.2 + 0.6 * x / (FACTORS["x"] - 1)
    cy = 0.2 + 0.6 * y / (FACTORS["y"] - 1)
    grid = (torch.arange(SIDE, dtype=torch.float64) + 0.5) / SIDE
    dx = grid.view(1, 1, SIDE) - cx.view(-1, 1, 1)
    dy = grid.view(1, SIDE, 1) - cy.view(-1, 1, 1)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    radius = (0.18 * size).view(-1, 1, 1)  # a shape's half-extent at scale 1: about a fifth of the frame
    u, v = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius  # the shape's own frame
    square = (u.abs() <= 0.8) & (v.abs() <= 0.8)
    ellipse = (u / 1.0).square() + (v / 0.5).square() <= 1
    hu, hv = u * 1.1, -v * 1.1 + 0.2  # the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, upright at rotation 0
    heart = (hu.square() + hv.square() - 1).pow(3) <= hu.square() * hv.pow(3)
    kind = shape.view(-1, 1, 1)
    inside = torch.where(kind == 0, square, torch.where(kind == 1, ellipse, heart))
    return inside.float().unsqueeze(1)
