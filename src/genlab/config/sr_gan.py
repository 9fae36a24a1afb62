"""The super-resolution family's config (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from genlab.config import ModelConfig
from genlab.config.section import Sampling


class SRConfig(ModelConfig):
    family: Literal["sr_gan"] = "sr_gan"
    capabilities: ClassVar[tuple[str, ...]] = ("upscale",)
    scale: Literal[2, 4] = 4
    width: int = Field(48, ge=4)  # feature channels of the generator's residual blocks
    blocks: int = Field(8, ge=1)  # residual blocks (conv-ReLU-conv, no normalization: EDSR / ESRGAN)
    d_channels: list[int] = Field([32, 64, 128], min_length=1)  # discriminator widths, each halving the size
    l1_weight: float = Field(1.0, ge=0)
    adversarial_weight: float = Field(0.005, ge=0)  # relativistic average loss, as ESRGAN
    feature_weight: float = Field(0.1, ge=0)  # L1 between D's features of SR and HR images (feature matching)
    warmup_steps: int = Field(500, ge=0)  # L1 only before this step, so D meets a sensible G (ESRGAN's PSNR stage)
    g_lr: float | None = Field(None, gt=0)  # None: train.optimizer.lr
    d_lr: float | None = Field(None, gt=0)

    def data_problem(self, data) -> str | None:
        if data.source == "image_folder":  # it would resize each photograph whole to one small square
            return (f"image_folder resizes each image whole to {data.image_size} pixels, and super-resolution "
                    f"learns from crops of full-size photographs: use data.source: photos with data.path: "
                    f"{data.path or 'FOLDER'}")
        return None


class SRSampling(Sampling):
    """Upscaling has no sampling options: the output is a function of the input image."""
