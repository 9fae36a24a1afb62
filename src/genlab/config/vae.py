"""The image VAE family's config and sampling options (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from genlab.config import ModelConfig
from genlab.config.section import Sampling


class VAEConfig(ModelConfig):
    family: Literal["vae"] = "vae"
    capabilities: ClassVar[tuple[str, ...]] = ("images", "latent")
    latent_dim: int = Field(10, ge=1)
    channels: list[int] = Field([32, 32, 64, 64], min_length=1)  # encoder widths, each a stride-2 4x4 conv
    hidden: int = Field(256, ge=1)  # the fully connected layer between the convolutions and the latent
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    sigma: float | None = Field(None, gt=0)  # gaussian: the decoder's std; None learns one (a calibrated decoder)
    beta: float = Field(1.0, ge=0)  # weight of the KL term (beta-VAE)
    beta_warmup_steps: int = Field(0, ge=0)  # KL annealing: beta rises linearly from 0 over these steps
    capacity: float | None = Field(None, ge=0)  # nats: Burgess et al.'s gamma * |KL - C|, C growing to this
    capacity_steps: int = Field(10_000, ge=1)  # steps over which C grows from 0 to `capacity`
    gamma: float = Field(100.0, ge=0)  # weight of the capacity term
    tc_beta: float | None = Field(None, ge=0)  # beta-TCVAE (Chen et al.): the KL's total-correlation part weighted
    # by this, the rest by beta: the latent's dimensions pushed apart, which is what MIG rewards

    @model_validator(mode="after")
    def _one_objective(self) -> VAEConfig:
        if self.capacity is not None and self.tc_beta is not None:
            raise ValueError("capacity and tc_beta are two objectives for the KL: set one of them")
        return self


class VAESampling(Sampling):
    temperature: float = Field(1.0, gt=0, le=10, description="Scale of the prior's standard deviation.")
