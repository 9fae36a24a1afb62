"""Make images larger: `genlab upscale RUN IMAGE|DIR`, `genlab.upscale_files`, `/v1/images/upscale`, and `genlab
evaluate`'s PSNR and SSIM on held-out photographs beside bicubic (evaluation/upscale.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from genlab.capabilities import Capability, Done, Verb, check_has
from genlab.config.section import Section
from genlab.errors import GenlabError
from genlab.evaluation.figures import Figure
from genlab.media.suffixes import IMAGE_SUFFIXES
from genlab.quiet import quiet
from genlab.run import Run, as_run
from genlab.serving.guard import MemoryBudget, Refused
from genlab.serving.schemas import ModelRequest
from genlab.serving.served import Served
from genlab.serving.server import authorize, limit, run_job, served_for


class Upscaler(Protocol):
    scale: int  # the factor, on each side
    spec: Any  # DataSpec: channels first in its shape

    def upscale(self, images: Any, name: str = "images") -> Any: ...
    def check_input(self, images: Any, name: str = "images") -> None: ...
    # and, optionally, peak_bytes(height, width) -> int: the memory `upscale` of one such image takes at most,
    # which the server counts against limits.max_upscale_bytes (without it: the float input and output only)


# --- the verb and its API function --------------------------------------------------------------------------


class ImageFiles(Section):
    source: Path = Field(description="An image file, or a folder of them.")
    out: Path | None = Field(None, description="Output file (or folder, for a folder input); default: beside the "
                                               "input, with _x2/_x4.")


@quiet
def upscale_files(run: Run | str | Path, source: str | Path, out: str | Path | None = None
                  ) -> tuple[list[Path], list[str]]:
    """Upscale an image file, or every image in a folder. Returns the files written and one line per input that
    could not be upscaled (the others are written all the same)."""
    from genlab.media.images import read_image

    run = as_run(run)
    check_has(run.config.model.family, "upscale", run.path)
    source, scale = Path(source), run.model.scale
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        folder = Path(out) if out is not None else source.with_name(f"{source.name}_x{scale}")
        targets = [folder / f"{f.stem}.png" for f in files]
    elif source.is_file():
        files, targets = [source], [Path(out) if out is not None else source.with_name(f"{source.stem}_x{scale}.png")]
    else:
        raise GenlabError(f"{source}: no such image file or folder")
    written, failed = [], []
    for file, target in zip(files, targets, strict=True):
        try:
            image = read_image(file)
            upscaled = eight_bit(run.model.upscale(image[None], name=file.name)[0])
            target.parent.mkdir(parents=True, exist_ok=True)
            upscaled.save(target)
            written.append(target)
        except GenlabError as err:
            failed.append(str(err))
        except OSError as err:  # PIL's UnidentifiedImageError is one
            failed.append(f"{file.name}: not a readable image ({err.__class__.__name__})")
    return written, failed


def upscale_command(run: Run, source: Path, out: Path | None = None) -> Done:
    written, failed = upscale_files(run, source, out)
    where = (written[0] if len(written) == 1 else written[0].parent) if written else None
    return Done([f"wrote {len(written)} upscaled image(s) to {where}"] if written else [], failed)


# --- serving ---------------------------------------------------------------------------------------------------


class UpscaleRequest(ModelRequest):
    images: list[str] = Field(min_length=1)  # base64 PNG, JPEG or WebP


@dataclass(frozen=True, eq=False)
class Alone:
    """An upscale job's batching key, equal to no other's (images of other sizes are not batched), with the memory
    it holds while it runs (`request_bytes`) and the server's budget that it holds it in."""

    need: int
    memory: MemoryBudget


class ServedUpscaler(Served):
    """Each request's images upscaled in turn (their sizes differ, so requests are not batched)."""

    kind = "upscale"

    def run_batch(self, key: Alone, items: list[tuple[bytes, str]]) -> list[str]:
        # one image at a time, decoded just before and encoded just after: a request holds one image's pixels
        # beside the PNGs made so far, never all its inputs and outputs at once
        with key.memory.hold(key.need):  # beside what the other models' running jobs hold
            return [self.upscale_one(raw, field) for raw, field in items]

    def upscale_one(self, raw: bytes, field: str) -> str:
        image = decode_pixels(raw, self.model.spec.shape[0], field)
        buffer = io.BytesIO()
        eight_bit(self.model.upscale(image[None], field)[0]).save(buffer, format="PNG")
        return base64.b64encode(buffer.getbuffer()).decode()


router = APIRouter()


@router.post("/v1/images/upscale", tags=["images"])
async def upscale(body: UpscaleRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """Each base64 image upscaled by the super-resolution model, as base64 PNG."""
    server, served = served_for(request, body.model, ServedUpscaler, "/v1/images/upscale")
    limits = server.config.limits
    limit("images", len(body.images), limits.max_n, "images")
    opened = await asyncio.to_thread(  # base64 of a large body is CPU work: off the event loop
        lambda: [read_header(data, f"images[{i}]", limits.max_image_side) for i, data in enumerate(body.images)])
    received = sum(2 * len(data) for data in body.images) + sum(len(raw) for raw, _ in opened)  # body, str, bytes
    sizes = [size for _, size in opened]
    check_request(served.model, sizes, received, limits.max_upscale_bytes)
    alone = Alone(request_bytes(served.model, sizes, received)[-1], server.memory)
    items = [(raw, f"images[{i}]") for i, (raw, _) in enumerate(opened)]
    out = await run_job(served, alone, items, request)
    server.metrics.images.labels(served.name).inc(len(out))
    return {"created": int(time.time()), "data": [{"b64_json": b} for b in out]}


ServedUpscaler.router = router


def check_request(model: Upscaler, sizes: list[tuple[int, int]], received: int, most: int) -> None:
    """A 400 naming the first image that takes the request's memory past `most` (limits.max_upscale_bytes): from
    the images' sizes (width, height) alone, before any pixel is decoded."""
    pixels = 0
    for i, ((width, height), need) in enumerate(zip(sizes, request_bytes(model, sizes, received), strict=True)):
        pixels += model.scale**2 * width * height
        if need > most:
            raise Refused(400, f"images[{i}]: {width}x{height} pixels upscaled x{model.scale} bring this request "
                               f"to {need:,} bytes of memory for {pixels:,} output pixels; the limit "
                               f"(limits.max_upscale_bytes) is {most:,}", code="invalid_value")


def request_bytes(model: Upscaler, sizes: list[tuple[int, int]], received: int = 0) -> list[int]:
    """The memory a request needs once each of its images (width, height) is upscaled, as a running total:
    what it `received`, the outputs it keeps, and the largest one image's working memory."""
    channels, s = model.spec.shape[0], model.scale
    peak = getattr(model, "peak_bytes", lambda height, width: 4 * channels * height * width * (1 + s * s))
    needs, kept, work = [], received, 0
    for width, height in sizes:
        # a PNG is never much larger than its pixels stored: a filter byte a row, zlib's and the chunks' headers
        png = math.ceil((channels * s * width + 1) * s * height * 1.001) + 4096
        # each output as base64, four times over: the string, the JSON text, its bytes, the socket's unsent buffer
        kept += 4 * (4 * math.ceil(png / 3))
        # the model's peak (tiles, input, float output), then at most three of: the 8-bit pixels, PIL's copy,
        # the PNG, its base64; counted as if at once, which they are not
        work = max(work, peak(height, width) + 3 * math.ceil(png * 4 / 3))
        needs.append(kept + work)
    return needs


def eight_bit(image: Any) -> Any:
    """A (C, H, W) image in [0, 1] as an 8-bit PIL image; converts `image` in place (no float copy of an output,
    the largest tensor an upscale leaves)."""
    import torch
    from PIL import Image

    pixels = image.mul_(255).round_().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray((pixels[..., 0] if pixels.shape[-1] == 1 else pixels).contiguous().numpy())


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what a request may send: Pillow opens many more, each its own parser


def read_header(data: str, field: str, max_side: int) -> tuple[bytes, tuple[int, int]]:
    """A base64 PNG, JPEG or WebP's bytes and (width, height), read from its header: no pixel is decoded (a small
    file can hold a huge image). GenlabError naming `field` when it is not one, or larger than `max_side`."""
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here, below
            with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
                size = img.size
    except Image.DecompressionBombError:
        raise GenlabError(f"{field}: too many pixels to open; at most {max_side} a side") from None
    except Exception as err:
        raise GenlabError(f"{field}: not a base64-encoded PNG, JPEG or WebP image ({type(err).__name__})") from None
    if max(size) > max_side:
        raise GenlabError(f"{field}: {size[0]}x{size[1]} pixels, more than {max_side} a side")
    return raw, size


def decode_pixels(raw: bytes, channels: int, field: str) -> Any:
    """An image file's bytes (checked by `read_header`) as a (C, H, W) tensor in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # read_header checked the size
            with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
                array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255
    except Exception as err:
        raise GenlabError(f"{field}: not a base64-encoded PNG, JPEG or WebP image ({type(err).__name__})") from None
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def decode_image(data: str, channels: int, field: str, max_side: int) -> Any:
    """A base64 PNG, JPEG or WebP as a (C, H, W) tensor in [0, 1]; GenlabError naming `field` when it is not one.
    The size is read from the header and checked before any pixel is decoded."""
    return decode_pixels(read_header(data, field, max_side)[0], channels, field)


CAPABILITY = Capability(
    "upscale", Upscaler,
    verbs=(Verb("upscale", "Upscale images; a bad image is named and skipped, the rest are written.", ImageFiles,
                upscale_command, inputs=("source",)),),
    served=ServedUpscaler, evaluator="genlab.evaluation.upscale:evaluate_upscaling",
    headline=(Figure("psnr", "PSNR dB", True, ("psnr_bicubic", "bicubic")),
              Figure("ssim", "SSIM", True, ("ssim_bicubic", "bicubic"))),
    hub_task="image-to-image")
