"""`genlab prepare` for images, audio and tables on either engine (`engine.py`): the input files in blocks of the
sorted source, each block read by one task and taken through the steps that work item by item (an image's decoding,
conversion, resizing and hashes; a clip's resampling, silence check and hashes; a table's parsing).

What needs every item (near-duplicate clusters, the split, a table's column statistics) runs here on the items in
block order, which is the order of one read of everything: the prepared set is the same bytes whatever the engine
and the number of blocks. A built-in source is one block, read in this process.

Images and clips are spilled: a task writes its block's pixels or samples to a file beside the set, and only their
places (`Stored`), hashes and labels come back, so this process never holds the pixels. The splits are then written
as shards of about SHARD_BYTES (`train-00000.safetensors`, ...), read back from the spills one shard at a time.
A pipeline that changes items after the steps a block runs (a normalize after deduplicate) keeps them in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from genlab.prepare.blocks import file_blocks, fresh_staging
from genlab.prepare.read import warn_decoder_notes
from genlab.prepare.record import Item, StepLog, merged


@dataclass(frozen=True)
class Job:
    """What a task needs: the data config, the kind, and the steps it runs after reading."""

    data: Any
    kind: Any  # prepare/kinds.py's Kind
    steps: tuple  # the leading steps that work item by item
    hashes: Any  # the deduplicate step that follows them, whose keys each task computes; None when none does
    spill: str | None = None  # the folder a task writes its items' values to; None: they come back whole


SHARD_BYTES = 64 << 20  # a split's shard files hold about this much each


@dataclass(frozen=True)
class Stored:
    """An item's value left in its block's spill file (row `row`): what the steps after reading see of it."""

    file: str
    row: int
    shape: tuple
    nbytes: int


def read_items(data, kind, pipeline: list, engine, staging: Path, key: str, blocks: int | None = None
               ) -> tuple[Any, list[StepLog], dict]:
    """Read every input and run the pipeline's leading item-by-item steps, per block on `engine`; returns the items
    in source order (their values `Stored` in `staging/.blocks` where the kind and the pipeline allow), the logs of
    reading and of those steps (in order), and what the kind noted (`extra`). Blocks that a run killed before this
    one finished, with the same input and config (`key`, the data's fingerprint) and blocks, are read back."""

    per_item = kind.item_steps()
    lead = []
    for step in pipeline:
        if step.step not in per_item:
            break
        lead.append(step)
    rest = pipeline[len(lead):]
    spills = bool(kind.light_steps()) and all(s.step in kind.light_steps() for s in rest)
    dedup = next((s for s in rest if s.step == "deduplicate"), None) if spills else \
        rest[0] if rest and rest[0].step == "deduplicate" else None
    job = Job(data, kind, tuple(lead), dedup, str(staging / ".blocks") if spills else None)
    if data.source not in _files_sources():
        from genlab.data.registry import source

        fresh_staging(staging, key)
        log, extra = StepLog("validate"), {}
        items = kind.from_loaded(source(data.source)(data), log, extra)
        results = [_steps(job, items, log, extra, 0)]
    else:
        root = Path(data.path).expanduser()
        files = [str(p) for p in kind.input_files(root)]
        parts = file_blocks(files, 1 if data.limit is not None else blocks or 2 * engine.cpus)
        fresh_staging(staging, key + repr(parts))
        results = engine.map(lambda task: block_items(job, *task), list(enumerate(parts)))
        again, settled = kind.settle([r["extra"] for r in results], data)
        if again:  # a block decided alone what depends on every item (images: grey only if all are)
            redo = replace(job, data=settled)
            tasks = [(i, parts[i]) for i in again]
            for i, result in zip(again, engine.map(lambda task: block_items(redo, *task), tasks), strict=True):
                results[i] = result
    items = kind.joined([r["items"] for r in results], data)
    logs = [merged([r["logs"][k] for r in results]) for k in range(1 + len(job.steps))]
    warn_decoder_notes(logs[0])
    extra: dict = {}
    for result in results:
        for key, value in result["extra"].items():
            extra[key] = extra.get(key, []) + value if isinstance(value, list) else extra.get(key, value)
    return items, logs, extra


def _files_sources() -> dict:
    from genlab.data.registry import FILES

    return FILES


def block_items(job: Job, index: int, files: list[str]) -> dict:
    """One block: its files read, then the leading steps and the hashes that deduplicate compares; or what a run
    killed before left of it."""
    done = _done(job, index)
    if done is not None and done.is_file():
        return _read_back(done)
    data = job.data
    log, extra = StepLog("validate"), {}
    began = time.perf_counter()
    items = job.kind.read_paths(Path(data.path).expanduser(), [Path(f) for f in files], data, log, extra)
    log.seconds = time.perf_counter() - began
    return _steps(job, items, log, extra, index)


def _steps(job: Job, items: Any, log: StepLog, extra: dict, index: int) -> dict:
    logs, runs = [log], job.kind.steps()
    for step in job.steps:
        step_log = StepLog(step.step, megabytes=job.kind.megabytes(items))
        began = time.perf_counter()
        items = runs[step.step](step, items, job.data, step_log, extra)
        step_log.seconds = time.perf_counter() - began
        logs.append(step_log)
    if job.hashes is not None:
        items = job.kind.hashed(items, job.hashes, job.data, extra)
    if job.spill is None:
        return {"items": items, "logs": logs, "extra": extra}
    items = job.kind.finish(items, job.data)
    values = [item.value for item in items]
    done = _done(job, index)
    file = str(done.with_suffix(".npy"))
    if values:
        np.save(file, np.stack(values))
    stored = [replace(item, value=Stored(file, row, value.shape, value.nbytes)) for row, (item, value) in
              enumerate(zip(items, values, strict=True))]
    result = {"items": stored, "logs": logs, "extra": extra}
    record = {"items": [[i.where, i.label, i.caption, i.hashes, i.value.shape, i.value.nbytes] for i in stored],
              "logs": [dataclasses.asdict(log) for log in logs], "extra": extra, "file": file}
    done.with_suffix(".tmp").write_text(json.dumps(record))
    done.with_suffix(".tmp").rename(done)  # last: a result on disk is a finished block
    return result


def _done(job: Job, index: int) -> Path | None:
    """Where a spilled block's result is kept: named by its data config too, since `settle` reads blocks again
    with another one."""
    if job.spill is None:
        return None
    config = hashlib.sha256(job.data.model_dump_json().encode()).hexdigest()[:12]
    return Path(job.spill) / f"{index:05d}-{config}.json"


def _read_back(done: Path) -> dict:
    record = json.loads(done.read_text())
    items = [Item(where, Stored(record["file"], row, tuple(shape), nbytes), label, caption,
                  hashes=tuple(hashes) if hashes is not None else None)
             for row, (where, label, caption, hashes, shape, nbytes) in enumerate(record["items"])]
    return {"items": items, "logs": [StepLog(**log) for log in record["logs"]], "extra": record["extra"]}


def values_of(items: list) -> list[np.ndarray]:
    """The items' values, read back from their spills where they were left there."""
    opened: dict[str, np.ndarray] = {}
    out = []
    for item in items:
        value = item.value
        if isinstance(value, Stored):
            if value.file not in opened:
                opened[value.file] = np.load(value.file, mmap_mode="r")
            value = np.array(opened[value.file][value.row])
        out.append(value)
    return out


def write_shards(out: Path, split: str, items: list, tensors) -> list[dict]:
    """A split's items in id order, as safetensors shards of about SHARD_BYTES: `tensors(items, values)` gives one
    shard's arrays and metadata; returns each shard's file, items, bytes and sha256, as the manifest lists them."""
    from safetensors.numpy import save

    shards, first = [], 0
    while first < len(items):
        end, size = first, 0
        while end < len(items) and (end == first or size + items[end].value.nbytes <= SHARD_BYTES):
            size, end = size + items[end].value.nbytes, end + 1
        blob = save(*tensors(items[first:end], values_of(items[first:end])))  # hashed as written, not read back
        path = out / f"{split}-{len(shards):05d}.safetensors"
        path.write_bytes(blob)
        shards.append({"file": path.name, "items": end - first, "bytes": len(blob),
                       "sha256": hashlib.sha256(blob).hexdigest()})
        first = end
    return shards
