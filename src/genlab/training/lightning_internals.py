"""The parts of Lightning that genlab reaches into below its public API, in one place.

Lightning offers no public hook for three things genlab needs: averaging only part of a model (a GAN's
generator) with `WeightAveraging`, stepping an optimizer without advancing `trainer.global_step`
(a GAN's discriminator, so a step stays one batch), and calling a method of a sharded model through its
root FSDP unit (a preview under FSDP, as Lightning calls validation_step). Both lean on private names; `check_internals`
lists them, and a test calls it, so a Lightning upgrade that moves one fails with a message naming it
instead of training wrongly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import SingleDeviceStrategy, Strategy
from torch.optim.swa_utils import AveragedModel

from genlab.errors import GenlabError

# (class, private names genlab uses on it or its instances, what for)
PRIVATE = (
    (WeightAveraging, ("_swap_models", "_copy_average_to_current", "_average_model", "_device", "_use_buffers",
                       "_kwargs"), "EMA over a family's ema_module()"),
    (LightningOptimizer, ("_on_before_step", "_on_after_step"), "optimizer steps that do not count as a step"),
    (Strategy, ("_forward_redirection",), "a preview through FSDP's root unit"),
)


def check_internals() -> None:
    """Raise a GenlabError naming each private Lightning name genlab relies on that this Lightning lacks."""
    averaging = WeightAveraging()
    wrapper = LightningOptimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    instances = (averaging, wrapper, SingleDeviceStrategy("cpu"))
    missing = [f"{cls.__name__}.{name} ({why})" for (cls, names, why), instance in zip(PRIVATE, instances, strict=True)
               for name in names if not hasattr(instance, name)]
    if missing:
        raise GenlabError(f"lightning {L.__version__} no longer has {', '.join(missing)}: "
                          "update genlab/training/lightning_internals.py")


@contextmanager
def step_not_counted(optimizer: LightningOptimizer) -> Iterator[None]:
    """Within: `optimizer.step()` runs through Lightning's wrapper (precision, clipping, the NaN guard) without the
    two progress hooks that advance `trainer.global_step`."""
    hooks = optimizer._on_before_step, optimizer._on_after_step
    optimizer._on_before_step = optimizer._on_after_step = _nothing
    try:
        yield
    finally:
        optimizer._on_before_step, optimizer._on_after_step = hooks


def _nothing() -> None:
    pass


def through_root(trainer: L.Trainer, method: str, *args: Any) -> Any:
    """`trainer.lightning_module.<method>(*args)` called through the strategy's wrapped model, so that under FSDP
    the root unit gathers the weights it holds (embeddings, the head) for the call, as for a validation step."""
    strategy = trainer.strategy
    return strategy._forward_redirection(strategy.model, strategy.lightning_module, method, *args)


class EMA(WeightAveraging):
    """Lightning's weight averaging with an EMA whose decay warms up as (1 + n) / (10 + n), over the
    family's `ema_module()`: the whole model, or a GAN's generator alone. Checkpoints keep Lightning's
    layout: `state_dict` holds the averaged weights (the rest as trained), `current_model_state` the raw."""

    def __init__(self, decay: float, warmup: bool) -> None:
        def lerp_all(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
            d = min(decay, (1 + n.item()) / (10 + n.item())) if warmup else decay
            if not averaged[0].is_floating_point():  # torch groups by dtype: integer buffers (BERT's position
                torch._foreach_copy_(averaged, current)  # ids) are copied, not averaged
                return
            torch._foreach_lerp_(averaged, current, 1 - d)

        super().__init__(multi_avg_fn=lerp_all)
        self._prefix = ""  # where the averaged module sits in the model's state_dict

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            module = pl_module.ema_module()
            self._prefix = next(f"{name}." if name else "" for name, m in pl_module.named_modules() if m is module)
            self._average_model = AveragedModel(module, device=self._device or pl_module.device,
                                                use_buffers=self._use_buffers, **self._kwargs)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module.ema_module(), outputs, batch, batch_idx)

    def _swap_models(self, pl_module: L.LightningModule) -> None:
        super()._swap_models(pl_module.ema_module())

    def _copy_average_to_current(self, pl_module: L.LightningModule) -> None:
        super()._copy_average_to_current(pl_module.ema_module())

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)  # state_dict: the averaged module's keys
        if "current_model_state" in checkpoint:
            averaged = {self._prefix + k: v for k, v in checkpoint["state_dict"].items()}
            checkpoint["state_dict"] = {**checkpoint["current_model_state"], **averaged}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        n = len(self._prefix)
        state = {k[n:]: v for k, v in checkpoint["state_dict"].items() if k.startswith(self._prefix)}
        super().on_load_checkpoint(trainer, pl_module, {**checkpoint, "state_dict": state})
