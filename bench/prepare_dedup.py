"""genlab prepare's deduplication: MB/s per step against an earlier genlab checkout, interleaved in the same run
(medians of `--rounds`), what each keeps, and image near duplicates among 100,000 perceptual hashes. Figures only.

Corpus: every .py file of the standard library with its tests (about 31.5 MB), one JSONL line each, prepared as
`data.source: text` with `[clean, deduplicate]`. Each round runs this checkout and then `--against` (a folder
holding an earlier genlab's `src/`), each in a fresh process.

Usage: python bench/prepare_dedup.py [--against /path/to/old/checkout] [--rounds 3] [--images 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

RUN = """
import json, resource, sys, time
from genlab.prepare import prepare
started = time.perf_counter()
out = prepare(None, sys.argv[2], ["data.source=text", f"data.path={sys.argv[1]}", "model.family=transformer",
                                  "data.pipeline=[{step: clean}, {step: deduplicate}]"])
total = time.perf_counter() - started
report = json.loads((out / "data_report.json").read_text())
step = next(s for s in report["steps"] if s["step"] == "deduplicate")
print(json.dumps({"total": total, "dedup": step["seconds"], "megabytes": step["megabytes"],
                  "reasons": step["reasons"], "items": report["items"],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def stdlib_jsonl(path: Path) -> Path:
    """Every .py file of the standard library (tests included), one JSONL line each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    with path.open("w") as f:
        for file in sorted(root.rglob("*.py")):
            if not {"site-packages", "__pycache__"} & set(file.relative_to(root).parts):
                text = file.read_bytes().decode("utf-8", "replace")
                f.write(json.dumps({"text": text, "file": str(file.relative_to(root))}) + "\n")
    return path


def run(src: Path, corpus: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", RUN, str(corpus), str(out)], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def kept(folder: Path) -> set[str]:
    """The places of the kept documents, from shards (this genlab) or one file per split (earlier ones)."""
    manifest = json.loads((folder / "prepared.json").read_text())
    files = [folder / shard["file"] for shards in manifest["shards"].values() for shard in shards] \
        if "shards" in manifest else [folder / f"{split}.jsonl" for split in ("train", "val", "test")]
    return {json.loads(line)["where"] for file in files for line in file.read_text().splitlines()}


def text_rounds(against: Path | None, rounds: int) -> None:
    work = Path(tempfile.mkdtemp())
    corpus = stdlib_jsonl(work / "stdlib.jsonl")
    sides = {"this": Path(__file__).resolve().parents[1] / "src"} | ({"earlier": against / "src"} if against else {})
    results: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, src in sides.items():
            results[name].append(run(src, corpus, work / name))
    print(f"stdlib corpus: {corpus.stat().st_size / 1e6:.1f} MB of JSONL, medians of {rounds} interleaved rounds")
    print(f"  {'genlab':<8} {'dedup s':>8} {'MB/s':>6} {'whole s':>8} {'RSS MB':>7}  kept, removed")
    for name, rows in results.items():
        dedup = statistics.median(r["dedup"] for r in rows)
        print(f"  {name:<8} {dedup:8.2f} {rows[0]['megabytes'] / dedup:6.1f} "
              f"{statistics.median(r['total'] for r in rows):8.2f} {statistics.median(r['rss_mb'] for r in rows):7.0f}"
              f"  {rows[0]['items']}, {rows[0]['reasons']}")
    if against:
        ours, theirs = kept(work / "this"), kept(work / "earlier")
        print(f"  kept by this only: {len(ours - theirs)}, by the earlier only: {len(theirs - ours)}, "
              f"e.g. {sorted(ours - theirs)[:3]} / {sorted(theirs - ours)[:3]}")


def image_hashes(n: int) -> None:
    """Near copies among n 64-bit hashes (a tenth of them planted within 3 bits), at hamming 4."""
    from genlab.prepare import near

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2)
    planted = rng.choice(n, n // 10, replace=False)
    for bit in rng.integers(0, 64, (3, len(planted))):
        hashes[planted] = hashes[planted - 1] ^ (np.uint64(1) << bit.astype(np.uint64))
    began = time.perf_counter()
    roots = near.representatives(n, *near.hash_edges(hashes, 4))
    seconds = time.perf_counter() - began
    print(f"image near duplicates: {n:,} hashes at hamming 4 in {seconds:.2f} s "
          f"({int((roots != np.arange(n)).sum()):,} in clusters)")
    sample = 5000  # every earlier hash compared with each new one, the way genlab did before, on a sample
    began = time.perf_counter()
    for i in range(1, sample):
        np.unpackbits((hashes[:i] ^ hashes[i]).view(np.uint8).reshape(i, 8), axis=1).sum(1)
    per_pair = (time.perf_counter() - began) / (sample * (sample - 1) / 2)
    print(f"  comparing every pair: {per_pair * 1e9:.1f} ns a pair on {sample:,} hashes, so about "
          f"{per_pair * n * (n - 1) / 2:.0f} s for {n:,}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", type=Path, help="a checkout of an earlier genlab, run in the same rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    text_rounds(args.against, args.rounds)
    image_hashes(args.images)


if __name__ == "__main__":
    main()
