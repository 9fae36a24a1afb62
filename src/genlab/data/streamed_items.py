"""Image and audio sets larger than memory: a prepared set's safetensors shards, copied once into litdata chunks and
streamed into fit, as `streaming.py` streams text.

    streamed_items(folder, manifest, data, notes) -> a Dataset: training and test left on disk (ItemShards),
                                                    validation in memory, a bounded spread of it
    chunked(shards)                              -> ItemChunks: the split's items as litdata chunks, written once
    in_memory(split)                             -> the split itself, or a bounded spread of a streamed one

The chunks hold each item as it is stored (uint8 pixels, 16-bit samples) and a batch becomes floats when it is
drawn, so a chunk costs what the shard does. What scores against items holds them in memory, a bounded spread
of the split taken evenly over it (the items are in the order of the sorted files, so the first ones would be
one class): validation during fit at most VAL_BYTES of floats; evaluation's test and training items at most
HELD_OUT_BYTES each, read when `genlab evaluate` asks (`load_dataset(cfg, in_memory=True)`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.data.chunks import LAYOUT, chunks_dataset, kept_chunks, need_litdata, short_digest
from genlab.data.records import Dataset, DataSpec, Split
from genlab.errors import GenlabError

log = logging.getLogger("genlab")
VAL_BYTES = 64 << 20  # floats the validation split takes in memory during fit
HELD_OUT_BYTES = 256 << 20  # floats evaluation's test split, and its spread of the training one, take
CHUNK_BYTES = "64MB"
SLICE_BYTES = 1 << 20  # the chunks are written from slices of the shards this large, in a seeded order
ITEMS_LAYOUT = 2  # bumped when what the chunks hold changes for the same shards


@dataclass(frozen=True)
class ItemShards:
    """A prepared image or audio split left on disk: its safetensors shards in order and how many items each holds."""

    files: tuple[Path, ...]
    counts: tuple[int, ...]
    digests: tuple[str, ...]  # each shard's sha256 (or its name, size and mtime for a set from before shards)
    kind: str  # the modality, whose Kind turns stored values into floats
    chunks_url: str | None = None  # where its chunks are kept: a bucket (data.chunks_url), or None: the cache

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """The first items as floats, read from the first shards only: what a model's set-up looks at."""
        if not isinstance(rows, slice) or rows.start not in (None, 0) or rows.step not in (None, 1):
            raise TypeError("a streamed split gives its first items only (split.x[:n])")
        wanted = len(self) if rows.stop is None else max(0, min(rows.stop, len(self)))
        parts, got = [], 0
        for path, count in zip(self.files, self.counts, strict=True):
            parts.append(_rows(path, 0, min(count, wanted - got))[0])  # the first shard's at least: its shape
            got += len(parts[-1])
            if got >= wanted:
                break
        return _floats(self.kind, torch.cat(parts) if parts else torch.zeros(0))

    def first_captions(self, n: int) -> list[str]:
        """The first `n` items' captions ([] for an uncaptioned set), read from the first shards only."""
        out: list[str] = []
        for path, count in zip(self.files, self.counts, strict=True):
            captions = _rows(path, 0, min(count, n - len(out)))[2]
            if captions is None:
                return []
            out += captions
            if len(out) >= n:
                break
        return out

    def spread(self, most_bytes: int) -> Split:
        """At most `most_bytes` of the split's items as floats, in memory: all of them, or every k-th; only the
        rows taken are read."""
        if not len(self):
            return Split(torch.zeros(0))
        per_item = 4 * int(np.prod(item_shape(self.files[0])))
        most = max(2, most_bytes // per_item)
        picks = np.unique(np.linspace(0, len(self) - 1, min(most, len(self))).round().astype(np.int64))
        xs, ys, captions, first = [], [], [], 0
        for path, count in zip(self.files, self.counts, strict=True):
            for row in (picks[(picks >= first) & (picks < first + count)] - first).tolist():
                x, y, text = _rows(path, row, row + 1)
                xs.append(x)
                ys.append(y)
                captions.append(text)
            first += count
        y = None if any(v is None for v in ys) else torch.cat(ys)
        text = None if any(c is None for c in captions) else [c for part in captions for c in part]
        return Split(_floats(self.kind, torch.cat(xs)), y, captions=text)


@dataclass(frozen=True)
class ItemChunks:
    """A split's items as litdata chunks (a folder, or a bucket read through the cache), drawn as float batches."""

    source: str
    items: int
    kind: str

    def __len__(self) -> int:
        return self.items

    def dataset(self, shuffle: bool, seed: int = 0):
        # each epoch permutes a chunk's items whole (litdata's default permutes runs of 256 of them)
        return chunks_dataset(self.source, shuffle, seed, item_shuffle_window=0)

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor | list[str]]:
        batch: dict[str, torch.Tensor | list[str]] = {
            "x": _floats(self.kind, torch.from_numpy(np.stack([item["x"] for item in items])))}
        if "y" in items[0]:
            batch["y"] = torch.tensor([item["y"] for item in items], dtype=torch.int64)
        if "text" in items[0]:
            batch["text"] = [item["text"] for item in items]
        return batch


def streamed_items(folder: Path, manifest: dict, data, notes: list[str]) -> Dataset | None:
    """The prepared image or audio set at `folder`, its training split streamed (`notes` say what chose it); None
    where it must be read into memory: weighted draws, under data.streaming: auto."""
    from genlab.prepare.kinds import SPLITS

    if (folder / "weights.json").is_file() or data.balance_by:
        if data.streaming == "auto":
            log.warning(f"data: {folder} is read into memory although its size would stream it: its training "
                        "items are drawn by weight (the labels step's weights: true, or data.balance_by)")
            return None
        raise GenlabError(f"data.streaming: true, and a stream cannot draw items by weight (the labels step's "
                          f"weights: true, or data.balance_by): set data.streaming: false for {folder}, or prepare "
                          "it without weights")
    splits = {split: item_shards(folder, manifest, split, data.chunks_url) for split in SPLITS}
    # a held-out shard first: a run whose chunks are in a bucket need not have the training shards
    first = next((splits[s].files[0] for s in ("val", "test", "train") if len(splits[s])), None)
    if first is None:
        raise GenlabError(f"data.prepared: {folder} holds no items")
    spec = DataSpec(manifest["modality"], item_shape(first), tuple(manifest.get("class_names", [])),
                    manifest["data"].get("sample_rate") if manifest["modality"] == "audio" else None,
                    bool(manifest.get("captioned")))
    val = splits["val"].spread(VAL_BYTES)
    log.info(f"data: streaming {len(splits['train']):,} training items from {folder}")
    if len(val) < len(splits["val"]):
        notes = [*notes, f"validation: {len(val)} of {len(splits['val'])} items in memory, spread over the split"]
    return Dataset(spec, Split(splits["train"]), val, Split(splits["test"]), notes)


def item_shards(folder: Path, manifest: dict, split: str, chunks_url: str | None = None) -> ItemShards:
    """A split of the prepared set at `folder` as shards on disk."""
    from genlab.prepare.kinds import shard_files

    listed = manifest.get("shards", {}).get(split)
    if listed is None:  # a set from before shards: one file a split
        path = shard_files(folder, manifest, split, ".safetensors")[0]
        if not manifest["splits"][split] or not path.exists():
            return ItemShards((), (), (), manifest["modality"], chunks_url)
        stat = path.stat()
        return ItemShards((path,), (manifest["splits"][split],), (f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}",),
                          manifest["modality"], chunks_url)
    return ItemShards(tuple(folder / s["file"] for s in listed), tuple(s["items"] for s in listed),
                      tuple(s["sha256"] for s in listed), manifest["modality"], chunks_url)


def item_shape(path: Path) -> tuple[int, ...]:
    """One item's shape, from a shard's header."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as opened:
        return tuple(opened.get_slice("x").get_shape()[1:])


def in_memory(split: Split) -> Split:
    """`split` when it is in memory; a streamed one as a spread of its items of at most HELD_OUT_BYTES of floats
    (evaluation, audits and a GAN's collapse watch: one spread, so one feature net scores them all)."""
    return split.x.spread(HELD_OUT_BYTES) if isinstance(split.x, ItemShards) else split


def chunked(shards: ItemShards) -> ItemChunks:
    """`shards` copied into litdata chunks in the cache (GENLAB_CACHE/items/KEY, KEY from the shards' digests), once:
    a file lock makes the other ranks, or a second run, wait for them. With `shards.chunks_url` they are kept in
    that bucket, and a run that finds them there copies nothing."""
    need_litdata()
    key = short_digest(LAYOUT, f"items {ITEMS_LAYOUT} {SLICE_BYTES}", *shards.digests)
    source, index = kept_chunks(f"items/{key}", f"copying {len(shards):,} {shards.kind} items", shards.chunks_url,
                                lambda out: _write_items(shards, out))
    return ItemChunks(source, sum(chunk["chunk_size"] for chunk in index["chunks"]), shards.kind)


def _write_items(shards: ItemShards, out: Path) -> None:
    """Each item as stored, with its class and caption, from slices of the shards in a seeded order: the items
    come in the order of the sorted files (a class folder after another), and litdata shuffles chunks and the
    items within a chunk, not across chunks, so a chunk written in that order would give one-class batches."""
    from litdata.streaming.writer import BinaryWriter

    writer, written = BinaryWriter(str(out), chunk_bytes=CHUNK_BYTES), 0
    for path, start, end in _slices(shards):
        x, y, captions = _rows(path, start, end)
        x = x.numpy()
        for k in range(len(x)):
            item = {"x": x[k]}
            if y is not None:
                item["y"] = int(y[k])
            if captions is not None:
                item["text"] = captions[k]
            writer.add_item(written, item)
            written += 1
    if not written:  # litdata would wait for an index that an empty writer never writes
        raise GenlabError("data: the training split holds no items to stream")
    writer.done()
    writer.merge()


def _slices(shards: ItemShards) -> list[tuple[Path, int, int]]:
    """The shards cut into runs of about SLICE_BYTES of items, in an order that depends on the data alone."""
    out = []
    for path, count in zip(shards.files, shards.counts, strict=True):
        step = max(1, int(SLICE_BYTES * count / max(1, path.stat().st_size)))
        out += [(path, start, min(start + step, count)) for start in range(0, count, step)]
    return [out[i] for i in np.random.default_rng(0).permutation(len(out))]


def _rows(path: Path, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    from genlab.prepare.kinds import read_shard

    return read_shard(path, start, end)


def _floats(kind: str, x: torch.Tensor) -> torch.Tensor:
    from genlab.prepare.kinds import kind_of

    return kind_of(kind).floats(x)
