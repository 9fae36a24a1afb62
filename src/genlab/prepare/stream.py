"""Text through the pipeline one document at a time, so a corpus larger than memory prepares in bounded memory.

Each step is a generator over documents; what a step must remember is per document, never its
text. Boilerplate lines are counted in a first pass over the input (lossy counting: lines seen
once are forgotten when the table fills). Deduplication reads its input whole before it yields
(`dedup_text.py`: a spill file on disk, a digest and band keys per document in memory). The split
is a hash of (split_seed, the place of the document's cluster's first document), so near copies
land together without holding the corpus, and each document is appended to its split's JSONL file
as it comes. One long text file comes in
pieces already split by position (`read.iter_text`); they are cleaned as parts of one document and
not deduplicated.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import genlab.prepare.steps as steps
from genlab.config.prepare import Clean, Normalize, SwapGroups
from genlab.prepare.kinds import SPLITS
from genlab.prepare.record import Item, StepLog

MAX_LINES = 2_000_000  # boilerplate counting: distinct lines tracked before the singletons are dropped


def timed(items: Iterable[Item], log: StepLog, work: Callable[[Item], Item | None]) -> Iterator[Item]:
    """Apply `work` to each item, timing only the step's own work and counting what it reads and keeps."""
    for item in items:
        began = time.perf_counter()
        log.megabytes += len(item.value) / 1e6
        out = work(item)
        log.seconds += time.perf_counter() - began
        if out is not None:
            log.kept += not out.continues  # documents, not the pieces of one
            yield out


def clocked(items: Iterable[Item], log: StepLog) -> Iterator[Item]:
    """The reader's own time (next() on it), not the time later steps spend on what it yields."""
    items = iter(items)
    while True:
        began = time.perf_counter()
        item = next(items, None)
        log.seconds += time.perf_counter() - began
        if item is None:
            return
        yield item


def boilerplate(documents: Callable[[], Iterable[Item]], repeats: int) -> set[str]:
    """Lines of at least 20 characters found in `repeats` or more documents, counted in one streaming pass."""
    counts: Counter[bytes] = Counter()
    for item in documents():
        if item.split is not None:  # a piece of one long file: one document has no boilerplate of its own
            continue
        for line in {ln.strip() for ln in item.value.splitlines() if len(ln.strip()) >= 20}:
            counts[hashlib.blake2b(line.encode(), digest_size=8).digest()] += 1
        if len(counts) > MAX_LINES:
            counts = Counter({k: n for k, n in counts.items() if n > 1})
    frequent = {k for k, n in counts.items() if n >= repeats}
    if not frequent:
        return set()
    lines = set()  # a second look recovers the text of the frequent lines
    for item in documents():
        for line in item.value.splitlines():
            line = line.strip()
            if len(line) >= 20 and hashlib.blake2b(line.encode(), digest_size=8).digest() in frequent:
                lines.add(line)
        if len(lines) == len(frequent):
            break
    return lines


def clean(items: Iterable[Item], opts: Clean, repeated: set[str], log: StepLog) -> Iterator[Item]:
    if repeated:
        log.notes.append(f"{len(repeated)} boilerplate line(s) removed, e.g. {sorted(repeated)[0][:60]!r}")

    def work(item: Item) -> Item | None:
        if item.split is not None:  # a piece: lengths are the whole document's, which has no boilerplate
            return replace(item, value=steps.clean_document(item.value, opts, set(), piece=True))
        text = steps.clean_document(item.value, opts, repeated)
        if len(text.strip()) < opts.min_chars:
            log.remove(f"shorter than {opts.min_chars} characters", item.where)
            return None
        if opts.max_chars is not None and len(text) > opts.max_chars:
            log.remove(f"longer than {opts.max_chars} characters", item.where)
            return None
        log.changed += text != item.value
        return replace(item, value=text)

    return timed(items, log, work)


def normalize(items: Iterable[Item], opts: Normalize, log: StepLog) -> Iterator[Item]:
    def work(item: Item) -> Item:
        if opts.lowercase:
            log.changed += 1
            return replace(item, value=item.value.lower())
        return item
    return timed(items, log, work)


def swap_groups(items: Iterable[Item], opts: SwapGroups, log: StepLog) -> Iterator[Item]:
    """Each document, then, when it names a group, its copy with the group terms swapped (the same split; a piece
    of one long file is followed by its swapped copy in the same document)."""
    swap, added = group_swapper(opts.pairs), 0

    def work(item: Item) -> Item:
        nonlocal added
        swapped = swap(item.value)
        if swapped != item.value:
            added += 1
            copies.append(replace(item, value=swapped, continues=item.continues or item.split is not None))
        return item

    copies: list[Item] = []
    for item in timed(items, log, work):
        yield item
        while copies:
            copy = copies.pop()
            log.kept += not copy.continues
            yield copy
    log.changed = added
    log.notes.append(f"{added} counterfactual copies added (group terms swapped)")


def group_swapper(pairs: list[tuple[str, str]]) -> Callable[[str], str]:
    """A function that swaps each pair's words both ways, on word boundaries, keeping their capitals."""
    table: dict[str, str] = {}
    for a, b in pairs:
        table.setdefault(a.lower(), b.lower())
        table.setdefault(b.lower(), a.lower())
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(table, key=len, reverse=True))) + r")\b", re.I)

    def one(m: re.Match) -> str:
        word, new = m.group(), table[m.group().lower()]
        return new.upper() if word.isupper() and len(word) > 1 else new.capitalize() if word[0].isupper() else new
    return lambda text: pattern.sub(one, text)


def split_of(unit: str, seed: int, val: float, test: float) -> int:
    u = int.from_bytes(hashlib.blake2b(f"{seed}:{unit}".encode(), digest_size=8).digest(), "big") / 2**64
    return 2 if u < test else 1 if u < test + val else 0


def write(items: Iterable[Item], staging: Path, data, unit: Callable[[Item], str]) -> tuple[dict, list[int], list]:
    """Append each document to its split's JSONL file; (counts per split, lengths, the first documents)."""
    files = {s: (staging / f"{s}.jsonl").open("w") for s in SPLITS}
    counts, lengths, first = dict.fromkeys(SPLITS, 0), [], []
    try:
        for item in items:
            split = SPLITS[item.split if item.split is not None else
                           split_of(unit(item), data.split_seed, data.val_fraction, data.test_fraction)]
            record = {"text": item.value, "where": item.where} | ({"continues": True} if item.continues else {})
            files[split].write(json.dumps(record, ensure_ascii=False) + "\n")
            if item.continues:
                lengths[-1] += len(item.value)
                continue
            counts[split] += 1
            lengths.append(len(item.value))
            if len(first) < 5:
                first.append(item.value)
    finally:
        for f in files.values():
            f.close()
    return counts, lengths, first
