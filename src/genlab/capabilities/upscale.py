"""Make images larger: `genlab upscale RUN IMAGE|DIR`, `genlab.upscale_files`, `/v1/images/upscale`, and `genlab
evaluate`'s PSNR and SSIM on held-out photographs beside bicubic (evaluation/upscale.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from genlab.capabilities import Capability, Done, Verb, check_has
from genlab.capabilities.images import png_b64
from genlab.config.section import Section
from genlab.errors import GenlabError
from genlab.evaluation.figures import Figure
from genlab.media.suffixes import IMAGE_SUFFIXES
from genlab.quiet import quiet
from genlab.run import Run, as_run
from genlab.serving.schemas import ModelRequest
from genlab.serving.served import Served
from genlab.serving.server import authorize, limit, run_job, served_for


class Upscaler(Protocol):
    scale: int  # the factor, on each side
    spec: Any  # DataSpec: channels first in its shape

    def upscale(self, images: Any, name: str = "images") -> Any: ...
    def check_input(self, images: Any, name: str = "images") -> None: ...


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
    from genlab.media.images import read_image, write_image

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
            written.append(write_image(run.model.upscale(image[None], name=file.name)[0], target))
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


class ServedUpscaler(Served):
    """Each request's images upscaled in turn (their sizes differ, so requests are not batched)."""

    kind = "upscale"

    def run_batch(self, key: Any, items: list[Any]) -> list[str]:
        return [png_b64(self.model.upscale(image[None])[0]) for image in items]


router = APIRouter()


@router.post("/v1/images/upscale", tags=["images"])
async def upscale(body: UpscaleRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """Each base64 image upscaled by the super-resolution model, as base64 PNG."""
    server, served = served_for(request, body.model, ServedUpscaler, "/v1/images/upscale")
    limits = server.config.limits
    limit("images", len(body.images), limits.max_n, "images")
    channels = served.model.spec.shape[0]
    tensors = await asyncio.to_thread(  # decoding is CPU work: off the event loop, which keeps serving others
        lambda: [decode_image(data, channels, f"images[{i}]", limits.max_image_side)
                 for i, data in enumerate(body.images)])
    for i, t in enumerate(tensors):
        served.model.check_input(t[None], f"images[{i}]")
    out = await run_job(served, object(), tensors, request)  # a key of its own: never batched with another request
    server.metrics.images.labels(served.name).inc(len(out))
    return {"created": int(time.time()), "data": [{"b64_json": b} for b in out]}


ServedUpscaler.router = router

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what a request may send: Pillow opens many more, each its own parser


def decode_image(data: str, channels: int, field: str, max_side: int) -> Any:
    """A base64 PNG, JPEG or WebP as a (C, H, W) tensor in [0, 1]; GenlabError naming `field` when it is not one.
    The size is read from the header and checked before any pixel is decoded (a small file can hold a huge image)."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here, below
            opened = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
        with opened as img:
            if max(img.size) > max_side:
                raise GenlabError(f"{field}: {img.size[0]}x{img.size[1]} pixels, more than {max_side} a side")
            img.load()
            img = img.convert("L" if channels == 1 else "RGB")
            array = np.asarray(img, dtype=np.float32) / 255
    except GenlabError:
        raise
    except Image.DecompressionBombError:
        raise GenlabError(f"{field}: too many pixels to open; at most {max_side} a side") from None
    except Exception as err:
        raise GenlabError(f"{field}: not a base64-encoded PNG, JPEG or WebP image ({type(err).__name__})") from None
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


CAPABILITY = Capability(
    "upscale", Upscaler,
    verbs=(Verb("upscale", "Upscale images; a bad image is named and skipped, the rest are written.", ImageFiles,
                upscale_command, inputs=("source",)),),
    served=ServedUpscaler, evaluator="genlab.evaluation.upscale:evaluate_upscaling",
    headline=(Figure("psnr", "PSNR dB", True, ("psnr_bicubic", "bicubic")),
              Figure("ssim", "SSIM", True, ("ssim_bicubic", "bicubic"))),
    hub_task="image-to-image")
