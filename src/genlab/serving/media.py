"""Image and table routes: /v1/images/generations (OpenAI's shape), /v1/images/upscale and /v1/tabular/*.

Images from concurrent requests share one sampler call when their settings match; every image
keeps its own seed, label and guidance scale. A seeded request gives the same images alone or
batched with others.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from genlab.errors import GenlabError
from genlab.serving.guard import Refused
from genlab.serving.models import Served, decode_image
from genlab.serving.schemas import ImageRequest, RowsRequest, TableSampleRequest, UpscaleRequest
from genlab.serving.server import Server, authorize
from genlab.serving.workers import QueueFull

router = APIRouter()

def sampling_options(served: Served, given: dict[str, Any]) -> dict[str, Any]:
    """The request's options that the model's family declares (its `Sampling` class), as given; a 400 naming
    the first option it does not take or whose value is out of bounds."""
    fields = served.model.Sampling.model_fields
    for name in given:
        if name not in fields:
            takes = ", ".join(fields) or "none"
            raise Refused(400, f"{name}: a {served.family} model does not take it (its options: {takes})",
                          code="invalid_value")
    try:
        served.model.Sampling.model_validate(given)
    except ValidationError as err:
        first = err.errors()[0]
        raise Refused(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']} (got {first.get('input')!r})",
                      code="invalid_value") from None
    return dict(given)


def sample_items(server: Server, served: Served, n: int, label: Any, seed: int | None, extras: dict[str, Any]
                 ) -> tuple[Any, list[Any]]:
    """A sampling request as a worker job: (the key requests share a batch under, one item per sample), after
    the request's options and label are checked against the model (a 400 naming the field)."""
    options = sampling_options(served, extras)
    if options.get("steps") is not None and options["steps"] > server.config.limits.max_steps:
        raise Refused(400, f"steps: {options['steps']}; the limit is {server.config.limits.max_steps}",
                      code="invalid_value")
    try:
        served.model.check_request(1, label, **options)
    except GenlabError as err:  # the model says "labels"; the request's field is "label"
        field, _, detail = str(err).partition(": ")
        raise Refused(400, f"{'label' if field == 'labels' else field}: {detail}", code="invalid_value") from None
    per_sample = {k: options.pop(k) for k in served.model.Sampling.per_sample if k in options}
    seed = seed if seed is not None else random.randrange(2**62)
    items = [(seed + i, label, per_sample) for i in range(n)]
    return tuple(sorted({**options, "labelled": label is not None}.items())), items


async def run_job(served: Served, key: Any, items: list[Any], request: Request) -> list[Any]:
    """Queue a job on the model's worker and wait for it; 503 when the queue is full, 400 for a bad input."""
    try:
        future: Future = served.submit(key, items)
    except QueueFull:
        raise Refused(503, "server busy: the queue is full", retry_after=1.0, code="overloaded") from None
    try:
        out = await asyncio.wrap_future(future)
    except GenlabError:
        raise
    except (ValueError, KeyError, TypeError) as err:  # a model that rejects the input, in its own words
        raise GenlabError(f"input: {err}") from None
    request.state.batch_size = getattr(future, "batch_size", None)
    return out


def served_for(request: Request, name: str, kinds: tuple[str, ...], route: str) -> tuple[Server, Served]:
    server: Server = request.app.state.server
    served = server.model(name, kinds, route)
    request.state.model = served.name
    return server, served


@router.post("/v1/images/generations", tags=["images"])
async def images(body: ImageRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """Images in OpenAI's shape (b64_json), with genlab's seed, label, sampler, steps and guidance_scale."""
    server, served = served_for(request, body.model, ("image",), "/v1/images/generations")
    if body.n > server.config.limits.max_n:
        raise Refused(400, f"n: {body.n} images; the limit is {server.config.limits.max_n}", code="invalid_value")
    if body.size is not None and body.size != served.size:
        raise Refused(400, f"size: this model draws {served.size} images, not {body.size}", code="invalid_value")
    label = body.label
    conditional = getattr(served.model.config, "class_conditional", False)
    if label is None and conditional and body.prompt.strip() in served.model.spec.class_names:
        label = body.prompt.strip()
    key, items = sample_items(server, served, body.n, label, body.seed, body.model_extra or {})
    images = await run_job(served, key, items, request)
    server.metrics.images.labels(served.name).inc(len(images))
    out: dict[str, Any] = {"created": int(time.time()), "data": [{"b64_json": b} for b, _ in images]}
    copied = [i for i, (_, c) in enumerate(images) if c]
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


@router.post("/v1/images/upscale", tags=["images"])
async def upscale(body: UpscaleRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """Each base64 image upscaled by the super-resolution model, as base64 PNG."""
    server, served = served_for(request, body.model, ("upscale",), "/v1/images/upscale")
    limits = server.config.limits
    if len(body.images) > limits.max_n:
        raise Refused(400, f"images: {len(body.images)} images; the limit is {limits.max_n}", code="invalid_value")
    channels = served.model.spec.shape[0]
    tensors = await asyncio.to_thread(  # decoding is CPU work: off the event loop, which keeps serving others
        lambda: [decode_image(data, channels, f"images[{i}]", limits.max_image_side)
                 for i, data in enumerate(body.images)])
    for i, t in enumerate(tensors):
        served.model.check_input(t[None], f"images[{i}]")
    out = await run_job(served, object(), tensors, request)  # a key of its own: never batched with another request
    server.metrics.images.labels(served.name).inc(len(out))
    return {"created": int(time.time()), "data": [{"b64_json": b} for b in out]}


def _rows(server: Server, served: Served, body: RowsRequest) -> list[str]:
    """Refuse too many rows or rows with none of the model's columns; warnings for columns it does not know."""
    if len(body.rows) > server.config.limits.max_rows:
        raise Refused(400, f"rows: {len(body.rows)} rows; the limit is {server.config.limits.max_rows}",
                      code="invalid_value")
    known = [c.name for c in served.model.columns.columns]
    sent = sorted(set().union(*(row.keys() for row in body.rows)))
    if not set(sent) & set(known):
        raise Refused(400, f"rows: none of the columns sent ({', '.join(sent)}) is the model's: {', '.join(known)}",
                      code="invalid_value")
    extra = [c for c in sent if c not in known]
    return [f"rows: column(s) {', '.join(extra)} are not the model's; passed through unchanged"] if extra else []


@router.post("/v1/tabular/impute", tags=["tables"])
async def impute(body: RowsRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """The rows with every missing cell (null or absent) filled; present cells come back as sent."""
    return await _on_rows(request, body, "impute", "rows")


@router.post("/v1/tabular/score", tags=["tables"])
async def score(body: RowsRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """An anomaly score per row (higher is odder): the negative bound on the row's log-likelihood."""
    return await _on_rows(request, body, "score", "scores")


async def _on_rows(request: Request, body: RowsRequest, action: str, field: str) -> dict:
    server, served = served_for(request, body.model, ("table",), f"/v1/tabular/{action}")
    warnings = _rows(server, served, body)
    out = (await run_job(served, (action, body.seed, object()), [body.rows], request))[0]
    return {"object": "list", "model": served.name, field: out, "warnings": warnings}


@router.post("/v1/tabular/sample", tags=["tables"])
async def sample_rows(body: TableSampleRequest, request: Request, identity: str = Depends(authorize)) -> dict:
    """`n` synthetic rows, with the training table's columns; the same seed gives the same rows."""
    server, served = served_for(request, body.model, ("table",), "/v1/tabular/sample")
    if body.n > server.config.limits.max_rows:
        raise Refused(400, f"n: {body.n} rows; the limit is {server.config.limits.max_rows}", code="invalid_value")
    rows = (await run_job(served, ("sample", body.seed, object()), [body.n], request))[0]
    return {"object": "list", "model": served.name, "rows": rows}
