"""Audio diffusion family: the diffusion family's UNet on log-mel spectrograms, Griffin-Lim back to sound.

Training turns each batch of waveforms into log-mel images (torch, on the model's device) and hands them
to an image `Diffusion` model built for that shape: the same objective, schedulers, class conditioning and
classifier-free guidance as images. Sampling draws mel images and vocodes them with fast Griffin-Lim.
The model folder is a diffusers DDPMPipeline folder (unet/ + scheduler/) with mel/mel_config.json beside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from genlab.config import TrainConfig
from genlab.config.audio_diffusion import AudioDiffusionConfig, AudioSampling
from genlab.config.diffusion import PREVIEW_STEPS
from genlab.data.records import DataSpec
from genlab.errors import GenlabError
from genlab.media.audio import Clips, MelSpectrogram
from genlab.models.base import GenerativeModel
from genlab.models.diffusion import Diffusion
from genlab.models.protocol import Graph, Suits


class AudioDiffusion(GenerativeModel):
    Config = AudioDiffusionConfig
    Sampling = AudioSampling
    preview_limits = {"steps": PREVIEW_STEPS, "griffin_lim_iters": 64}
    hub_library = "diffusers"
    suits = Suits("audio", "diffusion on log-mel images, vocoded by Griffin-Lim: the family genlab has for sound",
                  "spoken-digits-diffusion", conditional=True)

    def __init__(self, config: AudioDiffusionConfig, spec: DataSpec, train: TrainConfig | None = None) -> None:
        super().__init__(config, spec, train)
        if spec.modality != "audio" or not spec.sample_rate:
            raise GenlabError(f"data.source: the {config.family} family trains on audio (spoken_digits, "
                              f"audio_folder), not {spec.modality}")
        try:
            self.mel = MelSpectrogram(spec.sample_rate, spec.shape[-1], config.n_mels, config.frames, config.n_fft,
                                      config.max_db, config.top_db)
        except ValueError as err:
            raise GenlabError(f"model.n_fft: {err}") from None
        self.diffusion = Diffusion(config, DataSpec("image", (1, config.n_mels, config.frames), spec.class_names),
                                   train)

    @property
    def media(self) -> Clips:  # a clip's rate is the data's, known once the model is built
        return Clips("audio", "", default_n=8, sample_rate=self.spec.sample_rate, mel=self.mel)

    # --- training --------------------------------------------------------------------------------

    def spectrograms(self, batch: dict) -> dict:
        return {"x": self.mel.encode(batch["x"]), "y": batch.get("y")}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion.diffusion_loss(self.spectrograms(batch))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.diffusion.diffusion_loss(self.spectrograms(batch), torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["x"]), sync_dist=True)

    # --- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: Any = None, labels: Any = None, guidance_scale: Any = 1.0,
               sampler: str = "dpm-solver", steps: int | None = None, griffin_lim_iters: int = 32) -> torch.Tensor:
        """`n` waveforms (n, L) in [-1, 1] at `spec.sample_rate`; `labels` (digit words, class ids) and
        `guidance_scale` may differ per clip. The vocoder starts from zero phase: a clip is the same alone or
        in a batch."""
        images = self.diffusion.sample(n, generator=generator, labels=labels, guidance_scale=guidance_scale,
                                       sampler=sampler, steps=steps)
        return self.mel.decode(images * 2 - 1, griffin_lim_iters)

    @property
    def takes_labels(self) -> bool:
        return self.diffusion.takes_labels

    def sampling_steps(self, options: dict[str, Any]) -> int:
        return self.diffusion.sampling_steps(options)

    def check_request(self, n: int, labels: Any = None, **options: Any) -> None:
        self.diffusion.check_request(n, labels, **options)

    # --- the model folder --------------------------------------------------------------------------

    def onnx_graphs(self) -> dict[str, Graph]:
        return self.diffusion.onnx_graphs()

    def mel_config(self) -> dict[str, Any]:
        mel, config = self.mel, self.config
        return {"sample_rate": mel.sample_rate, "samples": mel.samples, "n_mels": config.n_mels,
                "frames": config.frames, "n_fft": mel.n_fft, "hop_length": mel.hop, "max_db": config.max_db,
                "top_db": config.top_db, "mel_scale": "htk", "window": "hann", "center": True,
                "image_range": "[-1, 1] is [max_db - top_db, max_db] dB of the mel magnitude"}

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        DDPMPipeline(unet=self.diffusion.unet, scheduler=self.diffusion.scheduler).save_pretrained(
            path, safe_serialization=True)
        (path / "mel").mkdir(exist_ok=True)
        (path / "mel" / "mel_config.json").write_text(json.dumps(self.mel_config(), indent=2))
        self.write_meta(path)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> AudioDiffusion:
        config, spec = cls.read_meta(path)
        model = cls(config, spec)
        model.diffusion.unet = UNet2DModel.from_pretrained(Path(path) / "unet", use_safetensors=True)
        model.diffusion.scheduler = DDPMScheduler.from_pretrained(Path(path) / "scheduler")
        return model.eval()
