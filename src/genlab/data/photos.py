"""`photos`: crops of the two photographs that ship with scikit-learn, for super-resolution.

Training and validation crops come from china.jpg (its left and right parts, apart); the test
image is the whole of flower.jpg (cut to a multiple of 8 pixels), so the test photograph is never
seen in training and is scored whole, as super-resolution benchmarks score theirs. Crops are the
high-resolution side (`data.image_size`); an SR model makes its low-resolution inputs by downscaling.
"""

from __future__ import annotations

import numpy as np
import torch

from genlab.data.sources import Loaded, _to_model_range
from genlab.errors import GenlabError

TRAIN_CROPS, VAL_CROPS = 1024, 64
VAL_COLUMNS = 160  # china.jpg's rightmost columns: validation only


def photos(cfg) -> Loaded:
    from sklearn.datasets import load_sample_images

    china, flower = (torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
                     for im in load_sample_images().images)
    size = cfg.image_size or 64
    if size > VAL_COLUMNS:
        raise GenlabError(f"data.image_size: {size} is larger than the photos allow ({VAL_COLUMNS} at most)")
    rng = np.random.default_rng(cfg.split_seed)
    train_part, val_part = china[..., :-VAL_COLUMNS], china[..., -VAL_COLUMNS:]
    train = _random_crops(train_part, size, cfg.limit or TRAIN_CROPS, rng, flip=True)
    val = _random_crops(val_part, size, VAL_CROPS, rng, flip=False)
    _, h, w = flower.shape
    test = flower[None, :, : h - h % 8, : w - w % 8]
    images = _to_model_range(torch.cat([train, val]), None, cfg.channels)
    notes = [f"photos: {len(train)} train and {len(val)} val crops of china.jpg (apart); test: flower.jpg, "
             f"{test.shape[-1]}x{test.shape[-2]}"]
    return Loaded(images, notes=notes, parts=(len(train), len(val)), test=_to_model_range(test, None, cfg.channels))


def _random_crops(image: torch.Tensor, size: int, n: int, rng: np.random.Generator, flip: bool) -> torch.Tensor:
    _, h, w = image.shape
    tops, lefts = rng.integers(0, h - size + 1, n), rng.integers(0, w - size + 1, n)
    crops = torch.stack([image[:, t : t + size, s : s + size] for t, s in zip(tops, lefts)])
    if flip:
        mirrored = torch.from_numpy(rng.random(n) < 0.5)
        crops[mirrored] = crops[mirrored].flip(-1)
    return crops
