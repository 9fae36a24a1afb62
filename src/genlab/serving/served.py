"""`Served`: one loaded model under its name, behind the worker that batches its requests.

A capability's served kind subclasses it (`genlab/capabilities`): how a batch of requests becomes one call of the
model, what the serve config's filters need of the model, and the routes (`router`) the app mounts. Nothing here
imports torch: declaring a served kind costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ValidationError

from genlab.config import check_sampling
from genlab.serving.config import ServeConfig
from genlab.serving.guard import Refused
from genlab.serving.workers import BatchWorker

if TYPE_CHECKING:
    from fastapi import APIRouter


class Served:
    kind: ClassVar[str] = "model"  # the capability it serves, shown in /v1/models
    context: int | None = None  # tokens a request's prompt and output may hold together (a causal LM's)
    router: ClassVar[APIRouter | None] = None

    def __init__(self, name: str, model: Any, config: ServeConfig, on_batch: Callable[[int], None] | None = None,
                 folder: Path | None = None) -> None:
        self.name, self.model, self.config, self.folder = name, model, config, folder
        self.family = model.config.family
        self.created = int(time.time())
        self.check_filters()
        self.worker = self.start_worker(on_batch)

    def check_filters(self) -> None:
        """Load or check what the serve config's filters need of this model; a GenlabError says what is missing."""

    def start_worker(self, on_batch: Callable[[int], None] | None) -> Any:
        """The thread that owns the model: it has `alive`, `depth` and `stop(drain_seconds)`."""
        c = self.config
        return BatchWorker(self.run_batch, max_batch_size=c.max_batch_size, max_wait_ms=c.max_wait_ms,
                           max_queue=c.max_queue, name=f"genlab-{self.name}", on_batch=on_batch)

    def run_batch(self, key: Any, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def submit(self, key: Any, items: list[Any]) -> Future:
        return self.worker.submit(key, items)

    def options(self, given: dict[str, Any], names: dict[str, str] | None = None) -> dict[str, Any]:
        """The request's sampling options: the model's own (the run's eval.sampling, kept in its folder) updated by
        `given` (null: not given), typed and bounded by the family's `Sampling`. A 400 names the first option the
        family does not take or whose value it refuses, by the name the request used (`names`: request field ->
        option)."""
        fields = self.model.Sampling.model_fields
        given = {k: v for k, v in given.items() if v is not None}
        shown = {option: field for field, option in (names or {}).items()}
        for key in given:
            if key not in fields:
                raise Refused(400, f"{shown.get(key, key)}: a {self.family} model does not take it (its options: "
                              f"{', '.join(fields) or 'none'})", code="invalid_value")
        try:
            return check_sampling(self.family, {**self.model.sampling, **given})
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise Refused(400, f"{shown.get(where, where)}: {first['msg']} (got {first.get('input')!r})",
                          code="invalid_value") from None

    @property
    def alive(self) -> bool:
        return self.worker.alive

    @property
    def healthy(self) -> bool:
        """It can serve, or will again by itself (an engine being replaced): false asks for a restart."""
        return self.worker.healthy

    @property
    def depth(self) -> int:
        return self.worker.depth

    def stop(self, drain_seconds: float) -> None:
        self.worker.stop(drain_seconds)
