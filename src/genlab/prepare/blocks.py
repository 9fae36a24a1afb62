"""The text input cut into blocks: contiguous runs of the sorted source that can be read on their own.

A block is a list of parts, each a whole file or a byte range of a JSONL file starting at a line
(with that line's number, so `where` names it as a whole read would). Blocks follow the sorted
source in order, so reading them one after the other gives the documents in the same order as one
read of everything, however many blocks there are: that order is every document's id.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from genlab.errors import GenlabError
from genlab.media.suffixes import TEXT_SUFFIXES
from genlab.prepare.read import files_under, text_file
from genlab.prepare.record import Item, StepLog


@dataclass(frozen=True)
class Part:
    path: str  # a file; "" for a built-in source
    start: int = 0  # byte offset (a built-in source: its first document)
    end: int | None = None  # byte offset past the part, None for the file's end (a built-in source: past its last)
    first_line: int = 1


@dataclass(frozen=True)
class Block:
    index: int
    parts: tuple[Part, ...]


def fresh_staging(staging: Path, key: str) -> None:
    """Keep the staging folder's finished blocks (`.blocks/`) if a run killed before this one had the same input,
    config and blocks (`key`); otherwise start it afresh. What is written from the blocks goes either way."""
    key = hashlib.sha256(key.encode()).hexdigest()
    stamp = staging / ".blocks" / "job"
    if not (stamp.is_file() and stamp.read_text() == key):
        shutil.rmtree(staging, ignore_errors=True)
        (staging / ".blocks").mkdir(parents=True)
        stamp.write_text(key)
    for stale in (p for p in staging.iterdir() if p.is_file()):
        stale.unlink()  # shards and reports are rewritten from the blocks


def plan(data, blocks: int) -> list[Block]:
    """The input cut into at most about `blocks` blocks of similar size (whole files, or byte ranges of JSONL)."""
    if data.source != "text":  # a built-in source: ranges of its documents
        from genlab.data.registry import source

        count = len(source(data.source)(data).x)
        cuts = sorted({round(count * i / blocks) for i in range(blocks + 1)})
        return [Block(k, (Part("", a, b),)) for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
    if data.path is None:
        raise GenlabError("data.path: required to prepare data.source 'text'")
    root = Path(data.path).expanduser()
    files = files_under(root, TEXT_SUFFIXES)
    if data.limit is not None or (root.is_file() and files[0].suffix.lower() != ".jsonl"):
        blocks = 1  # the first N documents, or one long file cut in pieces by position: one read in order
    target = max(1, sum(f.stat().st_size for f in files) // blocks + 1)
    out: list[list[Part]] = [[]]
    filled = 0
    for path in files:
        size = path.stat().st_size
        ranges = _line_ranges(path, size, target - filled, target) if path.suffix.lower() == ".jsonl" \
            and blocks > 1 else [Part(str(path))]
        for part in ranges:
            out[-1].append(part)
            filled += (size if part.end is None else part.end) - part.start
            if filled >= target:
                out.append([])
                filled = 0
    return [Block(k, tuple(parts)) for k, parts in enumerate(p for p in out if p)] or [Block(0, ())]


def _line_ranges(path: Path, size: int, first: int, target: int) -> list[Part]:
    """A JSONL file cut at line ends about every `target` bytes (the first cut after `first`)."""
    parts, start, line = [], 0, 1
    with path.open("rb") as f:
        while start < size:
            cut = min(size, start + max(1, first if not parts else target))
            f.seek(cut)
            cut = min(size, cut + len(f.readline())) if cut < size else size  # to the end of that line
            lines = _newlines(f, start, cut)
            parts.append(Part(str(path), start, cut, line))
            start, line = cut, line + lines
    return parts


def _newlines(f, start: int, end: int, chunk: int = 16 << 20) -> int:
    f.seek(start)
    count = 0
    while start < end:
        data = f.read(min(chunk, end - start))
        count, start = count + data.count(b"\n"), start + len(data)
    return count


def file_blocks(files: list[str], blocks: int) -> list[list[str]]:
    """The sorted files cut into at most `blocks` runs of about the same number of bytes."""
    if not files:
        return [[]]
    sizes = [Path(f).stat().st_size for f in files]
    target = max(1, sum(sizes) // blocks + 1)
    out: list[list[str]] = [[]]
    filled = 0
    for path, size in zip(files, sizes, strict=True):
        if filled >= target:
            out.append([])
            filled = 0
        out[-1].append(path)
        filled += size
    return out


def read_block(block: Block, data, log: StepLog) -> Iterator[Item]:
    """The block's documents in order; what cannot be read is named in `log`."""
    if data.source != "text":
        from genlab.data.registry import source

        docs = source(data.source)(data).x
        for part in block.parts:
            for i in range(part.start, part.end):
                log.kept += 1
                log.megabytes += len(docs[i]) / 1e6
                yield Item(f"document {i + 1}", docs[i])
        return
    root = Path(data.path).expanduser()
    fractions = (data.val_fraction, data.test_fraction)
    items = (item for part in block.parts for item in
             text_file(root, Path(part.path), data.text_field, log, fractions, part.start, part.end, part.first_line))
    yield from islice(items, data.limit)
