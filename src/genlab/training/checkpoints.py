"""Reading checkpoints whatever wrote them: a file, a sharded folder (FSDP), or the one Lightning writes when
SLURM warns of a preemption (`hpc_ckpt_N.ckpt` in the run directory); resuming takes the newest."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from genlab.run import RunPaths

CHECKPOINT_META = "meta.pt"  # what Lightning writes beside the shards: the step, the loops, the callbacks


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint (a file, or a sharded folder) was written at."""
    file = path / CHECKPOINT_META if path.is_dir() else path
    return torch.load(file, map_location="cpu", weights_only=True, mmap=not path.is_dir())["global_step"]


def whole_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint as one dict in this process: a file as it is, a sharded folder gathered from its shards."""
    if not path.is_dir():
        return torch.load(path, map_location="cpu", weights_only=True)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "whole.pt")
        state = torch.load(Path(tmp) / "whole.pt", map_location="cpu", weights_only=True)
    meta = torch.load(path / CHECKPOINT_META, map_location="cpu", weights_only=True)
    return {**meta, "state_dict": state["model"]}


def newest_checkpoint(paths: RunPaths) -> Path:
    """The checkpoint a resume continues from: last.ckpt, or a later one saved on SLURM's preemption signal."""
    found = [p for p in (paths.last_checkpoint, *paths.root.glob("hpc_ckpt_*.ckpt")) if p.exists()]
    if not found:
        return paths.require("last_checkpoint")  # the error that names the missing file
    return max(found, key=checkpoint_step)
