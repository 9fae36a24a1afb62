"""litdata chunks kept once, in the cache or in a bucket, and the streaming dataset that reads them: what text
(`streaming.py`) and images and clips (`streamed_items.py`) stream from.

    kept_chunks(key, what, chunks_url, write)  -> (where the chunks are read from, their index)
    chunks_dataset(source, shuffle, seed)      -> litdata's StreamingDataset over them
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from genlab.errors import GenlabError

log = logging.getLogger("genlab")
LAYOUT = "1"  # bumped when the chunks' contents change for the same tokenizer and shards


def short_digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def chunks_dataset(source: str, shuffle: bool, seed: int, item_loader=None, item_shuffle_window: int | None = None):
    """litdata's StreamingDataset over the chunks at `source`: whole batches (every rank as many); items read by
    index (validation) are all there whatever its length says. A bucket is read through a cache on this disk."""
    from litdata import StreamingDataset

    from genlab.prepare.store import cache_root

    cache = cache_root() / "streamed" / short_digest(source) if "://" in source else None
    return StreamingDataset(source, item_loader=item_loader, shuffle=shuffle, seed=seed, drop_last=True,
                            cache_dir=None if cache is None else str(cache), item_shuffle_window=item_shuffle_window)


def kept_chunks(key: str, what: str, chunks_url: str | None, write: Callable[[Path], None]) -> tuple[str, dict]:
    """Where the litdata chunks named `key` (KIND/DIGEST) are read from, and their index: the cache (`write` fills it
    once); or with `chunks_url`, the bucket: a run that finds them there writes nothing, else it writes and uploads
    them."""
    if chunks_url is None:
        folder = _written(key, what, write)
        return str(folder), json.loads((folder / "index.json").read_text())
    from genlab.data.buckets import index_at, upload

    url = f"{chunks_url.rstrip('/')}/{key.split('/')[-1]}"
    index = index_at(url)
    if index is not None:
        return url, index
    folder = _written(key, what, write)
    log.info(f"data: uploading the chunks to {url}")
    upload(folder, url)
    return str(folder), json.loads((folder / "index.json").read_text())  # this run has them on its disk already


def _written(key: str, what: str, write: Callable[[Path], None]) -> Path:
    """The folder of chunks `key` in the cache, written now by `write` unless a run before wrote it."""
    from filelock import FileLock

    from genlab.prepare.store import cache_root

    folder = cache_root() / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if not (folder / "index.json").is_file():
            log.info(f"data: {what} into {folder}")
            staging = folder.parent / f".{folder.name}.partial"  # a killed run leaves no folder that looks finished
            shutil.rmtree(staging, ignore_errors=True)
            with one_writer():
                write(staging)
            staging.rename(folder)
    return folder


@contextmanager
def one_writer() -> Iterator[None]:
    """The writer, told it is alone: litdata takes the world size of torch.distributed (or of torchrun's WORLD_SIZE,
    which it reads over it) for the number of writers whose parts it waits for, but one rank writes here while
    the others wait on the lock."""
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "GLOBAL_RANK")}
    os.environ.update(WORLD_SIZE="1", GLOBAL_RANK="0")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def need_litdata() -> None:
    try:
        import litdata  # noqa: F401
    except ImportError:
        raise GenlabError("data.streaming: streaming a set needs litdata: pip install 'genlab[stream]' (or set "
                          "data.streaming: false to read the set into memory)") from None
