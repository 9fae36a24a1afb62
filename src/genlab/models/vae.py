"""Image VAE family: a convolutional VAE with a Gaussian latent (beta-VAE, KL annealing, capacity, beta-TCVAE).

The architecture is Higgins / Burgess et al.'s for dSprites: 4x4 stride-2 convolutions, a fully
connected layer, and the mirror image in the decoder. The likelihood is Bernoulli (binary images)
or Gaussian with a fixed or learned standard deviation. Beyond `sample`: `encode`, `reconstruct`,
`interpolate`, `traverse`, and `log_likelihood` (the importance-weighted bound). The folder is the
network's `PyTorchModelHubMixin` folder (config.json + model.safetensors) plus genlab.json.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from genlab.config import TrainConfig
from genlab.config.vae import VAEConfig, VAESampling
from genlab.data.records import DataSpec
from genlab.errors import GenlabError
from genlab.media.formats import IMAGES
from genlab.models.base import GenerativeModel
from genlab.models.protocol import Graph, Suits


class VAENet(nn.Module, PyTorchModelHubMixin):
    """Encoder to (mean, log-variance) of q(z|x); decoder from z to the likelihood's parameters."""

    def __init__(self, latent_dim: int, channels: list[int], hidden: int, image_channels: int, image_size: int,
                 learn_sigma: bool = False) -> None:
        super().__init__()
        self.end = image_size // 2 ** len(channels)
        flat = channels[-1] * self.end**2
        widths = [image_channels, *channels]
        self.encoder = nn.Sequential(
            *(layer for a, b in zip(widths, widths[1:]) for layer in (nn.Conv2d(a, b, 4, 2, 1), nn.ReLU())),
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        back = widths[::-1]
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, flat), nn.ReLU(),
            nn.Unflatten(1, (channels[-1], self.end, self.end)),
            *(layer for a, b in zip(back, back[1:-1]) for layer in (nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU())),
            nn.ConvTranspose2d(back[-2], image_channels, 4, 2, 1))
        self.log_sigma = nn.Parameter(torch.zeros(())) if learn_sigma else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var.clamp(-30, 20)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's output: Bernoulli logits, or the Gaussian mean, per pixel."""
        return self.decoder(z)


class _Decoder(nn.Module):
    """z -> images in [0, 1], as `sample` reads the decoder out (its mean, without pixel noise)."""

    def __init__(self, net: VAENet, bernoulli: bool) -> None:
        super().__init__()
        self.net, self.bernoulli = net, bernoulli

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return torch.sigmoid(out) if self.bernoulli else out.clamp(0, 1)


def total_correlation(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z) || prod_d q(z_d)) of the batch's aggregate posterior (the batch standing for the data, in Chen et
    al.'s minibatch-weighted estimate): the part of the KL that ties the latent dimensions together."""
    # log q(z_i | x_j) per dimension, for every pair (i, j) in the batch: (M, M, D)
    log_q = -0.5 * ((z[:, None] - mean[None]).square() / log_var.exp()[None] + log_var[None] + math.log(2 * math.pi))
    joint = torch.logsumexp(log_q.sum(2), dim=1)
    marginals = torch.logsumexp(log_q, dim=1).sum(1)
    return (joint - marginals).mean() + (z.shape[1] - 1) * math.log(len(z))


class VAE(GenerativeModel):
    Config = VAEConfig
    Sampling = VAESampling
    media = IMAGES
    network = "net"
    suits = Suits("image", "the fastest to train and an interpretable latent space (traversals, beta for "
                  "disentanglement); blurrier samples", "digits-vae", quality=2, speed=1, control=0)

    def __init__(self, config: VAEConfig, spec: DataSpec, train: TrainConfig | None = None) -> None:
        super().__init__(config, spec, train)
        channels, size = spec.shape[0], spec.shape[-1]
        if size % 2 ** len(config.channels):
            raise GenlabError(f"data.image_size: {size} must divide by 2^{len(config.channels)} for "
                              f"{len(config.channels)} encoder convolutions (model.channels)")
        learn = config.likelihood == "gaussian" and config.sigma is None
        self.net = VAENet(config.latent_dim, config.channels, config.hidden, channels, size, learn)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    # --- the objective -----------------------------------------------------------------------------

    def log_px(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image, summed over pixels; `x` in [0, 1]."""
        if self.config.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        log_sigma = self.net.log_sigma if self.net.log_sigma is not None else math.log(self.config.sigma)
        log_sigma = torch.as_tensor(log_sigma, device=x.device)
        nll = 0.5 * ((x - out) / log_sigma.exp()).square() + log_sigma + 0.5 * math.log(2 * math.pi)
        return -nll.flatten(1).sum(1)

    def terms(self, x: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """Per-image reconstruction log-likelihood and KL (and the KL of each latent dimension)."""
        mean, log_var = self.net.encode(x * 2 - 1)
        z = mean + (0.5 * log_var).exp() * torch.randn_like(mean) if sample else mean
        kl_dims = 0.5 * (mean.square() + log_var.exp() - 1 - log_var)
        return {"log_px": self.log_px(self.net(z), x), "kl": kl_dims.sum(1), "kl_dims": kl_dims, "mean": mean,
                "log_var": log_var, "z": z}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        cfg, step = self.config, self.global_step
        t = self.terms(batch["x"] / 2 + 0.5)
        recon, kl = -t["log_px"].mean(), t["kl"].mean()
        if cfg.capacity is not None:
            target = cfg.capacity * min(1.0, step / cfg.capacity_steps)
            loss = recon + cfg.gamma * (kl - target).abs()
        else:
            ramp = min(1.0, step / cfg.beta_warmup_steps) if cfg.beta_warmup_steps else 1.0
            penalty = cfg.beta * kl
            if cfg.tc_beta is not None:  # the KL's total-correlation part weighted tc_beta, the rest beta
                tc = total_correlation(t["z"], t["mean"], t["log_var"])
                penalty = penalty + (cfg.tc_beta - cfg.beta) * tc
                self.log("train/tc", tc)
            loss = recon + ramp * penalty
        self.log_dict({"train/loss": loss, "train/recon": recon, "train/kl": kl, "train/elbo": -(recon + kl)})
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # the negative ELBO (beta 1) with the posterior mean's noise fixed by the batch index
        with torch.random.fork_rng():
            torch.manual_seed(batch_idx)
            t = self.terms(batch["x"] / 2 + 0.5)
        self.log("val/loss", (t["kl"] - t["log_px"]).mean(), batch_size=len(batch["x"]), sync_dist=True)

    # --- what a VAE does beyond sampling -------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] -> the mean and log-variance of q(z|x)."""
        self._check(images)
        return self.net.encode(images.to(self.device) * 2 - 1)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1] (the likelihood's mean)."""
        out = self.net(z.to(self.device))
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out.clamp(0, 1)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images)[0])

    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Images along the straight line between the codes of `a` and `b` (each (C, H, W)): (steps, C, H, W)."""
        codes = self.encode(torch.stack([a, b]))[0]
        weights = torch.linspace(0, 1, steps, device=codes.device).view(-1, 1)
        return self.decode(torch.lerp(codes[0], codes[1], weights))

    def traverse(self, dim: int, values: torch.Tensor | list[float], base: torch.Tensor | None = None) -> torch.Tensor:
        """Images with latent `dim` set to each of `values`, the others from `base`'s code (zero without one)."""
        if not 0 <= dim < self.config.latent_dim:
            raise GenlabError(f"dim: {dim} is not a latent dimension of this model (0 to {self.config.latent_dim - 1})")
        values = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        code = self.encode(base[None])[0][0] if base is not None else torch.zeros(self.config.latent_dim)
        codes = code.to(self.device).repeat(len(values), 1)
        codes[:, dim] = values
        return self.decode(codes)

    @torch.no_grad()
    def log_likelihood(self, images: torch.Tensor, k: int = 64, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """The importance-weighted bound on log p(x) with `k` samples (Burda et al.), per image, in nats."""
        x = images.to(self.device)
        mean, log_var = self.net.encode(x * 2 - 1)
        std = (0.5 * log_var).exp()
        eps = torch.randn((k, *mean.shape), generator=generator).to(mean)
        z = mean + std * eps  # (k, N, D)
        log_q = (-0.5 * eps.square() - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_px = torch.stack([self.log_px(self.net(zk), x) for zk in z])
        return torch.logsumexp(log_px + log_prior - log_q, dim=0) - math.log(k)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | list[torch.Generator] | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """`n` images (n, C, H, W) in [0, 1], decoded from latents drawn from the prior (scaled by `temperature`)."""
        z = self.noise(n, self.config.latent_dim, generator=generator)
        return self.decode(z * temperature)

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.spec.shape):
            raise GenlabError(f"images: expected (N, {', '.join(map(str, self.spec.shape))}) in [0, 1], "
                              f"got {tuple(images.shape)}")

    # --- the model folder --------------------------------------------------------------------------

    def onnx_graphs(self) -> dict[str, Graph]:
        return {"decoder": Graph(_Decoder(self.net, self.config.likelihood == "bernoulli"),
                                 {"z": torch.randn(2, self.config.latent_dim)}, {"z": {0: "batch"}},
                                 "images (N, C, H, W) in [0, 1]")}

