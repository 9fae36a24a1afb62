"""What data sources hand to models: the records (`Loaded` before the split, `Dataset` after it) and the split.

A leaf module (numpy and torch only), so the sources, the table split and the prepared-set store can all
use the records without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of its data to be built."""

    modality: str  # "image", "text", "table", "audio"...
    shape: tuple[int, ...]  # one example: (C, H, W) for images, (context,) token windows for text, (1, L) audio
    class_names: tuple[str, ...] = ()
    sample_rate: int | None = None  # samples per second along the last axis, for waveforms
    captioned: bool = False  # each example has a caption (text-to-image data)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Split:
    x: torch.Tensor | list[str]  # examples; text before tokenizing: documents
    y: torch.Tensor | None = None
    factors: torch.Tensor | None = None  # (N, K) generative factor indices, when the source knows them (shapes)
    weights: torch.Tensor | None = None  # (N,) sampling weights: training batches draw items in proportion
    names: list[str] | None = None  # what each example is called, for per-example figures (held-out photographs)
    captions: list[str] | None = None  # each example's text, when the data is captioned (text to image)

    def __len__(self) -> int:
        return len(self.x)

    def first_captions(self, n: int) -> list[str]:
        """The first `n` captions ([] for uncaptioned data); a streamed split reads them from its first shards."""
        if self.captions is not None:
            return self.captions[:n]
        streamed = getattr(self.x, "first_captions", None)  # data/streamed_items.py's ItemShards
        return streamed(n) if streamed is not None else []

    def cycled(self, n: int) -> tuple[torch.Tensor, list[str] | None]:
        """`n` row indices going round the split, each example asked for as often as the others, and their
        captions (None for uncaptioned data)."""
        rows = torch.arange(n) % len(self)
        return rows, None if self.captions is None else [self.captions[i] for i in rows.tolist()]


@dataclass
class Loaded:
    """What a source returns: all examples, before the split."""

    x: torch.Tensor | list[str]  # text: one string per document
    y: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    modality: str = "image"
    parts: tuple[int, int] | None = None  # a source's own split: the first a are train, the next b val, then test
    test: list[torch.Tensor] | None = None  # a source's own test examples, each its own size (whole photographs)
    test_names: list[str] | None = None
    factors: torch.Tensor | None = None  # (N, K) indices of the factors that generated each example
    factor_names: tuple[str, ...] = ()
    weights: torch.Tensor | None = None  # (N,) sampling weights (genlab prepare's labels step, weights: true)
    sample_rate: int | None = None  # waveforms: samples per second
    captions: list[str] | None = None  # one per example: what a text-to-image model is conditioned on


@dataclass
class Dataset:
    spec: DataSpec
    train: Split
    val: Split
    test: Split
    notes: list[str] = field(default_factory=list)  # what loading skipped or changed, for the report
    factor_names: tuple[str, ...] = ()  # names of Split.factors' columns

    @property
    def held_out(self) -> Split:
        """What evaluation scores against: the test split, or validation when the test split has under two."""
        return self.test if len(self.test) >= 2 else self.val


def split_indices(n: int, y: torch.Tensor | None, val: float, test: float, seed: int):
    """Stratified by class when there are labels, so every split sees every class."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y.numpy() == c) for c in np.unique(y.numpy())]
    parts: list[list[np.ndarray]] = [[], [], []]
    for idx in groups:
        idx = rng.permutation(idx)
        n_test, n_val = round(len(idx) * test), round(len(idx) * val)
        parts[0].append(idx[n_test + n_val :])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[2].append(idx[:n_test])
    return [np.sort(np.concatenate(p)) for p in parts]
