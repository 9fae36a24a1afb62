"""Library chatter that a genlab user can do nothing about, silenced where genlab calls the library.

Each entry is a warning or log line that Lightning, torch, transformers or diffusers emit about a
choice genlab made on purpose (a single-process data loader, logging every N steps, an empty run
folder it fills itself) or about their own internals. What does matter to a user is said by genlab
itself, in one line. Anything not listed here still reaches the user unchanged.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

NOISE = (
    "litlogger",  # Lightning's advertisement for its cloud logger
    "`weights_only` was not set",  # Lightning's own checkpoint loading; genlab loads its files with weights_only
    "exists and is not empty",  # the checkpoint folder of a resumed run
    "LeafSpec",  # a deprecation inside Lightning's pytree helper
    "does not have many workers",  # data are tensors in memory: workers would only copy them
    "has `__len__` defined. In combination with multi-process",  # a streamed set is read in one process
    "The given buffer is not writable",  # litdata copies each window out of its read-only map at once
    "smaller than the logging interval",  # tiny runs log every step they have
    "will save all extracted features",  # torchmetrics' FID keeps the real features it is given
    "GPU available:", "TPU available:",  # Lightning's hardware lines, said once per fit
    "`Trainer.fit` stopped:", "Time limit reached.",  # genlab says why training stopped, in its own summary
    "Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision",
    "__array__ implementation doesn't accept a copy keyword",  # diffusers' schedulers call np.array on a tensor
    "Version v4.12.0 introduces a better way",  # EncoderDecoderModel warns on every loss it computes
    "`is_gradient_checkpointing` is deprecated",  # peft asks transformers with the old name
    "The dirpath has changed from",  # Lightning, when a run directory was moved before a resume
    "in eval mode at the start of training",  # frozen parts (latent diffusion's autoencoder, encoder)
    "`load_state_dict` is deprecated and will be removed",  # Lightning reads sharded optimizer states so
    # torch's FSDP (the one Lightning's FSDPStrategy wraps with) about its own deprecated internals
    "_get_pg_default_device", "Multiple backends are registered", "deprecating ShardedTensor",
    "FSDP.state_dict_type() and FSDP.set_state_dict_type() are being deprecated",
    # saving a diffusers pipeline looks up image processors that genlab's pipelines have none of (no safety checker)
    "requires torchvision (not installed)",
)
_LOGGERS = ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
            "lightning.fabric.utilities.rank_zero", "transformers.utils.import_utils")
F = TypeVar("F", bound=Callable[..., Any])


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(q in record.getMessage() for q in NOISE)


@contextmanager
def library_noise_silenced() -> Iterator[None]:
    """Within: the warnings in NOISE are dropped, and Lightning's and transformers' log lines that match them too."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    with warnings.catch_warnings():
        for q in NOISE:
            warnings.filterwarnings("ignore", message=f".*{q}.*")
        yield


def quiet(fn: F) -> F:
    """Decorator: run `fn` with library noise silenced (the public API's entry points)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with library_noise_silenced():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
