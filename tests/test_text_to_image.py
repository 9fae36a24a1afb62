"""Text to image: the autoencoder family, latent diffusion on its latents with a frozen pretrained text encoder,
the export diffusers loads and draws from in one line, prompts through `genlab sample` and the official openai
client, prompt adherence in `genlab evaluate`, and bad prompts or configs as one clear line."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.serving import ServeConfig, serve_app

from .conftest import running

DATA = ["data.source=captioned_shapes", "data.image_size=16", "data.limit=600", "train.progress=none",
        "train.grid_size=2", "train.log_every=5"]
AE = [*DATA, "model.family=autoencoder", "model.block_out_channels=[8,16]", "train.batch_size=16",
      "train.max_steps=20", "train.val_every=20", "train.checkpoint_every=20", "train.val_batches=1"]
PROMPT = "a small red square on the left"


def t2i(autoencoder, *extra: str, data: tuple[str, ...] = tuple(DATA)) -> list[str]:
    return [*data, "model.family=latent_diffusion", f"model.autoencoder={autoencoder}",
            "model.block_out_channels=[16,32]",
            "model.norm_num_groups=8", "model.attention_head_dim=4", "model.max_prompt_tokens=24",
            "train.batch_size=16", "train.max_steps=12", "train.val_every=12", "train.checkpoint_every=12",
            "train.val_batches=1", "eval.num_samples=32", "eval.sampling.steps=3", "eval.feature_steps=50", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    ae = genlab.fit(None, overrides=AE, out=root / "ae")
    return {"ae": ae, "t2i": genlab.fit(None, overrides=t2i(ae.path), out=root / "t2i")}


@pytest.mark.filterwarnings("ignore:__array__ implementation")  # diffusers' scheduler on numpy 2, in the user's code
def test_the_export_is_a_pipeline_diffusers_draws_from_in_one_line_as_genlab_does(runs):
    from diffusers import AutoencoderKL, DiffusionPipeline, DPMSolverMultistepScheduler

    run = runs["t2i"]
    assert AutoencoderKL.from_pretrained(runs["ae"].paths.model).config.latent_channels == 4
    pipe = DiffusionPipeline.from_pretrained(run.paths.model)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler), "a 20-step sampler, not DDPM's 1,000"
    theirs = pipe([PROMPT, "two large blue circles side by side"], num_inference_steps=3, guidance_scale=4.0,
                  generator=[torch.Generator().manual_seed(s) for s in (5, 6)], output_type="pt").images
    ours = run.model.sample(2, generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                            prompt=[PROMPT, "two large blue circles side by side"], steps=3, guidance_scale=4.0)
    assert theirs.shape == (2, 3, 16, 16) and torch.allclose(theirs, ours, atol=2e-4), (theirs - ours).abs().max()
    negative = run.model.sample(1, generator=torch.Generator().manual_seed(5), prompt=PROMPT, steps=3,
                                negative_prompt="a large blue circle at the top")
    assert not torch.allclose(negative, ours[:1], atol=1e-3), "a negative prompt steers guidance"


def test_prompts_reach_the_model_from_the_cli_and_the_openai_client_and_bad_ones_get_one_line(runs, tmp_path):
    from openai import BadRequestError, OpenAI, UnprocessableEntityError

    run = runs["t2i"]
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["sample", str(run.path), "--n", "2", "--out", str(out), "--prompt", PROMPT,
                                      "--steps", "3"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as grid:
        assert grid.size[0] >= 32

    served = serve_app([run.path], ServeConfig(engine="thread", names=["shapes"],
                                               filters=[{"type": "blocklist", "terms": ["purple"]}]))
    with running(served) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        images = client.images.generate(model="shapes", prompt=PROMPT, n=2, extra_body={"seed": 3, "steps": 3})
        drawn = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in images.data]
        expected = run.model.sample(2, generator=[torch.Generator().manual_seed(s) for s in (3, 4)], prompt=PROMPT,
                                    steps=3)
        assert drawn[0].shape == (16, 16, 3)
        assert np.abs(drawn[1].astype(int) - (expected[1].permute(1, 2, 0).numpy() * 255).round()).max() <= 1
        other = client.images.generate(model="shapes", prompt="two large blue circles side by side", n=1,
                                       extra_body={"seed": 3, "steps": 3})
        assert other.data[0].b64_json != images.data[0].b64_json, "the prompt is what is drawn"
        with pytest.raises(BadRequestError, match="prompt: refused by the blocklist filter"):
            client.images.generate(model="shapes", prompt="a small purple square", extra_body={"steps": 3})
        with pytest.raises(UnprocessableEntityError, match="prompt: String should have at most 4000 characters"):
            client.images.generate(model="shapes", prompt="x" * 5000, extra_body={"steps": 3})


def test_evaluate_reports_prompt_adherence_beside_the_judges_ceiling_and_a_model_that_ignores_the_prompt(runs):
    metrics = genlab.evaluate(runs["t2i"])
    for part in ("seen", "unseen"):  # 16-px scenes: the judge reads most of them (1.0 at the recipe's 32 px)
        ceiling, ignored = metrics[f"adherence_{part}_ceiling"], metrics[f"adherence_{part}_prompt_ignored"]
        assert ceiling >= 0.8 and ignored <= ceiling - 0.3 and 0 <= metrics[f"adherence_{part}"] <= 1
    assert set(metrics["adherence"]["unseen"]) >= {"shape", "colour", "size", "place", "count", "relation"}


def test_a_latent_diffusion_config_without_captions_or_autoencoder_is_one_line(runs, tmp_path):
    with pytest.raises(genlab.GenlabError, match="latent_diffusion draws images from text, and this data has no "
                                                 "captions"):
        genlab.fit(None, overrides=t2i(runs["ae"].path, data=("data.source=digits", "data.image_size=16",
                                                               "data.channels=3", "train.progress=none")),
                   out=tmp_path / "a")
    with pytest.raises(genlab.GenlabError, match="model.autoencoder: .*nowhere holds no autoencoder"):
        genlab.fit(None, overrides=t2i(tmp_path / "nowhere"), out=tmp_path / "b")
    with pytest.raises(genlab.GenlabError, match="model.text_encoder: .*no-such-encoder could not be loaded"):
        genlab.fit(None, overrides=t2i(runs["ae"].path, f"model.text_encoder={tmp_path / 'no-such-encoder'}"),
                   out=tmp_path / "c")


def test_the_model_card_names_the_pipeline_and_shows_a_prompt_and_its_images(runs):
    run = runs["t2i"]
    card = genlab.card(run).read_text()
    assert "pipeline_tag: text-to-image" in card and "library_name: diffusers" in card
    assert "StableDiffusionPipeline" in card and "DiffusionPipeline.from_pretrained(" in card
    prompt = genlab.load(run.path).model.preview_captions[0]
    assert f"![{prompt}](example.png)" in card and prompt in run.model.preview_captions
    with Image.open(run.paths.model / "example.png") as example:
        assert example.size == (4 * (4 * 17 + 1), 4 * 18), "four 16-px draws in a row, four times enlarged"


@pytest.mark.filterwarnings("ignore:__array__ implementation")  # diffusers' scheduler on numpy 2, in the user's code
def test_a_lora_fine_tune_of_a_pipeline_loads_with_load_lora_weights_and_reproduces_genlabs_samples(runs, tmp_path):
    from diffusers import DiffusionPipeline

    base = runs["t2i"].paths.model
    run = genlab.fit(None, out=tmp_path / "lora", overrides=[
        *DATA, "model.family=latent_diffusion", f"model.init_from={base}", "model.lora={r: 4}", "train.batch_size=16",
        "train.max_steps=6", "train.val_every=6", "train.checkpoint_every=6", "train.val_batches=1",
        "train.optimizer.lr=0.01", "eval.sampling.steps=3"])
    adapters = run.paths.model / "lora" / "pytorch_lora_weights.safetensors"
    unet = base / "unet" / "diffusion_pytorch_model.safetensors"
    assert adapters.is_file() and adapters.stat().st_size < unet.stat().st_size / 2, "the adapters alone, not the UNet"

    def draw() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in (1, 2)]

    ours = run.model.sample(2, generator=draw(), prompt=PROMPT, steps=3)
    before = runs["t2i"].model.sample(2, generator=draw(), prompt=PROMPT, steps=3)
    assert not torch.allclose(ours, before, atol=1e-3), "the adapters changed what is drawn"
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(run.paths.model / "lora")
    theirs = pipe(PROMPT, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=4.0, generator=draw(),
                  output_type="pt").images
    assert torch.allclose(theirs, ours, atol=2e-4), (theirs - ours).abs().max()
    merged = DiffusionPipeline.from_pretrained(run.paths.model)(PROMPT, num_images_per_prompt=2, num_inference_steps=3,
                                                                guidance_scale=4.0, generator=draw(), output_type="pt")
    assert torch.allclose(merged.images, ours, atol=2e-4)


def test_a_pipeline_missing_a_part_is_named_in_one_line(runs, tmp_path):
    import shutil

    broken = tmp_path / "pipeline"
    shutil.copytree(runs["t2i"].paths.model, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(genlab.GenlabError, match=r"model.init_from: .*pipeline has no readable unet/ \(a text-to-image "
                                                 r"pipeline folder holds unet/, vae/, text_encoder/, tokenizer/"):
        genlab.fit(None, out=tmp_path / "run", overrides=[*DATA, "model.family=latent_diffusion",
                                                          f"model.init_from={broken}"])
    with pytest.raises(genlab.ConfigError, match="lora trains adapters on a pretrained pipeline: set model.init_from"):
        genlab.load_config(None, [*t2i(runs["ae"].path), "model.lora={r: 4}"])
