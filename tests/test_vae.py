"""The image VAE: the shapes set, MIG, the latent-space methods and grids, likelihood figures, the folder."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.data import load_dataset
from genlab.evaluation.latent import mig
from genlab.models.vae import VAE, VAENet, total_correlation

from .conftest import VAE_TINY


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> genlab.Run:
    return genlab.fit(None, overrides=VAE_TINY, out=tmp_path_factory.mktemp("vae") / "run")


def test_shapes_are_drawn_from_a_seed_with_their_factors():
    def data(*extra):
        return load_dataset(genlab.load_config(None, ["data.source=shapes", "data.limit=300", *extra]).data)

    a, b, other = data(), data(), data("data.split_seed=1")
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, other.train.x)
    assert a.factor_names == ("shape", "scale", "rotation", "x", "y") and a.spec.class_names == ("square", "ellipse",
                                                                                                  "heart")
    factors = torch.cat([a.train.factors, a.val.factors, a.test.factors])
    assert factors.shape == (300, 5) and (factors.max(0).values < torch.tensor([3, 6, 40, 32, 32])).all()
    assert torch.equal(a.train.y, a.train.factors[:, 0])
    full = data("data.image_size=64")
    assert full.spec.shape == (1, 64, 64) and set(full.train.x.unique().tolist()) == {-1.0, 1.0}, "binary"


def test_mig_rewards_one_dimension_per_factor():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 10, (2000, 3))
    aligned = factors + rng.normal(0, 0.1, factors.shape)
    assert mig(aligned, factors)[0] > 0.9
    mixed = np.stack([factors[:, 0] + factors[:, 1], factors[:, 0] - factors[:, 1], factors[:, 2]], 1).astype(float)
    assert mig(mixed, factors)[0] < 0.6 * mig(aligned, factors)[0]
    assert mig(rng.normal(size=(2000, 3)), factors)[0] < 0.05


def test_a_trained_vae_beats_an_untrained_one_on_every_likelihood_figure(vae_run):
    trained = genlab.evaluate(vae_run)
    torch.manual_seed(0)
    vae_run.__dict__["model"] = VAE(vae_run.model.config, vae_run.model.spec).eval()
    untrained = genlab.evaluate(vae_run)
    del vae_run.__dict__["model"]
    assert trained["nll_iwae"] < 0.7 * untrained["nll_iwae"] and trained["elbo"] > 0.7 * untrained["elbo"]
    assert trained["fid"] < 0.5 * untrained["fid"]
    assert trained["nll_iwae"] <= -trained["elbo"] + 1e-3, "the importance-weighted bound is the tighter"
    assert len(trained["kl_per_dim"]) == 4 and trained["active_units"] >= 2
    assert trained["iwae_samples"] == 16 and "mig" not in trained  # digits have no factors

    # the encoder's mean made constant in every dimension but the one with the most KL: one unit stays active
    keep = int(np.argmax(trained["kl_per_dim"]))
    silenced = VAE.from_pretrained(vae_run.paths.model).eval()
    with torch.no_grad():
        head = silenced.net.encoder[-1]
        for d in range(4):
            if d != keep:
                head.weight[d], head.bias[d] = 0.0, 0.0
    vae_run.__dict__["model"] = silenced
    assert genlab.evaluate(vae_run)["active_units"] == 1
    del vae_run.__dict__["model"]


def test_latent_methods_and_the_folder(vae_run, tmp_path):
    model = vae_run.model
    images = load_dataset(vae_run.config.data).test.x[:2] / 2 + 0.5
    ends = model.interpolate(images[0], images[1], steps=5)
    assert ends.shape == (5, 1, 8, 8) and torch.allclose(ends[[0, -1]], model.reconstruct(images), atol=1e-6)
    sweep = model.traverse(2, [-2.0, 0.0, 2.0])
    codes = model.encode(sweep)[0]
    assert sweep.shape == (3, 1, 8, 8) and not torch.equal(sweep[0], sweep[2])
    assert codes[:, 2].argsort().tolist() == [0, 1, 2], "the swept dimension reads back in order"
    with pytest.raises(genlab.GenlabError, match="dim: 9 is not a latent dimension of this model"):
        model.traverse(9, [0.0])
    with pytest.raises(genlab.GenlabError, match=r"images: expected \(N, 1, 8, 8\)"):
        model.encode(torch.rand(2, 3, 8, 8))
    assert {"config.json", "model.safetensors", "genlab.json"} <= {p.name for p in (vae_run.path / "model").iterdir()}
    assert torch.equal(VAENet.from_pretrained(vae_run.path / "model")(torch.ones(1, 4)), model.net(torch.ones(1, 4)))
    first = genlab.load(vae_run.path).sample(6, seed=2, temperature=0.8)
    assert torch.equal(first, genlab.load(vae_run.path).sample(6, seed=2, temperature=0.8))


def test_a_seed_gives_the_same_images_before_and_after_saving(tmp_path):
    spec = load_dataset(genlab.load_config(None, ["data.image_size=8"]).data).spec
    config = genlab.load_config(None, ["model.family=vae", "model.channels=[8]", "model.likelihood=gaussian"]).model
    model = VAE(config, spec).eval()
    before = model.sample(4, generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path / "m")
    after = VAE.from_pretrained(tmp_path / "m").sample(4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(before, after) and model.net.log_sigma is not None


@pytest.mark.parametrize("mode", ["reconstruct", "interpolate", "traverse"])
def test_the_cli_writes_each_latent_grid(vae_run, tmp_path, mode):
    out = tmp_path / f"{mode}.png"
    result = CliRunner().invoke(app, [mode, str(vae_run.path), "--n", "3", "--steps", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        rows = {"reconstruct": 2, "interpolate": 3, "traverse": 4}[mode]
        columns = 3 if mode == "reconstruct" else 5
        assert im.size == ((columns * 9 + 1) * 4, (rows * 9 + 1) * 4)


def test_latent_verbs_need_a_vae_and_bounded_arguments(vae_run, tiny_run):
    result = CliRunner().invoke(app, ["traverse", str(tiny_run.path)])
    assert result.exit_code == 1 and "a diffusion run; traverse needs a vae run" in result.output
    result = CliRunner().invoke(app, ["traverse", str(vae_run.path), "--steps", "1"])
    assert result.exit_code == 2 and "--steps: Input should be greater than or equal to 2" in result.output
    result = CliRunner().invoke(app, ["traverse", str(vae_run.path), "--dim", "0", "--dim", "2", "--steps", "3",
                                      "--out", str(vae_run.path / "t.png")])
    assert result.exit_code == 0, result.output
    with Image.open(vae_run.path / "t.png") as im:
        assert im.size == ((3 * 9 + 1) * 4, (2 * 9 + 1) * 4), "a row per dimension asked for"


def test_capacity_and_annealing_shape_the_kl(tmp_path):
    over = [*VAE_TINY, "train.max_steps=600", "train.val_every=600", "eval.num_samples=100"]
    free = genlab.fit(None, overrides=over, out=tmp_path / "free")
    capped = genlab.fit(None, overrides=[*over, "model.capacity=0.5", "model.capacity_steps=300", "model.gamma=50"],
                        out=tmp_path / "capped")
    kl = {name: genlab.evaluate(run)["kl"] for name, run in (("free", free), ("capped", capped))}
    assert abs(kl["capped"] - 0.5) < 0.1 and kl["free"] > 2 * kl["capped"], kl  # the cap holds; free goes past it


def test_total_correlation_counts_what_ties_dimensions_together():
    g, n = torch.Generator().manual_seed(0), 1024
    log_var = torch.full((n, 4), -3.0)

    def tc(mean: torch.Tensor) -> float:
        z = mean + (0.5 * log_var).exp() * torch.randn(mean.shape, generator=g)
        return total_correlation(z, mean, log_var).item()

    free = torch.randn(n, 4, generator=g)
    copied = free.clone()
    copied[:, 1] = copied[:, 0]
    square = torch.cat([torch.rand(n, 2, generator=g) * 4 - 2, free[:, 2:]], 1)  # x and y, each uniform
    turned = square.clone()
    turned[:, :2] = square[:, :2] @ torch.tensor([[0.7071, -0.7071], [0.7071, 0.7071]])  # mixed at 45 degrees
    independent = tc(free)
    assert tc(copied) > independent + 0.5 and abs(independent) < 0.7  # the batch estimate leans a little high
    assert tc(turned) > tc(square) + 0.1, "a rotation of independent factors ties the dimensions"


def test_beta_tcvae_unties_the_latent_and_the_report_shows_each_factor(tmp_path):
    shapes = [o for o in VAE_TINY if not o.startswith(("data.", "train.max_steps", "model.beta_warmup"))] + [
        "data.source=shapes", "data.image_size=16", "data.limit=3000", "train.max_steps=500", "train.val_every=500",
        "eval.num_samples=100", "eval.feature_steps=20", "eval.likelihood_samples=2"]
    free = genlab.fit(None, overrides=shapes, out=tmp_path / "free")
    untied = genlab.fit(None, overrides=[*shapes, "model.tc_beta=8"], out=tmp_path / "untied")
    held_out = load_dataset(free.config.data).test.x[:512] / 2 + 0.5

    def tc(run: genlab.Run) -> float:
        torch.manual_seed(0)
        t = run.model.terms(held_out)
        return total_correlation(t["z"], t["mean"], t["log_var"]).item()

    assert tc(untied) < 0.6 * tc(free), (tc(untied), tc(free))
    metrics = genlab.evaluate(untied)
    assert set(metrics["mig_per_factor"]) == set(metrics["mig_dimension"]) == {"shape", "scale", "rotation", "x", "y"}
    page = (untied.path / "report.html").read_text()
    assert "MIG per factor" in page and "a row per latent dimension" in page
    x_holder = metrics["mig_dimension"]["x"]
    assert re.search(rf"z{x_holder} \(KL [0-9.]+; [a-z, ]*\bx\b", page), "the traversal names the factor a row holds"
