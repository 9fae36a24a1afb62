"""genlab prepare on the standard library's sources: MB/s per step, and near-duplicate detection beside
plain datasketch used as its documentation shows, on the same documents, in the same run. Figures only.

Corpora: `stdlib` (default), every .py file of the standard library with its tests (about 30 MB, the
issue's size), written to one JSONL file and prepared as `data.source: text`; `python_code`, the
built-in source (tests left out, about 10 MB). genlab's deduplicate hashes character 5-shingles with
MinHash.update_batch and queries the LSH before inserting each document; the plain version, on the
same cleaned documents, builds each MinHash with one `update` per shingle, inserts everything, then
queries every document, as datasketch's README does. Exact deduplication alone is timed beside
reading the same file from disk.

Usage: python bench/prepare_dedup.py [stdlib|python_code]
"""

from __future__ import annotations

import json
import resource
import sys
import sysconfig
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


def stdlib_jsonl(path: Path) -> Path:
    """Every .py file of the standard library (tests included), one JSONL line each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    with path.open("w") as f:
        for file in sorted(root.rglob("*.py")):
            if not {"site-packages", "__pycache__"} & set(file.relative_to(root).parts):
                text = file.read_bytes().decode("utf-8", "replace")
                f.write(json.dumps({"text": text, "file": str(file.relative_to(root))}) + "\n")
    return path


def main(corpus: str = "stdlib") -> None:
    work = Path(tempfile.mkdtemp())
    source = ["data.source=python_code"] if corpus == "python_code" else \
        ["data.source=text", f"data.path={stdlib_jsonl(work / 'stdlib.jsonl')}"]
    source.append("model.family=transformer")
    out = work / "code"
    start = time.perf_counter()
    prepare(None, out, [*source, "data.pipeline=[{step: clean}, {step: deduplicate}]"])
    total = time.perf_counter() - start
    summary = json.loads((out / "data_report.json").read_text())
    cleaned = prepare(None, work / "cleaned", [*source, "data.pipeline=[{step: clean}]"])
    docs = [json.loads(line)["text"] for split in ("train", "val", "test") for line in
            (cleaned / f"{split}.jsonl").open()]  # the same documents genlab's deduplicate step was given
    megabytes = sum(len(d) for d in docs) / 1e6
    exact = json.loads((prepare(None, work / "exact", [*source, "data.pipeline=[{step: deduplicate, near: false}]"])
                        / "data_report.json").read_text())["steps"]
    exact_step = next(s for s in exact if s["step"] == "deduplicate")
    if corpus != "python_code":
        began = time.perf_counter()
        read = len((work / "stdlib.jsonl").read_bytes()) / 1e6
        disk = read / (time.perf_counter() - began)
        print(f"reading the {read:.1f} MB JSONL file: {disk:.0f} MB/s; exact deduplication alone: "
              f"{exact_step['megabytes'] / exact_step['seconds']:.0f} MB/s")
    print(f"{corpus}: {summary['read']} documents, {megabytes:.1f} MB; genlab prepare took {total:.1f} s in all")
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
    main(*sys.argv[1:])
