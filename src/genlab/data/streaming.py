"""Text sets larger than memory: a prepared set's shards, tokenized once into litdata chunks, streamed into fit.

    streamed_dataset(folder, data)   -> a Dataset whose splits are TextShards (left on disk), or None: in memory
    tokenized(tokenizer, shards, n)  -> TokenWindows: the split's tokens in the cache, written once per tokenizer
    StreamingData(dataset, batch, seed)   the LightningDataModule: litdata's StreamingDataset and loader

litdata shuffles by a seed, gives each DDP rank its own part of the chunks, and its loader's state (what was
drawn this epoch) rides in Lightning's checkpoint, so a resumed run draws the batches the whole run would have.
The chunks are written by one litdata writer in this process, with the tokenizer's own threads: their layout, and
so the batches, depend on the data and the tokenizer, not on the machine that wrote them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from genlab.data.records import Dataset, DataSpec, Split
from genlab.data.tokenize import piece_tokens
from genlab.errors import GenlabError

log = logging.getLogger("genlab")
BPE_SAMPLE = 64 << 20  # characters a BPE vocabulary is learned from, spread over the training shards
CHUNK_TOKENS = 1 << 24  # tokens a chunk file holds (32 MB at two bytes a token; the writer holds about three)
LAYOUT = "1"  # bumped when the chunks' contents change for the same tokenizer and shards


@dataclass(frozen=True)
class TextShards:
    """A prepared text split left on disk: its JSONL shards in order, with what the manifest says of them."""

    files: tuple[Path, ...]
    records: int
    size: int  # bytes of JSONL
    digests: tuple[str, ...]  # each shard's sha256 (or its name, size and mtime for a set from before shards)
    chunks_url: str | None = None  # where its tokens are kept: a bucket (data.chunks_url), or None: the cache

    def __len__(self) -> int:
        return self.records

    def pieces(self) -> Iterator[tuple[str, bool]]:
        """Each record's text and whether it ends its document: a long text file comes as pieces of about a MB
        (`continues`), never as one string."""
        held = None
        for record in _records(self.files):
            if held is not None:
                yield held, not record.get("continues")
            held = record["text"]
        if held is not None:
            yield held, True

    def documents(self) -> Iterator[str]:
        """Whole documents in order: a long file's pieces joined back (as large as the file)."""
        doc: list[str] = []
        for text, ends in self.pieces():
            doc.append(text)
            if ends:
                yield "".join(doc)
                doc = []

    def head(self, chars: int) -> list[str]:
        """The first documents, up to about `chars` characters in all: the last one cut there if it is longer."""
        out, doc, total = [], [], 0
        for text, ends in self.pieces():
            doc.append(text)
            total += len(text)
            if ends or total >= chars:
                out.append("".join(doc))
                doc = []
            if total >= chars:
                break
        return out

    def sample(self, chars: int) -> list[str]:
        """About `chars` characters of records, the first of each shard's share: the corpus's spread, not its start."""
        out = []
        for path in self.files:
            total = 0
            for record in _records((path,)):
                if total >= chars / len(self.files):
                    break
                out.append(record["text"])
                total += len(record["text"])
        return out

    def characters(self) -> str:
        """Every character the split holds, found in one pass over it and kept in the cache beside the chunks, so a
        later run (or another rank) does not read the split again."""
        from genlab.prepare.store import cache_root

        kept = cache_root() / "tokens" / f"characters-{_digest(*self.digests)}.json"
        if kept.is_file():
            return json.loads(kept.read_text())
        seen: set[str] = set()
        for text, _ in self.pieces():
            seen.update(text)
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps("".join(sorted(seen))))
        partial.replace(kept)
        return json.loads(kept.read_text())


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _records(files: tuple[Path, ...]) -> Iterator[dict]:
    for path in files:
        with path.open(encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())


def streamed_dataset(folder: Path, data) -> Dataset | None:
    """The prepared text set at `folder` as shards to stream, when `data.streaming` says so (auto: by the size of
    its training split); None: the set is read into memory."""
    from genlab.prepare.kinds import SPLITS, split_files
    from genlab.prepare.store import MANIFEST, summary

    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest["modality"] != "text":
        if data.streaming is True:
            raise GenlabError(f"data.streaming: true streams text sets; {folder} holds {manifest['modality']} items, "
                              "which are read into memory (set data.streaming: auto)")
        return None
    splits = {}
    for split in SPLITS:
        files = tuple(split_files(folder, manifest, split))
        listed = manifest.get("shards", {}).get(split)
        if listed is None:  # a set from before shards: one file a split
            files = tuple(f for f in files if f.exists())
            stats = [f.stat() for f in files]
            digests = tuple(f"{f.name}:{s.st_size}:{s.st_mtime_ns}" for f, s in zip(files, stats, strict=True))
            splits[split] = TextShards(files, manifest["splits"][split] if files else 0, sum(s.st_size for s in stats),
                                       digests, data.chunks_url)
        else:
            splits[split] = TextShards(files, sum(s["documents"] for s in listed), sum(s["bytes"] for s in listed),
                                       tuple(s["sha256"] for s in listed), data.chunks_url)
    size = splits["train"].size
    if data.streaming is False or (data.streaming == "auto" and size <= data.stream_above_mb * 1e6):
        return None
    why = "data.streaming: true" if data.streaming is True else f"over data.stream_above_mb {data.stream_above_mb:g}"
    log.info(f"data: streaming {size / 1e6:,.1f} MB of training text from {folder} ({why})")
    notes = [f"prepared by genlab prepare: {folder} ({summary(folder)})", f"streamed from its shards ({why})"]
    return Dataset(DataSpec("text", ()), *(Split(splits[s]) for s in SPLITS), notes)


def tokenizer_corpus(shards: TextShards, kind: str) -> list[str]:
    """What a tokenizer of `kind` learns from: every character of the split (one pass, kept in the cache); a BPE
    vocabulary from a sample of BPE_SAMPLE characters spread over the shards."""
    return [shards.characters()] if kind == "char" else shards.sample(BPE_SAMPLE)


@dataclass(frozen=True)
class TokenWindows:
    """A split's tokens as litdata chunks, read as windows of `context + 1` tokens: from a folder, or from a bucket
    (`data.chunks_url`) through a local cache that litdata fills as it reads and empties past its size."""

    source: str  # a folder, or s3://BUCKET/PREFIX/KEY
    context: int
    windows: int  # in all (litdata's own length is this rank's share)

    def __len__(self) -> int:
        return self.windows

    def dataset(self, shuffle: bool, seed: int = 0):
        from litdata import StreamingDataset, TokensLoader

        from genlab.prepare.store import cache_root

        remote = "://" in self.source
        cache = cache_root() / "streamed" / _digest(self.source) if remote else None
        # whole batches (every rank as many); windows read by index (validation) are all there whatever it says
        return StreamingDataset(self.source, item_loader=TokensLoader(block_size=self.context + 1), shuffle=shuffle,
                                seed=seed, drop_last=True, cache_dir=None if cache is None else str(cache))


def tokenized(tokenizer, shards: TextShards, context: int) -> TokenWindows:
    """`shards` tokenized into the cache (GENLAB_CACHE/tokens/KEY, KEY from the tokenizer, its end-of-text token and
    the shards' digests), once: a file lock makes the other ranks, or a second run, wait for it and reuse it. With
    `shards.chunks_url` the chunks are kept in that bucket, and a run that finds them there tokenizes nothing."""
    _need_litdata()
    key = _digest(LAYOUT, token_identity(tokenizer), *shards.digests)
    if shards.chunks_url is None:
        return _local(_written(tokenizer, shards, key), context)
    from genlab.data.buckets import index_at, upload

    url = f"{shards.chunks_url.rstrip('/')}/{key}"
    index = index_at(url)
    if index is not None:
        return TokenWindows(url, context, _window_count(index, context))
    folder = _written(tokenizer, shards, key)
    log.info(f"data: uploading the chunks to {url}")
    upload(folder, url)
    return _local(folder, context)  # this run has them on its disk already


def token_identity(tokenizer) -> str:
    """What decides a tokenizer's ids for a text: its pipeline (or its vocabulary, for one without a `tokenizers`
    backend) and the end-of-text token put between documents."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return f"{type(tokenizer).__name__}\n{pipeline}\n{tokenizer.eos_token!r} {tokenizer.eos_token_id}"


def _local(folder: Path, context: int) -> TokenWindows:
    return TokenWindows(str(folder), context, _window_count(json.loads((folder / "index.json").read_text()), context))


def _window_count(index: dict, context: int) -> int:
    return sum(chunk["dim"] // (context + 1) for chunk in index["chunks"])


def _written(tokenizer, shards: TextShards, key: str) -> Path:
    """The folder of the shards' chunks in the cache, written now unless a run before wrote it."""
    from filelock import FileLock

    from genlab.prepare.store import cache_root

    folder = cache_root() / "tokens" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{key}.lock")):
        if not (folder / "index.json").is_file():
            log.info(f"data: tokenizing {shards.size / 1e6:,.1f} MB of text into {folder}")
            staging = folder.parent / f".{key}.partial"  # a killed run leaves no folder that looks finished
            shutil.rmtree(staging, ignore_errors=True)
            _write_chunks(tokenizer, shards.files, staging)
            staging.rename(folder)
    return folder


def _write_chunks(tokenizer, files: tuple[Path, ...], out: Path) -> None:
    """The shards' tokens as litdata chunks, in order, written here: the tokenizer's own threads do the work, and
    no process is spawned (which would run a user's script again when it calls fit without a __main__ guard)."""
    from litdata import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    items = 0
    with _one_writer():
        writer = BinaryWriter(str(out), chunk_size=CHUNK_TOKENS, item_loader=TokensLoader())
        for tokens in piece_tokens(tokenizer, TextShards(files, 0, 0, ()).pieces()):
            writer.add_item(items, torch.from_numpy(tokens.astype(dtype)))
            items += 1
        if not items:  # litdata would wait for an index that an empty writer never writes
            raise GenlabError(f"data: {', '.join(f.name for f in files) or 'a split'} holds no text to tokenize")
        writer.done()
        writer.merge()


@contextmanager
def _one_writer() -> Iterator[None]:
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


def _need_litdata() -> None:
    try:
        import litdata  # noqa: F401
    except ImportError:
        raise GenlabError("data.streaming: streaming a set needs litdata: pip install 'genlab[stream]' (or set "
                          "data.streaming: false to read the set into memory)") from None


def _windows(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"x": torch.stack(items)}


class StreamingData(L.LightningDataModule):
    """Batches of token windows streamed from the chunks: the training ones shuffled by `seed`, whole batches only
    (every rank the same number); validation in order."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self._train = None

    def train_dataloader(self):
        if self._train is None:  # one loader for the whole fit: Lightning restores its state into it on resume
            self._train = _epochs_loader()(self.dataset.train.x.dataset(True, self.seed), batch_size=self.batch_size,
                                           collate_fn=_windows, num_workers=0)
        return self._train

    def val_dataloader(self):
        if not len(self.dataset.val):
            return []
        # read by index, so that under DDP Lightning's sampler deals the windows out evenly; litdata deals whole
        # batches, which leaves a rank of a small validation split none
        return torch.utils.data.DataLoader(_ByIndex(self.dataset.val.x), batch_size=self.batch_size,
                                           collate_fn=_windows)


class _ByIndex(torch.utils.data.Dataset):
    """Every window of a split by its index, whatever this process's rank."""

    def __init__(self, windows: TokenWindows) -> None:
        self.windows, self.read = windows, windows.dataset(shuffle=False)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.read[index]


def _epochs_loader():
    """litdata's loader, whose restored epoch ends where Lightning ends it.

    After `load_state_dict` the loader goes on with the saved epoch until its iterator is drawn to the end; Lightning
    stops drawing at the loader's length instead, so without this the next epoch would resume the old one again
    (one batch repeated, then a short epoch) and a resumed run would leave the batches of the uninterrupted one.
    """
    from litdata import StreamingDataLoader

    class Loader(StreamingDataLoader):
        def __iter__(self):
            batches = super().__iter__()
            first = next(batches, None)  # its set-up reads `restore`: a resumed epoch goes on where it was saved
            self.restore = False  # and only this epoch: the next starts afresh, drawn to its end or not
            if first is not None:
                yield first
                yield from batches

    return Loader
