"""The models a server holds: each family behind the worker that batches its requests.

`load_served` reads a run directory (or a bare model folder, as a container holds) and wraps
its model by what it does: a causal LM behind the continuous-batching engine, a seq2seq model,
an image generator, an upscaler or a table model behind a `BatchWorker`.
"""

from __future__ import annotations

import base64
import io
import json
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastapi import APIRouter
from PIL import Image
from tokenizers import decoders

from genlab.errors import GenlabError
from genlab.responsible.memorization import IMAGE_CHECK_FILE, INDEX_FILE, ImageCopies
from genlab.serving.config import ServeConfig
from genlab.serving.engine import TextEngine
from genlab.serving.engine_process import RemoteEngine
from genlab.serving.folders import load_model, model_folder
from genlab.serving.workers import BatchWorker


def load_served(path: str | Path, config: ServeConfig, name: str | None = None,
                observe: Callable[[str, int], None] | None = None) -> Served:
    """The model at `path`, behind the worker that batches its requests."""
    model, default = load_model(path)
    name = name or default
    family = model.config.family
    memorized = next((f for f in config.filters if f.type == "memorized"), None)
    if memorized is not None and model.serves in ("text", "text2text") and model.copies is None:
        raise GenlabError(f"{path}: the memorized filter needs the training-text index that `genlab fit` keeps in "
                          f"a text model's folder ({INDEX_FILE}), and this one has none: fit it again")
    if memorized is not None and model.serves == "image":
        model.image_copies = ImageCopies.load(model_folder(path)[0])
        if model.image_copies is None:
            raise GenlabError(f"{path}: the memorized filter needs the copy check that `genlab evaluate` keeps in an "
                              f"image model's folder ({IMAGE_CHECK_FILE}): evaluate the run first")
    on_batch = (lambda size: observe(name, size)) if observe else None
    return served_kind(model.serves, f"{path}: a {family} model")(name, family, model, config, on_batch,
                                                                  folder=model_folder(path)[0])


def served_kind(serves: str, what: str) -> type[Served]:
    """The `Served` class a family names: a built-in kind, or "module:Class" for a kind of its own (which may
    bring routes of its own in its `router`)."""
    kinds = {kind.kind: kind for kind in (ServedLM, ServedSeq2Seq, ServedImages, ServedUpscaler, ServedTable)}
    if ":" in serves:
        from genlab.locate import locate

        return locate(serves)
    if serves not in kinds:
        raise GenlabError(f"{what} is served as {serves!r}; genlab serves {', '.join(kinds)} or a "
                          "'module:Class' Served kind")
    return kinds[serves]


def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet read backwards: printable bytes stand for themselves, the rest for 256 + n."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(moved)}}


_BYTE_OF = _byte_of_char()


class Served:
    """One loaded model under its name; `kind` decides which routes serve it. A kind that a family brings
    carries its routes in `router`, which the app mounts when a model of that kind is loaded."""

    kind = "model"
    router: APIRouter | None = None

    def __init__(self, name: str, family: str, model: Any, config: ServeConfig,
                 on_batch: Callable[[int], None] | None, folder: Path | None = None) -> None:
        self.name, self.family, self.model, self.config, self.folder = name, family, model, config, folder
        self.created = int(time.time())
        self.worker = self.start_worker(on_batch)

    def start_worker(self, on_batch: Callable[[int], None] | None) -> Any:
        """The thread that owns the model: it has `alive`, `depth` and `stop(drain_seconds)`."""
        c = self.config
        return BatchWorker(self.run_batch, max_batch_size=c.max_batch_size, max_wait_ms=c.max_wait_ms,
                           max_queue=c.max_queue, name=f"genlab-{self.name}", on_batch=on_batch)

    def run_batch(self, key: Any, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def submit(self, key: Any, items: list[Any]) -> Future:
        return self.worker.submit(key, items)

    @property
    def alive(self) -> bool:
        return self.worker.alive

    @property
    def depth(self) -> int:
        return self.worker.depth

    def stop(self, drain_seconds: float) -> None:
        self.worker.stop(drain_seconds)


class ServedLM(Served):
    """A causal LM: completions, chat and responses through continuous batching."""

    kind = "text"

    def start_worker(self, on_batch: Callable[[int], None] | None) -> TextEngine | RemoteEngine:
        self.tokenizer, self.context = self.model.tokenizer, self.model.context
        c = self.config
        options = {"max_batch_size": c.max_batch_size, "max_wait_ms": c.max_wait_ms, "max_queue": c.max_queue,
                   "on_step": on_batch}
        if c.engine == "thread" or self.folder is None:
            return TextEngine(self.model.lm, self.tokenizer, **options)
        engine = RemoteEngine(self.folder, **options)
        self.model.lm.to("meta")  # the weights live in the engine's process; this copy is never used
        return engine

    @property
    def engine(self) -> TextEngine | RemoteEngine:
        return self.worker

    def encode(self, prompt: str | list[int]) -> list[int]:
        """A prompt's token ids: text is tokenized; ids are checked against the vocabulary (they reach a tensor)."""
        if isinstance(prompt, list):
            vocabulary = len(self.tokenizer)
            bad = next((t for t in prompt if not 0 <= t < vocabulary), None)
            if bad is not None or not prompt:
                raise GenlabError(f"prompt: {'no token ids' if not prompt else f'token id {bad}'}; the model's "
                                  f"vocabulary holds ids 0 to {vocabulary - 1}")
            return list(prompt)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        return ids or [self.tokenizer.eos_token_id]  # an empty prompt starts a new document

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def token_bytes(self, token: int) -> bytes:
        """The token's own bytes: a byte-level BPE token may hold part of a character, which its text cannot show."""
        if isinstance(getattr(self.tokenizer.backend_tokenizer, "decoder", None), decoders.ByteLevel):
            return bytes(_BYTE_OF[c] for c in self.tokenizer.convert_ids_to_tokens(token))
        return self.token_text(token).encode()

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
        """The prompt for chat messages, and the stop strings its template implies.

        With the tokenizer's chat template when it has one; otherwise the plain template
        "System: ...\\nUser: ...\\nAssistant:" and generation stops where the model starts a new "User:" turn."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text, ()
        turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
        return f"{turns}Assistant:", ("\nUser:",)


class ServedSeq2Seq(Served):
    """An encoder-decoder: greedy requests with equal settings share one `generate` call."""

    kind = "text2text"  # transformers names the task so
    context = None

    def run_batch(self, key: Any, items: list[Any]) -> list[str]:
        options = dict(key)
        sources = [source for source, _ in items]
        if options.get("temperature", 0) == 0:  # no randomness: one call for the batch
            return self.model.sample(len(items), source=sources, **options)
        generators = [torch.Generator().manual_seed(seed) for _, seed in items]
        return self.model.sample(len(items), source=sources, generator=generators, **options)

    def encode(self, text: str) -> list[int]:
        return self.model.tokenizer(text)["input_ids"]


class ServedImages(Served):
    """Diffusion, GAN and VAE: concurrent requests sampled in one call, a seed and label per image."""

    kind = "image"

    def run_batch(self, key: Any, items: list[Any]) -> list[str]:
        """Items are (seed, label, the options that may differ per sample); the key holds the other options and
        whether labels are given (a batch mixes labelled and unlabelled requests never: their conditioning differs).
        An option that differs per sample (guidance_scale) goes to the model as one value per image."""
        options = dict(key)
        labelled = options.pop("labelled")
        generators = [torch.Generator().manual_seed(seed) for seed, _, _ in items]
        conditions: dict[str, Any] = {"labels": [label for _, label, _ in items]} if labelled else {}
        defaults = self.model.Sampling.model_fields
        for name in sorted({name for _, _, own in items for name in own}):
            values = [own.get(name, defaults[name].default) for _, _, own in items]
            conditions[name] = torch.tensor(values, dtype=torch.float32)
        samples = self.model.sample(len(items), generator=generators, **conditions, **options)
        copies = getattr(self.model, "image_copies", None)
        withheld = copies.copied(samples).tolist() if copies is not None else [False] * len(samples)
        return [(self.encode(sample), copied) for sample, copied in zip(samples, withheld, strict=True)]

    def encode(self, sample: torch.Tensor) -> Any:
        """One sample as a response carries it."""
        return png_b64(sample)

    @property
    def size(self) -> str:
        _, h, w = self.model.spec.shape
        return f"{w}x{h}"


class ServedUpscaler(Served):
    """A super-resolution model: each request's images upscaled in turn (sizes differ, so no batching)."""

    kind = "upscale"

    def run_batch(self, key: Any, items: list[Any]) -> list[str]:
        return [png_b64(self.model.upscale(image[None])[0]) for image in items]


class ServedTable(Served):
    """A tabular VAE: impute, score and sample rows, one request per call."""

    kind = "table"

    def run_batch(self, key: Any, items: list[Any]) -> list[Any]:
        action, seed = key[0], key[1]
        out = []
        for rows in items:
            if action == "sample":
                frame = self.model.sample(rows, generator=torch.Generator().manual_seed(seed))
                out.append(records(frame))
            elif action == "impute":
                out.append(records(self.model.impute(pd.DataFrame.from_records(rows), seed=seed, where="rows")))
            else:
                out.append(self.model.score(pd.DataFrame.from_records(rows), seed=seed, where="rows").tolist())
        return out


def png_b64(image: torch.Tensor) -> str:
    """A (C, H, W) image in [0, 1] as base64 PNG."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what a request may send: Pillow opens many more, each its own parser


def decode_image(data: str, channels: int, field: str, max_side: int) -> torch.Tensor:
    """A base64 PNG, JPEG or WebP as a (C, H, W) tensor in [0, 1]; GenlabError naming `field` when it is not one.
    The size is read from the header and checked before any pixel is decoded (a small file can hold a huge image)."""
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


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: missing cells become null."""
    return json.loads(frame.to_json(orient="records"))
