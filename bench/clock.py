"""The clock the throughput benches share: a Lightning callback timing a fit the way the plain loops are timed."""

from __future__ import annotations

import tempfile
import time

import lightning as L


class StepClock(L.Callback):
    """Items per second from the start of step `warmup` to the end of step `steps`: the plain loop's clock."""

    def __init__(self, warmup: int, steps: int, batch: int) -> None:
        self.warmup, self.steps, self.batch = warmup, steps, batch
        self.per_s = float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.steps:
            self.per_s = (self.steps - self.warmup) * self.batch / (time.perf_counter() - self.start)


def timed_fit(config, overrides: list[str], warmup: int, steps: int, batch: int) -> float:
    """`genlab.fit` of `config` for `steps` steps in a scratch folder, with no validation or preview: its items/s
    by `StepClock`."""
    import genlab

    over = [f"train.max_steps={steps}", "train.max_time=null", "train.val_every=100000", "train.grid_size=0",
            *overrides]
    clock = StepClock(warmup, steps, batch)
    with tempfile.TemporaryDirectory() as tmp:
        genlab.fit(config, overrides=over, out=f"{tmp}/run", callbacks=[clock])
    return clock.per_s


def interleaved(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Each run's figure in every round, the order rotating by round so that drift in the machine's load
    falls on each alike."""
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        names = list(runs)
        for name in names[r % len(names):] + names[: r % len(names)]:
            figures[name].append(runs[name]())
    return figures
