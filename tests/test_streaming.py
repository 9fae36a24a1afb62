"""Training from a prepared text set streamed off its shards: chosen by size or forced, tokenized once into litdata
chunks that hold exactly the set's tokens, disjoint per rank, and resumed after a kill on exactly the batches of
an uninterrupted run, in one process and under 2-process DDP."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genlab
from genlab import GenlabError
from genlab.config import load_config
from genlab.data.sources import load_dataset
from genlab.data.streaming import TextShards, tokenized
from genlab.data.tokenize import token_chunks, train_tokenizer

pytest.importorskip("litdata")
WORDS = "the of and to in a is that for it as was with be by on not he I this are or his from at which".split()
LM = ["model.family=transformer", "model.tokenizer=char", "model.context=32", "model.width=32", "model.layers=2",
      "model.heads=2", "train.batch_size=8", "train.optimizer.name=sgd", "train.optimizer.lr=0.3",
      "train.precision=32-true", "train.val_batches=2", "train.schedule.name=constant", "train.schedule.warmup_steps=0",
      "train.ema.enabled=false", "train.val_every=10", "train.checkpoint_every=4", "train.grid_size=0",
      "train.progress=none", "train.accelerator=cpu", "train.max_steps=40"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared set of several shards a split, one of them a long text file read in pieces."""
    import genlab.prepare.text as text
    from genlab.prepare import prepare

    root = tmp_path_factory.mktemp("streamed")
    rng = random.Random(0)
    (root / "src").mkdir()
    with (root / "src" / "z.jsonl").open("w") as f:
        for i in range(40):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(5, 30))) + f" doc {i}."}) + "\n")
    (root / "src" / "long.txt").write_text("".join(f"line {i} of the long file\n" for i in range(150)))
    patch = pytest.MonkeyPatch()
    patch.setattr(text, "SHARD_BYTES", 1024)  # several shards a split
    patch.setattr("genlab.prepare.read.PIECE", 1000)  # the long file in pieces (kept in one shard)
    try:
        prepare(None, root / "set", ["data.source=text", f"data.path={root / 'src'}", "data.val_fraction=0.1",
                                     "data.test_fraction=0.05"])
    finally:
        patch.undo()
    return root / "set"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))


def data(prepared: Path, *overrides: str):
    return load_config(None, ["model.family=transformer", f"data.prepared={prepared}", *overrides]).data


def test_streaming_is_chosen_by_size_or_by_hand_and_refused_where_it_cannot_apply(prepared):
    manifest = json.loads((prepared / "prepared.json").read_text())
    assert len(manifest["shards"]["train"]) > 3
    size = sum(s["bytes"] for s in manifest["shards"]["train"]) / 1e6
    assert isinstance(load_dataset(data(prepared, f"data.stream_above_mb={size * 1.01}")).train.x, list)
    streamed = load_dataset(data(prepared, f"data.stream_above_mb={size * 0.99}")).train.x
    assert isinstance(streamed, TextShards) and len(streamed) == manifest["splits"]["train"]
    assert isinstance(load_dataset(data(prepared, "data.streaming=true")).train.x, TextShards)
    assert isinstance(load_dataset(data(prepared, "data.streaming=false", "data.stream_above_mb=0")).train.x, list)
    with pytest.raises(GenlabError, match="data.streaming: true streams a prepared set .* 'tinyshakespeare'"):
        load_dataset(load_config(None, ["data.source=tinyshakespeare", "data.streaming=true"]).data)
    with pytest.raises(GenlabError, match="model.window_stride: overlapping windows .* data.streaming: false"):
        genlab.fit(None, overrides=[*LM, f"data.prepared={prepared}", "data.streaming=true", "model.window_stride=8"],
                   out=prepared.parent / "refused")
    assert not (prepared.parent / "refused").exists()


def test_the_chunks_hold_the_sets_tokens_in_order_written_once(prepared):
    shards = load_dataset(data(prepared, "data.streaming=true")).train.x
    in_memory = load_dataset(data(prepared, "data.streaming=false")).train.x
    assert list(shards.documents()) == in_memory, "the pieces of the long file join back"
    tokenizer = train_tokenizer("char", in_memory, 0)
    windows = tokenized(tokenizer, shards, context=32)
    stream = torch.from_numpy(np.concatenate(list(token_chunks(tokenizer, in_memory))))
    n = len(stream) // 33
    got = windows.dataset(shuffle=False)
    assert len(windows) == n and got[0].dtype == torch.uint16
    assert torch.equal(torch.stack([got[i] for i in range(n)]).long(), stream[: n * 33].view(n, 33))
    index = Path(windows.source) / "index.json"
    stamp = index.stat().st_mtime_ns
    assert tokenized(tokenizer, shards, context=64).source == windows.source, "another context reads the same chunks"
    assert index.stat().st_mtime_ns == stamp, "not written twice"


def test_a_rank_of_a_running_job_writes_alone_and_an_empty_split_or_a_long_file_are_no_trap(prepared, monkeypatch,
                                                                                              tmp_path):
    import threading

    from genlab.data.streaming import token_identity

    shards = load_dataset(data(prepared, "data.streaming=true")).train.x
    tokenizer = train_tokenizer("char", [shards.characters()], 0)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun leaves it in each rank: litdata would wait for a second part
    done = []
    writer = threading.Thread(target=lambda: done.append(tokenized(tokenizer, shards, 32)), daemon=True)
    writer.start()
    writer.join(timeout=60)
    assert done and len(done[0]) > 0 and os.environ["WORLD_SIZE"] == "2", "written alone, the environment restored"
    with pytest.raises(GenlabError, match="holds no text to tokenize"):
        tokenized(tokenizer, TextShards((), 5, 0, ("val.jsonl:0:0",)), 32)
    from transformers import PreTrainedTokenizerFast

    other_end = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="a")
    assert token_identity(other_end) != token_identity(tokenizer), "the same pipeline, another end-of-text token"
    long = tmp_path / "long.jsonl"  # one document of 2,000 records: read a record at a time, never joined whole
    long.write_text("".join(json.dumps({"text": "x" * 1000 + "\n", "continues": i > 0}) + "\n" for i in range(2000)))
    pieces = TextShards((long,), 2000, long.stat().st_size, ("long",))
    assert [len(d) for d in pieces.head(chars=5000)] == [5005] and sum(1 for _ in pieces.pieces()) == 2000


def test_each_rank_draws_its_own_windows_and_a_seed_draws_the_same_order(prepared):
    from litdata.utilities.env import _DistributedEnv

    shards = load_dataset(data(prepared, "data.streaming=true")).train.x
    windows = tokenized(train_tokenizer("char", list(shards.documents()), 0), shards, context=32)

    def drawn(rank: int, world: int, seed: int) -> list[bytes]:
        dataset = windows.dataset(shuffle=True, seed=seed)
        dataset.distributed_env = _DistributedEnv(world_size=world, global_rank=rank, num_nodes=1)
        return [w.numpy().tobytes() for w in dataset]

    ranks = [drawn(r, 2, seed=1) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) > 10
    assert len(set(ranks[0]) | set(ranks[1])) >= len(windows) - 2 * 8, "between them, the whole set"
    assert drawn(0, 1, seed=1) == drawn(0, 1, seed=1) != drawn(0, 1, seed=2)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def killed_after_a_checkpoint(launcher: list[str], args: list[str], run: Path, step: int) -> int:
    """`genlab fit` killed (with every process it started) once a checkpoint at `step` or later exists; its step."""
    proc = subprocess.Popen([*launcher, "genlab", "fit", *args, "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last, deadline = run / "checkpoints" / "last.ckpt", time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        if last.exists() and torch.load(last, weights_only=True)["global_step"] >= step:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return torch.load(last, weights_only=True)["global_step"]


def streamed_fit(prepared: Path, tmp_path: Path, devices: int) -> tuple[list[str], list[str]]:
    """The overrides of a streamed fit on `devices` processes, and the same as command-line arguments."""
    overrides = [*LM, f"data.prepared={prepared}", "data.streaming=true", f"train.devices={devices}"]
    (tmp_path / "lm.yaml").write_text("name: streamed\nmodel: {family: transformer}\n")
    return overrides, [str(tmp_path / "lm.yaml"), *(a for o in overrides for a in ("--set", o))]


def test_a_streamed_fit_killed_mid_epoch_resumes_on_the_batches_of_an_uninterrupted_run(prepared, tmp_path):
    overrides, args = streamed_fit(prepared, tmp_path, devices=1)
    whole = genlab.fit(None, overrides=overrides, out=tmp_path / "whole")
    assert whole.summary["data"]["train"] < 40 * 8, "the run goes past the end of an epoch"
    step = killed_after_a_checkpoint([sys.executable, "-m"], args, tmp_path / "killed", step=12)
    assert 12 <= step < 40
    genlab.fit(resume=tmp_path / "killed")
    a, b = weights(whole.path), weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed from step {step}"
    untrained = np.log(len(whole.model.tokenizer))  # a model that knows nothing: every character alike
    assert whole.summary["val_loss"] < 0.85 * untrained, "it learned from the streamed text"
    metrics = genlab.evaluate(whole, num_samples=2, max_new_tokens=8)  # held-out text read from its shards
    assert metrics["split"] == "test" and metrics["characters"] > 0 and metrics["loss"] < 0.85 * untrained


DDP_RUNS = """
import sys
from pathlib import Path

import genlab

out, overrides = Path(sys.argv[1]), sys.argv[2:]
genlab.fit(None, overrides=[*overrides, "train.max_steps=40"], out=out / "whole")
genlab.fit(None, overrides=[*overrides, "train.max_steps=6"], out=out / "stopped")  # its last.ckpt: mid-epoch
genlab.fit(resume=out / "stopped", overrides=["train.max_steps=40"])
"""


def test_under_2_process_ddp_a_run_resumed_from_a_mid_epoch_checkpoint_draws_the_same_batches(prepared, tmp_path):
    """One torchrun launch (its two processes keep their process group from fit to fit, as a sweep's do): the whole
    run, a run stopped at step 6 of an epoch of 13, and that run resumed to the whole run's end."""
    overrides, _ = streamed_fit(prepared, tmp_path, devices=2)
    (tmp_path / "runs.py").write_text(DDP_RUNS)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(tmp_path / "runs.py"), str(tmp_path),
                           *(o for o in overrides if not o.startswith("train.max_steps"))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert genlab.load(tmp_path / "whole").summary["data"]["train"] / 2 < 40 * 8, "each rank passes an epoch's end"
    assert torch.load(tmp_path / "stopped/checkpoints/last.ckpt", weights_only=True)["global_step"] == 40
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed from step 6"


@pytest.fixture
def bucket(monkeypatch):
    """An S3-compatible server on this machine (moto's), with an empty bucket; the URL to keep chunks under."""
    import socket

    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="corpus")
    yield "s3://corpus/tokens"
    server.stop()


def test_chunks_kept_in_a_bucket_are_streamed_from_it_and_train_the_same_weights(prepared, tmp_path, bucket,
                                                                               monkeypatch):
    import boto3

    overrides = [*LM, f"data.prepared={prepared}", "data.streaming=true", "train.max_steps=12", "train.val_every=6"]
    local = genlab.fit(None, overrides=overrides, out=tmp_path / "local")
    genlab.fit(None, overrides=[*overrides, f"data.chunks_url={bucket}/"], out=tmp_path / "uploaded")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="corpus")["Contents"]]
    assert sum(k.endswith("/index.json") for k in keys) == 2 and any(k.endswith(".bin") for k in keys), keys
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "another machine"))
    remote = genlab.fit(None, overrides=[*overrides, f"data.chunks_url={bucket}"], out=tmp_path / "remote")
    assert not list((tmp_path / "another machine").rglob("tokens/*/index.json")), "the bucket had the chunks"
    assert list((tmp_path / "another machine" / "streamed").rglob("*.bin")), "read through litdata's cache"
    a = weights(local.path)
    for run in (tmp_path / "uploaded", remote.path):
        b = weights(run)
        assert all(torch.equal(a[k], b[k]) for k in a), "the same batches from the bucket as from the disk"
    with pytest.raises(GenlabError, match="data.chunks_url: s3://nowhere/tokens/.*NoSuchBucket"):
        genlab.fit(None, overrides=[*overrides, "data.chunks_url=s3://nowhere/tokens"], out=tmp_path / "refused")
    with pytest.raises(GenlabError, match="data.chunks_url: .*s3://BUCKET/PREFIX"):
        load_config(None, ["data.chunks_url=/a/local/folder"])
