"""The diffusion family's config and sampling options (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from genlab.config import ModelConfig
from genlab.config.section import Sampling

DEFAULT_STEPS = {"ddim": 50, "dpm-solver": 20}  # ddpm: every training timestep
PREVIEW_STEPS = 50  # the most a training preview draws with: the run's own steps unless it asks for more


class DiffusionConfig(ModelConfig):
    family: Literal["diffusion"] = "diffusion"
    capabilities: ClassVar[tuple[str, ...]] = ("images",)
    block_out_channels: list[int] = Field([32, 64], min_length=1)  # UNet width at each resolution
    attention: list[bool] = [False, True]  # self-attention at each resolution
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    noise_schedule: Literal["linear", "cosine", "scaled_linear"] = "linear"
    snr_gamma: float | None = Field(None, gt=0)  # min-SNR loss weighting (5 in its paper); None: plain MSE
    num_train_timesteps: int = Field(1000, ge=2)
    class_conditional: bool = False
    cond_drop_prob: float = Field(0.1, ge=0, le=1)  # labels dropped in training, for guidance

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionConfig:
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError(f"attention has {len(self.attention)} entries, block_out_channels has "
                             f"{len(self.block_out_channels)}: give one per resolution")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"every block_out_channels entry must divide by norm_num_groups={self.norm_num_groups}")
        return self


class DiffusionSampling(Sampling):
    per_sample: ClassVar[frozenset[str]] = frozenset({"guidance_scale"})  # a tensor: one scale per sample
    sampler: Literal["ddpm", "ddim", "dpm-solver"] = Field("dpm-solver", description="The diffusers scheduler.")
    # None: the sampler's default (DEFAULT_STEPS; ddpm: every timestep)
    steps: int | None = Field(None, ge=1, le=10_000, description="Denoising steps.")
    guidance_scale: float = Field(1.0, ge=0, le=50, description="Classifier-free guidance; 1 is plain "
                                                                 "conditional.")

    @model_validator(mode="after")
    def _explicit_steps(self) -> DiffusionSampling:
        if self.steps is None and self.sampler in DEFAULT_STEPS:  # so metrics.json says how many
            self.steps = DEFAULT_STEPS[self.sampler]
        return self
