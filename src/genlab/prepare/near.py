"""Near duplicates with one answer whatever the order, the block or the engine that reads the items.

Every item has an id: its place in the sorted source (file, then line or row). Near-duplicate
clusters are the connected components of a candidate graph over all the ids, so they depend on
which items are near, never on the order they were compared in. Each cluster is represented by
its smallest id.

- Text: a MinHash signature of the item's character shingles (the scheme below, pinned here
  rather than left to a library's defaults, which changed between releases), cut into LSH bands.
  Items whose band matches are candidates: each band's bucket becomes a star of edges to its
  smallest id (the same components as all its pairs, in linear edges). With `verify`, an edge
  stands only if the exact Jaccard similarity of the two shingle sets reaches the threshold.
- Images (and audio, through its log-mel image): 64-bit perceptual hashes within `hamming` bits.
  Multi-index hashing cuts each hash into hamming + 1 chunks; two hashes that close agree exactly
  on at least one chunk (pigeonhole), so exact chunk matches, each verified, give every such pair
  without comparing all pairs.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DEDUP_VERSION = 2  # bump when any rule below changes what a prepared set keeps
SCHEME = "genlab-minhash-1: utf-32 code-point k-grams, polynomial hash + splitmix64 (top 32 bits), (x ^ b) * a mod 2^32"
SEED = 1
CHUNK = 1024  # shingles permuted at once: the (permutations x shingles) work array stays in cache

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def scheme(opts) -> dict:
    """What a prepared set records so that the same corpus dedups the same way later, or on another node."""
    bands, rows = lsh_bands(opts.threshold, opts.num_perm, opts.verify)
    return {"dedup_version": DEDUP_VERSION, "minhash": SCHEME, "seed": SEED, "num_perm": opts.num_perm,
            "bands": bands, "rows": rows, "shingle": opts.shingle, "threshold": opts.threshold,
            "verify": opts.verify, "hamming": opts.hamming}


# --- text: MinHash signatures and LSH bands ------------------------------------------------------------

def _splitmix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@lru_cache
def _permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """Per permutation an odd multiplier and a mask: x -> (x ^ b) * a mod 2^32 permutes the 32-bit hashes."""
    rng = np.random.Generator(np.random.PCG64(SEED))  # PCG64's stream is fixed by numpy's compatibility policy
    a = rng.integers(0, 2**31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint32)
    return a[:, None], b[:, None]


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """The distinct 32-bit hashes of the text's k-character shingles (whitespace collapsed, case folded)."""
    flat = " ".join(text.casefold().split())
    points = np.frombuffer(flat.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(points) < k:  # a text shorter than a shingle is one shingle
        points = np.concatenate([points, np.zeros(k - len(points), np.uint64)])
    n = len(points) - k + 1
    with np.errstate(over="ignore"):
        h = np.zeros(n, np.uint64)
        for j in range(k):  # h = sum of points[i + j] * P^(k-1-j), modulo 2^64
            h = h * np.uint64(0x100000001B3) + points[j:j + n]
        h = np.sort((_splitmix(h) >> np.uint64(32)).astype(np.uint32))
        return h[np.r_[True, h[1:] != h[:-1]]]  # distinct (a sort: several times np.unique's hashing here)


def signature(text: str, k: int, num_perm: int) -> np.ndarray:
    """The MinHash signature (num_perm uint32): per permutation, the least permuted shingle hash."""
    a, b = _permutations(num_perm)
    hashes = shingle_hashes(text, k)
    out = np.full(num_perm, 0xFFFFFFFF, np.uint32)
    with np.errstate(over="ignore"):
        for start in range(0, len(hashes), CHUNK):  # 32-bit lanes: twice the 64-bit multiply-add-shift's speed
            np.minimum(out, (a * (hashes[start:start + CHUNK] ^ b)).min(axis=1), out=out)
    return out


@lru_cache
def lsh_bands(threshold: float, num_perm: int, verify: bool) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false positive and false negative mass around the threshold, as in
    Leskovec, Rajaraman and Ullman, ch. 3 (datasketch's rule). Equal weights, or, when every candidate is
    verified (which removes the false positives), 0.95 on the misses."""
    from scipy.integrate import trapezoid

    best, s = (num_perm, 1), np.linspace(0, 1, 2001)
    error, miss = np.inf, 0.95 if verify else 0.5
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = 1 - (1 - s ** rows) ** bands
            fp = trapezoid(np.where(s <= threshold, p, 0), s)
            fn = trapezoid(np.where(s >= threshold, 1 - p, 0), s)
            if (1 - miss) * fp + miss * fn < error - 1e-12:
                error, best = (1 - miss) * fp + miss * fn, (bands, rows)
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 per band: a hash of the band's rows and its number (equal keys: an LSH candidate)."""
    return np.array([int.from_bytes(hashlib.blake2b(sig[i * rows:(i + 1) * rows].tobytes(), digest_size=8,
                                                    salt=i.to_bytes(8, "little")).digest(), "little")
                     for i in range(bands)], dtype=np.uint64)


def band_edges(ids: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Star edges (smallest id of the bucket, member) for every band bucket of two or more ids."""
    left, right = [], []
    for band in range(keys.shape[1]):
        order = np.lexsort((ids, keys[:, band]))
        key, member = keys[order, band], ids[order]
        starts = np.r_[True, key[1:] != key[:-1]]
        centre = np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))
        edge = ~starts
        left.append(member[centre[edge]])
        right.append(member[edge])
    return np.concatenate(left or [np.zeros(0, np.int64)]), np.concatenate(right or [np.zeros(0, np.int64)])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The exact Jaccard similarity of two sets of shingle hashes (`shingle_hashes`)."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


# --- images: multi-index hashing of 64-bit perceptual hashes ----------------------------------------------

def popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(-1, 8), axis=1).sum(1)


def hash_edges(hashes: np.ndarray, hamming: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of 64-bit hashes at most `hamming` bits apart, by exact matches of hamming + 1
    chunks; equal hashes are joined as stars first, so a thousand blank images cost a thousand edges."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    ids = np.arange(len(hashes))
    distinct, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    left, right = [first[inverse][first[inverse] != ids]], [ids[first[inverse] != ids]]
    if hamming >= 64:
        pairs = np.triu_indices(len(distinct), 1)
        left.append(first[pairs[0]])
        right.append(first[pairs[1]])
    else:
        found = set()
        for lo, hi in _chunks(hamming + 1):
            key = (distinct >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            for a, b in _same_key_pairs(key):
                close = popcount(distinct[a] ^ distinct[b]) <= hamming
                found.update(zip(a[close].tolist(), b[close].tolist()))
        if found:
            a, b = np.array(sorted(found)).T
            left.append(np.minimum(first[a], first[b]))
            right.append(np.maximum(first[a], first[b]))
    return np.concatenate(left), np.concatenate(right)


def _chunks(n: int) -> list[tuple[int, int]]:
    """n contiguous bit ranges covering 64 bits, as even as can be."""
    cuts = [round(64 * i / n) for i in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _same_key_pairs(key: np.ndarray):
    """Index pairs with equal keys, a batch per offset within a run of equal keys: the work is the pairs found."""
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    run_end = np.repeat(starts + sizes, sizes)
    active = np.arange(len(key))
    for offset in range(1, int(sizes.max(initial=1))):
        active = active[active + offset < run_end[active]]
        if not len(active):
            break
        yield order[active], order[active + offset]


# --- clusters -----------------------------------------------------------------------------------------------

def representatives(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """For each of n ids, the smallest id of its connected component under the edges."""
    if not len(left):
        return np.arange(n)
    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    smallest = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, label, np.arange(n))
    return smallest[label]
