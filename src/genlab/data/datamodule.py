"""The Lightning DataModule over in-memory tensors (`data_module` picks it, or the streaming one).

Training batches are a pure function of (seed, batch index): a checkpoint stores the index, and
a resumed run draws exactly the batches the uninterrupted run would have drawn. No DataLoader:
indexing a tensor is faster than collating one example at a time when the data fits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch

from genlab.data.sources import Dataset, Split


class SeededBatches:
    """Shuffled mini-batches, reshuffled each epoch from (seed, epoch); stateful for exact resume.

    Under DDP each of `world` ranks takes every world-th batch of the same permutation, so the
    ranks see disjoint data without a DistributedSampler.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if len(split) < batch_size * world:
            batch_size = max(1, len(split) // world)  # a tiny data set still trains, one full batch a step
        self.split, self.batch_size, self.seed, self.rank, self.world = split, batch_size, seed, rank, world
        self.batches_done = 0  # this rank's, over all epochs; the whole state

    def __len__(self) -> int:
        return len(self.split) // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        per_epoch = len(self)
        epoch, start = divmod(self.batches_done, per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.split.weights is None:
            order = torch.randperm(len(self.split), generator=generator)
        else:  # class-balanced (or any weighted) sampling: an epoch draws as many items, with replacement
            order = torch.multinomial(self.split.weights.double(), len(self.split), replacement=True,
                                      generator=generator)
        for i in range(start, per_epoch):
            first = (i * self.world + self.rank) * self.batch_size
            self.batches_done += 1
            yield _batch(self.split, order[first : first + self.batch_size])

    def state_dict(self) -> dict[str, int]:
        return {"batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches_done = state["batches_done"]


class InOrderBatches:
    """Evaluation batches, in order, each example once."""

    def __init__(self, split: Split, batch_size: int) -> None:
        self.split, self.batch_size = split, batch_size

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self.split), self.batch_size):
            yield _batch(self.split, torch.arange(start, min(start + self.batch_size, len(self.split))))


def _batch(split: Split, idx: torch.Tensor) -> dict[str, torch.Tensor | list[str]]:
    batch: dict[str, torch.Tensor | list[str]] = {"x": split.x[idx]}
    if split.y is not None:
        batch["y"] = split.y[idx]
    if split.captions is not None:
        batch["text"] = [split.captions[i] for i in idx.tolist()]
    return batch


class TensorDataModule(L.LightningDataModule):
    def __init__(self, dataset: Dataset, batch_size: int, seed: int) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self._train = SeededBatches(dataset.train, batch_size, seed)

    def train_dataloader(self) -> SeededBatches:
        if self.trainer is not None:
            self._train.rank, self._train.world = self.trainer.global_rank, self.trainer.world_size
        return self._train  # one object for the whole fit, so its state survives epochs

    def val_dataloader(self) -> InOrderBatches | list:
        return InOrderBatches(self.dataset.val, self.batch_size) if len(self.dataset.val) else []


def data_module(dataset: Dataset, batch_size: int, seed: int) -> L.LightningDataModule:
    """What fit trains from: batches of tensors in memory, or windows streamed from chunks on disk."""
    from genlab.data.streaming import StreamingData, TokenWindows

    if isinstance(dataset.train.x, TokenWindows):
        return StreamingData(dataset, batch_size, seed)
    return TensorDataModule(dataset, batch_size, seed)
