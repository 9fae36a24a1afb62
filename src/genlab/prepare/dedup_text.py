"""deduplicate for text that streams: exact copies by digest, near copies as connected components (`near.py`).

Near duplicates need the whole corpus before the first document can be kept or dropped, so the
step reads its input twice over. The first pass numbers the documents (the sorted source's order),
writes each one to a spill file beside the output and keeps, per document, only a 16-byte digest,
its LSH band keys and its place in the spill (from which `verify` reads candidates back). The
clusters are then found at once; the second pass reads the spill back and keeps, drops or groups
each document by its cluster's smallest id. Memory grows by about a hundred bytes per document,
never with its text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from genlab.config.prepare import Deduplicate
from genlab.prepare import near
from genlab.prepare.dedup import digest
from genlab.prepare.record import Item, StepLog

PIECE = -1  # the id of a piece of one long file: it is one document, and is not deduplicated


def record(text: str, opts: Deduplicate) -> tuple[bytes, np.ndarray]:
    """What deduplication keeps of one document: its digest and its LSH band keys."""
    key = bytes.fromhex(digest(text))
    if not opts.near:
        return key, np.zeros(0, np.uint64)
    bands, rows = near.lsh_bands(opts.threshold, opts.num_perm, opts.verify)
    return key, near.band_keys(near.signature(text, opts.shingle, opts.num_perm), bands, rows)


def representatives(digests: np.ndarray, keys: np.ndarray, opts: Deduplicate, text_of: Callable[[int], str]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(the smallest id with the same digest, the smallest id of the near cluster) for every document;
    `text_of(id)` reads a document back when candidates are verified."""
    n = len(digests)
    _, first, inverse = np.unique(digests.view(np.dtype((np.void, 16))).ravel(), return_index=True,
                                  return_inverse=True)
    exact = first[inverse.ravel()] if opts.exact else np.arange(n)
    if not opts.near:
        return exact, np.arange(n)
    left, right = near.band_edges(np.arange(n), keys)
    if opts.verify:
        left, right = verified(left, right, opts, text_of)
    return exact, near.representatives(n, left, right)


def verified(left: np.ndarray, right: np.ndarray, opts: Deduplicate, text_of: Callable[[int], str]
             ) -> tuple[np.ndarray, np.ndarray]:
    """The candidate edges whose documents' shingle sets have an exact Jaccard similarity of `threshold` or more."""
    pairs = np.unique(np.stack([left, right], axis=1), axis=0) if len(left) else np.zeros((0, 2), np.int64)
    keep, centre, hashes = np.zeros(len(pairs), bool), -1, None
    for k, (a, b) in enumerate(pairs.tolist()):  # sorted by centre: each centre is read once
        if a != centre:
            centre, hashes = a, near.shingle_hashes(text_of(a), opts.shingle)
        keep[k] = near.jaccard(hashes, near.shingle_hashes(text_of(b), opts.shingle)) >= opts.threshold
    return pairs[keep, 0], pairs[keep, 1]


class Deduplicator:
    """The step over a stream of documents: `__call__` takes them all, then yields what is kept."""

    def __init__(self, opts: Deduplicate, log: StepLog, data, spill: Path) -> None:
        self.opts, self.log, self.data, self.spill = opts, log, data, spill
        self.roots: dict[int, str] = {}  # a cluster's smallest id -> its `where` (the split hashes it)
        self.sizes: dict[int, int] = {}  # documents in each near cluster of two or more, by its smallest id
        self.copied: set[int] = set()  # ids that later documents are exact copies of

    def __call__(self, items: Iterable[Item]) -> Iterator[Item]:
        try:
            count = self._first_pass(items)
            began = time.perf_counter()
            exact, cluster = self._resolve(count)
            self.log.seconds += time.perf_counter() - began
            yield from self._second_pass(exact, cluster)
        finally:
            self.spill.unlink(missing_ok=True)

    def _first_pass(self, items: Iterable[Item]) -> int:
        """Spill every document, keeping its digest and band keys; returns how many documents (ids) there are."""
        digests, keys, offsets, n = [], [], [], 0
        with self.spill.open("wb") as out:
            for item in self._timed(items):
                whole = item.split is None
                if whole:
                    offsets.append(out.tell())
                out.write(json.dumps([n if whole else PIECE, item.where, item.value, item.split, item.continues],
                                     ensure_ascii=False).encode() + b"\n")
                if not whole:
                    continue
                key, bands = record(item.value, self.opts)
                digests.append(key)
                keys.append(bands)
                n += 1
        self._digests = np.frombuffer(b"".join(digests), np.uint8).reshape(n, 16)
        self._keys = np.stack(keys) if keys else np.zeros((0, 0), np.uint64)
        self._offsets = np.array(offsets, np.int64)
        return n

    def _text(self, n: int) -> str:
        with self.spill.open("rb") as f:
            f.seek(self._offsets[n])
            return json.loads(f.readline())[2]

    def _timed(self, items: Iterable[Item]) -> Iterator[Item]:
        """The input, with the step's own time (not its producers') and megabytes counted."""
        began = None
        for item in items:
            if began is not None:
                self.log.seconds += time.perf_counter() - began
            began = time.perf_counter()
            self.log.megabytes += len(item.value) / 1e6
            yield item
        if began is not None:
            self.log.seconds += time.perf_counter() - began

    def _resolve(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        exact, cluster = representatives(self._digests, self._keys, self.opts, self._text)
        near_members = cluster[exact == np.arange(n)]  # exact copies are removed, not counted in a cluster
        sizes = np.bincount(near_members, minlength=n)
        self.sizes = {int(i): int(sizes[i]) for i in np.flatnonzero(sizes > 1)}
        self.copied = set(exact[exact != np.arange(n)].tolist())
        return exact, cluster

    def _second_pass(self, exact: np.ndarray, cluster: np.ndarray) -> Iterator[Item]:
        places: dict[int, str] = {}  # the `where` of each id that another document is a copy of
        with self.spill.open(encoding="utf-8") as f:
            for line in f:
                began = time.perf_counter()
                n, where, value, split, continues = json.loads(line)
                item = Item(where, value, split=split, continues=continues)
                if n != PIECE:
                    item = self._decide(n, item, int(exact[n]), int(cluster[n]), places)
                self.log.seconds += time.perf_counter() - began
                if item is not None:
                    self.log.kept += not item.continues
                    yield item

    def _decide(self, n: int, item: Item, copy_of: int, root: int, places: dict[int, str]) -> Item | None:
        if n in self.copied or n in self.sizes:
            places[n] = item.where
        if copy_of != n:
            self.log.remove("exact duplicate", f"{item.where} (copy of {places[copy_of]})")
            return None
        if root == n:
            if n in self.sizes:
                self.roots[n] = item.where
            return item
        if self.opts.near_action == "remove":
            self.log.remove("near duplicate", f"{item.where} (near {places[root]})")
            return None
        return replace(item, cluster=root)

    def unit(self, item: Item) -> str:
        """What the split hashes: the cluster's smallest id's place, so a cluster goes to one split whole."""
        return self.roots[item.cluster] if item.cluster is not None else item.where

    def note(self) -> str | None:
        if not self.sizes:
            return None
        largest = sorted(self.sizes.values(), reverse=True)[:10]
        kept = "one of each kept" if self.opts.near_action == "remove" else "each kept whole in one split"
        return f"{len(self.sizes)} near-duplicate cluster(s), largest sizes {', '.join(map(str, largest))}; {kept}"
