"""Diffusion family: a diffusers UNet2DModel trained with the DDPM objective.

Training is three ideas: draw a timestep, noise the image with the diffusers scheduler, regress
the noise (or the velocity). Sampling runs any diffusers scheduler (DDPM, DDIM, DPM-Solver++),
with optional class conditioning and classifier-free guidance. The model folder is a diffusers
DDPMPipeline folder, so `DDPMPipeline.from_pretrained(folder)` loads it without genlab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from genlab.config import TrainConfig
from genlab.config.diffusion import DEFAULT_STEPS, PREVIEW_STEPS, DiffusionConfig, DiffusionSampling
from genlab.data.records import DataSpec
from genlab.errors import GenlabError
from genlab.media.formats import IMAGES
from genlab.models.base import GenerativeModel
from genlab.models.protocol import Graph, Suits
from genlab.quiet import library_noise_silenced

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm-solver": DPMSolverMultistepScheduler}
# Pixel-space models need DPM-Solver++'s dynamic thresholding: without it, a few samples in a batch
# blow up to noise at 20 steps (seen on the digits demo); DDPM and DDIM clip x0 through clip_sample.
SAMPLER_OPTIONS = {"dpm-solver": {"algorithm_type": "dpmsolver++", "thresholding": True, "sample_max_value": 1.0}}
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}


class _Denoiser(torch.nn.Module):
    """(noisy images, timesteps[, class labels]) -> the UNet's prediction, as the schedulers consume it."""

    def __init__(self, unet: torch.nn.Module, conditional: bool) -> None:
        super().__init__()
        self.unet, self.conditional = unet, conditional

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None):
        return self.unet(sample, timestep, class_labels=class_labels if self.conditional else None).sample


class Diffusion(GenerativeModel):
    Config = DiffusionConfig
    Sampling = DiffusionSampling
    media = IMAGES
    preview_limits = {"steps": PREVIEW_STEPS}
    hub_library = "diffusers"
    suits = Suits("image", "the best sample quality and coverage of the data given time; slow to sample (tens of "
                  "network calls an image)", "digits-diffusion", quality=0, speed=2, control=1, short_budget=1,
                  conditional=True)

    def __init__(self, config: DiffusionConfig, spec: DataSpec, train: TrainConfig | None = None) -> None:
        super().__init__(config, spec, train)
        channels, size = spec.shape[0], spec.shape[-1]
        if size % 2 ** (len(config.block_out_channels) - 1):
            raise GenlabError(f"data.image_size: {size} must divide by 2^{len(config.block_out_channels) - 1} "
                              f"for {len(config.block_out_channels)} UNet resolutions")
        if config.class_conditional and not spec.num_classes:
            raise GenlabError("model.class_conditional: the data has no class labels")
        self.null_class = spec.num_classes  # the extra embedding that means "no label"
        self.unet = UNet2DModel(
            sample_size=size, in_channels=channels, out_channels=channels,
            block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in config.attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.attention)),
            norm_num_groups=config.norm_num_groups, dropout=config.dropout,
            num_class_embeds=spec.num_classes + 1 if config.class_conditional else None,
        )
        self.scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                       beta_schedule=BETA_SCHEDULES[config.noise_schedule],
                                       prediction_type=config.prediction)

    # --- training --------------------------------------------------------------------------------

    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        x0 = batch["x"]
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        t = torch.randint(0, self.config.num_train_timesteps, (len(x0),), generator=generator).to(x0.device)
        xt = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.config.prediction == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        pred = self.unet(xt, t, class_labels=self._train_labels(batch, generator)).sample
        gamma = self.config.snr_gamma
        if gamma is None:
            return F.mse_loss(pred.float(), target.float())
        # min-SNR weighting (Hang et al., 2023): easy, low-noise timesteps stop dominating the gradient
        from diffusers.training_utils import compute_snr  # not at import: it loads diffusers' training extras

        snr = compute_snr(self.scheduler, t).float()
        weight = snr.clamp(max=gamma) / (snr + 1 if self.config.prediction == "v_prediction" else snr)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        return (weight * per_sample).mean()

    def _train_labels(self, batch: dict, generator: torch.Generator | None) -> torch.Tensor | None:
        if not self.config.class_conditional:
            return None
        drop = torch.rand(len(batch["y"]), generator=generator).to(batch["y"].device) < self.config.cond_drop_prob
        return torch.where(drop, self.null_class, batch["y"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # the same noise and timesteps at every validation, so the curve shows the model, not the draw
        loss = self.diffusion_loss(batch, torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["x"]), sync_dist=True)

    # --- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | list[torch.Generator] | None = None,
               labels: int | str | list | torch.Tensor | None = None, guidance_scale: float | torch.Tensor = 1.0,
               sampler: str = "dpm-solver", steps: int | None = None) -> torch.Tensor:
        """`n` images (n, C, H, W) in [0, 1]; `labels` and `guidance_scale` may differ per image."""
        if sampler not in SAMPLERS:
            raise GenlabError(f"sampler: {sampler!r} is not one of: {', '.join(SAMPLERS)}")
        scheduler = SAMPLERS[sampler].from_config(self.scheduler.config, **SAMPLER_OPTIONS.get(sampler, {}))
        with library_noise_silenced():
            scheduler.set_timesteps(steps or DEFAULT_STEPS.get(sampler, self.config.num_train_timesteps))
        labels = self._sample_labels(n, labels)
        scale = torch.as_tensor(guidance_scale, dtype=torch.float32, device=self.device).reshape(-1, 1, 1, 1)
        guided = labels is not None and bool((scale != 1).any())  # at 1, guidance is the conditional output
        x = randn_tensor((n, *self.spec.shape), generator=generator, device=self.device, dtype=self.dtype)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            if guided:  # one batch holds the conditional and the unconditional halves
                both = self.unet(torch.cat([inp, inp]), t, class_labels=torch.cat([labels, self._null(n)])).sample
                cond, uncond = both.chunk(2)
                out = uncond + scale * (cond - uncond)
            else:
                out = self.unet(inp, t, class_labels=labels).sample
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    @property
    def takes_labels(self) -> bool:
        return self.config.class_conditional

    def sampling_steps(self, options: dict[str, Any]) -> int:
        return options.get("steps") or DEFAULT_STEPS.get(options.get("sampler"), self.config.num_train_timesteps)

    def check_request(self, n: int, labels: Any = None, **options: Any) -> None:
        super().check_request(n, labels, **options)
        if labels is None and options.get("guidance_scale", 1.0) != 1.0:
            raise GenlabError("guidance_scale: guidance needs a class label")

    def _sample_labels(self, n: int, labels) -> torch.Tensor | None:
        if not self.config.class_conditional:
            if labels is not None:
                raise GenlabError("labels: this model was trained without class conditioning")
            return None
        if labels is None:
            return self._null(n)
        return self.label_ids(n, labels)

    def _null(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.null_class, device=self.device)

    # --- the model folder --------------------------------------------------------------------------

    def onnx_graphs(self) -> dict[str, Graph]:
        inputs = {"sample": torch.randn(2, *self.spec.shape), "timestep": torch.tensor([10, 500])}
        if self.config.class_conditional:
            inputs["class_labels"] = torch.tensor([0, 1])
        return {"unet": Graph(_Denoiser(self.unet, self.config.class_conditional), inputs,
                              dict.fromkeys(inputs, {0: "batch"}),
                              "the predicted noise (N, C, H, W), for the scheduler in model/scheduler")}

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        DDPMPipeline(unet=self.unet, scheduler=self.scheduler).save_pretrained(path, safe_serialization=True)
        self.write_meta(path)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Diffusion:
        config, spec = cls.read_meta(path)
        model = cls(config, spec)
        model.unet = UNet2DModel.from_pretrained(Path(path) / "unet", use_safetensors=True)
        model.scheduler = DDPMScheduler.from_pretrained(Path(path) / "scheduler")
        return model.eval()
