"""`train.strategy: fsdp`: Lightning's FSDP, wrapped at the layer class the family names, with sharded
checkpoints written whole or not at all, and the weights gathered whole for the model folder.

Each rank writes its own shard of `last.ckpt` (a folder) at once, so a large model never passes through one
process's memory to be saved; the model folder is the one place the full weights meet, on rank zero's CPU.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import FSDPStrategy

from genlab.config import TrainConfig
from genlab.errors import GenlabError

if TYPE_CHECKING:
    from genlab.models.base import GenerativeModel


class ShardedStrategy(FSDPStrategy):
    """FSDP with sharded checkpoints. It also runs on CPU processes (gloo), slowly: enough to check a config, a
    launch and a resume before paying for GPUs, which is why Lightning's GPU-only check is not inherited."""

    def __init__(self, layers: set[type[torch.nn.Module]], sharding: str = "FULL_SHARD",
                 activation_checkpointing: bool = False, cpu_offload: bool = False) -> None:
        super().__init__(auto_wrap_policy=layers, sharding_strategy=sharding, state_dict_type="sharded",
                         activation_checkpointing_policy=layers if activation_checkpointing else None,
                         cpu_offload=cpu_offload)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type == "cpu":  # torch's FSDP takes a CPU only when it is named as the device
            from torch.distributed.fsdp import FullyShardedDataParallel

            model = FullyShardedDataParallel(model, cpu_offload=self.cpu_offload,
                                             sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                                             mixed_precision=self.mixed_precision_config, **self.kwargs)
            self.kwargs.pop("auto_wrap_policy", None)  # applied: Lightning wraps no further
        return super()._setup_model(model)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any = None) -> None:
        # every rank writes its shard into a fresh folder; rank zero swaps it in once all have finished
        path = Path(self.broadcast(str(filepath)))
        fresh = path.with_name(path.name + ".tmp")
        if self.is_global_zero and fresh.exists():
            shutil.rmtree(fresh)
        self.barrier("genlab-shards-fresh")
        super().save_checkpoint(checkpoint, fresh, storage_options)
        self.barrier("genlab-shards-written")
        if self.is_global_zero:
            old = path.with_name(path.name + ".old")
            if path.exists():
                os.replace(path, old)
            os.replace(fresh, path)
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        self.barrier("genlab-shards-swapped")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The LightningModule's whole weights on rank zero's CPU (on an accelerator, empty on the other ranks);
        every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # offloading tensors that are on the CPU already crashes torch's gather, so it is asked only from a GPU
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.root_device.type != "cpu")
        return get_model_state_dict(self.model, options=options)


def sharded_strategy(model: GenerativeModel, train: TrainConfig) -> ShardedStrategy:
    """The strategy for `train.strategy: fsdp`, wrapping one FSDP unit per layer class the family shards by."""
    layers = model.shard_layers()
    if not layers:
        raise GenlabError(f"train.strategy: fsdp shards a model layer by layer; the {model.config.family} family "
                          "does not name its layers (the text families do). Use ddp")
    if train.ema.enabled:
        raise GenlabError("train.ema.enabled: EMA keeps a whole copy of the weights on every rank, which "
                          "train.strategy: fsdp exists to avoid; set train.ema.enabled=false")
    if train.optimizer.name == "muon":
        raise GenlabError("train.optimizer.name: muon orthogonalizes whole weight matrices, which FSDP splits "
                          "across ranks; use adamw with train.strategy: fsdp")
    options = train.fsdp
    return ShardedStrategy(layers, options.sharding, options.activation_checkpointing, options.cpu_offload)
