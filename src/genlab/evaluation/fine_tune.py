"""A fine-tune scored beside the model it started from: what it gained, and what it forgot.

The base (the run's `model.init_from`) is loaded again and draws for the same prompts with the same seeds as the
fine-tune. On the run's own held-out images both get an FID. A DreamBooth subject that the prompt-adherence judge
reads is counted in each one's draws for the subject's prompt. When the base is a genlab run of a set the judge
reads, both draw for the base's own held-out captions too: the base's prompt adherence before and after the
fine-tune, which is what forgetting is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genlab.config import EvalConfig
from genlab.data import captioned_shapes as scenes
from genlab.data.records import Split
from genlab.data.sources import load_dataset
from genlab.evaluation.adherence import Judge, judge, prompt_figures


def fine_tune_figures(model, base, fake: torch.Tensor, base_fake: torch.Tensor, held_out: Split,
                      factor_names: tuple[str, ...], ev: EvalConfig, draw: Callable) -> dict[str, Any]:
    """The figures of the fine-tuned `model` and its `base` beside each other, from their draws for the held-out
    prompts (`fake`, `base_fake`) and, through `draw(model, prompts)`, for the base's own held-out captions."""
    out: dict[str, Any] = {}
    if model.subject_prompt and factor_names == scenes.FACTORS and held_out.factors is not None:
        out["subject"] = subject_figures(judge(), fake, base_fake, held_out.x / 2 + 0.5)
    base_data = base_run_data(model.started_from())
    if base_data is not None:
        ordinary = load_dataset(base_data, in_memory=True)
        split = ordinary.held_out
        if ordinary.factor_names == scenes.FACTORS and split.captions:
            rows, asked = split.cycled(ev.num_samples)
            factors, real_asked = split.factors[rows], split.x[rows] / 2 + 0.5
            judge_ = judge()
            out["forgetting"] = {
                "before": prompt_figures(judge_, draw(base, asked), factors, real_asked, ev.seed),
                "after": prompt_figures(judge_, draw(model, asked), factors, real_asked, ev.seed)}
    return out


def subject_figures(judge_: Judge, tuned: torch.Tensor, base: torch.Tensor, real: torch.Tensor) -> dict[str, Any]:
    """How often each model draws the subject, its shape in its colour (and its shape alone), as the judge reads
    the real held-out images of it (their most common reading); those images' own share is the judge's ceiling."""
    real_read = judge_.read(real)
    shape, colour = real_read[:, 1].mode().values.item(), real_read[:, 2].mode().values.item()

    def share(images: torch.Tensor) -> dict[str, float]:
        read = judge_.read(images)
        hit = read[:, 1] == shape
        return {"subject": (hit & (read[:, 2] == colour)).float().mean().item(), "shape": hit.float().mean().item()}

    names = scenes.SHAPES + scenes.NEW_SHAPES
    return {"subject": f"{list(scenes.COLOURS)[colour]} {names[shape]}", "tuned": share(tuned),
            "base": share(base), "ceiling": share(real)}


def base_run_data(init_from: str | None):
    """The data config of the genlab run a fine-tune started from (init_from names the run or its model folder),
    or None: a pipeline from elsewhere has no held-out set to forget."""
    from genlab.run import Run

    if init_from is None:
        return None
    folder = Path(init_from).expanduser()
    for root in (folder, folder.parent):
        if (root / "config.yaml").is_file() and (root / "model").is_dir():
            return Run(root).config.data
    return None


def headline(figures: dict[str, Any]) -> dict[str, float]:
    """The flat metrics of `fine_tune_figures` for the report's table."""
    flat = {}
    if "subject" in figures:
        flat |= {f"subject_{who}": figures["subject"][who]["subject"] for who in ("tuned", "base", "ceiling")}
    for when, parts in figures.get("forgetting", {}).items():
        for part in ("seen", "unseen"):
            if part in parts:
                flat[f"adherence_{part}_{when}"] = parts[part]["attributes"]
    return flat
