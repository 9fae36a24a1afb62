"""Lightning callbacks of the training core; each does one thing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, RichProgressBar, WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.flop_counter import FlopCounterMode

from genlab.errors import GenlabError
from genlab.images import image_grid, save_grid


class NonFiniteLoss(GenlabError):
    """The loss or the gradients stopped being finite numbers."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class TrainingInterrupted(GenlabError):
    """The user stopped training (Ctrl-C); the run can be resumed from its last checkpoint."""

    exit_code = 130


class SeedEveryStep(L.Callback):
    """Reseed torch from (seed, step) before each batch, so any step's randomness is reproducible on resume."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step_seed = hash((self.seed, trainer.global_step, batch_idx, trainer.global_rank)) % 2**63
        torch.manual_seed(step_seed)


class GradientWatch(L.Callback):
    """Log the global gradient norm; stop on a non-finite loss or gradient before it reaches the weights."""

    def __init__(self, log_every: int) -> None:
        self._due = EveryNSteps(log_every)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"train loss is {loss.item()} at step {trainer.global_step}", trainer.global_step)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        # with fp16 a GradScaler skips inf steps on purpose; everywhere else they are a bug
        if not torch.isfinite(norm) and trainer.precision != "16-mixed":
            raise NonFiniteLoss(f"gradient norm is {norm.item()} at step {trainer.global_step}", trainer.global_step)
        if self._due(trainer.global_step):
            pl_module.log("train/grad_norm", norm)


class Throughput(L.Callback):
    """Samples/s and the fraction of the matmul peak, from the FLOPs of one counted training step.

    Counting FLOPs dispatches that step through other kernels (bitwise different results), so the
    count is kept in the checkpoint and a resumed run does not count again: resume stays exact.
    """

    def __init__(self, peak_flops: float, log_every: int) -> None:
        self.peak_flops, self.log_every = peak_flops, log_every
        self.flops_per_batch = 0.0
        self.samples_per_s = 0.0
        self.mfu = 0.0
        self._counter: FlopCounterMode | None = None
        self._window: tuple[float, int] | None = None  # (time, samples) at the window's start
        self._samples = 0
        self._paused_at = 0.0
        self._due = EveryNSteps(log_every)

    def state_dict(self) -> dict[str, float]:
        return {"flops_per_batch": self.flops_per_batch}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.flops_per_batch = state["flops_per_batch"]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._window is None and self.flops_per_batch:  # resumed: the count came from the checkpoint
            self._window = (time.perf_counter(), self._samples)
        if not self.flops_per_batch and self._counter is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._counter is not None:  # the counted step runs slower: the window starts after it
            self._counter.__exit__(None, None, None)
            self.flops_per_batch = float(self._counter.get_total_flops())
            self._counter = None
            self._window = (time.perf_counter(), 0)
            return
        self._samples += _batch_size(batch)
        if self._window is None or not self._due(trainer.global_step):
            return
        start, samples = self._window
        elapsed = time.perf_counter() - start
        batches = (self._samples - samples) / max(1, _batch_size(batch))
        self.samples_per_s = (self._samples - samples) / elapsed
        self.mfu = self.flops_per_batch * batches / elapsed / self.peak_flops if self.peak_flops else 0.0
        pl_module.log_dict({"perf/samples_per_s": self.samples_per_s, "perf/mfu": self.mfu})
        self._window = (time.perf_counter(), self._samples)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._window is not None:  # validation time is not training time
            start, samples = self._window
            self._window = (start + time.perf_counter() - self._paused_at, samples)


class EveryNSteps:
    """Says yes once each time the step count crosses a multiple of N. Micro-batches (accumulation)
    end on the same step, and a family with two optimizers advances it by two per batch."""

    def __init__(self, every: int) -> None:
        self.every, self.last = every, None

    def __call__(self, step: int, also: bool = False) -> bool:
        last = step - 1 if self.last is None else self.last  # a resumed run starts counting where it is
        if step == last or (step // self.every == last // self.every and not also):
            return False
        self.last = step
        return True


def _batch_size(batch) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(first)


class EMA(WeightAveraging):
    """Lightning's weight averaging with an EMA whose decay warms up as (1 + n) / (10 + n)."""

    def __init__(self, decay: float, warmup: bool) -> None:
        def lerp_all(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
            d = min(decay, (1 + n.item()) / (10 + n.item())) if warmup else decay
            torch._foreach_lerp_(averaged, current, 1 - d)

        super().__init__(multi_avg_fn=lerp_all)


class SampleGrid(L.Callback):
    """At each validation, draw a fixed-seed grid with the weights being validated (EMA's when on)."""

    def __init__(self, n: int, out_dir: Path) -> None:
        self.n, self.out_dir = n, out_dir

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.n or pl_module.modality != "image" or not trainer.is_global_zero:
            return
        images = pl_module.preview(self.n, torch.Generator(pl_module.device).manual_seed(0))
        step = trainer.global_step
        save_grid(images, self.out_dir / f"step_{step:06d}.png", scale=4)
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples", image_grid(images), step, dataformats="HWC")


class LastCheckpoint(Checkpoint):
    """`last.ckpt` every N steps and when training stops; a Checkpoint, so Lightning runs it after the others."""

    def __init__(self, path: Path, every: int) -> None:
        self.path = path
        self._due = EveryNSteps(every)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._due(step, also=step >= trainer.max_steps or trainer.should_stop):
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # early stopping decides at a validation, after this step's on_train_batch_end
        if trainer.should_stop and not trainer.sanity_checking and self._due(trainer.global_step, also=True):
            trainer.save_checkpoint(self.path, weights_only=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, then rename: a crash mid-write never leaves a torn checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, without the logger's version number and the '/-2' of an epoch-less run."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's label
        return f"epoch {current_epoch} (max {self.trainer.max_steps} steps)"


class LogLines(L.Callback):
    """One line of progress every N steps, for logs where a live progress bar is noise."""

    SHOWN = {"train/loss": "loss", "val/loss": "val_loss", "train/grad_norm": "grad_norm",
             "perf/samples_per_s": "samples/s", "perf/mfu": "mfu"}

    def __init__(self, every: int) -> None:
        self._due = EveryNSteps(every)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._due(step, also=step == trainer.max_steps) and trainer.is_global_zero:
            metrics = trainer.callback_metrics
            shown = "  ".join(f"{name} {float(metrics[k]):.4g}" for k, name in self.SHOWN.items() if k in metrics)
            print(f"step {step}/{trainer.max_steps}  {shown}", flush=True)
