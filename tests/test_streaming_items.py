"""Training from a prepared image or audio set streamed off its shards: the chunks hold exactly the stored items,
the held-out splits are a bounded spread in memory, a run stopped mid-epoch resumes on the batches of an
uninterrupted run, and what a stream cannot do (weights) is refused by name."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genlab
from genlab import GenlabError
from genlab.config import load_config
from genlab.data.sources import load_dataset
from genlab.data.streamed_items import ItemShards, chunked

# fixtures: a bucket on moto's S3 server; each test's own GENLAB_CACHE
from tests.test_streaming import bucket, cache  # noqa: F401

pytest.importorskip("litdata")
DIFFUSION = ["model.family=diffusion", "model.block_out_channels=[16,32]", "model.norm_num_groups=8",
             "model.class_conditional=true", "train.batch_size=16",
             "train.optimizer.lr=0.002", "train.precision=32-true", "train.schedule.name=constant",
             "train.schedule.warmup_steps=0", "train.ema.enabled=false", "train.val_every=10", "train.val_batches=1",
             "train.checkpoint_every=3", "train.grid_size=0", "train.progress=none", "train.accelerator=cpu",
             "train.max_steps=16", "eval.feature_steps=30"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A prepared folder of two classes of 16x16 scenes, several shards a split."""
    from PIL import Image

    from genlab.prepare import prepare

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["dark", "light"]):
        (root / "src" / name).mkdir(parents=True)
        for i in range(80):
            pixels = (rng.random((16, 16, 3)) * 60 + c * 170).astype(np.uint8)
            pixels[4:12, 4:12] = rng.integers(0, 255, 3)
            Image.fromarray(pixels).save(root / "src" / name / f"{i:03d}.png")
    patch = pytest.MonkeyPatch()
    patch.setattr("genlab.prepare.items.SHARD_BYTES", 20_000)  # 26 images a shard
    try:
        prepare(None, root / "set", ["data.source=image_folder", f"data.path={root / 'src'}", "data.image_size=16"])
    finally:
        patch.undo()
    return root / "set"


def data(prepared: Path, *overrides: str):
    return load_config(None, [f"data.prepared={prepared}", *overrides]).data


def test_the_chunks_hold_the_stored_images_and_the_held_out_splits_are_a_bounded_spread(images, monkeypatch):
    manifest = json.loads((images / "prepared.json").read_text())
    assert len(manifest["shards"]["train"]) >= 4
    size = sum(s["bytes"] for s in manifest["shards"]["train"]) / 1e6
    whole = load_dataset(data(images, "data.streaming=false"))
    assert isinstance(load_dataset(data(images, f"data.stream_above_mb={size * 1.01}")).train.x, torch.Tensor)
    streamed = load_dataset(data(images, f"data.stream_above_mb={size * 0.99}"))
    shards = streamed.train.x
    assert isinstance(shards, ItemShards) and len(shards) == len(whole.train) == manifest["splits"]["train"]
    assert streamed.spec == whole.spec and torch.equal(streamed.val.x, whole.val.x)
    assert isinstance(streamed.test.x, ItemShards), "read when evaluation asks"
    held = load_dataset(data(images, "data.streaming=true"), in_memory=True)
    assert torch.equal(held.test.x, whole.test.x) and torch.equal(held.train.x, whole.train.x), "under the bound"
    assert torch.equal(shards[:30], whole.train.x[:30]), "the first items, across a shard's end"

    def labelled(x: torch.Tensor, y: torch.Tensor) -> list[tuple[bytes, int]]:
        return sorted((row.numpy().tobytes(), label) for row, label in zip(x, y.tolist(), strict=True))

    chunks = chunked(shards)
    read = chunks.dataset(shuffle=False)
    batch = chunks.collate([read[i] for i in range(len(chunks))])
    assert len(chunks) == len(whole.train) and batch["x"].dtype == torch.float32
    assert labelled(batch["x"], batch["y"]) == labelled(whole.train.x, whole.train.y), "each item with its class"
    index = Path(chunks.source) / "index.json"
    stamp = index.stat().st_mtime_ns
    assert chunked(shards).source == chunks.source and index.stat().st_mtime_ns == stamp, "copied once"

    monkeypatch.setattr("genlab.data.streamed_items.SLICE_BYTES", 8 * 3 * 16 * 16)  # 8 images a slice
    mixed = chunked(shards)
    read = mixed.dataset(shuffle=False)
    batch = mixed.collate([read[i] for i in range(len(mixed))])
    assert labelled(batch["x"], batch["y"]) == labelled(whole.train.x, whole.train.y)
    switches = int((batch["y"][1:] != batch["y"][:-1]).sum())
    assert switches >= 6, f"written in slices of the shards in a seeded order, not class after class ({switches})"
    drawn = mixed.dataset(shuffle=True, seed=3)
    assert set(mixed.collate([item for _, item in zip(range(16), drawn)])["y"].tolist()) == {0, 1}

    spread = shards.spread(most_bytes=40 * 3 * 16 * 16 * 4)  # 40 images' floats
    rows = np.unique(np.linspace(0, len(whole.train) - 1, 40).round().astype(int))
    assert torch.equal(spread.x, whole.train.x[rows]) and torch.equal(spread.y, whole.train.y[rows])
    assert set(spread.y.tolist()) == {0, 1}, "taken over the whole split, not its first class"

    with pytest.raises(GenlabError, match="data.streaming: true, and a stream cannot draw items by weight"):
        load_dataset(data(images, "data.streaming=true", "data.balance_by=label"))
    weighted = load_dataset(data(images, f"data.stream_above_mb={size * 0.99}", "data.balance_by=label"))
    assert isinstance(weighted.train.x, torch.Tensor) and weighted.train.weights is not None, "auto: in memory"
    with pytest.raises(TypeError, match=r"first items only \(split.x\[:n\]\)"):
        shards[5:9]


def test_a_streamed_image_fit_stopped_mid_epoch_resumes_on_the_batches_of_an_uninterrupted_run(images, tmp_path):
    """In one process (the loader's state, as `kill -9` leaves it, is what `test_streaming.py` kills for)."""
    overrides = [*DIFFUSION, f"data.prepared={images}", "data.streaming=true"]
    whole = genlab.fit(None, overrides=overrides, out=tmp_path / "whole")
    assert whole.summary["data"]["train"] < 16 * 16, "the run goes past the end of an epoch"
    assert whole.summary["val_loss"] < 0.6, "a network that predicts no noise scores 1.0"
    genlab.fit(None, overrides=[*overrides, "train.max_steps=9"], out=tmp_path / "stopped")  # step 9 of epochs of 8
    genlab.fit(resume=tmp_path / "stopped", overrides=["train.max_steps=16"])
    a, b = (load_file(run / "model" / "unet" / "diffusion_pytorch_model.safetensors")
            for run in (whole.path, tmp_path / "stopped"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed from step 9"
    metrics = genlab.evaluate(whole, num_samples=16, steps=10)  # held-out images and a spread of the training ones
    assert np.isfinite(metrics["fid"]) and metrics["fid"] > metrics["fid_real_baseline"]


def test_streamed_audio_and_chunks_kept_in_a_bucket(tmp_path, bucket, monkeypatch):  # noqa: F811
    import soundfile

    from genlab.prepare import prepare

    rng, rate = np.random.default_rng(1), 8000
    for name in ("one", "two"):
        (tmp_path / "clips" / name).mkdir(parents=True)
        for i in range(24):
            t = np.arange(rate // 2) / rate
            soundfile.write(tmp_path / "clips" / name / f"{i}.wav", 0.5 * np.sin(2 * np.pi * rng.uniform(200, 900) * t),
                            rate)
    prepare(None, tmp_path / "set", ["data.source=audio_folder", f"data.path={tmp_path / 'clips'}",
                                     f"data.sample_rate={rate}", "data.clip_seconds=0.5"])
    whole = load_dataset(data(tmp_path / "set", "data.streaming=false"))
    streamed = load_dataset(data(tmp_path / "set", "data.streaming=true", f"data.chunks_url={bucket}"))
    assert streamed.spec.sample_rate == rate and streamed.spec.shape == whole.spec.shape == (1, rate // 2)
    chunks = chunked(streamed.train.x)
    assert chunks.source.startswith(str(tmp_path / "cache")), "written here, then uploaded"
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "another machine"))
    remote = chunked(streamed.train.x)
    assert remote.source.startswith("s3://corpus/tokens/"), "found in the bucket, copied nothing"
    read = remote.dataset(shuffle=False)
    batch = remote.collate([read[i] for i in range(len(remote))])
    assert torch.equal(batch["x"], whole.train.x) and torch.equal(batch["y"], whole.train.y)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "rows.csv").write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(40)))
    prepare(None, tmp_path / "table", ["data.source=table", f"data.path={tmp_path / 't'}"])
    with pytest.raises(GenlabError, match="data.streaming: true streams text, image and audio sets; .* table"):
        load_dataset(data(tmp_path / "table", "data.streaming=true"))


def test_a_streamed_captioned_split_gives_its_first_captions_from_its_first_shards(tmp_path):
    """What a text-to-image run previews with when its captioned set streams and has no validation split."""
    from PIL import Image

    from genlab.prepare import prepare

    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    lines = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "src" / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": f"picture number {i}"}))
    (tmp_path / "src" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    patch = pytest.MonkeyPatch()
    patch.setattr("genlab.prepare.items.SHARD_BYTES", 8_000)  # 10 images a shard
    try:
        prepare(None, tmp_path / "set", ["data.source=image_folder", f"data.path={tmp_path / 'src'}",
                                         "data.image_size=16", "data.val_fraction=0"])
    finally:
        patch.undo()
    streamed = load_dataset(data(tmp_path / "set", "data.streaming=true", "data.val_fraction=0"))
    whole = load_dataset(data(tmp_path / "set", "data.streaming=false", "data.val_fraction=0"))
    assert isinstance(streamed.train.x, ItemShards) and len(streamed.train.x.files) > 1
    assert streamed.train.captions is None and len(streamed.val) == 0
    assert streamed.train.first_captions(16) == whole.train.captions[:16] == whole.train.first_captions(16)
    assert len(set(streamed.train.first_captions(16))) == 16 and streamed.val.first_captions(16) == []
