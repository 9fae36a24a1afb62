"""genlab prepare on the standard library's sources: MB/s per step, and near-duplicate detection beside
plain datasketch used as its documentation shows, on the same documents, in the same run. Figures only.

The corpus is `data.source: python_code` (every .py file of the standard library but its tests).
genlab's deduplicate hashes character 5-shingles with MinHash.update_batch and queries the LSH
before inserting each document; the plain version, on the same cleaned documents, builds each
MinHash with one `update` per shingle, inserts everything, then queries every document, as
datasketch's README does.

Usage: python bench/prepare_dedup.py
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

from genlab.prepare import prepare
from genlab.prepare.dedup import shingles


def plain_datasketch(docs: list[str], threshold: float = 0.8, num_perm: int = 128, k: int = 5) -> tuple[float, int]:
    """Seconds, and documents with at least one near copy, by datasketch's documented usage."""
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    lsh, sketches = MinHashLSH(threshold=threshold, num_perm=num_perm), []
    for i, doc in enumerate(docs):
        m = MinHash(num_perm=num_perm)
        for s in shingles(doc, k):
            m.update(s)
        lsh.insert(str(i), m)
        sketches.append(m)
    with_copies = sum(len(lsh.query(m)) > 1 for m in sketches)
    return time.perf_counter() - start, with_copies


def main() -> None:
    out = Path(tempfile.mkdtemp()) / "code"
    steps = "[{step: clean, boilerplate: null}, {step: deduplicate}]"
    start = time.perf_counter()
    prepare(None, out, ["data.source=python_code", "model.family=transformer", f"data.pipeline={steps}"])
    total = time.perf_counter() - start
    summary = json.loads((out / "data_report.json").read_text())
    cleaned = prepare(None, out.parent / "cleaned", ["data.source=python_code", "model.family=transformer",
                                                     "data.pipeline=[{step: clean, boilerplate: null}]"])
    docs = [json.loads(line)["text"] for split in ("train", "val", "test") for line in
            (cleaned / f"{split}.jsonl").open()]  # the same documents genlab's deduplicate step was given
    megabytes = sum(len(d) for d in docs) / 1e6
    print(f"python_code: {summary['read']} documents, {megabytes:.1f} MB; genlab prepare took {total:.1f} s in all")
    print(f"  {'step':<12} {'seconds':>8} {'MB/s':>8}  removed")
    for step in summary["steps"]:
        rate = step["megabytes"] / step["seconds"] if step["seconds"] and step["megabytes"] else float("nan")
        print(f"  {step['step']:<12} {step['seconds']:8.2f} {rate:8.1f}  {step['reasons'] or ''}")
    dedup = next(s for s in summary["steps"] if s["step"] == "deduplicate")
    seconds, copies = plain_datasketch(docs)
    print(f"deduplicate, same {len(docs)} documents: genlab {dedup['seconds']:.1f} s "
          f"({megabytes / dedup['seconds']:.1f} MB/s, exact and near; removed {dedup['removed']}); plain datasketch "
          f"{seconds:.1f} s ({megabytes / seconds:.1f} MB/s; {copies} documents have a near copy)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
