"""Optimizers and learning-rate schedules from the config, for any family (a GAN calls these twice)."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import nn

from genlab.config import OptimizerConfig, ScheduleConfig
from genlab.training.peak import cpu_has_bf16


def build_optimizer(module: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only: biases, norms and embeddings' 1-d params stay free."""
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.name == "muon":
        return MuonWithAdamW(module, params, cfg)
    groups = _decay_groups(params, cfg.weight_decay, getattr(module, "unsharded_ndim", {}))
    extra = {} if cfg.fused is None else {"fused": cfg.fused}
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)


def _decay_groups(params: list[torch.Tensor], weight_decay: float, ndim: dict[int, int]) -> list[dict]:
    """`ndim`: each parameter's dimensions before FSDP flattened it, by id; others are read off the parameter."""
    matrix = {id(p): ndim.get(id(p), p.ndim) >= 2 for p in params}
    groups = [{"params": [p for p in params if matrix[id(p)]], "weight_decay": weight_decay},
              {"params": [p for p in params if not matrix[id(p)]], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon for the hidden weight matrices and AdamW for everything else (embeddings, the output
    layer, kernels, norms, biases), as Muon's authors use it, behind one optimizer: Lightning, the
    schedules, clipping and checkpoints see a single optimizer. Muon's updates are scaled to AdamW's
    RMS (Moonshot's `match_rms_adamw`), so one learning rate serves both."""

    def __init__(self, module: nn.Module, params: list[torch.Tensor], cfg: OptimizerConfig) -> None:
        excluded = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        head = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
        excluded |= {id(p) for p in head.parameters()} if head is not None else set()
        matrices = [p for p in params if p.ndim == 2 and id(p) not in excluded]
        others = [p for p in params if p.ndim != 2 or id(p) in excluded]
        groups = [{"params": matrices, "weight_decay": cfg.weight_decay}] if matrices else []
        adamw_groups = _decay_groups(others, cfg.weight_decay, {})
        super().__init__([*groups, *adamw_groups], {"lr": cfg.lr})
        self.muon = torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     adjust_lr_fn="match_rms_adamw") if matrices else None
        self.adamw = torch.optim.AdamW(adamw_groups, lr=cfg.lr, betas=cfg.betas) if adamw_groups else None
        _orthogonalize_in_float32_on_cpus_without_bf16()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        inner = [o for o in (self.muon, self.adamw) if o is not None]
        for outer, group in zip(self.param_groups, [g for o in inner for g in o.param_groups], strict=True):
            group["lr"] = outer["lr"]  # the schedules set the outer groups' lr
        for optimizer in inner:
            optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict() if self.muon else None,
                "adamw": self.adamw.state_dict() if self.adamw else None,
                "lrs": [g["lr"] for g in self.param_groups]}

    def load_state_dict(self, state: dict) -> None:
        for name in ("muon", "adamw"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        for group, lr in zip(self.param_groups, state["lrs"], strict=True):
            group["lr"] = lr


def build_schedule(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, max_steps: int, val_every: int,
                   time_used: Callable[[], float] | None = None) -> dict:
    """A Lightning lr_scheduler config that steps once per optimizer step (plateau: once per validation);
    `time_used() -> [0, 1]`: the share of train.max_time gone, which the schedule follows when it runs ahead."""
    if cfg.name == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=cfg.patience)
        # strict=False: the metric first exists after the first validation
        return {"scheduler": scheduler, "interval": "step", "frequency": val_every, "monitor": cfg.monitor,
                "strict": False}
    factor = lr_factor(cfg, max_steps, time_used)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def lr_factor(cfg: ScheduleConfig, max_steps: int, time_used: Callable[[], float] | None = None):
    """The multiplier of the peak lr at each step: linear warmup, then the schedule's shape. With `time_used`,
    the schedule is as far along as the larger of the steps and the time gone: a machine slower than the one
    a recipe's max_steps was set on still anneals by the end of max_time instead of stopping mid-schedule."""
    warmup = min(cfg.warmup_steps, max_steps - 1)

    def factor(step: float) -> float:
        if time_used is not None:
            step = max(step, time_used() * max_steps)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.name == "step":
            return cfg.gamma ** ((step - warmup) // cfg.step_size)
        return 1.0

    return factor


def time_used(trainer: L.Trainer, cfg: ScheduleConfig) -> Callable[[], float] | None:
    """The share of `train.max_time` gone, from Lightning's Timer (whose state checkpoints keep, so a resumed
    run continues the clock); None without a time budget, or with `schedule.follow_time` off."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if not cfg.follow_time or timer is None or timer.time_remaining("train") is None:
        return None

    def used() -> float:
        elapsed = timer.time_elapsed("train")
        return min(1.0, elapsed / (elapsed + max(0.0, timer.time_remaining("train"))))

    return used


def _orthogonalize_in_float32_on_cpus_without_bf16() -> None:
    """Have torch's Muon run its Newton-Schulz iteration in float32 for a CPU tensor when the CPU has no bf16
    kernels. torch casts the update to bf16 there, which such a CPU runs about 70x slower than fp32 (the
    iteration's matmuls were 3.5 s of every 4.4-second step of the shakespeare recipe on an AVX2 EPYC). Put in
    once, for the process: every other tensor still goes to torch's own function."""
    module = torch.optim._muon
    torchs = getattr(module, "_zeropower_via_newtonschulz", None)
    if torchs is None or getattr(torchs, "genlabs", False):  # another torch, or already in
        return

    def newton_schulz(update: torch.Tensor, *args):
        if update.device.type == "cpu" and not cpu_has_bf16():
            return _newton_schulz_float32(update, *args)
        return torchs(update, *args)

    newton_schulz.genlabs = True
    module._zeropower_via_newtonschulz = newton_schulz


def _newton_schulz_float32(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                           eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (Jordan et al., 2024), as torch runs it but in float32."""
    a, b, c = coefficients
    wide = update.size(0) <= update.size(1)
    x = update.float() if wide else update.float().T  # iterate on the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T
