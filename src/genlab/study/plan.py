"""What a config will cost before it runs: parameters, memory per device, time per step and for the run.

    genlab plan CONFIG [--gpu cpu|l4|a100|h100] [--devices N] [--set key=value ...]

A probe trains the config for two steps at a small batch in a scratch folder, with two instruments on its
second step: a saved-tensors hook sums the bytes autograd keeps for the backward pass (the activations, not
the weights), and torch's FLOP counter counts the step's floating-point operations. Both are per sample, and
scale with the batch. Memory per device is then weights + gradients + optimizer state (+ an EMA copy) +
activations at the per-device batch, and on a CPU the process itself (a fresh interpreter that imports the
training stack) and the data set held in memory. Backward adds a gradient for each activation, so activations
count twice at the peak. Time per step is the FLOPs over the device's peak at an
assumed utilization. `bench/plan_check.py` sets the predictions beside measured CPU runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from genlab.config import load_config
from genlab.errors import GenlabError
from genlab.quiet import quiet

# memory (bytes) and dense peak FLOP/s (bf16, fp32) of the accelerators a plan can be made for
GPUS = {"l4": (24e9, 121e12, 30e12), "a100": (80e9, 312e12, 19.5e12), "h100": (80e9, 989e12, 67e12)}
UTILIZATION = 0.35  # the share of peak a training step reaches: an assumption, stated in the plan
PROBE_BATCH = 4
CHECKED = ("on 5 CPU runs (bench/plan_check.py): peak memory within 13% of the measured peak RSS; the step time is "
           "a floor, FLOPs at the assumed utilization: small models ran 1-20x slower, their time outside matmuls")


class Probe(L.Callback):
    """On the second training step: the bytes autograd saves for backward (parameters excluded). The FLOPs are the
    run's own count (`Throughput`'s, in train.json), filled in by `_probe`."""

    def __init__(self) -> None:
        self.saved, self.flops, self._hooks = 0, 0.0, None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step != 1:
            return
        weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
        seen: set[int] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                self.saved += storage.nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(None, None, None)
            self._hooks = None

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_batch_end(trainer, module)


def _probe(config: Any, overrides: list[str]) -> tuple[Any, Probe]:
    from genlab.api import fit

    batch = min(load_config(config, overrides).train.batch_size, PROBE_BATCH)
    quick = [*overrides, f"train.batch_size={batch}", "train.max_steps=2", "train.max_time=null",
             "train.val_every=1000000", "train.checkpoint_every=1000000", "train.grid_size=0", "train.progress=none",
             "train.loggers=[]", "train.strategy=auto", "train.devices=1", "train.num_nodes=1"]
    probe = Probe()
    with tempfile.TemporaryDirectory() as scratch:
        run = fit(config, overrides=quick, out=Path(scratch) / "probe", callbacks=[probe])
        model = run.model
        probe.flops = (run.summary.get("gflops_per_batch") or 0) * 1e9  # the model's forward and backward, once
    if not probe.saved or not probe.flops:
        raise GenlabError("plan: the probe's second step did not run (a data set smaller than two batches?)")
    return model, probe


def runtime_bytes() -> int:
    """The peak RSS of a fresh interpreter that imports what training imports (the process's own cost). Read as
    VmHWM, which starts again at exec: ru_maxrss keeps the forking parent's size."""
    code = ("import genlab.api, genlab.config.families as f\n"
            "[f.family_class(n) for n in f.family_names()]\n"
            "from genlab.study.plan import peak_rss; print(peak_rss())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@quiet
def plan(config: str | Path | None, *, overrides: list[str] | tuple = (), gpu: str = "cpu", devices: int = 1
         ) -> dict[str, Any]:
    """The plan as a dict (bytes, seconds, FLOPs)."""
    if gpu != "cpu" and gpu not in GPUS:
        raise GenlabError(f"--gpu: {gpu!r} is not one of cpu, {', '.join(GPUS)}")
    from genlab.data.sources import load_dataset

    cfg = load_config(config, list(overrides))
    model, probe = _probe(config, list(overrides))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = cfg.train.optimizer.name
    state = {"adam": 8, "adamw": 8, "muon": 6, "sgd": 4 if cfg.train.optimizer.momentum else 0}.get(optimizer, 8)
    probe_batch = min(cfg.train.batch_size, PROBE_BATCH)
    per_device_batch = cfg.train.batch_size  # each DDP rank draws its own batch of batch_size
    memory = {"weights": 4 * params, "gradients": 4 * trainable, "optimizer": state * trainable,
              "ema": 4 * params if cfg.train.ema.enabled else 0,
              "activations": int(probe.saved / probe_batch * per_device_batch)}
    # backward holds a gradient for each saved activation while the earlier ones still wait: at its start both
    memory["activation_gradients"] = memory["activations"]
    if gpu == "cpu":
        dataset = load_dataset(cfg.data)
        memory["data"] = sum(_nbytes(s.x) for s in (dataset.train, dataset.val, dataset.test))
        memory["process"] = runtime_bytes()
    flops_per_step = probe.flops / probe_batch * per_device_batch
    if gpu == "cpu":
        from genlab.training.peak import matmul_peak

        peak, capacity = matmul_peak(), None
    else:
        capacity, bf16, fp32 = GPUS[gpu]
        peak = bf16 if cfg.train.precision.startswith("bf16") else fp32
    step_seconds = flops_per_step / (peak * UTILIZATION)
    total = sum(memory.values())
    return {"config": str(config), "family": cfg.model.family, "device": gpu, "devices": devices,
            "parameters": params, "trainable": trainable, "batch_per_device": per_device_batch,
            "memory": memory, "memory_total": total, "device_memory": capacity,
            "fits": None if capacity is None else total < 0.9 * capacity,
            "flops_per_step": flops_per_step, "peak_flops": peak, "utilization": UTILIZATION,
            "step_seconds": step_seconds, "run_seconds": step_seconds * cfg.train.max_steps,
            "max_steps": cfg.train.max_steps, "checked": CHECKED}


def _nbytes(x: Any) -> int:
    from genlab.data.streamed_items import ItemChunks, ItemShards
    from genlab.data.streaming import TextShards, TokenWindows

    # streamed: a chunk and a batch at a time, whatever its size
    if isinstance(x, (TextShards, TokenWindows, ItemShards, ItemChunks)):
        return 0
    if isinstance(x, torch.Tensor):
        return x.nelement() * x.element_size()
    if hasattr(x, "memory_usage"):
        return int(x.memory_usage(deep=True).sum())
    return sum(len(json.dumps(v)) for v in x) if x else 0
