"""Where `genlab prepare`'s per-block work runs: in this process, or as Ray Data tasks on a Ray cluster.

Both run the same functions on the same blocks and return their results in block order, so the
prepared set does not depend on the engine. Ray is imported only when asked for
(`pip install 'genlab[ray]'`); Ray retries a task whose worker died.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from genlab.errors import GenlabError


class LocalEngine:
    name = "local"
    cpus = 1

    def map(self, work: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        return [work(task) for task in tasks]


class RayEngine:
    """Each task a row of a Ray Dataset, one block each; results come back pickled and are put in task order."""

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise GenlabError("data.engine: ray needs Ray Data, which is not installed: pip install 'genlab[ray]'") \
                from None
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or "local"  # "auto" joins a `ray start` cluster
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         configure_logging=False)
            except ConnectionError as err:
                raise GenlabError(f"data.address: no Ray cluster at {address!r} ({err})") from None
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # a line per stage, and one saying bars are off
        with _ray_quiet():
            context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        # Ray Data reserves half the CPUs for each operator of a plan, and the range the tasks are read from is
        # one: the map then starts on one CPU of two until the range is done (measured: a CPU idle for the first
        # task of every stage). The map is the only operator that works, so nothing needs a reserve.
        context.op_resource_reservation_enabled = False

    def map(self, work: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        import ray.data

        if not tasks:
            return []
        payload = [pickle.dumps(task) for task in tasks]

        def run(batch: dict) -> dict:
            return {"i": batch["i"], "out": [pickle.dumps(work(pickle.loads(payload[int(i)]))) for i in batch["i"]]}

        rows = ray.data.range(len(tasks), override_num_blocks=len(tasks)).rename_columns({"id": "i"}) \
            .map_batches(run, batch_size=1, zero_copy_batch=True)
        try:
            with _ray_quiet():
                done = rows.take_all()
        except Exception as err:  # a user's mistake inside a task: say it as this process would have
            user = _user_error(err)
            if user is None:
                raise
            raise user from None
        return [pickle.loads(row["out"]) for row in sorted(done, key=lambda row: int(row["i"]))]


@contextmanager
def _ray_quiet() -> Iterator[None]:
    """Without Ray Data's DeprecationWarnings about its own defaults, which a user of genlab cannot act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _user_error(err: BaseException) -> GenlabError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, GenlabError):
            return err
        err = err.__cause__ or getattr(err, "cause", None)
    return None


def engine(name: str, address: str | None = None) -> LocalEngine | RayEngine:
    return RayEngine(address) if name == "ray" else LocalEngine()
