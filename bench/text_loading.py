"""What training a char LM on a prepared text set costs in memory: peak RSS and seconds for `genlab fit` of 30
steps of the shakespeare-char recipe on a generated JSONL corpus, at several sizes, against an earlier genlab
checkout in the same run (interleaved, each in a fresh process). Figures only.

Usage: python bench/text_loading.py [--megabytes 10 40] [--against /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUN = """
import json, sys, time

def peak():  # VmHWM: the high-water mark of this process image (ru_maxrss keeps the parent's across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

from genlab.prepare import prepare
corpus, work = sys.argv[1:3]
prepared = prepare(None, f"{work}/prepared", ["data.source=text", f"data.path={corpus}", "model.family=transformer",
                                               "data.pipeline=[{step: clean}, {step: deduplicate, near: false}]"])
before = peak()
from genlab.api import fit
began = time.perf_counter()
fit("configs/shakespeare-char.yaml", out=f"{work}/run", overrides=["data.source=text", f"data.prepared={prepared}",
    "train.max_steps=30", "train.max_time=null", "train.val_every=1000", "train.checkpoint_every=1000"])
print(json.dumps({"seconds": time.perf_counter() - began, "before_mb": before,
                  "peak_mb": peak()}))
"""


def corpus(path: Path, megabytes: float) -> None:
    """~1 kB documents of letters and spaces, distinct (no duplicates to remove)."""
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghij klmnopqrst uvwxyz.,\n", dtype=np.uint8)
    with path.open("w") as f:
        for _ in range(int(megabytes * 1000)):
            f.write(json.dumps({"text": letters[rng.integers(0, len(letters), 1000)].tobytes().decode()}) + "\n")


def run(src: Path, root: Path, data: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", RUN, str(data), str(work)], env=env, cwd=root, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=float, nargs="+", default=[10, 40])
    parser.add_argument("--against", type=Path)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    sides = {"this": here} | ({"earlier": args.against} if args.against else {})
    work = Path(tempfile.mkdtemp())
    print(f"{'MB of text':>10}  {'genlab':<8} {'fit s':>7} {'peak RSS MB':>12} {'over the start':>15}")
    for megabytes in args.megabytes:
        data = work / f"corpus-{megabytes:g}.jsonl"
        corpus(data, megabytes)
        for name, root in sides.items():
            r = run(root / "src", root, data, work / f"{name}-{megabytes:g}")
            print(f"{megabytes:10g}  {name:<8} {r['seconds']:7.1f} {r['peak_mb']:12.0f} "
                  f"{r['peak_mb'] - r['before_mb']:15.0f}", flush=True)


if __name__ == "__main__":
    main()
