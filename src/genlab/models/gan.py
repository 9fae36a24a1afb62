"""GAN family: a DCGAN-style generator and discriminator with modern stabilizers.

One training step is one batch: the discriminator is updated `n_critic` times on slices of it, then
the generator once (`step_optimizer(..., counts_as_step=False)` keeps D's updates out of the step
count). Losses: non-saturating, hinge, WGAN-GP, and R3GAN's relativistic pairing loss with R1 + R2
penalties. The core's EMA averages the generator alone (`ema_module`), which sampling and export
use. The model folder is the generator's `PyTorchModelHubMixin` folder (config.json +
model.safetensors) plus genlab.json.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.config import TrainConfig
from genlab.config.gan import GANConfig, GANSampling
from genlab.data.records import DataSpec
from genlab.errors import GenlabError
from genlab.media.formats import IMAGES
from genlab.models.base import GenerativeModel
from genlab.models.diffaugment import diff_augment
from genlab.models.protocol import Graph, Suits, ToUnit


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit RMS (ProGAN): no batch statistics, so eval = train."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Generator(nn.Module, PyTorchModelHubMixin):
    """z (and a class) -> a (channels[0], s, s) map -> x2 upsampling blocks -> image in [-1, 1]."""

    def __init__(self, latent_dim: int, channels: list[int], image_channels: int, image_size: int,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.start = image_size // 2 ** (len(channels) - 1)
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        inputs = latent_dim * (2 if num_classes else 1)
        self.project = nn.Sequential(nn.Linear(inputs, channels[0] * self.start**2), nn.LeakyReLU(0.2))
        blocks: list[nn.Module] = [PixelNorm()]
        for c_in, c_out in zip(channels, channels[1:]):
            blocks += [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.2),
                       PixelNorm(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2), PixelNorm()]
        self.body = nn.Sequential(*blocks, nn.Conv2d(channels[-1], image_channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.body(self.project(z).unflatten(1, (-1, self.start, self.start)))  # no batch size: ONNX-friendly


class Discriminator(nn.Module):
    """The generator mirrored: stride-2 convolutions down to (channels[0], s, s), then a linear score,
    plus a projection of the class embedding onto the features when conditional (Miyato & Koyama)."""

    def __init__(self, channels: list[int], image_channels: int, image_size: int, num_classes: int = 0,
                 normalize: bool = True) -> None:
        super().__init__()
        sn = spectral_norm if normalize else (lambda m: m)
        widths = list(reversed(channels))
        layers: list[nn.Module] = [sn(nn.Conv2d(image_channels, widths[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [sn(nn.Conv2d(c_in, c_in, 3, padding=1)), nn.LeakyReLU(0.2),
                       sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        features = channels[0] * (image_size // 2 ** (len(channels) - 1)) ** 2
        self.score = sn(nn.Linear(features, 1))
        self.embed = sn(nn.Embedding(num_classes, features)) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)
        out = self.score(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(labels) * h).sum(dim=1)
        return out


class GAN(GenerativeModel):
    Config = GANConfig
    Sampling = GANSampling
    media = IMAGES
    network = "generator"
    monitor = "val/fid"  # logged by the core's collapse watch, which scores a fixed latent batch
    suits = Suits("image", "sharp samples in one network call; within a short budget it reached about half the "
                  "diffusion recipe's FID here; can drop modes (watch recall)", "digits-gan", quality=1, speed=0,
                  control=2, short_budget=0, conditional=True)
    optimizer_names = ("generator", "discriminator")

    def __init__(self, config: GANConfig, spec: DataSpec, train: TrainConfig | None = None) -> None:
        super().__init__(config, spec, train)
        self.automatic_optimization = False
        channels, size = spec.shape[0], spec.shape[-1]
        if size % 2 ** (len(config.channels) - 1):
            raise GenlabError(f"data.image_size: {size} must divide by 2^{len(config.channels) - 1} for "
                              f"{len(config.channels)} generator widths (model.channels)")
        if config.class_conditional and not spec.num_classes:
            raise GenlabError("model.class_conditional: the data has no class labels")
        classes = spec.num_classes if config.class_conditional else 0
        self.generator = Generator(config.latent_dim, config.channels, channels, size, classes)
        self.discriminator = Discriminator(config.channels, channels, size, classes, config.spectral_norm)

    @property
    def takes_labels(self) -> bool:
        return self.config.class_conditional

    @property
    def collapse_samples(self) -> int:
        return self.config.collapse_samples

    def ema_module(self) -> nn.Module:
        return self.generator

    def configure_optimizers(self):
        cfg = self.config
        return self.configure_each((self.generator, {"lr": cfg.g_lr, "betas": cfg.g_betas}),
                                   (self.discriminator, {"lr": cfg.d_lr, "betas": cfg.d_betas}))

    # --- training --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        cfg = self.config
        labels = batch.get("y") if cfg.class_conditional else None
        reals = batch["x"].chunk(cfg.n_critic)
        for i, real in enumerate(reals):  # the last slice's fakes keep their graph for G's update
            y = None if labels is None else labels.chunk(cfg.n_critic)[i]
            with torch.set_grad_enabled(i == len(reals) - 1):
                fake = self.generator(torch.randn(len(real), cfg.latent_dim, device=self.device), y)
            d_loss, stats = self.discriminator_loss(real, fake.detach(), y)
            self.step_optimizer(opt_d, d_loss, counts_as_step=False)

        self.discriminator.requires_grad_(False)  # G's backward need not fill D's gradients
        g_loss = self.generator_loss(real, fake, y)
        self.step_optimizer(opt_g, g_loss)
        self.discriminator.requires_grad_(True)
        self.step_schedules()
        self.log_dict({"train/loss": g_loss, "train/d_loss": d_loss, **stats})

    def critic(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D's scores, after the differentiable augmentation when configured."""
        return self.discriminator(diff_augment(x, self.config.diffaugment), labels)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        penalized = cfg.loss == "r3gan" and cfg.r_gamma > 0
        real = real.detach().requires_grad_(penalized)
        fake = fake.requires_grad_(penalized)
        both = self.critic(torch.cat([real, fake]), None if labels is None else torch.cat([labels, labels]))
        d_real, d_fake = both.chunk(2)
        stats = {"train/d_acc_real": (d_real > 0).float().mean(), "train/d_acc_fake": (d_fake < 0).float().mean()}
        if cfg.loss == "non-saturating":
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        elif cfg.loss == "hinge":
            loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        elif cfg.loss == "wgan-gp":
            gp = self.gradient_penalty(real.detach(), fake.detach(), labels)
            stats["train/gp"] = gp
            loss = d_fake.mean() - d_real.mean() + cfg.gp_weight * gp
        else:  # relativistic pairing: each real scored against a fake, R1 on reals and R2 on fakes
            stats["train/d_acc_real"] = (d_real > d_fake).float().mean()
            loss = F.softplus(-(d_real - d_fake)).mean()
            if penalized:
                grad_real, grad_fake = torch.autograd.grad(both.sum(), (real, fake), create_graph=True)
                r1, r2 = grad_real.square().flatten(1).sum(1).mean(), grad_fake.square().flatten(1).sum(1).mean()
                stats.update({"train/r1": r1, "train/r2": r2})
                loss = loss + cfg.r_gamma / 2 * (r1 + r2)
        return loss, stats

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """WGAN-GP: (|grad D| - 1)^2 on random points between reals and fakes."""
        mix = torch.rand(len(real), 1, 1, 1, device=real.device)
        # a non-leaf: autograd hooks on module inputs (FLOP counting's) refuse a leaf inside autograd.grad
        between = torch.lerp(fake, real.requires_grad_(True), mix)
        (grad,) = torch.autograd.grad(self.critic(between, labels).sum(), between, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).square().mean()

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        loss = self.config.loss
        if loss == "r3gan":
            both = self.critic(torch.cat([real, fake]), None if labels is None else torch.cat([labels, labels]))
            d_real, d_fake = both.chunk(2)
            return F.softplus(-(d_fake - d_real)).mean()
        d_fake = self.critic(fake, labels)
        return F.softplus(-d_fake).mean() if loss == "non-saturating" else -d_fake.mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # D's accuracy on held-out reals: falling while the training accuracy holds means D is memorizing
        labels = batch.get("y") if self.config.class_conditional else None
        self.log("val/d_acc_real", (self.discriminator(batch["x"], labels) > 0).float().mean(),
                 batch_size=len(batch["x"]), sync_dist=True)

    # --- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | list[torch.Generator] | None = None,
               labels: int | str | list | torch.Tensor | None = None, truncation: float | None = None
               ) -> torch.Tensor:
        """`n` images (n, C, H, W) in [0, 1]; `truncation` t draws latents from N(0, 1) cut at +-t."""
        z = self.noise(n, self.config.latent_dim, generator=generator)
        if truncation is not None:  # map each draw through the truncated normal's quantiles: one draw, no retries
            edge = torch.special.ndtr(torch.tensor(-float(truncation)))
            z = torch.special.ndtri(edge + torch.special.ndtr(z) * (1 - 2 * edge))
        return (self.generator(z, self._labels(n, labels)) / 2 + 0.5).clamp(0, 1)

    def _labels(self, n: int, labels) -> torch.Tensor | None:
        if not self.config.class_conditional:
            if labels is not None:
                raise GenlabError("labels: this model was trained without class conditioning")
            return None
        if labels is None:  # no class asked for: classes in turn
            return torch.arange(n, device=self.device) % self.spec.num_classes
        return self.label_ids(n, labels)

    # --- the model folder --------------------------------------------------------------------------

    def onnx_graphs(self) -> dict[str, Graph]:
        inputs = {"z": torch.randn(2, self.config.latent_dim)}
        if self.config.class_conditional:
            inputs["labels"] = torch.tensor([0, 1]) % self.spec.num_classes
        return {"generator": Graph(ToUnit(self.generator), inputs, dict.fromkeys(inputs, {0: "batch"}),
                                   "images (N, C, H, W) in [0, 1]")}

