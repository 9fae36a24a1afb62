"""deduplicate images and table rows: exact copies by content hash, near images by perceptual hash
(text, which streams, in `dedup_text.py`).

Near copies form clusters: the connected components of the pairs within `hamming` bits (`near.py`).
With `near_action: remove` one item of each cluster is kept, the first in the sorted source; with
`group` all are kept and carry their cluster, which the split keeps whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

import genlab.prepare.near as near
from genlab.config.prepare import Deduplicate
from genlab.prepare.record import Item, StepLog

PHASH_MIN_SIDE = 32  # pHash resizes to 32x32: smaller images are upsampled blurs, and distinct ones collide


def deduplicate_images(items: list[Item], opts: Deduplicate, log: StepLog) -> list[Item]:
    """Exact and near copies of uint8 images, by the hashes `image_hashes` gave them (where they were read)."""
    if items and items[0].hashes is None:
        items = image_hashes(items)
    side = min(items[0].value.shape[:2]) if items else 0
    return deduplicate_hashed(items, opts, log, near_note=(
        f"near duplicates not looked for: {side}-pixel images are under pHash's {PHASH_MIN_SIDE}, where distinct "
        "images share hashes (exact copies were)") if side < PHASH_MIN_SIDE else None)


def deduplicate_hashed(items: list[Item], opts: Deduplicate, log: StepLog, near_note: str | None = None
                       ) -> list[Item]:
    """Items whose `hashes` are (content digest, 64-bit perceptual hash): exact copies removed, then near copies
    clustered; `near_note` says instead why near copies are not looked for."""
    if opts.exact:
        items = without_exact_copies(items, log, lambda item: item.hashes[0])
    if opts.near and len(items) > 1 and near_note is not None:
        log.notes.append(near_note)
    elif opts.near and len(items) > 1:
        hashes = np.array([item.hashes[1] for item in items], dtype=np.uint64)
        items = clusters(items, near.representatives(len(items), *near.hash_edges(hashes, opts.hamming)),
                         opts.near_action, log)
    log.kept = len(items)
    return items


def image_hashes(items: list[Item]) -> list[Item]:
    """Each uint8 image (H, W, C) with its digest and pHash."""
    return [replace(item, hashes=(digest(item.value), phash(item.value))) for item in items]


def phash(pixels: np.ndarray) -> int:
    """The 64-bit perceptual hash of a uint8 image (H, W, C), as imagehash computes it."""
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


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


def clusters(items: list[Item], roots: np.ndarray, action: str, log: StepLog) -> list[Item]:
    """Items by their cluster's smallest index (`near.representatives`): all but that one removed, or all kept
    and marked."""
    sizes = np.bincount(roots, minlength=len(items))
    multi = np.sort(sizes[sizes > 1])[::-1]
    log.notes.append(f"{len(multi)} near-duplicate cluster(s)" + (
        f", sizes {', '.join(map(str, multi.tolist()[:10]))}" if len(multi) else ""))
    out = []
    for i, item in enumerate(items):
        root = int(roots[i])
        if action == "remove" and root != i:
            log.remove("near duplicate", f"{item.where} (near {items[root].where})")
            continue
        out.append(replace(item, cluster=root if sizes[root] > 1 else None))
    return out
