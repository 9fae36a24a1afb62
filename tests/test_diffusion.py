"""The diffusion family: sampling, conditioning, and its model folder in the real diffusers."""

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline

import genlab
from genlab.config import chosen_sampling
from genlab.config.diffusion import PREVIEW_STEPS
from genlab.models import Diffusion

from .conftest import tiny


def test_diffusers_loads_the_model_folder_and_generates(tiny_run):
    pipe = DDPMPipeline.from_pretrained(tiny_run.paths.model)  # no genlab code on this path
    out = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 8, 8, 1) and np.isfinite(out.images).all()
    assert out.images.min() >= 0 and out.images.max() <= 1


@pytest.mark.parametrize("sampler, steps", [("ddpm", 20), ("ddim", 10), ("dpm-solver", 10)])
def test_every_sampler_is_seeded_and_reproducible(tiny_run, sampler, steps):
    a = tiny_run.sample(3, seed=1, sampler=sampler, steps=steps)
    b = tiny_run.sample(3, seed=1, sampler=sampler, steps=steps)
    c = tiny_run.sample(3, seed=2, sampler=sampler, steps=steps)
    assert a.shape == (3, 1, 8, 8) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_batch_of_differing_requests_matches_each_request_alone(tiny_run):
    """What a server needs: each request keeps its own seed whatever it is batched with."""
    model = tiny_run.model
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    batch = model.sample(3, generator=gens, sampler="ddim", steps=10)
    alone = model.sample(1, generator=[torch.Generator().manual_seed(6)], sampler="ddim", steps=10)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-4, rtol=0)


def test_unknown_sampler_and_labels_on_an_unconditional_model(tiny_run):
    with pytest.raises(genlab.GenlabError, match="sampling.sampler: input should be 'ddpm', 'ddim' or 'dpm-solver'"):
        tiny_run.sample(1, sampler="euler")
    with pytest.raises(genlab.GenlabError, match="sampler: 'euler' is not one of"):
        tiny_run.model.sample(1, sampler="euler")  # the family checks its own options when called directly
    with pytest.raises(genlab.GenlabError, match="trained without class conditioning"):
        tiny_run.sample(1, labels=3)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    over = tiny("model.class_conditional=true", "model.prediction=v_prediction", "model.noise_schedule=cosine")
    return genlab.fit(None, overrides=over, out=tmp_path_factory.mktemp("c") / "r")


def test_class_conditional_v_prediction_with_guidance(conditional_run):
    model = conditional_run.model
    assert model.scheduler.config.prediction_type == "v_prediction"
    assert model.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    g = torch.Generator().manual_seed(0)
    mixed = model.sample(4, generator=g, labels=[0, 1, "2", 3], guidance_scale=torch.tensor([1.0, 2.0, 3.0, 0.0]),
                         sampler="dpm-solver", steps=5)
    assert mixed.shape == (4, 1, 8, 8) and torch.isfinite(mixed).all()
    same = [model.sample(1, generator=torch.Generator().manual_seed(0), labels=3, guidance_scale=s,
                         sampler="ddim", steps=5) for s in (1.0, 4.0)]
    assert not torch.equal(*same), "guidance changes the sample"
    with pytest.raises(genlab.GenlabError, match="'cat' is not a class of this model"):
        model.sample(1, labels="cat")
    with pytest.raises(genlab.GenlabError, match="got 2 labels for 3 samples"):
        model.sample(3, labels=[1, 2])


def test_conditional_model_round_trips_through_its_folder(conditional_run, tmp_path):
    model = conditional_run.model
    model.save_pretrained(tmp_path / "m")
    again = Diffusion.from_pretrained(tmp_path / "m")
    assert again.spec == model.spec and again.config == model.config
    a = model.sample(2, generator=torch.Generator().manual_seed(0), labels=1, sampler="ddim", steps=4)
    b = again.sample(2, generator=torch.Generator().manual_seed(0), labels=1, sampler="ddim", steps=4)
    assert torch.equal(a, b)


def test_image_size_must_fit_the_unet_depth_and_a_rejected_fit_writes_nothing(tmp_path):
    with pytest.raises(genlab.GenlabError, match="data.image_size: 10 must divide by 2"):
        genlab.fit(None, overrides=tiny("data.image_size=10", "model.block_out_channels=[8,16,32]",
                                        "model.attention=[false,false,false]"), out=tmp_path / "r")
    assert not (tmp_path / "r").exists(), "fixing the config and running again must not hit 'already holds a run'"


def test_min_snr_weighting_lowers_only_the_low_noise_samples_weight(tiny_run):
    model, batch = tiny_run.model, {"x": torch.rand(64, 1, 8, 8) * 2 - 1}

    def loss(gamma: float | None, prediction: str = "epsilon") -> float:
        model.config = model.config.model_copy(update={"snr_gamma": gamma, "prediction": prediction})
        with torch.no_grad():
            return float(model.diffusion_loss(batch, torch.Generator().manual_seed(0)))

    try:
        plain, unbounded, clipped = loss(None), loss(1e9), loss(5.0)
        v_plain, v_unbounded, v_clipped = (loss(g, "v_prediction") for g in (None, 1e9, 5.0))
    finally:
        model.config = model.config.model_copy(update={"snr_gamma": None, "prediction": "epsilon"})
    assert abs(unbounded - plain) < 1e-6 * plain, "a gamma no SNR reaches weighs every sample 1 (epsilon)"
    assert clipped < 0.95 * plain, "samples above SNR 5 count for less"
    # v-prediction: SNR / (SNR + 1) even unclipped (the epsilon error the v error implies), then the clip
    assert v_unbounded < 0.95 * v_plain and v_clipped < 0.95 * v_unbounded


def test_a_preview_draws_as_the_run_samples_with_only_its_cost_held(conditional_run, monkeypatch):
    """Training previews take the run's sampling options (its eval.sampling) and one of each class in turn; a
    sampler set for a final evaluation (ddpm: every timestep) is held to PREVIEW_STEPS."""
    model = conditional_run.model
    monkeypatch.setattr(model, "sampling", chosen_sampling("diffusion", {"sampler": "ddim", "steps": 6,
                                                                         "guidance_scale": 3.0}))
    preview = model.preview(4, torch.Generator().manual_seed(0))
    drawn = model.sample(4, generator=torch.Generator().manual_seed(0), labels=[0, 1, 2, 3], sampler="ddim", steps=6,
                         guidance_scale=3.0)
    assert torch.equal(preview, drawn)
    plain = model.sample(4, generator=torch.Generator().manual_seed(0), labels=[0, 1, 2, 3], sampler="ddim", steps=6)
    assert not torch.equal(preview, plain), "the run's guidance reaches the preview"
    monkeypatch.setattr(model, "sampling", chosen_sampling("diffusion", {"sampler": "ddpm", "guidance_scale": 2.0}))
    assert model.preview_options() == {"sampler": "ddpm", "guidance_scale": 2.0, "steps": PREVIEW_STEPS}
    monkeypatch.setattr(model, "sampling", chosen_sampling("diffusion", {"sampler": "ddim", "steps": 80}))
    assert model.preview_options() == {"sampler": "ddim", "steps": PREVIEW_STEPS}
    monkeypatch.setattr(model.config, "num_train_timesteps", 20)  # ddpm's every step is fewer than the limit
    monkeypatch.setattr(model, "sampling", chosen_sampling("diffusion", {"sampler": "ddpm"}))
    assert model.preview_options() == {"sampler": "ddpm"}
