"""Shared fixtures: tiny configs that train in seconds, and one small trained run reused by many tests."""

from __future__ import annotations

import os

import pytest
import torch

import genlab

if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core: a thread each, for them and their subprocesses
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

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
