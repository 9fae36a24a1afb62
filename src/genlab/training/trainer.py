"""The one function that turns a TrainConfig into a Lightning Trainer for a run directory."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_only

from genlab.config import TrainConfig
from genlab.errors import GenlabError
from genlab.run import RunPaths
from genlab.training.callbacks import (
    AtomicCheckpointIO,
    GradientWatch,
    LastCheckpoint,
    LogLines,
    ProgressBar,
    SamplePreview,
    SeedEveryStep,
    Throughput,
)
from genlab.training.lightning_internals import EMA
from genlab.training.peak import cpu_has_bf16

log = logging.getLogger("genlab")


def precision_here(cfg: TrainConfig) -> TrainConfig:
    """`cfg`, with a bf16 precision replaced by 32-true (and a warning) when training runs on a CPU without bf16
    kernels (`cpu_has_bf16`): there the shakespeare recipe's steps took 23x as long as in 32-true, so its time
    budget would buy almost no steps."""
    if not cfg.precision.startswith("bf16") or _on_accelerator(cfg.accelerator) or cpu_has_bf16():
        return cfg
    if rank_zero_only.rank == 0:
        log.warning(f"train.precision: {cfg.precision} asked for, but this CPU has no bf16 matrix kernels (no AVX-512 "
                    "or AMX), where bf16 matmuls run about 70x slower than float32 ones; training in 32-true")
    return cfg.model_copy(update=dict(precision="32-true"))  # a config field, not the image figure of that name


def _on_accelerator(accelerator: str) -> bool:
    """Whether Lightning trains on something other than the CPU for this `train.accelerator`."""
    if accelerator != "auto":
        return accelerator != "cpu"
    try:  # Lightning's own choice (TPU, MPS, CUDA, in its order), which checks CUDA without initializing it
        from lightning.pytorch.trainer.connectors.accelerator_connector import _select_auto_accelerator
    except ImportError:
        return torch.cuda.is_available() or torch.backends.mps.is_available()
    return _select_auto_accelerator() != "cpu"


def build_trainer(cfg: TrainConfig, paths: RunPaths, *, has_validation: bool, manual_optimization: bool = False,
                  monitor: str = "val/loss", judges: list[L.Callback] = (), callbacks: list[L.Callback] = (),
                  strategy: str | Strategy | None = None) -> L.Trainer:
    """Everything engineering about a fit lives here; the family module holds only research code.

    Clipping is `GradientWatch`'s (it needs the gradient norm anyway, so it is computed once), which
    also covers manual optimization (GANs), where Lightning cannot clip; Lightning cannot accumulate
    for a manually optimized module either, so accumulation is refused there with a clear error.
    `judges` score the validated weights (a GAN's collapse watch), so they run while EMA's are swapped
    in; `monitor` (the family's, lower is better) picks best.ckpt. `strategy`: one built for the model
    (FSDP's, which needs its layer classes) instead of `cfg.strategy`'s name.
    """
    if manual_optimization and cfg.accumulate_grad_batches > 1:
        raise GenlabError("train.accumulate_grad_batches: this family steps its optimizers itself (manual "
                          "optimization), so only 1 is supported")
    loggers = _loggers(cfg, paths)
    core: list[L.Callback] = [
        SeedEveryStep(cfg.seed),
        GradientWatch(cfg.log_every, max_norm=cfg.grad_clip),
        Throughput(torch.bfloat16 if cfg.precision.startswith("bf16") else torch.float32, cfg.log_every),
        SamplePreview(cfg.grid_size, paths.samples),  # before EMA, so it runs while EMA weights are swapped in
        *judges,
    ]
    if loggers:
        core.append(LearningRateMonitor(logging_interval="step"))
    if cfg.ema.enabled:
        core.append(EMA(cfg.ema.decay, cfg.ema.warmup))
    if has_validation:
        core.append(ModelCheckpoint(dirpath=paths.checkpoints, filename="best", monitor=monitor, mode="min",
                                    save_top_k=1, enable_version_counter=False))
    if cfg.early_stopping.enabled:
        es = cfg.early_stopping
        if es.monitor.startswith("val/") and not has_validation:
            raise GenlabError(f"train.early_stopping.monitor: {es.monitor} needs a validation split "
                              "(data.val_fraction > 0)")
        core.append(EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta, mode=es.mode))
    core.append(LastCheckpoint(paths.last_checkpoint, cfg.checkpoint_every))
    progress = cfg.progress if cfg.progress != "auto" else ("rich" if sys.stdout.isatty() else "log")
    if progress == "rich":
        core.append(ProgressBar())
    elif progress == "log":
        core.append(LogLines(max(cfg.log_every, cfg.max_steps // 20)))
    return L.Trainer(
        default_root_dir=paths.root,
        max_steps=cfg.max_steps,
        max_epochs=-1,
        max_time=timedelta(seconds=cfg.max_time) if cfg.max_time else None,
        precision=cfg.precision,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=strategy or cfg.strategy,
        num_nodes=cfg.num_nodes,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        val_check_interval=cfg.val_every if has_validation else None,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches if has_validation else 0,  # None: every batch
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every,
        logger=loggers or False,
        callbacks=[*core, *callbacks],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress == "rich",
        enable_model_summary=False,
    )


def _loggers(cfg: TrainConfig, paths: RunPaths) -> list[Logger]:
    loggers: list[Logger] = []
    if "tensorboard" in cfg.loggers:
        loggers.append(TensorBoardLogger(save_dir=paths.root, name="", version=paths.tb.name,
                                         default_hp_metric=False))
    if "wandb" in cfg.loggers:
        try:
            import wandb  # noqa: F401  (WandbLogger imports it late; fail here, clearly)
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:
            raise GenlabError("train.loggers: 'wandb' needs the wandb package: pip install 'genlab[wandb]'") from None
        # offline: runs are written under the run directory; `wandb sync` uploads them later
        loggers.append(WandbLogger(project=cfg.wandb_project, save_dir=str(paths.root), offline=True,
                                   name=paths.root.name))
    if "mlflow" in cfg.loggers:
        try:
            import mlflow  # noqa: F401
            from lightning.pytorch.loggers import MLFlowLogger
        except ImportError:
            raise GenlabError("train.loggers: 'mlflow' needs mlflow: pip install 'genlab[mlflow]'") from None
        # a SQLite tracking store (MLflow's file store is deprecated): by default one beside the runs, shared by
        # every run of the folder, so `mlflow ui --backend-store-uri` shows them together
        uri = cfg.mlflow_tracking_uri or f"sqlite:///{(paths.root.parent / 'mlflow.db').resolve()}"
        loggers.append(MLFlowLogger(experiment_name=cfg.mlflow_experiment, run_name=paths.root.name,
                                    tracking_uri=uri, artifact_location=str(paths.root.resolve() / "mlflow")))
    return loggers
