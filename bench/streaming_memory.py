"""What `genlab fit` costs in memory when it streams a set: peak RSS of a char LM (text) or a small DDPM (32x32
images) trained for 50 steps from prepared sets of growing size (default 1, 4 and 10 GB: 1x, 4x and 10x), each run
in a fresh process inside a memory cgroup (when this machine lets one be made) of 1 GB: the largest set is ten
times what the run may hold. Figures only.

The sets are written in the prepared format directly (JSONL or safetensors shards and their manifest, as `genlab
prepare` leaves them), since preparing gigabytes is not what is measured here. Each set and its chunks are removed
after its run.

Usage: python bench/streaming_memory.py [--modality text|image] [--gigabytes 1 4 10] [--limit-mb 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SHARD = 64 << 20
RUN = """
import json, sys, time
from genlab.api import fit

def peak():  # VmHWM: the high-water mark of this process's resident memory
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

prepared, out, modality = sys.argv[1:4]
before = peak()  # what importing genlab, torch, Lightning and transformers holds before any data is read
began = time.perf_counter()
common = [f"data.prepared={prepared}", "data.streaming=true", "train.max_steps=50", "train.max_time=null",
          "train.val_every=50", "train.val_batches=4", "train.checkpoint_every=25", "train.precision=32-true",
          "train.grid_size=0", "train.progress=none"]
if modality == "text":
    run = fit("configs/shakespeare-char.yaml", out=out, overrides=[*common, "model.context=128", "model.width=64",
              "model.layers=2", "model.heads=2"])
else:
    run = fit("configs/digits-diffusion.yaml", out=out, overrides=[*common, "model.block_out_channels=[16,32]",
              "train.batch_size=32"])
print(json.dumps({"seconds": time.perf_counter() - began, "train_seconds": run.summary["seconds"],
                  "windows": run.summary["data"]["train"], "peak_mb": peak(), "before_mb": before,
                  "loss": run.summary["train_loss"]}))
"""


def write_images(folder: Path, gigabytes: float) -> int:
    """A prepared set of about `gigabytes` of 32x32 RGB images in two classes (a square of a class's colour on
    noise), 98% train; returns the floats the training split would take in memory, in bytes."""
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    per_shard = SHARD // (3 * 32 * 32)
    pool = rng.integers(0, 256, (per_shard, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(per_shard) % 2
    pool[labels == 1, :, 8:24, 8:24] = 220
    folder.mkdir(parents=True)
    shards, counts = {}, {}
    for split, share in (("train", 0.98), ("val", 0.01), ("test", 0.01)):
        shards[split], counts[split] = [], 0
        for i in range(max(1, round(gigabytes * 1e9 * share / SHARD))):
            n = per_shard if split == "train" else min(per_shard, max(64, round(gigabytes * 1e9 * share / 3072)))
            blob = save({"x": np.roll(pool[:n], i, axis=0), "y": np.roll(labels[:n], i).astype(np.int64)},
                        {"where": "[]"})
            name = f"{split}-{i:05d}.safetensors"
            (folder / name).write_bytes(blob)
            shards[split].append({"file": name, "items": n, "bytes": len(blob),
                                  "sha256": hashlib.sha256(blob).hexdigest()})
            counts[split] += n
    manifest = {"modality": "image", "read": sum(counts.values()), "items": sum(counts.values()), "splits": counts,
                "steps": [], "class_names": ["noise", "square"], "shards": shards, "data": {}}
    (folder / "prepared.json").write_text(json.dumps(manifest))
    return counts["train"] * 3 * 32 * 32 * 4


def write_set(folder: Path, gigabytes: float) -> int:
    """A prepared text set of about `gigabytes` of JSONL: documents of ~2 kB from a Zipfian vocabulary, 98% train;
    returns the characters of text in its training split."""
    rng = np.random.default_rng(0)
    syllables = np.array("ka to ri men sa lo bu ne vi da po shi ga ru e a o in ter pre".split())
    words = np.array(["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(5000)])
    zipf = 1 / np.arange(1, 5001)
    pool = [" ".join(rng.choice(words, 330, p=zipf / zipf.sum())) + ".\n" for _ in range(4000)]
    lines = [(json.dumps({"text": doc, "where": "generated"}) + "\n").encode() for doc in pool]
    folder.mkdir(parents=True)
    shards, counts, chars = {}, {}, 0
    for split, share in (("train", 0.98), ("val", 0.01), ("test", 0.01)):
        shards[split], counts[split], total, k = [], 0, gigabytes * 1e9 * share, 0
        while total > 0:
            name = f"{split}-{len(shards[split]):05d}.jsonl"
            block, size, docs = [], 0, 0
            while size < min(SHARD, total):
                line = lines[k % len(lines)]
                block.append(line)
                size, docs, k = size + len(line), docs + 1, k + 1
                chars += len(pool[(k - 1) % len(pool)]) if split == "train" else 0
            data = b"".join(block)
            (folder / name).write_bytes(data)
            shards[split].append({"file": name, "documents": docs, "bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()})
            counts[split] += docs
            total -= size
    manifest = {"modality": "text", "read": sum(counts.values()), "items": sum(counts.values()), "splits": counts,
                "steps": [], "class_names": [], "shards": shards}
    (folder / "prepared.json").write_text(json.dumps(manifest))
    return chars


def memory_cgroup(limit_mb: int) -> Path | None:
    """A child of this process's memory cgroup (v1) limited to `limit_mb`, or None where none can be made."""
    line = next((c for c in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in c), None)
    if line is None:
        return None
    group = Path("/sys/fs/cgroup/memory") / line.split(":")[2].lstrip("/") / f"genlab-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
    except OSError:
        return None
    return group


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modality", choices=["text", "image"], default="text")
    parser.add_argument("--gigabytes", type=float, nargs="+", default=[1, 4, 10])
    parser.add_argument("--limit-mb", type=int, default=1024)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    group = memory_cgroup(args.limit_mb)
    print(f"memory limit: {f'{args.limit_mb} MB (cgroup {group})' if group else 'none could be set here'}")
    print(f"{'GB of ' + args.modality:>11} {'x first':>8} {'items':>12} {'fit s':>7} {'train s':>8} "
          f"{'imported MB':>12} {'peak RSS MB':>12} {'cgroup peak MB':>15} {'in memory would need GB':>24}")
    first = None
    for gigabytes in args.gigabytes:
        work = Path(tempfile.mkdtemp(prefix="genlab-stream-"))
        if args.modality == "text":  # 10.5 bytes a character: holding text for training (bench/text_loading.py)
            in_memory = write_set(work / "set", gigabytes) * 10.5
        else:
            in_memory = write_images(work / "set", gigabytes)
        env = {**os.environ, "PYTHONPATH": str(here / "src"), "GENLAB_CACHE": str(work / "cache")}
        into = (lambda: (group / "cgroup.procs").write_text(str(os.getpid()))) if group else None
        if group:
            (group / "memory.max_usage_in_bytes").write_text("0")
        done = subprocess.run([sys.executable, "-c", RUN, str(work / "set"), str(work / "run"), args.modality], env=env,
                              cwd=here,
                              capture_output=True, text=True, preexec_fn=into)
        if done.returncode:
            killed = f" (killed by signal {-done.returncode}: over the memory limit?)" if done.returncode < 0 else ""
            raise SystemExit(f"the {gigabytes:g} GB run failed{killed}: {done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        cgroup_peak = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20 if group else float("nan")
        first = first or gigabytes
        print(f"{gigabytes:11g} {gigabytes / first:8.0f} {r['windows']:12,} {r['seconds']:7.1f} "
              f"{r['train_seconds']:8.1f} {r['before_mb']:12.0f} {r['peak_mb']:12.0f} {cgroup_peak:15.0f} "
              f"{in_memory / 1e9:24.1f}", flush=True)
        shutil.rmtree(work)
    if group:
        group.rmdir()


if __name__ == "__main__":
    main()
