"""What a family declares about itself beyond training and sampling: the data it suits (`genlab advise`) and its
ONNX graphs (`genlab export --to onnx`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


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
