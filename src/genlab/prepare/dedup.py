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
    if opts.exact:
        items = without_exact_copies(items, log, lambda item: digest(item.value))
    side = min(items[0].value.shape[:2]) if items else 0
    if opts.near and len(items) > 1 and side < PHASH_MIN_SIDE:
        log.notes.append(f"near duplicates not looked for: {side}-pixel images are under pHash's {PHASH_MIN_SIDE}, "
                         "where distinct images share hashes (exact copies were)")
    elif opts.near and len(items) > 1:
        items = clusters(items, near.representatives(len(items), *near_image_edges(items, opts)), opts.near_action,
                         log)
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


def near_image_edges(items: list[Item], opts: Deduplicate) -> tuple[np.ndarray, np.ndarray]:
    """Edges between uint8 images whose perceptual hashes differ in at most `opts.hamming` bits."""
    import imagehash
    from PIL import Image

    bits = np.array([imagehash.phash(Image.fromarray(i.value.squeeze(-1) if i.value.shape[-1] == 1 else i.value))
                     .hash.flatten() for i in items], dtype=bool)
    return near.hash_edges(np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64), opts.hamming)


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
