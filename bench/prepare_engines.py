"""genlab prepare on a generated text corpus (default 1 GB): the local engine against Ray Data on this machine's
CPUs, interleaved, medians of `--rounds`, each run in a fresh process: Ray started by the command itself (as on a
laptop), and Ray joined where it already runs (`ray start` once, then `data.address: auto`, as on a cluster); then
one against two simulated nodes (`ray.cluster_utils.Cluster`, one CPU each). Every run must write the same bytes.
Figures only.

The corpus: JSONL files of ~2 kB documents of random words, a tenth of them near copies (5% of words replaced) of
a document in another file, and chains A ~ B ~ C.

Usage: python bench/prepare_engines.py [--gigabytes 1] [--rounds 3] [--files 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUN = """
import json, sys, time

def peak():  # VmHWM: the high-water mark of this process image (ru_maxrss keeps the parent's across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

began = time.perf_counter()
engine, address, corpus, out = sys.argv[1:5]
if address == "two-nodes" or address == "one-node":
    import ray
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    if address == "two-nodes":
        cluster.add_node(num_cpus=1)
    address = cluster.address
from genlab.prepare import prepare
over = ["data.source=text", f"data.path={corpus}", "model.family=transformer", f"data.engine={engine}",
        "data.pipeline=[{step: clean}, {step: deduplicate}]", "data.blocks=16"]
if address != "none":
    over.append(f"data.address={address}")
folder = prepare(None, out, over)
seconds = time.perf_counter() - began
steps = json.loads((folder / "prepared.json").read_text())["steps"]
print(json.dumps({"seconds": seconds, "rss_mb": peak(),
                  "removed": {s["step"]: s["reasons"] for s in steps if s["reasons"]}}))
"""


def generate(root: Path, gigabytes: float, files: int) -> int:
    rng = np.random.default_rng(0)
    vocabulary = np.array([f"w{i}" for i in range(50_000)])
    root.mkdir(parents=True, exist_ok=True)
    outs = [(root / f"part{f:03d}.jsonl").open("w") for f in range(files)]
    written, count, recent = 0, 0, []
    while written < gigabytes * 1e9:
        kind = rng.random()
        if kind < 0.1 and recent:  # a near copy of a recent document
            words = recent[rng.integers(len(recent))].copy()
            spots = rng.integers(0, len(words), len(words) // 20)
            words[spots] = rng.integers(0, len(vocabulary), len(spots))
        elif kind < 0.11 and recent:  # the middle of a chain: half of one recent document, half of another
            a, b = recent[rng.integers(len(recent))], rng.integers(0, len(vocabulary), 300)
            words = np.concatenate([a[:240], b[:60]])
        else:
            words = rng.integers(0, len(vocabulary), 300)
            recent = (recent + [words])[-1000:]
        line = json.dumps({"text": " ".join(vocabulary[words])}) + "\n"
        outs[int(rng.integers(files))].write(line)
        written, count = written + len(line), count + 1
    for f in outs:
        f.close()
    return count


def run(engine: str, address: str, corpus: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN, engine, address, str(corpus), str(out)], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["digest"] = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.glob("*.jsonl")))).hexdigest()[:16]
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    began = time.perf_counter()
    count = generate(work / "corpus", args.gigabytes, args.files)
    print(f"corpus: {count:,} documents, {args.gigabytes:.1f} GB in {args.files} files "
          f"(generated in {time.perf_counter() - began:.0f} s)")
    sides = {"local": ("local", "none"), "ray": ("ray", "none"), "ray-running": ("ray", "auto")}
    results: dict[str, list[dict]] = {name: [] for name in sides}
    ray = Path(sys.executable).parent / "ray"
    if subprocess.run([str(ray), "status"], capture_output=True).returncode == 0:
        raise SystemExit("a Ray cluster already runs on this machine: `ray stop` it first (this bench starts its own)")
    subprocess.run([str(ray), "start", "--head", "--disable-usage-stats", "--include-dashboard=false"], check=True,
                   capture_output=True)  # every CPU, as the engine's own start takes
    try:
        for _ in range(args.rounds):
            for name, (engine, address) in sides.items():
                results[name].append(run(engine, address, work / "corpus", work / name))
                print(f"  {name}: {results[name][-1]['seconds']:.1f} s", flush=True)
    finally:
        subprocess.run([str(ray), "stop"], capture_output=True)
    medians = {name: statistics.median(r["seconds"] for r in rows) for name, rows in results.items()}
    print(f"medians of {args.rounds}, clean + deduplicate, whole command:")
    for name, rows in results.items():
        print(f"  {name:<11} {medians[name]:7.1f} s  {args.gigabytes * 1000 / medians[name]:6.1f} MB/s  "
              f"driver RSS {statistics.median(r['rss_mb'] for r in rows):6.0f} MB  {rows[0]['removed']}")
    for name in ("ray", "ray-running"):
        rounds = ", ".join(f"{a['seconds'] / b['seconds']:.2f}" for a, b in zip(results["local"], results[name]))
        print(f"  {name} / local: {medians['local'] / medians[name]:.2f}x (rounds {rounds})")
    nodes = {n: run("ray", n, work / "corpus", work / n) for n in ("one-node", "two-nodes")}
    for name, r in nodes.items():
        print(f"  simulated {name} (1 CPU each): {r['seconds']:.1f} s")
    digests = {r["digest"] for rows in results.values() for r in rows} | {r["digest"] for r in nodes.values()}
    print(f"every run wrote the same bytes: {len(digests) == 1} ({', '.join(sorted(digests))})")


if __name__ == "__main__":
    main()
