"""The bake-off: entries on one data set and one training budget, scored alike; and precision / recall."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.evaluation.features import FeatureNet
from genlab.evaluation.metrics import (
    fid_interval,
    frechet_distance,
    frechet_from_features,
    image_features,
    precision_recall,
)


def test_precision_and_recall_tell_a_collapsed_generator_from_a_faithful_one():
    def identity(x: torch.Tensor) -> torch.Tensor:
        return x.double()

    g = torch.Generator().manual_seed(0)
    real, faithful = torch.randn(400, 4, generator=g), torch.randn(400, 4, generator=g)
    collapsed = real[:5].repeat(80, 1) + 0.01 * torch.randn(400, 4, generator=g)  # five modes of the real data
    elsewhere = torch.randn(400, 4, generator=g) + 10.0
    fair = precision_recall(identity, real, faithful)
    assert fair["precision"] > 0.8 and fair["recall"] > 0.8
    mode_dropping = precision_recall(identity, real, collapsed)
    assert mode_dropping["precision"] > 0.95 and mode_dropping["recall"] < 0.1
    assert precision_recall(identity, real, elsewhere) == {"precision": 0.0, "recall": 0.0}


def test_fid_from_features_is_torchmetrics_fid_and_its_interval_narrows_with_more_samples():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = FeatureNet(1, 10)  # an untrained extractor is still a fixed function of the images
    real, fake = torch.rand(800, 1, 8, 8, generator=g), torch.rand(800, 1, 8, 8, generator=g) ** 1.5
    point = frechet_distance(net, real, fake)
    assert frechet_from_features(image_features(net, real), image_features(net, fake)) == pytest.approx(point, rel=1e-6)
    wide, narrow = fid_interval(net, real[:150], fake[:150]), fid_interval(net, real, fake)
    assert narrow[0] < point < narrow[1] and narrow[1] - narrow[0] < 0.5 * (wide[1] - wide[0])


DIFFUSION = {"name": "small-unet", "data": {"source": "digits", "image_size": 16},
             "model": {"family": "diffusion", "block_out_channels": [16, 32], "attention": [False, False]},
             "train": {"batch_size": 32, "optimizer": {"name": "adamw", "lr": 0.002},
                       "schedule": {"name": "cosine", "warmup_steps": 200}, "progress": "none", "grid_size": 0},
             "eval": {"num_samples": 64, "feature_steps": 60, "sampling": {"sampler": "dpm-solver", "steps": 8}}}


def test_a_bakeoff_trains_each_entry_on_the_same_data_and_budget_ranks_them_and_reuses_what_finished(tmp_path):
    config = tmp_path / "unet.yaml"
    config.write_text(yaml.safe_dump(DIFFUSION))
    other = tmp_path / "other.yaml"  # another recipe on other data: the bake-off trains it on the first one's
    other.write_text(yaml.safe_dump({**DIFFUSION, "name": "other-data", "data": {"source": "shapes"}}))
    out = tmp_path / "bakeoff"
    result = genlab.bakeoff([config, "vae", other], budget=3, out=out)

    names = [e["name"] for e in result["entries"]]
    assert names == ["small-unet", "vae", "other-data"] and sorted(result["ranking"]) == sorted(names)
    fids = {e["name"]: e["metrics"]["fid"] for e in result["entries"]}
    assert result["ranking"][0] == min(fids, key=fids.get)
    for name in names:
        run = genlab.load(out / name)
        assert run.config.data == genlab.load_config(config).data, f"{name} trained on other data"
        assert run.summary["steps"] == run.config.train.max_steps, "the calibrated step count was trained"
        assert run.config.train.schedule.warmup_steps <= run.config.train.max_steps // 10
    assert genlab.load(out / "vae").config.model.family == "vae"
    page = (out / "bakeoff.html").read_text()
    assert all(n in page for n in names) and page.count("<img") == 3 and "FID" in page
    assert json.loads((out / "bakeoff.json").read_text())["ranking"] == result["ranking"]
    assert all(len(e["intervals"]["fid"]) == 2 for e in result["entries"]) and result["ranking"][0] in result["verdict"]

    trained = {n: (out / n / "train.json").stat().st_mtime_ns for n in names}
    (out / "vae" / "train.json").unlink()  # as if killed after its last checkpoint: resumed, not retrained
    (out / "vae" / "metrics.json").unlink()
    again = genlab.bakeoff([config, "vae", other], budget=3, out=out)
    assert [e["metrics"] for e in again["entries"]][0] == result["entries"][0]["metrics"]
    assert (out / "small-unet" / "train.json").stat().st_mtime_ns == trained["small-unet"], "finished: reused"
    assert genlab.load(out / "vae").summary["steps"] == result["entries"][1]["steps"]


def test_bakeoff_mistakes_are_one_line(tmp_path):
    config = tmp_path / "unet.yaml"
    config.write_text(yaml.safe_dump(DIFFUSION))
    for entries, budget, message in (([str(config), "nope"], 3, "nope is neither a config file nor a family"),
                                     ([str(config), str(config)], 3, "two entries share a name"),
                                     ([str(config), "vae"], 0, "budget: 0.0 seconds")):
        result = CliRunner().invoke(app, ["bakeoff", *entries, "--budget", str(budget), "--out", str(tmp_path / "o")])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
