"""The GAN family's config and sampling options (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from genlab.config import ModelConfig
from genlab.config.section import Sampling

LOSSES = ("non-saturating", "hinge", "wgan-gp", "r3gan")
AUGMENTS = ("translation", "cutout", "color")


class GANConfig(ModelConfig):
    family: Literal["gan"] = "gan"
    capabilities: ClassVar[tuple[str, ...]] = ("images",)
    latent_dim: int = Field(64, ge=1)
    channels: list[int] = Field([128, 64, 32], min_length=1)  # G's widths from the lowest resolution up; D mirrors
    loss: Literal["non-saturating", "hinge", "wgan-gp", "r3gan"] = "hinge"
    spectral_norm: bool = True  # on every layer of D
    gp_weight: float = Field(10.0, ge=0)  # wgan-gp: weight of the gradient penalty
    r_gamma: float = Field(0.1, ge=0)  # r3gan: weight of the R1 + R2 zero-centred gradient penalties
    n_critic: int = Field(1, ge=1)  # D updates per step, on slices of the step's batch; then one G update
    # each network's lr and betas; None takes train.optimizer's (GANs usually want betas like (0.0, 0.99))
    g_lr: float | None = Field(None, gt=0)
    d_lr: float | None = Field(None, gt=0)
    g_betas: tuple[float, float] | None = None
    d_betas: tuple[float, float] | None = None
    diffaugment: list[Literal["translation", "cutout", "color"]] = []  # applied to real and fake before D
    class_conditional: bool = False  # class embedding in G, projection discriminator
    collapse_samples: int = Field(256, ge=16)  # fixed latents scored at each validation for mode collapse


class GANSampling(Sampling):
    truncation: float | None = Field(None, gt=0, le=10, description="Cut latents at +-this (fidelity over "
                                                                      "variety).")
