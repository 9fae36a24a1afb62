"""Prompt adherence, measured the way GenEval measures it: a judge reads each generated image back into the
attributes its prompt asked for (shape, colour, size, place, count, relation) and counts what holds.

The judge is a small convolutional network with one head per factor of `captioned_shapes`, trained on images the
renderer draws from every combination (the pairs a model never saw included, and the shapes the set leaves out),
so that what it misses on real images, its ceiling, is printed beside every model's figures. Like FeatureNet for
FID, it needs no downloaded weights; it is trained once per image size and kept in genlab's cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from genlab.data import captioned_shapes as scenes

log = logging.getLogger("genlab")

SIDE = 32  # the judge reads every image at this size
HEADS = {"count": 3, "shape": len(scenes.SHAPES + scenes.NEW_SHAPES), "colour": len(scenes.COLOURS),
         "size": len(scenes.SIZES), "place": len(scenes.PLACES)}
HEADS |= {"shape2": HEADS["shape"] + 1, "colour2": HEADS["colour"] + 1, "size2": HEADS["size"] + 1}  # +1: none
BATCH = 64
VERSION = 3  # of the judge's recipe: a new one is trained, never an old one read as new
NO_OBJECT = 2  # the count head's third class: an image with nothing a prompt could ask for
JUNK = -2  # what the judge reads every other factor of such an image as: it matches no prompt
JUNK_SHARE = 0.1  # of the judge's training images: blank ground, specks, noise
ATTRIBUTES = ("shape", "colour", "size", "place", "count", "relation")


class Judge(nn.Module):
    """Images in [0, 1] -> one set of logits per factor of captioned_shapes (FACTORS' order)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.SiLU(),
            nn.Flatten(), nn.Linear(32 * (SIDE // 4) ** 2, 128), nn.SiLU(),  # no pooling: where things are counts
        )
        self.heads = nn.ModuleDict({name: nn.Linear(128, k) for name, k in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[-1] != SIDE:
            images = F.interpolate(images, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        h = self.body(images * 2 - 1)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """(N, 8) factors as the judge sees them, NONE for a lone object's second."""
        self.eval()
        out = []
        for i in range(0, len(images), batch):
            logits = self(images[i : i + batch].float())
            out.append(torch.stack([logits[name].argmax(1) for name in HEADS], 1))
        factors = torch.cat(out) if out else torch.zeros(0, len(HEADS), dtype=torch.long)
        for k in (5, 6, 7):  # the "none" class is the last one
            factors[:, k] = torch.where(factors[:, k] == HEADS[scenes.FACTORS[k]] - 1, scenes.NONE, factors[:, k])
        factors[:, 1:] = torch.where(factors[:, :1] == NO_OBJECT, JUNK, factors[:, 1:])
        return factors


    @torch.no_grad()
    def agreement(self, images: torch.Tensor, factors: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """(N,) text-image agreement, as CLIPScore gives it without CLIP: the judge's mean probability of the
        factors each image's prompt asked for (every factor of a pair, a lone object's but its second's)."""
        self.eval()
        targets, out = _targets(factors), []
        for i in range(0, len(images), batch):
            logits = self(images[i : i + batch].float())
            probs = torch.stack([logits[name].softmax(1).gather(1, targets[i : i + batch, k : k + 1]).squeeze(1)
                                 for k, name in enumerate(HEADS)], 1)
            asked = torch.ones_like(probs, dtype=torch.bool)
            asked[:, 5:] = (factors[i : i + batch, :1] == 1)  # a lone object's missing second is not asked for
            out.append((probs * asked).sum(1) / asked.sum(1))
        return torch.cat(out) if out else torch.zeros(0)


def _targets(factors: torch.Tensor) -> torch.Tensor:
    """Factors as class indices: a missing second object is each second head's last class."""
    t = factors.long().clone()
    for k in (5, 6, 7):
        t[:, k] = torch.where(t[:, k] == scenes.NONE, HEADS[scenes.FACTORS[k]] - 1, t[:, k])
    return t


def train_judge(images: int = 8_000, steps: int = 400, seed: int = 0) -> Judge:
    """A judge trained on `images` rendered scenes of every combination, new shapes included."""
    torch.manual_seed(seed)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    junk = round(images * JUNK_SHARE)
    factors = scenes.any_factors(rng, images - junk)
    x = torch.cat([*(scenes.render(factors[i : i + 2048], SIDE, generator) for i in range(0, len(factors), 2048)),
                   no_object(junk, generator)])
    nothing = torch.full((junk, len(HEADS)), -100)  # cross-entropy's ignored target: only the count is known
    nothing[:, 0] = NO_OBJECT
    targets = torch.cat([_targets(factors), nothing])
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    judge.train()
    for _ in range(steps):
        idx = torch.randint(0, images, (BATCH,), generator=generator)
        logits = judge(x[idx])
        loss = sum(F.cross_entropy(logits[name], targets[idx, k]) for k, name in enumerate(HEADS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return judge.eval()


def no_object(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, SIDE, SIDE) images with nothing a prompt could ask for, which the judge must not read as a scene:
    the blank ground, a few specks far smaller than a small object, or noise."""
    ground = (torch.tensor(scenes.GROUND) / 255).view(1, 3, 1, 1)
    images = ground.repeat(n, 1, SIDE, SIDE)
    kind = torch.randint(0, 3, (n,), generator=generator)
    grid = (torch.arange(SIDE) + 0.5) / SIDE
    palette = torch.tensor(list(scenes.COLOURS.values())) / 255
    for _ in range(3):  # specks: at most a third of a small object's half-extent
        centre, radius = torch.rand(n, 2, generator=generator), 0.02 + 0.04 * torch.rand(n, generator=generator)
        colour = palette[torch.randint(0, len(palette), (n,), generator=generator)].view(n, 3, 1, 1)
        inside = ((grid.view(1, 1, SIDE) - centre[:, 0].view(n, 1, 1)).square()
                  + (grid.view(1, SIDE, 1) - centre[:, 1].view(n, 1, 1)).square()) <= radius.view(n, 1, 1).square()
        images = torch.where((inside & (kind == 1).view(n, 1, 1)).unsqueeze(1), colour, images)
    noise = torch.rand(n, 3, SIDE, SIDE, generator=generator)
    return torch.where((kind == 2).view(n, 1, 1, 1), noise, images)


SHIPPED = Path(__file__).parent / "files" / f"judge-captioned_shapes-v{VERSION}.safetensors"


def judge(cache: Path | None = None) -> Judge:
    """The judge that ships with genlab (`write_shipped_judge` made it); without that file, or given a `cache`
    folder, one trained on first use and kept there (default: genlab's cache, GENLAB_CACHE)."""
    from filelock import FileLock

    from genlab.prepare.store import cache_root

    if SHIPPED.is_file() and cache is None:
        model = Judge()
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in load_file(str(SHIPPED)).items()})
        return model.eval()
    path = (cache or cache_root()) / "judges" / f"captioned_shapes-v{VERSION}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):  # one process trains it; the others wait and read it
        model = Judge()
        if path.is_file():
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        log.info("training the prompt-adherence judge on rendered scenes (once; about 20 s)")
        model = train_judge()
        partial = path.with_suffix(".partial")
        save_file(model.state_dict(), str(partial))
        partial.replace(path)
        return model


def adherence(read: torch.Tensor, asked: torch.Tensor) -> dict[str, float]:
    """Per-attribute accuracy of images read back by the judge against the factors their prompts asked for, and
    `all`: the share of images right in every factor (GenEval's score of a prompt).

    shape, colour, size: over every object asked for (of two, each in its place); place: lone objects'; count:
    every image's; relation: pairs' (the right two shapes in the right order, side by side or stacked)."""
    read, asked = read.long(), asked.long()
    pairs = asked[:, 0] == 1
    out: dict[str, float] = {}
    for name, a, b in (("shape", 1, 5), ("colour", 2, 6), ("size", 3, 7)):
        hits = torch.cat([read[:, a] == asked[:, a], (read[:, b] == asked[:, b])[pairs]])
        out[name] = _mean(hits)
    out["place"] = _mean((read[:, 4] == asked[:, 4])[~pairs])
    out["count"] = _mean(read[:, 0] == asked[:, 0])
    relation = (read[:, 4] == asked[:, 4]) & (read[:, 1] == asked[:, 1]) & (read[:, 5] == asked[:, 5])
    out["relation"] = _mean(relation[pairs])
    out["attributes"] = float(np.nanmean([out[k] for k in ATTRIBUTES]))
    out["all"] = _mean((read == asked).all(1))
    return out


def _mean(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if len(hits) else float("nan")


def prompt_figures(judge_: Judge, images: torch.Tensor, factors: torch.Tensor, real: torch.Tensor,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """Adherence of `images` drawn for prompts of `factors`, on seen and unseen pairs, beside the judge's ceiling
    (the real images of those prompts) and the floor of a model that ignores the prompt (real images of other
    prompts, shuffled by `seed`)."""
    unseen = scenes.held_out(factors)
    read, real_read = judge_.read(images), judge_.read(real)
    other = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    shuffled = real_read[other]
    out = {}
    agree, real_agree = judge_.agreement(images, factors), judge_.agreement(real, factors)
    ignored_agree = judge_.agreement(real[other], factors)
    for name, part in (("seen", ~unseen), ("unseen", unseen)):
        if part.any():
            out[name] = adherence(read[part], factors[part]) | {"agreement": agree[part].mean().item()}
            out[f"{name}_ceiling"] = adherence(real_read[part], factors[part]) | {
                "agreement": real_agree[part].mean().item()}
            out[f"{name}_prompt_ignored"] = adherence(shuffled[part], factors[part]) | {
                "agreement": ignored_agree[part].mean().item()}
    return out


def write_shipped_judge() -> Path:
    """Train the judge with its recipe and write the file genlab ships (half precision: a few hundred KB)."""
    torch.set_num_threads(1)  # the recipe's numbers, as they were made
    model = train_judge()
    SHIPPED.parent.mkdir(exist_ok=True)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, str(SHIPPED))
    return SHIPPED
