"""Lightning callbacks of the training core; each does one thing."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, RichProgressBar, Timer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy
from rich.progress import ProgressColumn
from rich.text import Text
from torch.utils.flop_counter import FlopCounterMode

from genlab.errors import GenlabError
from genlab.training.lightning_internals import through_root
from genlab.training.peak import PEAK_METHOD, matmul_peak


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


class AugmentBatches(L.Callback):
    """Augment each training batch's images (`data.pipeline`'s augment step) after SeedEveryStep has seeded the
    step, so an augmented run resumes exactly; validation and test batches stay as they are."""

    def __init__(self, options) -> None:
        self.options = options

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        from genlab.data.augment import augment_images

        batch["x"] = augment_images(batch["x"], self.options)


class GradientWatch(L.Callback):
    """Clip the gradients and log their global norm (one norm serves both); stop on a non-finite loss
    or gradient before it reaches a checkpoint.

    On a CPU every step is checked as it happens, before the update. On an accelerator reading a
    value back stalls the device, so the checks gather in a flag on the device that is read every
    `sync_every` steps (default: `log_every`) and before any checkpoint is written: the first bad
    step is still named, and the last checkpoint predates it.
    """

    def __init__(self, log_every: int, max_norm: float | None = None, sync_every: int | None = None) -> None:
        self.log_every, self.max_norm, self.sync_every = log_every, max_norm, sync_every
        self._due = EveryNSteps(log_every)
        self._first_bad: dict[str, torch.Tensor] = {}  # what -> the step it first went non-finite (-1: never)
        self._logged_step = -1

    @staticmethod
    def _key(trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> str:
        """train/grad_norm, or train/grad_norm_<name> for each of several optimizers (a GAN's G and D)."""
        names = getattr(pl_module, "optimizer_names", ())
        if len(trainer.optimizers) < 2 or optimizer not in trainer.optimizers:
            return "train/grad_norm"
        i = trainer.optimizers.index(optimizer)
        return f"train/grad_norm_{names[i] if i < len(names) else i}"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sync_every is None:  # a CPU has nothing to stall
            self.sync_every = 1 if pl_module.device.type == "cpu" else self.log_every

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._watch(trainer, "train loss", loss.detach())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        if isinstance(trainer.strategy, FSDPStrategy):  # each rank holds a shard: FSDP reduces the norm over all
            norm = trainer.strategy.model.clip_grad_norm_(self.max_norm or float("inf"))
        elif self.max_norm:  # returns the norm before clipping, so the norm is computed once
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        # with fp16 a GradScaler skips inf steps on purpose; everywhere else they are a bug
        if trainer.precision != "16-mixed":
            self._watch(trainer, "gradient norm", norm)
        step = trainer.global_step
        if self._due(step) or step == self._logged_step:  # every optimizer of a due step
            self._logged_step = step
            pl_module.log(self._key(trainer, pl_module, optimizer), norm)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._raise_if_bad(trainer)  # before the file is written: no checkpoint holds a bad step

    def _watch(self, trainer: L.Trainer, what: str, value: torch.Tensor) -> None:
        step = trainer.global_step
        if self.sync_every == 1:
            if not torch.isfinite(value):
                raise NonFiniteLoss(f"{what} is {value.item()} at step {step}", step)
            return
        first = self._first_bad.get(what)
        if first is None:
            first = self._first_bad[what] = torch.tensor(-1, device=value.device)
        first.copy_(torch.where((first < 0) & ~torch.isfinite(value), step, first))
        if step % self.sync_every == 0:
            self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: L.Trainer) -> None:
        for what, first in self._first_bad.items():
            step = int(first)
            if step >= 0:
                raise NonFiniteLoss(f"{what} went non-finite at step {step} (checked at step {trainer.global_step})",
                                    step)


class Throughput(L.Callback):
    """Samples/s and the fraction of the matmul peak used, by one wall clock over the whole run.

    Training time is wall-clock time between training batches, less validation, less the first
    batch of each fit call (warm-up) and the one batch whose FLOPs are counted: counting runs it
    through other kernels (bitwise different results), so the count is kept in the checkpoint with
    the running totals, and a resumed run neither counts again nor forgets the time already spent.
    """

    MIN_TIMED_BATCHES = 3

    def __init__(self, dtype: torch.dtype, log_every: int) -> None:
        self.dtype = dtype
        self.peak_flops = 0.0
        self.flops_per_batch = 0.0
        self.flops_counted = False  # a family of elementwise ops only counts 0 FLOPs, and is counted all the same
        # over every fit call; tokens: the predicted tokens of text batches
        self.totals = {"seconds": 0.0, "train_seconds": 0.0, "samples": 0, "tokens": 0, "batches": 0}
        self._counter: FlopCounterMode | None = None
        self._counting = False
        self._mark: float | None = None  # when the last timed interval ended; None: the next batch is untimed
        self._fit_started = self._paused_at = 0.0
        self._window = dict(self.totals)
        self._due = EveryNSteps(log_every)

    def state_dict(self) -> dict[str, float]:
        return {"flops_per_batch": self.flops_per_batch, "flops_counted": self.flops_counted, **self.totals,
                "seconds": self.totals["seconds"] + time.perf_counter() - self._fit_started}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.flops_per_batch = state["flops_per_batch"]
        self.flops_counted = state.get("flops_counted", bool(self.flops_per_batch))  # checkpoints before it: by value
        self.totals.update({k: state[k] for k in self.totals if k in state})
        self._window = dict(self.totals)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()
        self.peak_flops = max(self.peak_flops, matmul_peak(self.dtype, pl_module.device))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if not self.flops_counted and self._counter is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
            self._counting = True  # this batch: counted, not timed

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        # the model's forward and backward are what the fraction of the peak is of (as MFU is defined), not the
        # optimizer's update, whose first step builds its state through the counter at ~1 ms a tensor. A family
        # that steps its optimizers by hand (the GANs: D, then G's forward) is counted to the batch's end
        if pl_module.automatic_optimization:
            self._stop_counting()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop_counting()  # left entered, the counter would slow everything after it in this process
        self._counting = False

    def _stop_counting(self) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_batch = float(self._counter.get_total_flops())
            self.flops_counted = True
            self._counter = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._counting:  # under gradient accumulation, a batch that did not step the optimizer stops here
            self._stop_counting()
            self._counting = False
        elif self._mark is not None:
            t = self.totals
            t["train_seconds"] += now - self._mark
            t["samples"] += _batch_size(batch)
            t["tokens"] += pl_module.tokens_in(batch)
            t["batches"] += 1
            if self._due(trainer.global_step):
                pl_module.log_dict(self._rates(self._window))
                self._window = dict(t)
        self._mark = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._mark is not None:  # validation time is not training time
            self._mark += time.perf_counter() - self._paused_at

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.totals["seconds"] += time.perf_counter() - self._fit_started
        self._fit_started = time.perf_counter()
        self.peak_flops = max(self.peak_flops, matmul_peak(self.dtype, pl_module.device))

    def _rates(self, since: dict) -> dict[str, float]:
        t = self.totals
        seconds = max(t["train_seconds"] - since["train_seconds"], 1e-9)
        flops = self.flops_per_batch * (t["batches"] - since["batches"]) / seconds
        rates = {"perf/samples_per_s": (t["samples"] - since["samples"]) / seconds,
                 "perf/mfu": min(1.0, flops / self.peak_flops) if self.peak_flops else 0.0}
        if t["tokens"]:
            rates["perf/tokens_per_s"] = (t["tokens"] - since["tokens"]) / seconds
        return rates

    def summary(self) -> dict:
        """The whole run's figures for train.json; None where too few batches were timed to say."""
        t = self.totals
        measured = t["batches"] >= self.MIN_TIMED_BATCHES
        rates = self._rates(dict.fromkeys(t, 0)) if measured else {}
        return {
            "seconds": round(t["seconds"], 1),
            "train_seconds": round(t["train_seconds"], 1),
            "samples_per_s": rates.get("perf/samples_per_s"),
            "tokens_per_s": rates.get("perf/tokens_per_s"),
            "mfu": rates.get("perf/mfu"),
            "throughput": (f"{t['batches']} timed batches" if measured else
                           f"not measured: {t['batches']} timed batches (need {self.MIN_TIMED_BATCHES})"),
            "gflops_per_batch": self.flops_per_batch / 1e9,
            "matmul_peak": {"gflops": self.peak_flops / 1e9, "dtype": str(self.dtype).removeprefix("torch."),
                            "how": PEAK_METHOD},
        }


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



class SamplePreview(L.Callback):
    """At each validation, draw fixed-seed samples with the weights being validated (EMA's when on):
    an image grid, or continuations of a few fixed prompts, into samples/ and TensorBoard."""

    def __init__(self, n: int, out_dir: Path) -> None:
        self.n, self.out_dir = n, out_dir

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sharded = isinstance(trainer.strategy, FSDPStrategy)  # every rank takes part in each sharded forward
        if trainer.sanity_checking or not self.n or not (trainer.is_global_zero or sharded):
            return
        generator = torch.Generator(pl_module.device).manual_seed(0)
        samples = (through_root(trainer, "preview", self.n, generator) if sharded else
                   pl_module.preview(self.n, generator))
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        pl_module.media.save(samples, self.out_dir / f"step_{step:06d}{pl_module.media.suffix}")
        for logger in trainer.loggers:
            pl_module.media.log(logger.experiment, samples, step)


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
    """Lightning's rich bar over the whole run, not the epoch: steps done of train.max_steps, and the time left of the
    run (by the steps' pace, or train.max_time's clock when that ends it first), beside the losses."""

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's label
        return "training"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.train_progress_bar_id is None:  # one bar for the run: a new epoch does not reset it
            super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._update(self.train_progress_bar_id, trainer.global_step)

    def configure_columns(self, trainer: L.Trainer) -> list:
        columns = super().configure_columns(trainer)
        return [_RunTime(self.theme.time, trainer) if type(c).__name__ == "CustomTimeColumn" else c for c in columns]


class _RunTime(ProgressColumn):
    """Elapsed and left of the run: the steps' pace, or the clock of train.max_time when it runs out first."""

    max_refresh = 0.5

    def __init__(self, style: Any, trainer: L.Trainer) -> None:
        super().__init__()
        self.style, self.trainer = style, trainer

    def render(self, task: Any) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        left = task.time_remaining
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        clock = timer.time_remaining() if timer is not None else None
        if clock is not None:
            left = max(0.0, clock) if left is None else max(0.0, min(left, clock))
        shown = ["-:--:--" if t is None else str(timedelta(seconds=int(t))) for t in (elapsed, left)]
        return Text(f"{shown[0]} • {shown[1]} left", style=self.style)


class LogLines(L.Callback):
    """One line of progress every N steps, for logs where a live progress bar is noise."""

    SHOWN = {"val/loss": "val_loss", "val/fid": "val_fid", "train/grad_norm": "grad_norm",
             "perf/samples_per_s": "samples/s", "perf/mfu": "mfu"}  # after every train/...loss a family logs

    def __init__(self, every: int) -> None:
        self._due = EveryNSteps(every)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self._due(step, also=step == trainer.max_steps) and trainer.is_global_zero:
            metrics = trainer.callback_metrics
            losses = {k: k.removeprefix("train/") for k in sorted(metrics) if k.startswith("train/") and
                      k.endswith("loss")}
            shown = "  ".join(f"{name} {float(metrics[k]):.4g}" for k, name in {**losses, **self.SHOWN}.items()
                              if k in metrics)
            print(f"step {step}/{trainer.max_steps}  {shown}", flush=True)
