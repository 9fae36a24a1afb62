"""The autoencoder family's config and sampling options (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from genlab.config import ModelConfig
from genlab.config.section import Sampling


class AutoencoderConfig(ModelConfig):
    family: Literal["autoencoder"] = "autoencoder"
    capabilities: ClassVar[tuple[str, ...]] = ("images",)
    # encoder widths; each block after the first halves the side, so latents are side / 2^(blocks - 1)
    block_out_channels: list[int] = Field([16, 32, 32], min_length=1)
    latent_channels: int = Field(4, ge=1)
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    mid_attention: bool = False  # self-attention in the middle block, as Stable Diffusion's has
    reconstruction: Literal["mse", "l1"] = "mse"
    kl_weight: float = Field(1e-6, ge=0)  # Stable Diffusion's: latents near a Gaussian's scale, images unblurred


class AutoencoderSampling(Sampling):
    temperature: float = Field(1.0, gt=0, le=10, description="Scale of the prior noise decoded.")
