"""Draw images: `genlab sample` writes a grid, `/v1/images/generations` answers in OpenAI's shape, and `genlab
evaluate` scores them against held-out images (FID, KID, precision / recall, class balance: evaluation/metrics.py).

Images from concurrent requests share one sampler call when their options match; every image keeps its own seed,
label and per-sample options (a guidance scale), so a seeded request gives the same images alone or batched.
"""

from __future__ import annotations

import base64
import io
import random
import time
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field

from genlab.capabilities import Capability
from genlab.errors import GenlabError
from genlab.evaluation.figures import Figure
from genlab.serving.guard import Refused
from genlab.serving.schemas import ModelRequest
from genlab.serving.served import Served
from genlab.serving.server import Server, authorize, limit, run_job, served_for

MAX_PROMPT = 4_000  # characters; a model reads a few tens of tokens of it


class ImageModel(Protocol):
    """What a family of images has (base's GenerativeModel gives every family most of it)."""

    spec: Any  # DataSpec: shape (C, H, W) and class names
    sampling: dict[str, Any]  # its sampling options as the run evaluated it (the model folder keeps them)
    takes_labels: bool  # `sample(labels=...)` draws the classes asked for
    takes_prompts: bool  # `sample(prompt=..., negative_prompt=...)` draws what text asks for

    def sample(self, n: int, *, generator: Any = None, **conditions: Any) -> Any: ...
    def check_request(self, n: int, labels: Any = None, **options: Any) -> None: ...
    def sampling_steps(self, options: dict[str, Any]) -> int: ...


class ImageRequest(ModelRequest):
    prompt: str = Field("", max_length=MAX_PROMPT)  # what a text-to-image model draws; for a class-conditional
    # one, a class name picks that class, as `label` does
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT)  # what guidance steers away from
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json"] = "b64_json"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    label: int | str | None = None
    quality: str | None = None  # OpenAI's; genlab draws at the model's one quality
    style: str | None = None
    user: str | None = None
    # any other field is one of the model family's sampling options (its `Sampling` class), checked there
    model_config = ConfigDict(extra="allow")


class ServedSamples(Served):
    """Concurrent requests sampled in one call, a seed, label and per-sample options per sample; `encode` makes a
    sample what a response carries."""

    def check_filters(self) -> None:
        from genlab.config import sampling_options
        from genlab.responsible.memorization import IMAGE_CHECK_FILE, ImageCopies

        steps = self.model.sampling_steps(sampling_options(self.family, self.model.sampling))
        if steps > self.config.limits.max_steps:  # else every request would be refused: say so at the start
            raise GenlabError(f"{self.folder}: its own sampling options (the run's eval.sampling) run {steps} sampler "
                              f"steps, past the serve config's limits.max_steps of {self.config.limits.max_steps}")
        self.copies = None
        if any(f.type == "memorized" for f in self.config.filters) and self.folder is not None:
            self.copies = ImageCopies.load(self.folder)
            if self.copies is None:
                raise GenlabError(f"{self.folder}: the memorized filter needs the copy check that `genlab evaluate` "
                                  f"keeps in an image model's folder ({IMAGE_CHECK_FILE}): evaluate the run first")

    def run_batch(self, key: Any, items: list[Any]) -> list[Any]:
        """Items are (seed, conditions, per-sample options); the key holds the other options and which conditions
        are given (a label, a prompt: requests with other conditions never share a call). A condition or an option
        that differs per sample (a prompt, guidance_scale) reaches the model as one value per image."""
        import torch

        options = dict(key)
        names = options.pop("conditions")
        generators = [torch.Generator().manual_seed(seed) for seed, _, _ in items]
        conditions: dict[str, Any] = {name: [given[name] for _, given, _ in items] for name in names}
        for name in sorted({name for _, _, own in items for name in own}):
            conditions[name] = torch.tensor([own[name] for _, _, own in items], dtype=torch.float32)
        samples = self.model.sample(len(items), generator=generators, **conditions, **options)
        withheld = self.copies.copied(samples).tolist() if self.copies is not None else [False] * len(samples)
        return [(self.encode(sample), copied) for sample, copied in zip(samples, withheld, strict=True)]

    def encode(self, sample: Any) -> Any:
        raise NotImplementedError


class ServedImages(ServedSamples):
    kind = "images"

    def encode(self, sample: Any) -> str:
        return png_b64(sample)

    @property
    def size(self) -> str:
        _, h, w = self.model.spec.shape
        return f"{w}x{h}"


def sample_items(server: Server, served: Served, n: int, conditions: dict[str, Any], seed: int | None,
                 extras: dict[str, Any]) -> tuple[Any, list[Any]]:
    """A sampling request as a worker job: (the key requests share a batch under, one item per sample), after the
    request's options (typed by the family) and conditions (`labels`, `prompt`...: the model's `sample` keywords)
    are checked against the model (a 400 naming the field)."""
    options = served.options(extras)
    steps = served.model.sampling_steps(options)
    if steps > server.config.limits.max_steps:
        raise Refused(400, f"steps: these options run {steps} sampler steps; the limit is "
                      f"{server.config.limits.max_steps}", code="invalid_value")
    try:  # what the request asked for: the model's own options hold with or without a label
        served.model.check_request(1, conditions.get("labels"), **{k: options[k] for k in extras if k in options})
    except GenlabError as err:  # the model says "labels"; the request's field is "label"
        field, _, detail = str(err).partition(": ")
        raise Refused(400, f"{'label' if field == 'labels' else field}: {detail}", code="invalid_value") from None
    per_sample = {k: options.pop(k) for k in served.model.Sampling.per_sample if k in options}
    seed = seed if seed is not None else random.randrange(2**62)
    items = [(seed + i, conditions, per_sample) for i in range(n)]
    return tuple(sorted({**options, "conditions": tuple(sorted(conditions))}.items())), items


router = APIRouter()


@router.post("/v1/images/generations", tags=["images"])
async def images(body: ImageRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """Images in OpenAI's shape (b64_json), with genlab's seed and label and the family's sampling options."""
    server, served = served_for(request, body.model, ServedImages, "/v1/images/generations")
    limit("n", body.n, server.config.limits.max_n, "images")
    if body.size is not None and body.size != served.size:
        raise Refused(400, f"size: this model draws {served.size} images, not {body.size}", code="invalid_value")
    if served.model.takes_prompts:
        conditions = {"prompt": screened(server, body.prompt, "prompt"),
                      "negative_prompt": screened(server, body.negative_prompt or "", "negative_prompt")}
    else:
        if body.negative_prompt is not None:
            raise Refused(400, "negative_prompt: this model draws no prompt", code="invalid_value")
        label = body.label
        if label is None and served.model.takes_labels and body.prompt.strip() in served.model.spec.class_names:
            label = body.prompt.strip()
        conditions = {} if label is None else {"labels": label}
    key, items = sample_items(server, served, body.n, conditions, body.seed, body.model_extra or {})
    drawn = await run_job(served, key, items, request)
    server.metrics.images.labels(served.name).inc(len(drawn))
    out: dict[str, Any] = {"created": int(time.time()), "data": [{"b64_json": b} for b, _ in drawn]}
    copied = [i for i, (_, c) in enumerate(drawn) if c]
    if copied:  # images nearer a training image than held-out images come
        rule = next(f for f in server.config.filters if f.type == "memorized")
        action = "flag" if rule.action == "flag" else "refuse"  # an image is sent whole or withheld
        server.metrics.filtered.labels(served.name, "memorized", action).inc(len(copied))
        if action == "refuse":
            out["data"] = [d for i, d in enumerate(out["data"]) if i not in copied]
        out["genlab_filter"] = {"name": "memorized", "action": action, "images": copied,
                                "reason": f"{len(copied)} image(s) nearer a training image than held-out images come"
                                          + (" were withheld" if action == "refuse" else "")}
    return out


ServedImages.router = router


def screened(server: Server, text: str, field: str) -> str:
    """A prompt through the server's text filters, as an output would go (a blocked term or personal data
    replaced or redacted; a 400 naming the field when a filter refuses it). The memorized rule judges outputs
    against training text, which a prompt is not."""
    from genlab.serving.filters import OutputFilter

    rules = [f for f in server.config.filters if f.type != "memorized"]
    if not rules or not text:
        return text
    judged = OutputFilter(rules)
    out = judged.feed(text) + judged.finish()
    if judged.refused:
        raise Refused(400, f"{field}: refused by the {judged.verdict.name} filter ({judged.verdict.reason})",
                      code="content_filter")
    return out


def png_b64(image: Any) -> str:
    """A (C, H, W) image in [0, 1] as base64 PNG."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE_FIGURES = (Figure("fid", "FID", False, ("fid_real_baseline", "real vs real")),
                 Figure("adherence_unseen", "prompt adherence, unseen pairs", True,
                        ("adherence_unseen_ceiling", "the judge on real images")),
                 Figure("adherence_seen", "prompt adherence, seen pairs", True,
                        ("adherence_seen_ceiling", "the judge on real images")),
                 Figure("kid_mean", "KID", False), Figure("precision", "precision", True),
                 Figure("recall", "recall", True), Figure("class_distribution_tv", "class TV", False))

CAPABILITY = Capability("images", ImageModel, served=ServedImages,
                        evaluator="genlab.evaluation.metrics:evaluate_images", headline=IMAGE_FIGURES,
                        audit="genlab.responsible.prompt_audit:audit_images", hub_task="unconditional-image-generation")
