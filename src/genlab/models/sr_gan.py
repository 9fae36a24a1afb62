"""Super-resolution family: x2 or x4 upscaling learned from the training images themselves.

Each high-resolution batch is downscaled (bicubic, antialiased) to make its own low-resolution
inputs, so no paired data is needed. The generator is ESRGAN-style and small: residual blocks
without normalization, then pixel-shuffle upsampling, added to the bicubic upscaling of the input,
so it starts at bicubic and learns what bicubic misses. Loss: L1, then (after an L1-only warm-up)
a relativistic average adversarial loss and L1 between the discriminator's features of the
upscaled and the real image (feature matching: no ImageNet network can be downloaded here).
The model folder is the generator's `PyTorchModelHubMixin` folder plus genlab.json.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.config import TrainConfig
from genlab.config.sr_gan import SRConfig, SRSampling
from genlab.data.records import Dataset, DataSpec
from genlab.errors import GenlabError
from genlab.media.formats import IMAGES
from genlab.models.base import GenerativeModel
from genlab.models.protocol import Graph, ToUnit

MIN_SIDE, MAX_SIDE = 4, 2048  # input sides `upscale` accepts
# Memory one generator call may take when upscaling; a larger image is upscaled in tiles that each fit it (an x4
# upscale of a 1024x1024 image in one call takes about 11 GB)
TILE_BYTES = 256 * 2**20
MIN_TILE = 16  # input pixels a tile adds at least, whatever the budget: below it the margins are most of the work
# The process's peak memory (ru_maxrss) over the tensors' own (torch's profiler): up to 1.11x on one call, and up
# to 36 MB more over a run of tiles (glibc keeps freed blocks for reuse, oneDNN keeps its buffers)
HEADROOM, CALL_BYTES = 1.25, 32 * 2**20


def downscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """The low-resolution input of a high-resolution image: bicubic with antialiasing (as MATLAB's imresize)."""
    return F.interpolate(images, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)


def low_resolution(images: torch.Tensor, scale: int) -> torch.Tensor:
    """What a user's low-resolution photograph is: `images` in [0, 1] downscaled, then stored in 8 bits."""
    return (downscale(images, scale).clamp(0, 1) * 255).round() / 255


def bicubic(images: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False)


def conv3(a: int, b: int) -> nn.Conv2d:
    """3x3, padded by repeating the edge: zero padding makes a dark frame that shows on small inputs."""
    return nn.Conv2d(a, b, 3, padding=1, padding_mode="replicate")


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv3(width, width), nn.ReLU(inplace=True), conv3(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.body(x)  # residual scaling keeps a deep stack stable without normalization


class SRGenerator(nn.Module, PyTorchModelHubMixin):
    """Low-resolution image in [-1, 1] -> `scale` times larger image, as bicubic + a learned residual."""

    def __init__(self, scale: int, width: int, blocks: int, image_channels: int) -> None:
        super().__init__()
        self.scale = scale
        self.head = conv3(image_channels, width)
        self.body = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)), conv3(width, width))
        ups: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):  # one x2 pixel shuffle per factor of two
            ups += [conv3(width, 4 * width), nn.PixelShuffle(2), nn.LeakyReLU(0.2, inplace=True)]
        self.tail = nn.Sequential(*ups, conv3(width, image_channels))
        nn.init.zeros_(self.tail[-1].weight)  # start as exactly bicubic; learn only what it misses
        nn.init.zeros_(self.tail[-1].bias)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        h = self.head(low)
        return bicubic(low, self.scale) + self.tail(h + self.body(h))

    @property
    def margin(self) -> int:
        """Input pixels on each side that an output pixel depends on: a tile cropped by this much is exact."""
        # Replicate padding at a tile's edge makes each 3x3 conv wrong one pixel further in, and each pixel
        # shuffle doubles the wrong band; bicubic reaches 2 input pixels
        band = 1 + sum(isinstance(m, nn.Conv2d) for m in self.body.modules())  # the head and the body
        for m in self.tail:
            band = band * 2 if isinstance(m, nn.PixelShuffle) else band + isinstance(m, nn.Conv2d)
        return max(2, math.ceil(band / self.scale))

    def bytes_per_pixel(self) -> float:
        """Peak memory of one call per output pixel (CPU float32), with the allocator's HEADROOM."""
        width, channels = self.head.out_channels, self.head.in_channels
        # The peak is the last conv, at output resolution (torch's profiler, validated by ru_maxrss): its input,
        # the replicate-padded copy and oneDNN's reordered copy of that (3 x width), its output in 16-channel
        # blocks, the bicubic image; and the head's features and body's sum at input resolution (2 x width / s^2)
        floats = 3 * width + 2 * width / self.scale**2 + 16 * math.ceil(channels / 16) + channels
        return 4 * floats * HEADROOM


class SRDiscriminator(nn.Module):
    """Strided convolutions and a global average: scores any image size; returns the score and its features."""

    def __init__(self, channels: list[int], image_channels: int) -> None:
        super().__init__()
        widths = [image_channels, *channels]
        self.stages = nn.ModuleList(
            nn.Sequential(spectral_norm(nn.Conv2d(a, b, 3, padding=1)), nn.LeakyReLU(0.2),
                          spectral_norm(nn.Conv2d(b, b, 4, stride=2, padding=1)), nn.LeakyReLU(0.2))
            for a, b in zip(widths, widths[1:]))
        self.score = spectral_norm(nn.Linear(channels[-1], 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.score(x.mean(dim=(2, 3))).squeeze(1), features


class SRGAN(GenerativeModel):
    Config = SRConfig
    Sampling = SRSampling
    media = IMAGES
    network = "generator"
    optimizer_names = ("generator", "discriminator")

    def __init__(self, config: SRConfig, spec: DataSpec, train: TrainConfig | None = None) -> None:
        super().__init__(config, spec, train)
        self.automatic_optimization = False
        channels, size = spec.shape[0], spec.shape[-1]
        if size % config.scale:
            raise GenlabError(f"data.image_size: {size} must divide by model.scale={config.scale}")
        self.generator = SRGenerator(config.scale, config.width, config.blocks, channels)
        self.discriminator = SRDiscriminator(config.d_channels, channels)
        self.register_buffer("preview_images", torch.empty(0), persistent=False)

    @classmethod
    def build(cls, config: SRConfig, dataset: Dataset, train: TrainConfig | None = None) -> tuple[SRGAN, Dataset]:
        model = cls(config, dataset.spec, train)
        model.preview_images = (dataset.val if len(dataset.val) else dataset.train).x[:3].clone()
        return model, dataset

    def ema_module(self) -> nn.Module:
        return self.generator

    def configure_optimizers(self):
        cfg = self.config
        return self.configure_each((self.generator, {"lr": cfg.g_lr}), (self.discriminator, {"lr": cfg.d_lr}))

    # --- training --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> None:
        cfg = self.config
        opt_g, opt_d = self.optimizers()
        high = batch["x"]
        upscaled = self.generator(low_resolution(high / 2 + 0.5, cfg.scale) * 2 - 1)
        l1 = F.l1_loss(upscaled, high)
        logs = {"train/l1": l1}
        adversarial = self.global_step >= cfg.warmup_steps and (cfg.adversarial_weight or cfg.feature_weight)
        if not adversarial:  # the PSNR stage
            g_loss = cfg.l1_weight * l1
        else:
            d_real, _ = self.discriminator(high)
            d_fake, _ = self.discriminator(upscaled.detach())
            d_loss = _relativistic(d_real, d_fake)
            self.step_optimizer(opt_d, d_loss, counts_as_step=False)
            self.discriminator.requires_grad_(False)
            d_real, real_features = self.discriminator(high)
            d_fake, fake_features = self.discriminator(upscaled)
            matching = sum(F.l1_loss(f, r.detach()) for f, r in zip(fake_features, real_features))
            g_loss = (cfg.l1_weight * l1 + cfg.adversarial_weight * _relativistic(d_fake, d_real)
                      + cfg.feature_weight * matching)
            logs.update({"train/d_loss": d_loss, "train/feature_matching": matching,
                         "train/d_acc": (d_real > d_fake.mean()).float().mean()})
        self.step_optimizer(opt_g, g_loss)
        self.discriminator.requires_grad_(True)
        self.step_schedules()
        self.log_dict({"train/loss": g_loss, **logs})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        high = batch["x"]
        upscaled = self.generator(low_resolution(high / 2 + 0.5, self.config.scale) * 2 - 1).clamp(-1, 1)
        mse = F.mse_loss(upscaled / 2 + 0.5, high / 2 + 0.5, reduction="none").flatten(1).mean(1)
        self.log_dict({"val/loss": F.l1_loss(upscaled, high), "val/psnr": (-10 * mse.log10()).mean()},
                      batch_size=len(high), sync_dist=True)

    # --- upscaling -------------------------------------------------------------------------------

    @property
    def scale(self) -> int:
        return self.config.scale

    @torch.no_grad()
    def upscale(self, images: torch.Tensor | list[torch.Tensor], name: str = "images",
                tile_bytes: int = TILE_BYTES) -> torch.Tensor | list[torch.Tensor]:
        """Images in [0, 1], (N, C, h, w) or a list of (C, h, w) of any sizes -> `scale` times larger, in tiles
        when one call would take more than `tile_bytes`. A bad input raises a GenlabError that names it (`name`)."""
        if isinstance(images, list):
            return [self.upscale(image[None], f"{name}[{i}]", tile_bytes)[0] for i, image in enumerate(images)]
        self.check_input(images, name)
        low = images.to(self.device, torch.float32) * 2 - 1
        n, channels, h, w = low.shape
        s = self.scale
        if self.generator.bytes_per_pixel() * n * s * s * h * w + CALL_BYTES <= tile_bytes:
            out = self.generator(low)
        else:
            out = low.new_empty(n, channels, s * h, s * w)
            for i in range(n):  # one image at a time: a tile's memory is the budget's whatever the batch
                self._upscale_tiles(low[i:i + 1], out[i:i + 1], self.tile(h, w, tile_bytes))
        return out.mul_(0.5).add_(0.5).clamp_(0, 1)  # in place: the output is the largest tensor left

    def _upscale_tiles(self, low: torch.Tensor, out: torch.Tensor, tile: tuple[int, int]) -> None:
        """Fill `out` with the upscaling of `low`, a tile at a time, each computed with its margin of neighbours
        and cropped to what the margin makes exact."""
        s, margin, (h, w), (step_y, step_x) = self.scale, self.generator.margin, low.shape[-2:], tile
        for y in range(0, h, step_y):
            for x in range(0, w, step_x):
                y0, x0, y1, x1 = max(y - margin, 0), max(x - margin, 0), min(y + step_y, h), min(x + step_x, w)
                part = self.generator(low[..., y0:min(y1 + margin, h), x0:min(x1 + margin, w)])
                out[..., s * y:s * y1, s * x:s * x1] = part[..., s * (y - y0):s * (y1 - y0), s * (x - x0):s * (x1 - x0)]
                del part  # before the next tile's call, not after it

    def tile(self, height: int, width: int, tile_bytes: int = TILE_BYTES) -> tuple[int, int]:
        """The input rows and columns each tile adds (its margin aside): the whole image when it fits one call."""
        fits = (tile_bytes - CALL_BYTES) / self.generator.bytes_per_pixel()  # output pixels one call may make
        if self.scale**2 * height * width <= fits:
            return height, width
        most = max(math.isqrt(max(int(fits), 0)) // self.scale - 2 * self.generator.margin, MIN_TILE)
        return tuple(math.ceil(n / math.ceil(n / most)) for n in (height, width))  # even tiles: less margin

    def peak_bytes(self, height: int, width: int, tile_bytes: int = TILE_BYTES) -> int:
        """The memory `upscale` of one height x width image takes at most: its largest tile's activations, the
        input and the output (float32)."""
        margin, s = self.generator.margin, self.scale
        rows, cols = self.tile(height, width, tile_bytes)
        rows, cols = min(height, rows + 2 * margin), min(width, cols + 2 * margin)  # an inner tile's, with margins
        activations = self.generator.bytes_per_pixel() * s * s * rows * cols + CALL_BYTES
        return math.ceil(activations) + 4 * self.spec.shape[0] * height * width * (2 + s * s)

    def check_input(self, images: torch.Tensor, name: str = "images") -> None:
        """A one-line GenlabError naming what is wrong with an input batch."""
        want = self.spec.shape[0]
        if images.ndim != 4:
            raise GenlabError(f"{name}: expected (N, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[1] != want:
            kinds = {1: "grey (1 channel)", 3: "colour (3 channels)"}
            raise GenlabError(f"{name}: {kinds.get(images.shape[1], f'{images.shape[1]} channels')}, but this model "
                              f"upscales {kinds.get(want, want)} images")
        h, w = images.shape[-2:]
        if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
            raise GenlabError(f"{name}: {w}x{h} pixels; inputs must be {MIN_SIDE} to {MAX_SIDE} pixels a side")

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               images: torch.Tensor | None = None) -> torch.Tensor:
        """The upscaling of `images` (n of them): a super-resolution model draws nothing at random."""
        if images is None:
            raise GenlabError("images: an sr_gan model upscales given images: `genlab upscale RUN IN --out OUT`, "
                              "or run.model.upscale(images)")
        return self.upscale(images)

    def preview(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rows of (bicubic, upscaled, original) for a few fixed validation crops."""
        high = self.preview_images / 2 + 0.5
        if not len(high):
            raise GenlabError("preview: this model was loaded from a folder, which holds no preview images")
        low = low_resolution(high, self.config.scale)
        rows = [bicubic(low, self.config.scale).clamp(0, 1), self.upscale(low), high]
        return torch.stack(rows, dim=1).flatten(0, 1)

    # --- the model folder --------------------------------------------------------------------------

    def onnx_graphs(self) -> dict[str, Graph]:
        image = {"images": torch.rand(1, self.spec.shape[0], 24, 32) * 2 - 1}
        return {"generator": Graph(ToUnit(self.generator), image, {"images": {0: "batch", 2: "height", 3: "width"}},
                                   f"images x{self.config.scale} in [0, 1] (inputs in [-1, 1])",
                                   output_axes={0: "batch", 2: "out_height", 3: "out_width"})}



def _relativistic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relativistic average loss (ESRGAN): `a` should score above b's mean, and b below a's."""
    return (F.softplus(-(a - b.mean())).mean() + F.softplus(b - a.mean()).mean()) / 2
