"""The audio diffusion family's config and sampling options (pydantic only: configs validate without torch).

The model is the image diffusion model on log-mel spectrograms, so its config is diffusion's plus the
spectrogram and the vocoder; the sample rate and clip length come from the data (`data.sample_rate`,
`data.clip_seconds`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from genlab.config.diffusion import DiffusionConfig, DiffusionSampling


class AudioDiffusionConfig(DiffusionConfig):
    family: Literal["audio_diffusion"] = "audio_diffusion"  # type: ignore[assignment]
    capabilities: ClassVar[tuple[str, ...]] = ("speech",)
    block_out_channels: list[int] = Field([32, 64, 64], min_length=1)
    attention: list[bool] = [False, False, True]
    class_conditional: bool = True
    n_mels: int = Field(32, ge=8, le=256)  # the spectrogram image's height
    frames: int = Field(32, ge=8, le=1024)  # its width: the clip's STFT frames (the hop is clip length / frames)
    n_fft: int = Field(1024, ge=64, le=8192)
    max_db: float = 45.0  # log-mel level that maps to 1
    top_db: float = Field(80.0, gt=0)  # range below max_db that maps to [-1, 1]; quieter is the floor


class AudioSampling(DiffusionSampling):
    griffin_lim_iters: int = Field(32, ge=0, le=512, description="Griffin-Lim iterations of the vocoder.")
