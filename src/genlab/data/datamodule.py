"""The Lightning DataModules: over in-memory tensors, or streamed from litdata chunks (`data_module` picks one).

In memory, training batches are a pure function of (seed, batch index): a checkpoint stores the index, and
a resumed run draws exactly the batches the uninterrupted run would have drawn. No DataLoader:
indexing a tensor is faster than collating one example at a time when the data fits in memory.
Streamed (`streaming.py`, `streamed_items.py`), litdata's loader keeps what it drew in the checkpoint instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import lightning as L
import torch

from genlab.data.records import Dataset, Split


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
    """What fit trains from: batches of tensors in memory, or token windows, images or clips streamed from chunks."""
    from genlab.data.streamed_items import ItemChunks, ItemShards, chunked
    from genlab.data.streaming import TokenWindows

    if isinstance(dataset.train.x, ItemShards):  # copied into chunks now, once the model is known to build
        dataset = replace(dataset, train=Split(chunked(dataset.train.x)))
    if isinstance(dataset.train.x, (TokenWindows, ItemChunks)):
        return StreamingData(dataset, batch_size, seed)
    return TensorDataModule(dataset, batch_size, seed)


class StreamingData(L.LightningDataModule):
    """Training batches streamed from chunks (token windows, or images and clips), shuffled by `seed`, whole
    batches only (every rank the same number); validation in order: windows by index, or held-out items in memory."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self._train = None

    def train_dataloader(self):
        if self._train is None:  # one loader for the whole fit: Lightning restores its state into it on resume
            chunks = self.dataset.train.x
            self._train = _epochs_loader()(chunks.dataset(True, self.seed), batch_size=self.batch_size,
                                           collate_fn=chunks.collate, num_workers=0)
        return self._train

    def val_dataloader(self):
        val = self.dataset.val
        if not len(val):
            return []
        if isinstance(val.x, torch.Tensor):
            return InOrderBatches(val, self.batch_size)
        # read by index, so that under DDP Lightning's sampler deals the windows out evenly; litdata deals whole
        # batches, which leaves a rank of a small validation split none
        return torch.utils.data.DataLoader(_ByIndex(val.x), batch_size=self.batch_size, collate_fn=val.x.collate)


class _ByIndex(torch.utils.data.Dataset):
    """Every window of a split by its index, whatever this process's rank."""

    def __init__(self, windows) -> None:
        self.windows, self.read = windows, windows.dataset(shuffle=False)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.read[index]


def _epochs_loader():
    """litdata's loader, whose restored epoch ends where Lightning ends it.

    After `load_state_dict` the loader goes on with the saved epoch until its iterator is drawn to the end; Lightning
    stops drawing at the loader's length instead, so without this the next epoch would resume the old one again
    (one batch repeated, then a short epoch) and a resumed run would leave the batches of the uninterrupted one.
    """
    from litdata import StreamingDataLoader

    class Loader(StreamingDataLoader):
        def __iter__(self):
            batches = super().__iter__()
            first = next(batches, None)  # its set-up reads `restore`: a resumed epoch goes on where it was saved
            self.restore = False  # and only this epoch: the next starts afresh, drawn to its end or not
            if first is not None:
                yield first
                yield from batches

    return Loader
