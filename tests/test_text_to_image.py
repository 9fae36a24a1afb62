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


@pytest.fixture(scope="module")
def base_metrics(runs):
    return genlab.evaluate(runs["t2i"])


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


def test_evaluate_reports_prompt_adherence_beside_the_judges_ceiling_and_a_model_that_ignores_the_prompt(base_metrics):
    metrics = base_metrics
    for part in ("seen", "unseen"):  # 16-px scenes: the judge reads most of them (1.0 at the recipe's 32 px)
        ceiling, ignored = metrics[f"adherence_{part}_ceiling"], metrics[f"adherence_{part}_prompt_ignored"]
        assert ceiling >= 0.8 and ignored <= ceiling - 0.3 and 0 <= metrics[f"adherence_{part}"] <= 1
    assert set(metrics["adherence"]["unseen"]) >= {"shape", "colour", "size", "place", "count", "relation"}
    for part in ("seen", "unseen"):  # the judge's probability of what was asked: high for the real images only
        figures = metrics["adherence"]
        assert figures[f"{part}_ceiling"]["agreement"] >= 0.8 >= figures[f"{part}_prompt_ignored"]["agreement"] + 0.3
        assert metrics[f"agreement_{part}"] == figures[part]["agreement"]


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


@pytest.mark.filterwarnings("ignore:__array__ implementation")  # diffusers' scheduler on numpy 2, in the user's code
def test_dreambooth_draws_its_class_images_with_the_base_first_and_evaluate_shows_the_subject_and_forgetting(
        runs, base_metrics, tmp_path):
    import safetensors.torch

    classes = [PROMPT, "two large blue circles side by side"]
    run = genlab.fit(None, out=tmp_path / "subject", overrides=[
        "data.source=shapes_subject", "data.image_size=16", "train.progress=none", "model.family=latent_diffusion",
        f"model.init_from={runs['t2i'].path}", "model.lora={r: 4}", "model.caption_dropout=0",
        f"model.dreambooth={{instance_prompt: a photo of sks, class_prompt: {classes}, num_class_images: 5, "
        "prior_loss_weight: 0.5}",
        "train.batch_size=4", "train.max_steps=4", "train.val_every=4", "train.checkpoint_every=4",
        "train.val_batches=1", "train.optimizer.lr=0.01", "eval.num_samples=32", "eval.sampling.steps=3"])
    # the prior is the base's own draws for the class prompts, kept in the checkpoint for an exact resume
    kept = torch.load(run.paths.last_checkpoint, weights_only=True)["state_dict"]["class_images"]
    base = runs["t2i"].model.sample(5, generator=torch.Generator().manual_seed(0), prompt=(classes * 3)[:5])
    assert kept.shape == (5, 3, 16, 16) and torch.allclose(kept, base * 2 - 1, atol=1e-5)
    model = run.model.base_model().train()  # in training, a batch of the subject gets as many class images
    model.class_images, model.class_prompts = kept, (classes * 3)[:5]
    x, captions, weights = model.examples({"x": torch.zeros(3, 3, 16, 16)})
    assert len(x) == 6 and captions[:3] == ["a photo of sks"] * 3 and set(captions[3:]) <= set(classes)
    assert weights.tolist() == [1.0] * 3 + [0.5] * 3, "the prior's loss weighs prior_loss_weight"
    assert "class_images" not in safetensors.torch.load_file(run.paths.model / "unet" /
                                                             "diffusion_pytorch_model.safetensors")
    from diffusers import DiffusionPipeline  # the subject's adapters alone, into the base as diffusers loads it

    pipe = DiffusionPipeline.from_pretrained(runs["t2i"].paths.model)
    pipe.load_lora_weights(run.paths.model / "lora")
    theirs = pipe("a photo of sks", num_inference_steps=3, guidance_scale=4.0, output_type="pt",
                  generator=torch.Generator().manual_seed(1)).images
    ours = run.model.sample(1, generator=torch.Generator().manual_seed(1), prompt="a photo of sks", steps=3)
    assert torch.allclose(theirs, ours, atol=2e-4), (theirs - ours).abs().max()

    metrics = genlab.evaluate(run)
    subject = metrics["fine_tune"]["subject"]
    assert subject["subject"] == "yellow star" and subject["ceiling"]["subject"] >= 0.8
    assert 0 <= metrics["subject_tuned"] <= subject["tuned"]["shape"] and metrics["subject_base"] == \
        subject["base"]["subject"]
    forgetting = metrics["fine_tune"]["forgetting"]
    assert forgetting["before"]["seen"] == base_metrics["adherence"]["seen"], "the base, drawn as its own evaluate drew"
    assert metrics["adherence_seen_after"] == forgetting["after"]["seen"]["attributes"]
    assert metrics["fid_base"] > 0 and "subject drawn" in (run.path / "report.html").read_text()
    with pytest.raises(genlab.ConfigError, match="dreambooth teaches a pretrained pipeline a subject: set "
                                                 "model.init_from"):
        genlab.load_config(None, [*t2i(runs["ae"].path), "model.dreambooth={instance_prompt: sks}"])



def test_a_prompted_run_is_audited_by_what_its_prompts_ask_for_and_a_colour_drawn_wrong_is_flagged(runs):
    import numpy as np

    from genlab.data import captioned_shapes as scenes
    from genlab.responsible.audit import gate
    from genlab.responsible.prompt_audit import prompt_groups

    result = genlab.audit(runs["t2i"], n=32)
    assert {"colour red", "shape circle", "size small"} <= {g["class"] for g in result["classes"]}
    assert "Audit by prompt" in (runs["t2i"].path / "audit.html").read_text()
    asked = scenes.draw(np.random.default_rng(0), 400, unseen=False)
    read = asked.clone()  # a model that draws every red object blue, and every other attribute as asked
    for column in (2, 6):
        read[:, column] = torch.where(asked[:, column] == 0, 2, asked[:, column])
    audited = prompt_groups(read, asked)
    assert [f["class"] for f in audited["flags"]] == ["colour red"]
    red = next(g for g in audited["classes"] if g["class"] == "colour red")
    assert red["as_asked"] == 0 and red["rest"] == 1 and red["gap_interval"][1] < 0
    assert gate(audited, "gap>0.5") == [f"gap>0.5: class colour red gap -1.000 [{red['gap_interval'][0]:+.3f}, "
                                        f"{red['gap_interval'][1]:+.3f}]"], "--fail-on reads it"


def test_rating_runs_drawn_from_text_pairs_two_draws_of_one_prompt_and_the_page_shows_it(runs, tmp_path):
    import random
    import shutil

    import httpx

    from genlab.data.sources import load_dataset
    from genlab.evaluation.rating import Ratings
    from genlab.serving.rating import rating_app

    twin = tmp_path / "t2i-twin"  # another run, as far as the rating can tell
    shutil.copytree(runs["t2i"].path, twin)
    ratings = Ratings.create([runs["t2i"].path, twin], tmp_path / "rate", n=6)
    captions = load_dataset(runs["t2i"].config.data).test.captions
    assert ratings.prompts == captions[:3]
    model = runs["t2i"].model  # item 3: seed 3, drawn for prompt 1
    model.media.save(model.sample(1, generator=torch.Generator().manual_seed(3), prompt=captions[1], **model.sampling),
                     tmp_path / "expected.png")
    with Image.open(ratings.item("t2i", 3)) as drawn, Image.open(tmp_path / "expected.png") as expected:
        assert np.abs(np.asarray(drawn).astype(int) - np.asarray(expected)).max() <= 1
    for seed in range(50):
        pair = ratings.pair(random.Random(seed))
        assert pair["left_item"] // 2 == pair["right_item"] // 2 and pair["asked"] == captions[pair["left_item"] // 2]
    with running(rating_app(ratings, seed=0)) as url, httpx.Client(base_url=url) as client:
        assert client.post("/api/session", json={"rater": "ada"}).status_code == 200
        assert client.get("/api/pair").json()["asked"] in captions[:3]
    with pytest.raises(genlab.GenlabError, match="some of the runs draw from prompts and some do not"):
        Ratings.create([runs["ae"].path, runs["t2i"].path], tmp_path / "mixed", n=4)


def test_the_bakeoff_shows_a_prompted_run_drawing_its_example_prompts(runs):
    from genlab.study.bakeoff import preview

    run = runs["t2i"]
    shown = preview(run, {}, n=2)
    assert shown == run.model.media.html(run.sample(2, seed=0, prompt=run.model.preview_captions[:2]))
    assert shown != run.model.media.html(run.sample(2, seed=0)), "drawn for its prompts, not unconditionally"
