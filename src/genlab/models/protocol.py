"""What a family declares about itself, beyond training and sampling, so that every layer can ask it:
its headline figures (what `genlab evaluate` prints and a bake-off ranks by) and its ONNX graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Figure:
    """One headline figure of a family's metrics.json: what `genlab evaluate` prints and the bake-off ranks by."""

    key: str  # dotted path into metrics.json, e.g. "imputation.genlab.rmse"
    label: str
    higher_is_better: bool
    beside: tuple[str, str] | None = None  # (dotted path, name) of the baseline the figure is read against

    def value(self, metrics: dict[str, Any]) -> float | None:
        return metric_at(metrics, self.key)

    def baseline(self, metrics: dict[str, Any]) -> float | None:
        return None if self.beside is None else metric_at(metrics, self.beside[0])


def metric_at(metrics: dict[str, Any], dotted: str) -> Any:
    """metrics["a"]["b"] for "a.b"; None where any part is missing."""
    for part in dotted.split("."):
        if not isinstance(metrics, dict) or part not in metrics:
            return None
        metrics = metrics[part]
    return metrics


@dataclass(frozen=True)
class Suits:
    """What data a family suits, for `genlab advise`: the data's modality, why, the shipped recipe it starts from,
    and its place for each goal (0 first)."""

    modality: str
    reason: str
    recipe: str
    quality: int = 0
    speed: int = 0
    control: int = 0
    short_budget: int | None = None  # its place for quality when the budget is short (under SHORT_BUDGET s)
    conditional: bool = False  # made class-conditional when the data have classes
    large: tuple[int, str, str] | None = None  # (size from which, recipe, reason) for data that large

    def place(self, goal: str, budget: float) -> int:
        if goal == "quality" and self.short_budget is not None and budget < SHORT_BUDGET:
            return self.short_budget
        return getattr(self, goal)


SHORT_BUDGET = 240  # seconds: under it, the GAN recipe beat the diffusion recipe's FID on this machine


@dataclass
class Graph:
    """One network a family exports to ONNX: the module, example inputs, their dynamic axes, and what it returns."""

    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    axes: dict[str, dict[int, str]]  # each input's dynamic axes
    meaning: str  # what the output is, for onnx.json
    output: str = "output"
    output_axes: dict[int, str] = field(default_factory=lambda: {0: "batch"})
    traced: dict[str, dict[int, Any]] | None = None  # torch.export Dims instead: modules that trace only there


class ToUnit(torch.nn.Module):
    """A network whose output is in [-1, 1], read out in [0, 1] as a family's `sample` returns images."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return (self.net(*inputs) / 2 + 0.5).clamp(0, 1)


IMAGE_FIGURES = (Figure("fid", "FID", False, ("fid_real_baseline", "real vs real")),
                 Figure("kid_mean", "KID", False), Figure("precision", "precision", True),
                 Figure("recall", "recall", True), Figure("class_distribution_tv", "class TV", False))
