"""Shared fixtures: tiny configs that train in seconds, and one small trained run reused by many tests."""

from __future__ import annotations

import warnings

import pytest

import genlab

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


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> genlab.Run:
    """One tiny trained run, shared by the tests that only read a run."""
    return genlab.fit(None, overrides=tiny(), out=tmp_path_factory.mktemp("runs") / "tiny")
