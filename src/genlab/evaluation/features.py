"""The feature extractor for FID/KID when Inception weights cannot be downloaded.

A small CNN classifier trained on the run's own training split: its penultimate layer is the
feature space, the way Inception's pool layer is for ImageNet. It is cached under the run, keyed
by a fingerprint of the training data, so repeated evaluations score in the same space.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from genlab.data.records import Split

WIDTH = 64  # feature dimension: small enough that a few hundred samples estimate its covariance


class FeatureNet(nn.Module):
    """Conv classifier whose forward returns features; torchmetrics reads `num_features` to skip its probe."""

    num_features = WIDTH

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv2d(64, WIDTH, 3, stride=2, padding=1), nn.GroupNorm(8, WIDTH), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(WIDTH, max(num_classes, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (what the samplers return) -> (N, WIDTH) float64 features."""
        return self.body(images * 2 - 1).double()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images * 2 - 1))


def fingerprint(split: Split) -> str:
    h = hashlib.sha256(split.x.numpy().tobytes())
    if split.y is not None:
        h.update(split.y.numpy().tobytes())
    return h.hexdigest()[:16]


def feature_net(train: Split, num_classes: int, steps: int, cache_dir: Path, seed: int = 0) -> tuple[FeatureNet, str]:
    """The extractor for this training split: kept in the run's `cache_dir`, or in genlab's cache for every run on
    the same data (a bake-off's entries, a model and its baseline), or trained afresh; returns (net, description).
    Its training is seeded, so whichever copy is read, the features are the same."""
    from genlab.prepare.store import cache_root

    key = {"data": fingerprint(train), "classes": num_classes, "steps": steps, "seed": seed, "width": WIDTH,
           "batches": "class-balanced"}
    shared = cache_root() / "features" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    with torch.random.fork_rng():  # the same init whatever ran before: runs on the same data compare
        torch.manual_seed(seed)
        net = FeatureNet(train.x.shape[1], num_classes)
    found = next((folder for folder in (cache_dir, shared) if _holds(folder, key)), None)
    if found is not None:
        net.load_state_dict(load_file(found / WEIGHTS))
    else:
        _train(net, train, num_classes, steps, seed)
    for folder in (cache_dir, shared):
        if folder != found:
            _keep(net, key, folder)
    kind = "trained on the run's train split" if num_classes > 1 else "random init (no labels)"
    return net.eval().requires_grad_(False), f"genlab FeatureNet ({WIDTH}-d, {kind})"


WEIGHTS, META = "feature_net.safetensors", "feature_net.json"


def _holds(folder: Path, key: dict) -> bool:
    return (folder / WEIGHTS).is_file() and (folder / META).is_file() and json.loads((folder / META).read_text()) == key


def _keep(net: FeatureNet, key: dict, folder: Path) -> None:
    """Write the weights, then the key that says they are whole (renamed into place: workers may share a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, write in ((WEIGHTS, lambda p: save_file(net.state_dict(), p)), (META, lambda p: p.write_text(
            json.dumps(key)))):
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        write(tmp)
        tmp.replace(folder / name)


def _train(net: FeatureNet, train: Split, num_classes: int, steps: int, seed: int) -> None:
    if num_classes < 2 or train.y is None:
        return  # random features still rank generators (a known FID baseline); labels make them sharper
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    images = train.x / 2 + 0.5
    # class-balanced batches: a rare class is learned as well as the others, so an audit by class can see it
    balance = (1.0 / torch.bincount(train.y).double())[train.y]
    for _ in range(steps):
        idx = torch.multinomial(balance, 128, replacement=True, generator=gen)
        x = _augment(images[idx], gen)
        loss = F.cross_entropy(net.logits(x), train.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shifts of up to one pixel, so the features do not hinge on exact positions."""
    dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def predict(net: FeatureNet, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([net.logits(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])
