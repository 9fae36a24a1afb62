"""`genlab prepare` for images, audio and tables on either engine (`engine.py`): the input files in blocks of the
sorted source, each block read by one task and taken through the steps that work item by item (an image's decoding,
conversion, resizing and hashes; a clip's resampling, silence check and hashes; a table's parsing).

What needs every item (near-duplicate clusters, the split, a table's column statistics) runs here on the items in
block order, which is the order of one read of everything: the prepared set is the same bytes whatever the engine
and the number of blocks. A built-in source is one block, read in this process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.prepare.read import warn_decoder_notes
from genlab.prepare.record import StepLog, merged


@dataclass(frozen=True)
class Job:
    """What a task needs: the data config, the kind, and the steps it runs after reading."""

    data: Any
    kind: Any  # prepare/kinds.py's Kind
    steps: tuple  # the leading steps that work item by item
    hashes: Any  # the deduplicate step that follows them, whose keys each task computes; None when none does


def read_items(data, kind, pipeline: list, engine, blocks: int | None = None) -> tuple[Any, list[StepLog], dict]:
    """Read every input and run the pipeline's leading item-by-item steps, per block on `engine`; returns the items
    in source order, the logs of reading and of those steps (in order), and what the kind noted (`extra`)."""
    per_item = kind.item_steps()
    lead = []
    for step in pipeline:
        if step.step not in per_item:
            break
        lead.append(step)
    follows = pipeline[len(lead)] if len(lead) < len(pipeline) else None
    job = Job(data, kind, tuple(lead), follows if follows is not None and follows.step == "deduplicate" else None)
    if data.source not in _files_sources():
        from genlab.data.registry import source

        log, extra = StepLog("validate"), {}
        items = kind.from_loaded(source(data.source)(data), log, extra)
        results = [_steps(job, items, log, extra)]
    else:
        root = Path(data.path).expanduser()
        files = [str(p) for p in kind.input_files(root)]
        parts = _blocks(files, 1 if data.limit is not None else blocks or 2 * engine.cpus)
        results = engine.map(lambda part: block_items(job, part), parts)
        again, settled = kind.settle([r["extra"] for r in results], data)
        if again:  # a block decided alone what depends on every item (images: grey only if all are)
            redo = Job(settled, kind, job.steps, job.hashes)
            for i, result in zip(again, engine.map(lambda part: block_items(redo, part), [parts[i] for i in again]),
                                 strict=True):
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


def block_items(job: Job, files: list[str]) -> dict:
    """One block: its files read, then the leading steps and the hashes that deduplicate compares."""
    data = job.data
    log, extra = StepLog("validate"), {}
    began = time.perf_counter()
    items = job.kind.read_paths(Path(data.path).expanduser(), [Path(f) for f in files], data, log, extra)
    log.seconds = time.perf_counter() - began
    return _steps(job, items, log, extra)


def _steps(job: Job, items: Any, log: StepLog, extra: dict) -> dict:
    logs, runs = [log], job.kind.steps()
    for step in job.steps:
        step_log = StepLog(step.step, megabytes=job.kind.megabytes(items))
        began = time.perf_counter()
        items = runs[step.step](step, items, job.data, step_log, extra)
        step_log.seconds = time.perf_counter() - began
        logs.append(step_log)
    if job.hashes is not None:
        items = job.kind.hashed(items, job.hashes, job.data, extra)
    return {"items": items, "logs": logs, "extra": extra}


def _blocks(files: list[str], blocks: int) -> list[list[str]]:
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
