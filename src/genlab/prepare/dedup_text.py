"""deduplicate for text: exact copies by digest, near copies as connected components (`near.py`).

Near duplicates need the whole corpus before the first document can be kept or dropped: `text.py`
keeps, per document, only a 16-byte digest and its LSH band keys (`record`), finds the clusters over
every id at once (`representatives`) and reads back from its spill files only the candidates that
`verify` checks. Memory grows by about a hundred bytes per document, never with its text.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import genlab.prepare.near as near
from genlab.config.prepare import Deduplicate
from genlab.prepare.dedup import digest


def record(text: str, opts: Deduplicate) -> tuple[bytes, np.ndarray]:
    """What deduplication keeps of one document: its digest and its LSH band keys."""
    key = bytes.fromhex(digest(text))
    if not opts.near:
        return key, np.zeros(0, np.uint64)
    bands, rows = near.lsh_bands(opts.threshold, opts.num_perm, opts.verify)
    return key, near.band_keys(near.signature(text, opts.shingle, opts.num_perm), bands, rows)


def representatives(digests: np.ndarray, keys: np.ndarray, opts: Deduplicate,
                    verify: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(the smallest id with the same digest, the smallest id of the near cluster) for every document;
    `verify(pairs)` says which candidate pairs (rows of two ids) stand, when candidates are verified."""
    n = len(digests)
    _, first, inverse = np.unique(digests.view(np.dtype((np.void, 16))).ravel(), return_index=True,
                                  return_inverse=True)
    exact = first[inverse.ravel()] if opts.exact else np.arange(n)
    if not opts.near:
        return exact, np.arange(n)
    left, right = near.band_edges(np.arange(n), keys)
    if opts.verify:
        pairs = np.unique(np.stack([left, right], axis=1), axis=0) if len(left) else np.zeros((0, 2), np.int64)
        keep = verify(pairs) if len(pairs) else np.zeros(0, bool)
        left, right = pairs[keep, 0], pairs[keep, 1]
    return exact, near.representatives(n, left, right)


def verify_pairs(pairs: np.ndarray, opts: Deduplicate, text_of: Callable[[int], str]) -> np.ndarray:
    """Which pairs of documents (sorted by the first) have shingle sets of exact Jaccard `threshold` or more."""
    keep, centre, hashes = np.zeros(len(pairs), bool), -1, None
    for k, (a, b) in enumerate(pairs.tolist()):  # each centre is read once
        if a != centre:
            centre, hashes = a, near.shingle_hashes(text_of(a), opts.shingle)
        keep[k] = near.jaccard(hashes, near.shingle_hashes(text_of(b), opts.shingle)) >= opts.threshold
    return keep
