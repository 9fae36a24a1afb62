"""Optimizers and learning-rate schedules from the config, for any family (a GAN calls these twice)."""

from __future__ import annotations

import math

import torch
from torch import nn

from genlab.config import OptimizerConfig, ScheduleConfig


def build_optimizer(module: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only: biases, norms and embeddings' 1-d params stay free."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    extra = {} if cfg.fused is None else {"fused": cfg.fused}
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, max_steps: int, val_every: int) -> dict:
    """A Lightning lr_scheduler config that steps once per optimizer step (plateau: once per validation)."""
    if cfg.name == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=cfg.patience)
        # strict=False: the metric first exists after the first validation
        return {"scheduler": scheduler, "interval": "step", "frequency": val_every, "monitor": cfg.monitor,
                "strict": False}
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, max_steps)), "interval": "step"}


def lr_factor(cfg: ScheduleConfig, max_steps: int):
    """The multiplier of the peak lr at each step: linear warmup, then the schedule's shape."""
    warmup = min(cfg.warmup_steps, max_steps - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.name == "step":
            return cfg.gamma ** ((step - warmup) // cfg.step_size)
        return 1.0

    return factor
