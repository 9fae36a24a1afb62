"""deduplicate images and table rows: exact copies by content hash, near images by perceptual hash
(text is deduplicated as it streams, by MinHash LSH: `stream.Deduplicator`).

Near copies form clusters (union-find over the matched pairs). With `near_action: remove` one item
of each cluster is kept, the first read; with `group` all are kept and carry their cluster, which
the split keeps whole.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from genlab.config.prepare import Deduplicate
from genlab.prepare.record import Item, StepLog

PHASH_MIN_SIDE = 32  # pHash resizes to 32x32: smaller images are upsampled blurs, and distinct ones collide


def deduplicate_images(items: list[Item], opts: Deduplicate, log: StepLog) -> list[Item]:
    if opts.exact:
        items = without_exact_copies(items, log, lambda item: digest(item.value))
    side = min(items[0].value.shape[:2]) if items else 0
    if opts.near and len(items) > 1 and side < PHASH_MIN_SIDE:
        log.notes.append(f"near duplicates not looked for: {side}-pixel images are under pHash's {PHASH_MIN_SIDE}, "
                         "where distinct images share hashes (exact copies were)")
    elif opts.near and len(items) > 1:
        items = clusters(items, near_image_pairs(items, opts), opts.near_action, log)
    log.kept = len(items)
    return items


def without_exact_copies(items: list[Item], log: StepLog, key: Callable[[Item], str]) -> list[Item]:
    """The items less every later one whose `key` (a content hash) an earlier one has, each removal named."""
    seen: dict[str, str] = {}
    kept = []
    for item in items:
        value = key(item)
        if value in seen:
            log.remove("exact duplicate", f"{item.where} (copy of {seen[value]})")
        else:
            seen[value] = item.where
            kept.append(item)
    return kept


def deduplicate_table(frame: pd.DataFrame, opts: Deduplicate, log: StepLog) -> pd.DataFrame:
    if opts.exact:
        copies = frame.astype(str).duplicated(keep="first")
        for where in copies[copies].index:
            log.remove("exact duplicate row", where)
        frame = frame[~copies]
    log.kept = len(frame)
    return frame


def digest(value) -> str:
    data = value.encode() if isinstance(value, str) else np.ascontiguousarray(value).tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_WORDS = re.compile(r"\s+")


def shingles(text: str, k: int) -> set[bytes]:
    """Character k-grams of the text with its whitespace collapsed and case folded."""
    flat = _WORDS.sub(" ", text.casefold()).strip()
    return {flat[i:i + k].encode() for i in range(max(1, len(flat) - k + 1))}


def near_image_pairs(items: list[Item], opts: Deduplicate) -> list[tuple[int, int]]:
    """Pairs (earlier, later) of uint8 images whose perceptual hashes differ in at most `opts.hamming` bits."""
    import imagehash
    from PIL import Image

    hashes = np.array([imagehash.phash(Image.fromarray(i.value.squeeze(-1) if i.value.shape[-1] == 1 else i.value))
                       .hash.flatten() for i in items], dtype=bool)
    packed = np.packbits(hashes, axis=1).view(np.uint64).ravel()
    pairs = []
    for i in range(1, len(items)):  # Hamming distance to every earlier image, 64 bits at a time
        distance = np.unpackbits((packed[:i] ^ packed[i]).view(np.uint8).reshape(i, 8), axis=1).sum(1)
        pairs += [(int(j), i) for j in np.flatnonzero(distance <= opts.hamming)]
    return pairs


def clusters(items: list[Item], pairs: list[tuple[int, int]], action: str, log: StepLog) -> list[Item]:
    """Near-copy pairs joined into clusters: all but the first read removed, or all kept and marked."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the first read stays the cluster's representative
    roots = [root(i) for i in range(len(items))]
    sizes = pd.Series(roots).value_counts()
    multi = sizes[sizes > 1]
    log.notes.append(f"{len(multi)} near-duplicate cluster(s)" + (
        f", sizes {', '.join(map(str, multi.tolist()[:10]))}" if len(multi) else ""))
    out = []
    for i, item in enumerate(items):
        if action == "remove" and roots[i] != i:
            log.remove("near duplicate", f"{item.where} (near {items[roots[i]].where})")
            continue
        out.append(replace(item, cluster=roots[i] if sizes[roots[i]] > 1 else None))
    return out
