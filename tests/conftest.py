"""Shared fixtures and helpers: tiny configs that train in seconds, small trained runs reused by many tests, and
a real server to point clients at."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import lightning as L
import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image
from safetensors.torch import load_file

import genlab

if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core: a thread each, for them and their subprocesses
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

# The files that take longest run first. The two workers take whole files as they free up (--dist loadfile), so
# a long file taken last keeps one worker busy while the other idles (measured: 35 s of a 611-second run).
SLOWEST_FILES = ("test_configs.py", "test_training.py", "test_cli.py", "test_cluster.py", "test_serving.py",
                 "test_sweep.py", "test_audio.py", "test_prepare_engines.py", "test_prepare.py", "test_seq2seq.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: a file's own order stays


# A UNet of ~50k parameters on 8x8 digits: a few dozen steps take seconds on a CPU.
TINY = [
    "data.image_size=8",
    "model.block_out_channels=[16,32]",
    "train.batch_size=16",
    "train.max_steps=30",
    "train.val_every=10",
    "train.checkpoint_every=10",
    "train.log_every=5",
    "train.grid_size=4",
    "train.progress=none",
    "eval.num_samples=64",
    "eval.feature_steps=100",
    "eval.sampling.steps=10",
]


def tiny(*extra: str) -> list[str]:
    return [*TINY, *extra]


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    """Prepared sets that fit caches go to the session's own folder, not the user's ~/.cache/genlab."""
    os.environ["GENLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> genlab.Run:
    """One tiny trained run, shared by the tests that only read a run."""
    return genlab.fit(None, overrides=tiny(), out=tmp_path_factory.mktemp("runs") / "tiny")


# A small BPE language model on CPython's docs, for serving and export (context 96, ~60 steps).
LM = ["model.family=transformer", "data.source=python_docs", "model.tokenizer=bpe", "model.vocab_size=300",
      "model.context=96", "model.width=32", "model.layers=2", "model.heads=2", "train.batch_size=16",
      "train.max_steps=60", "train.val_every=60", "train.checkpoint_every=60", "train.progress=none",
      "train.optimizer.lr=0.003", "train.grid_size=2", "eval.sampling.max_new_tokens=10"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_run) -> dict[str, genlab.Run]:
    """A language model and the tiny diffusion run: what the serving tests serve."""
    root = tmp_path_factory.mktemp("served")
    return {"lm": genlab.fit(None, overrides=LM, out=root / "lm"), "digits": tiny_run}


def running(app):
    """The app under a real uvicorn server on a free loopback port; yields its base URL."""
    return serving(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                  http="h11"))  # genlab serve's parser (listen.py)


@contextmanager
def serving(config: uvicorn.Config):
    """A uvicorn server with these settings (port 0: a free one) in a thread; yields its loopback URL."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


UNET = "model/unet/diffusion_pytorch_model.safetensors"


def weights(run_dir):
    return load_file(run_dir / UNET)


class Crash(L.Callback):
    """Dies at a given step, as a killed job would, after the checkpoint of the step before."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class Poison(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 15:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


def make_folder(root, corrupt=False):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    if corrupt:
        (root / "dogs" / "broken.png").write_bytes(b"not a png")


GAN_TINY = [o for o in tiny() if not o.startswith(("model.", "eval.sampling"))] + [
    "model.family=gan", "model.channels=[32,16]", "model.latent_dim=16", "model.collapse_samples=32",
    "train.optimizer.name=adam", "train.optimizer.betas=[0.0,0.99]", "train.schedule.name=constant",
    "eval.feature_steps=50"]


VAE_TINY = [o for o in tiny() if not o.startswith(("model.", "eval.sampling"))] + [
    "model.family=vae", "model.channels=[16,32]", "model.hidden=64", "model.latent_dim=4", "train.batch_size=32",
    "model.beta_warmup_steps=300", "train.max_steps=1200", "train.val_every=600", "train.checkpoint_every=600",
    "train.optimizer.lr=0.002",
    "train.ema.enabled=false", "eval.likelihood_samples=16", "eval.latent_images=200"]


SR_TINY = ["data.source=photos", "data.image_size=32", "data.channels=3", "model.family=sr_gan", "model.scale=2",
           "model.width=32", "model.blocks=4", "model.warmup_steps=100000", "train.batch_size=16",
           "train.max_steps=250", "train.val_every=125", "train.checkpoint_every=125", "train.grid_size=9",
           "train.optimizer.name=adam", "train.optimizer.lr=0.0005", "train.schedule.name=cosine",
           "train.grad_clip=null", "train.ema.decay=0.99", "train.progress=none"]


TAB_TINY = ["model.family=tabular_vae", "model.hidden=[64,64]", "model.impute_samples=50", "train.batch_size=64",
            "train.max_steps=300", "train.val_every=150", "train.checkpoint_every=150", "train.optimizer.lr=0.003",
            "train.grid_size=4", "train.progress=none"]


TINY_DATES = [
    "model.family=seq2seq", "data.source=dates", "data.limit=6000", "model.max_source_length=40",
    "model.max_target_length=12", "model.width=64", "model.heads=4", "model.layers=2", "model.dropout=0.0",
    "train.batch_size=64", "train.max_steps=450", "train.val_every=225", "train.checkpoint_every=225",
    "train.optimizer.lr=0.003", "train.schedule.warmup_steps=30", "train.grid_size=2", "train.progress=none",
    "eval.num_samples=200",
]
