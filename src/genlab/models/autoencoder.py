"""Autoencoder family: diffusers' AutoencoderKL, the first stage of latent diffusion (Stable Diffusion's VAE).

It compresses an image into a small spatial latent (4 channels, the side halved per block after the first) and
back, trained with a reconstruction loss and a KL term weighted low enough that latents stay near a Gaussian's
scale without blurring the images. The model folder is an AutoencoderKL folder (`AutoencoderKL.from_pretrained`
loads it without genlab); `model.autoencoder` of a latent diffusion run names it. Its own samples decode prior
noise, as any VAE's do: they show what the latent space holds, they are not a generator's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from genlab.config import TrainConfig
from genlab.config.autoencoder import AutoencoderConfig, AutoencoderSampling
from genlab.data.records import DataSpec
from genlab.errors import GenlabError
from genlab.media.formats import IMAGES
from genlab.models.base import GenerativeModel
from genlab.models.protocol import Graph


class _Decoder(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


class Autoencoder(GenerativeModel):
    Config = AutoencoderConfig
    Sampling = AutoencoderSampling
    media = IMAGES
    hub_library = "diffusers"

    def __init__(self, config: AutoencoderConfig, spec: DataSpec, train: TrainConfig | None = None) -> None:
        super().__init__(config, spec, train)
        channels, side = spec.shape[0], spec.shape[-1]
        blocks = len(config.block_out_channels)
        if side % 2 ** (blocks - 1):
            raise GenlabError(f"data.image_size: {side} must divide by 2^{blocks - 1} for {blocks} autoencoder blocks")
        if any(c % config.norm_num_groups for c in config.block_out_channels):
            raise GenlabError(f"model.block_out_channels: every entry must divide by norm_num_groups="
                              f"{config.norm_num_groups}")
        self.vae = AutoencoderKL(
            in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=tuple(config.block_out_channels),
            latent_channels=config.latent_channels, layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups, sample_size=side, mid_block_add_attention=config.mid_attention)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.spec.shape[-1] // 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.vae.config.latent_channels, side, side

    def losses(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device)
        rec = self.vae.decode(z).sample
        recon = F.mse_loss(rec, x) if self.config.reconstruction == "mse" else F.l1_loss(rec, x)
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, as the reconstruction is
        return {"loss": recon + self.config.kl_weight * kl * x[0].numel(), "recon": recon, "kl": kl}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        t = self.losses(batch["x"])
        self.log_dict({"train/loss": t["loss"], "train/recon": t["recon"], "train/kl": t["kl"]}, prog_bar=True)
        return t["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        t = self.losses(batch["x"], torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", t["loss"], prog_bar=True, batch_size=len(batch["x"]), sync_dist=True)
        self.log("val/recon", t["recon"], batch_size=len(batch["x"]), sync_dist=True)

    # --- what latent diffusion and a user call ----------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the posterior means (N, C, h, w)."""
        return self.vae.encode(images.to(self.device, self.dtype)).latent_dist.mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1]."""
        return (self.vae.decode(latents.to(self.device, self.dtype)).sample.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] through the latent and back."""
        return self.decode(self.encode(images * 2 - 1))

    @torch.no_grad()
    def sample(self, n: int, *, generator=None, temperature: float = 1.0) -> torch.Tensor:
        return self.decode(self.noise(n, *self.latent_shape, generator=generator) * temperature)

    # --- the model folder ------------------------------------------------------------------------

    def onnx_graphs(self) -> dict[str, Graph]:
        latents = torch.randn(2, *self.latent_shape)
        return {"decoder": Graph(_Decoder(self.vae), {"latents": latents}, {"latents": {0: "batch"}},
                                 "images (N, C, H, W) in [-1, 1]")}

    def save_pretrained(self, path: str | Path) -> None:
        self.vae.save_pretrained(Path(path), safe_serialization=True)
        self.write_meta(Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Autoencoder:
        config, spec = cls.read_meta(path)
        model = cls(config, spec)
        model.vae = AutoencoderKL.from_pretrained(Path(path), use_safetensors=True)
        return model.eval()
