"""`genlab prepare` for text, on either engine (`engine.py`): stages over blocks of the input (`blocks.py`).

1. count: per block, how many documents hold each line (only when `clean` removes boilerplate).
2. first: per block, read, run the steps before `deduplicate`, spill each document to a file of the
   block, and return per document only what deduplication and the split need: a digest, LSH band
   keys, the split its own place hashes to, its offset in the spill.
3. (this process) the exact and near clusters over every id (`dedup_text.py`), each document's fate
   and split.
4. last: per block, decide each document, run the steps after `deduplicate`, append its lines to the
   block's part file of its split; then per shard, join the parts into the shard's file.

Ids are the order of the documents in the sorted source and shards hold about SHARD_BYTES of a
split in id order, so the set is the same bytes whatever the engine and the number of blocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import genlab.prepare.near as near
import genlab.prepare.stream as stream
from genlab.config.prepare import Deduplicate, pipeline_of
from genlab.prepare.blocks import Block, fresh_staging, plan, read_block
from genlab.prepare.dedup_text import record, representatives, verify_pairs
from genlab.prepare.record import SPLITS, Item, StepLog, merged

SHARD_BYTES = 64 << 20  # a split's shard files hold about this much each
KEEP, EXACT, NEAR = 0, 1, 2  # a document's fate


@dataclass(frozen=True)
class Job:
    """What every task needs: the data config, the steps before and after deduplicate, where to write."""

    data: object
    before: tuple
    after: tuple
    dedup: Deduplicate | None
    staging: Path
    repeated: frozenset = frozenset()

    def spill(self, block: int) -> Path:
        return self.staging / ".blocks" / f"{block:05d}.spill.jsonl"

    def part(self, block: int, split: str) -> Path:
        return self.staging / ".blocks" / f"{block:05d}.{split}.jsonl"


def prepare_text(data, staging: Path, engine, blocks: int | None = None) -> dict:
    """Every stage; returns the logs (in pipeline order), the counts and shards per split, and the preview."""
    pipeline = [s for s in pipeline_of(data, "text") if s.step not in ("validate", "split")]
    at = next((i for i, s in enumerate(pipeline) if s.step == "deduplicate"), len(pipeline))
    job = Job(data, tuple(pipeline[:at]), tuple(pipeline[at + 1:]), pipeline[at] if at < len(pipeline) else None,
              staging)
    from genlab.prepare.store import fingerprint  # here, not at the top: a Ray task imports this module

    parts = plan(data, blocks or 2 * engine.cpus)
    fresh_staging(staging, fingerprint(data) + repr(parts))
    clean = next((s for s in job.before if s.step == "clean"), None)
    if clean is not None and clean.boilerplate:
        job = replace(job, repeated=frozenset(_boilerplate(job, parts, engine, clean.boilerplate)))
    firsts = engine.map(lambda block: first_stage(job, block), parts)
    began = time.perf_counter()
    fates = decide(job, firsts, engine)
    dedup_seconds = time.perf_counter() - began
    lasts = engine.map(lambda task: last_stage(job, *task), [(b.index, *f) for b, f in zip(parts, fates["blocks"])])
    shards = engine.map(lambda task: write_shard(job, *task), _shards(lasts))
    shutil.rmtree(staging / ".blocks")
    logs = _logs(job, pipeline, firsts, lasts, fates, dedup_seconds)
    counts = {s: sum(r["documents"] for r in shards if r["split"] == s) for s in SPLITS}
    lengths = [n for r in lasts for n in r["lengths"].tolist()]
    first = [t for r in lasts for t in r["first"]][:5]
    return {"logs": logs, "counts": counts, "lengths": lengths, "first": first,
            "shards": {s: [{k: v for k, v in r.items() if k != "split"} for r in shards if r["split"] == s]
                       for s in SPLITS},
            "dedup": near.scheme(job.dedup) if job.dedup is not None else None}


def _boilerplate(job: Job, parts: list[Block], engine, repeats: int) -> set[str]:
    counts: Counter[bytes] = Counter()
    for block in engine.map(lambda b: stream.count_lines(read_block(b, job.data, StepLog("count"))), parts):
        counts = stream.merge_counts(counts, block)
    frequent = {k for k, n in counts.items() if n >= repeats}
    if not frequent:
        return set()
    return set().union(*engine.map(lambda b: stream.frequent_lines(read_block(b, job.data, StepLog("count")),
                                                                   frequent), parts))


# --- stage 2: read, the steps before deduplicate, spill ------------------------------------------------------

def first_stage(job: Job, block: Block) -> dict:
    return _reused(job.staging / ".blocks" / f"{block.index:05d}-first", lambda: _first(job, block))


def _first(job: Job, block: Block) -> dict:
    read_log, dedup_log = StepLog("validate"), StepLog("deduplicate")
    logs = {s.step: StepLog(s.step) for s in job.before}
    work = stream.chain(list(job.before), set(job.repeated), logs)
    digests, keys, split, piece, offsets = [], [], [], [], []
    data = job.data
    with job.spill(block.index).open("wb") as out:
        for item in read_block(block, data, read_log):
            for doc in work(item):
                offsets.append(out.tell())
                out.write(json.dumps([doc.where, doc.value, doc.split, doc.continues], ensure_ascii=False).encode()
                          + b"\n")
                piece.append(doc.split is not None)
                split.append(doc.split if doc.split is not None else
                             stream.split_of(doc.where, data.split_seed, data.val_fraction, data.test_fraction))
                if job.dedup is not None and doc.split is None:
                    began = time.perf_counter()
                    digest, bands = record(doc.value, job.dedup)
                    dedup_log.seconds += time.perf_counter() - began
                    dedup_log.megabytes += len(doc.value) / 1e6
                    digests.append(digest)
                    keys.append(bands)
    return {"logs": [read_log, *logs.values(), dedup_log], "digests": b"".join(digests),
            "keys": np.stack(keys) if keys else np.zeros((0, 0), np.uint64), "split": np.array(split, np.int8),
            "piece": np.array(piece, bool), "offsets": np.array(offsets, np.int64)}


# --- stage 3: clusters over every id ---------------------------------------------------------------------------

def decide(job: Job, firsts: list[dict], engine) -> dict:
    """Each document's fate (kept, an exact copy, a near copy), the id it copies, its split, and the places of the
    ids that others copy (their messages name them); by block. Candidate pairs are verified as tasks."""
    sizes = [len(f["split"]) for f in firsts]
    starts = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    offsets = [f["offsets"] for f in firsts]
    piece, split = np.concatenate([f["piece"] for f in firsts]), np.concatenate([f["split"] for f in firsts])
    n = len(split)
    fate, other, clusters = np.zeros(n, np.int8), np.full(n, -1, np.int64), {}
    whole = np.flatnonzero(~piece)
    spilled = Spilled(job, offsets, starts)
    if job.dedup is not None and len(whole):
        digests = np.frombuffer(b"".join(f["digests"] for f in firsts), np.uint8).reshape(-1, 16)
        keys = np.concatenate([f["keys"] for f in firsts if len(f["keys"])]) if any(
            len(f["keys"]) for f in firsts) else np.zeros((len(whole), 0), np.uint64)


        def verify(pairs: np.ndarray) -> np.ndarray:
            chunks = np.array_split(whole[pairs], min(len(pairs), 4 * engine.cpus))
            return np.concatenate(engine.map(lambda chunk: _verify(job, offsets, starts, chunk), chunks))

        exact, cluster = representatives(digests, keys, job.dedup, verify)
        exact, cluster = whole[exact], whole[cluster]
        copy = exact != whole
        fate[whole[copy]], other[whole[copy]] = EXACT, exact[copy]
        near_copy = ~copy & (cluster != whole)
        if job.dedup.near_action == "remove":
            fate[whole[near_copy]] = NEAR
        other[whole[near_copy]] = cluster[near_copy]
        split[whole[near_copy]] = split[cluster[near_copy]]  # group: the cluster's split, its smallest id's
        members = np.bincount(cluster[~copy], minlength=n)
        clusters = {int(i): int(members[i]) for i in np.flatnonzero(members > 1)}
    named = np.unique(other[other >= 0])
    places = {int(i): spilled(int(i))[0] for i in named}
    spilled.close()
    blocks = [(fate[a:b], other[a:b], split[a:b], {i: places[i] for i in np.unique(other[a:b]).tolist() if i >= 0})
              for a, b in zip(starts[:-1], starts[1:])]
    return {"blocks": blocks, "clusters": clusters}


def _verify(job: Job, offsets: list[np.ndarray], starts: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    spilled = Spilled(job, offsets, starts)
    try:
        return verify_pairs(pairs, job.dedup, lambda i: spilled(i)[1])
    finally:
        spilled.close()


class Spilled:
    """A document read back from its block's spill file by id: [where, text, piece split, continues]."""

    def __init__(self, job: Job, offsets: list[np.ndarray], starts: np.ndarray) -> None:
        self.job, self.offsets, self.starts, self.files = job, offsets, starts, {}

    def __call__(self, i: int) -> list:
        block = int(np.searchsorted(self.starts, i, side="right") - 1)
        if block not in self.files:
            self.files[block] = self.job.spill(block).open("rb")
        f = self.files[block]
        f.seek(self.offsets[block][i - self.starts[block]])
        return json.loads(f.readline())

    def close(self) -> None:
        for f in self.files.values():
            f.close()


# --- stage 4: fates, the steps after deduplicate, parts, shards ------------------------------------------------

def last_stage(job: Job, block: int, fate: np.ndarray, other: np.ndarray, split: np.ndarray, places: dict) -> dict:
    return _reused(job.staging / ".blocks" / f"{block:05d}-last", lambda: _last(job, block, fate, other, split,
                                                                                places))


def _last(job: Job, block: int, fate: np.ndarray, other: np.ndarray, split: np.ndarray, places: dict) -> dict:
    dedup_log = StepLog("deduplicate")
    logs = {s.step: StepLog(s.step) for s in job.after}
    work = stream.chain(list(job.after), set(), logs)
    files = {s: job.part(block, s).open("wb") for s in SPLITS}
    lines: list[tuple[int, int, bool]] = []  # (split, bytes, starts a document) per line, in order
    lengths, first = [], []
    try:
        with job.spill(block).open("rb") as f:
            for k, line in enumerate(f):
                where, value, piece_split, continues = json.loads(line)
                if fate[k] != KEEP:
                    reason = "exact duplicate" if fate[k] == EXACT else "near duplicate"
                    dedup_log.remove(reason, f"{where} ({'copy of' if fate[k] == EXACT else 'near'} "
                                             f"{places[int(other[k])]})")
                    continue
                dedup_log.kept += not continues
                item = Item(where, value, split=piece_split, continues=continues,
                            cluster=int(other[k]) if other[k] >= 0 else None)
                for doc in work(item):
                    out = {"text": doc.value, "where": doc.where} | ({"continues": True} if doc.continues else {})
                    data = (json.dumps(out, ensure_ascii=False) + "\n").encode()
                    files[SPLITS[split[k]]].write(data)
                    lines.append((int(split[k]), len(data), not doc.continues))
                    if doc.continues and lengths:
                        lengths[-1] += len(doc.value)
                    else:
                        lengths.append(len(doc.value))
                        if len(first) < 5:
                            first.append(doc.value)
    finally:
        for file in files.values():
            file.close()
    return {"logs": [dedup_log, *logs.values()], "lines": np.array(lines, np.int64).reshape(-1, 3),
            "lengths": np.array(lengths, np.int64), "first": first, "block": block}


def _reused(path: Path, work) -> dict:
    """A block's result from a run killed before, or `work()`'s, kept as arrays (.npz) and JSON: written last, once
    the block's files are complete, so a result on disk means a finished block."""
    if path.with_suffix(".json").is_file():
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as arrays:
            out = {k: arrays[k] for k in arrays.files}
        plain = json.loads(path.with_suffix(".json").read_text())
        return out | plain | {"logs": [StepLog(**log) for log in plain["logs"]],
                              "digests": out.get("digests", np.zeros(0, np.uint8)).tobytes()}
    out = work()
    arrays = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
    if "digests" in out:
        arrays["digests"] = np.frombuffer(out["digests"], np.uint8)
    np.savez(path.with_suffix(".npz"), **arrays)
    plain = {k: v for k, v in out.items() if k not in arrays}
    plain["logs"] = [dataclasses.asdict(log) for log in out["logs"]]
    path.with_suffix(".tmp").write_text(json.dumps(plain))
    path.with_suffix(".tmp").rename(path.with_suffix(".json"))
    return out


def _shards(lasts: list[dict]) -> list[tuple]:
    """(split, shard number, [(block, start, end) byte ranges of its part files], documents) per shard: a split's
    lines in id order, a new shard at the first document to start SHARD_BYTES or more after the shard began."""
    tasks, size = [], SHARD_BYTES
    for k, name in enumerate(SPLITS):
        rows = [(last["block"], last["lines"][last["lines"][:, 0] == k]) for last in lasts]
        block = np.concatenate([np.full(len(r), b) for b, r in rows] or [np.zeros(0, np.int64)])
        nbytes = np.concatenate([r[:, 1] for _, r in rows] or [np.zeros(0, np.int64)])
        starts = np.concatenate([r[:, 2] for _, r in rows] or [np.zeros(0, np.int64)]).astype(bool)
        offset = np.concatenate([np.cumsum(r[:, 1]) - r[:, 1] for _, r in rows] or [np.zeros(0, np.int64)])
        before = np.r_[0, np.cumsum(nbytes)]  # bytes of the split before each line
        first, shard = 0, 0
        while first < len(nbytes):
            later = np.flatnonzero(starts[first + 1:] & (before[first + 1:-1] - before[first] >= size))
            end = first + 1 + int(later[0]) if len(later) else len(nbytes)
            ranges = [(int(block[i]), int(offset[i]), int(offset[j - 1] + nbytes[j - 1])) for i, j in
                      _runs(block[first:end], first)]
            if starts[first:end].any():  # lines that only continue a document: none of a split of their own
                tasks.append((name, shard, ranges, int(starts[first:end].sum())))
            first, shard = end, shard + 1
    return tasks


def _runs(values: np.ndarray, base: int) -> list[tuple[int, int]]:
    """[start, end) of each run of equal values, offset by `base`."""
    cuts = np.flatnonzero(values[1:] != values[:-1]) + 1
    edges = np.r_[0, cuts, len(values)] + base
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def write_shard(job: Job, split: str, shard: int, ranges: list[tuple[int, int, int]], documents: int) -> dict:
    name = f"{split}-{shard:05d}.jsonl"
    digest = hashlib.sha256()
    with (job.staging / name).open("wb") as out:
        for block, start, end in ranges:
            with job.part(block, split).open("rb") as f:
                f.seek(start)
                data = f.read(end - start)
            digest.update(data)
            out.write(data)
    return {"split": split, "file": name, "documents": documents, "bytes": (job.staging / name).stat().st_size,
            "sha256": digest.hexdigest()}


def _logs(job: Job, pipeline: list, firsts: list[dict], lasts: list[dict], fates: dict, seconds: float
          ) -> list[StepLog]:
    """Each step's log over every block, in pipeline order, with the notes only the whole input can give."""
    logs = [merged([f["logs"][0] for f in firsts])]
    for step in pipeline:
        if step.step in {s.step for s in job.before}:
            log = merged([f["logs"][1 + [s.step for s in job.before].index(step.step)] for f in firsts])
            if step.step == "clean" and job.repeated:
                log.notes.insert(0, f"{len(job.repeated)} boilerplate line(s) removed, e.g. "
                                    f"{sorted(job.repeated)[0][:60]!r}")
        elif step.step == "deduplicate":
            log = merged([f["logs"][-1] for f in firsts] + [r["logs"][0] for r in lasts])
            log.kept, log.seconds = sum(r["logs"][0].kept for r in lasts), log.seconds + seconds
            if fates["clusters"]:
                largest = sorted(fates["clusters"].values(), reverse=True)[:10]
                kept = "one of each kept" if job.dedup.near_action == "remove" else "each kept whole in one split"
                log.notes.append(f"{len(fates['clusters'])} near-duplicate cluster(s), largest sizes "
                                 f"{', '.join(map(str, largest))}; {kept}")
        elif step.step in {s.step for s in job.after}:
            log = merged([r["logs"][1 + [s.step for s in job.after].index(step.step)] for r in lasts])
            if step.step == "swap_groups":
                log.notes.append(f"{log.changed} counterfactual copies added (group terms swapped)")
        else:
            log = StepLog(step.step, notes=["does not apply to text"])
        logs.append(log)
    return logs
