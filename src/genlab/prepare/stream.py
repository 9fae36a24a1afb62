"""Text one document at a time: each step is a function of one document, which both engines apply
(`text.py`: in this process, or as Ray tasks over blocks of the input), so a corpus larger than
memory prepares in bounded memory and every engine gives the same answer.

Boilerplate lines are counted per block of the input and the counts merged (lossy counting: once
the table passes MAX_LINES distinct lines, those seen once are forgotten); a second look recovers
the text of the frequent ones. The split of a document is a hash of (split_seed, a place), so it
needs no other document.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

import genlab.prepare.steps as steps
from genlab.config.prepare import Clean, Normalize, SwapGroups
from genlab.prepare.record import Item, StepLog

MAX_LINES = 2_000_000  # boilerplate counting: distinct lines tracked before the singletons are dropped
Work = Callable[[Item], list[Item]]


def _lines(item: Item) -> set[str]:
    return {ln.strip() for ln in item.value.splitlines() if len(ln.strip()) >= 20}


def _line_key(line: str) -> bytes:
    return hashlib.blake2b(line.encode(), digest_size=8).digest()


def count_lines(items: Iterable[Item]) -> Counter[bytes]:
    """How many documents hold each line of at least 20 characters (by an 8-byte hash of the line)."""
    counts: Counter[bytes] = Counter()
    for item in items:
        if item.split is None:  # a piece of one long file: one document has no boilerplate of its own
            counts = merge_counts(counts, Counter(_line_key(line) for line in _lines(item)))
    return counts


def merge_counts(total: Counter[bytes], counts: Counter[bytes]) -> Counter[bytes]:
    """`total` plus `counts`; past MAX_LINES distinct lines, without the lines seen once (a block's memory too)."""
    total.update(counts)
    return Counter({k: n for k, n in total.items() if n > 1}) if len(total) > MAX_LINES else total


def frequent_lines(items: Iterable[Item], frequent: set[bytes]) -> set[str]:
    """The text of the lines whose hashes are in `frequent`."""
    return {line for item in items for line in _lines(item) if _line_key(line) in frequent}


def cleaner(opts: Clean, repeated: set[str], log: StepLog) -> Callable[[Item], Item | None]:
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
    return work


def normalizer(opts: Normalize, log: StepLog) -> Callable[[Item], Item]:
    def work(item: Item) -> Item:
        if opts.lowercase:
            log.changed += 1
            return replace(item, value=item.value.lower())
        return item
    return work


def swapper(opts: SwapGroups, log: StepLog) -> Work:
    """Each document, then, when it names a group, its copy with the group terms swapped (the same split; a piece
    of one long file is followed by its swapped copy in the same document)."""
    swap = group_swapper(opts.pairs)

    def work(item: Item) -> list[Item]:
        swapped = swap(item.value)
        if swapped == item.value:
            return [item]
        log.changed += 1
        return [item, replace(item, value=swapped, continues=item.continues or item.split is not None)]
    return work


def chain(pipeline: list, repeated: set[str], logs: dict[str, StepLog]) -> Work:
    """The steps as one function of a document (what it becomes: none, one or, with swap_groups, two), each step
    timed and counted in its own log."""
    works: list[tuple[StepLog, Work]] = []
    for step in pipeline:
        log = logs[step.step]
        if step.step == "clean":
            works.append((log, _listed(cleaner(step, repeated, log))))
        elif step.step == "normalize":
            works.append((log, _listed(normalizer(step, log))))
        elif step.step == "swap_groups":
            works.append((log, swapper(step, log)))

    def run(item: Item) -> list[Item]:
        items = [item]
        for log, work in works:
            out = []
            for one in items:
                began = time.perf_counter()
                log.megabytes += len(one.value) / 1e6
                done = work(one)
                log.seconds += time.perf_counter() - began
                log.kept += sum(not d.continues for d in done)
                out += done
            items = out
        return items
    return run


def _listed(work: Callable[[Item], Item | None]) -> Work:
    return lambda item: [out] if (out := work(item)) is not None else []


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
