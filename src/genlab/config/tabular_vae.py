"""The tabular VAE's config and sampling options (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from genlab.config import ModelConfig
from genlab.config.section import Sampling


class TabularVAEConfig(ModelConfig):
    family: Literal["tabular_vae"] = "tabular_vae"
    capabilities: ClassVar[tuple[str, ...]] = ("rows",)
    latent_dim: int = Field(16, ge=1)
    hidden: list[int] = Field([128, 128], min_length=1)  # MLP widths of the encoder (the decoder mirrors them)
    scaling: Literal["standard", "quantile"] = "standard"  # numeric columns
    categorical: list[str] = []  # columns to treat as categories even when they hold numbers
    encoding: Literal["onehot", "embedding"] = "onehot"  # how categories enter the encoder
    embedding_dim: int = Field(4, ge=1)
    likelihood: Literal["gaussian", "student_t"] = "gaussian"  # numeric cells; Student-t is heavy-tailed
    degrees_of_freedom: float = Field(3.0, gt=0)  # student_t
    importance_samples: int = Field(20, ge=1)  # K of the importance-weighted bound trained on (MIWAE); 1: the ELBO
    impute_samples: int = Field(200, ge=1)  # importance samples when imputing and scoring
    hide: float = Field(0.5, ge=0, lt=1)  # training hides up to this share of a row's cells from the encoder
    # a categorical column whose groups count equally in the loss, whatever their size (group-reweighted training);
    # with group_dro_step > 0 the weights move each step by exp(step * group loss) toward the worst-fitted group
    # (group DRO, Sagawa et al., 2020). For a density model the worst-fitted group is the most varied one,
    # which need not be the smallest: bench/audit_group_mitigation.py measures both
    group_weighted_loss: str | None = None
    group_dro_step: float = Field(0.0, ge=0, le=1)


class TabularSampling(Sampling):
    temperature: float = Field(1.0, gt=0, le=10, description="Scale of the prior's standard deviation.")
