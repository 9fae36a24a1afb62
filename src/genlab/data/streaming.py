"""Text sets larger than memory: a prepared set's shards, tokenized once into litdata chunks (`chunks.py`),
streamed into fit; and the choice to stream any prepared set (images and clips: `streamed_items.py`).

    streamed_dataset(folder, data)   -> a Dataset whose splits are left on disk (TextShards; images and clips:
                                        streamed_items), or None: in memory
    tokenized(tokenizer, shards, n)  -> TokenWindows: the split's tokens in the cache, written once per tokenizer

litdata shuffles by a seed, gives each DDP rank its own part of the chunks, and its loader's state (what was
drawn this epoch) rides in Lightning's checkpoint, so a resumed run draws the batches the whole run would have.
The chunks are written by one litdata writer in this process, with the tokenizer's own threads: their layout, and
so the batches, depend on the data and the tokenizer, not on the machine that wrote them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.data.chunks import LAYOUT, chunks_dataset, kept_chunks, need_litdata, short_digest
from genlab.data.records import Dataset, DataSpec, Split
from genlab.data.tokenize import piece_tokens
from genlab.errors import GenlabError

log = logging.getLogger("genlab")
BPE_SAMPLE = 64 << 20  # characters a BPE vocabulary is learned from, spread over the training shards
CHUNK_TOKENS = 1 << 24  # tokens a chunk file holds (32 MB at two bytes a token; the writer holds about three)


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

        kept = cache_root() / "tokens" / f"characters-{short_digest(*self.digests)}.json"
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


def _records(files: tuple[Path, ...]) -> Iterator[dict]:
    for path in files:
        with path.open(encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())


def streamed_dataset(folder: Path, data) -> Dataset | None:
    """The prepared set at `folder` with its training split left on disk to stream, when `data.streaming` says so
    (auto: by the size of that split's shards); None: the set is read into memory."""
    from genlab.prepare.kinds import SPLITS, shard_files, split_files
    from genlab.prepare.store import MANIFEST, summary

    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest["modality"] not in ("text", "image", "audio"):
        if data.streaming is True:
            raise GenlabError(f"data.streaming: true streams text, image and audio sets; {folder} holds "
                              f"{manifest['modality']} items, which are read into memory (set data.streaming: auto)")
        return None
    if "shards" in manifest:  # from the manifest: the training shards need not be on this machine (chunks_url)
        size = sum(s["bytes"] for s in manifest["shards"]["train"])
    else:  # a set from before shards: one file a split
        suffix = ".jsonl" if manifest["modality"] == "text" else ".safetensors"
        size = sum(f.stat().st_size for f in shard_files(folder, manifest, "train", suffix) if f.exists())
    if data.streaming is False or (data.streaming == "auto" and size <= data.stream_above_mb * 1e6):
        return None
    why = "data.streaming: true" if data.streaming is True else f"over data.stream_above_mb {data.stream_above_mb:g}"
    notes = [f"prepared by genlab prepare: {folder} ({summary(folder)})", f"streamed from its shards ({why})"]
    if manifest["modality"] != "text":
        from genlab.data.streamed_items import streamed_items

        return streamed_items(folder, manifest, data, notes)
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
    log.info(f"data: streaming {size / 1e6:,.1f} MB of training text from {folder} ({why})")
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
        from litdata import TokensLoader

        return chunks_dataset(self.source, shuffle, seed, item_loader=TokensLoader(block_size=self.context + 1))

    @staticmethod
    def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"x": torch.stack(items)}


def tokenized(tokenizer, shards: TextShards, context: int) -> TokenWindows:
    """`shards` tokenized into the cache (GENLAB_CACHE/tokens/KEY, KEY from the tokenizer, its end-of-text token and
    the shards' digests), once: a file lock makes the other ranks, or a second run, wait for it and reuse it. With
    `shards.chunks_url` the chunks are kept in that bucket, and a run that finds them there tokenizes nothing."""
    need_litdata()
    key = short_digest(LAYOUT, token_identity(tokenizer), *shards.digests)
    source, index = kept_chunks(f"tokens/{key}", f"tokenizing {shards.size / 1e6:,.1f} MB of text",
                                shards.chunks_url, lambda out: _write_chunks(tokenizer, shards.files, out))
    return TokenWindows(source, context, sum(chunk["dim"] // (context + 1) for chunk in index["chunks"]))


def token_identity(tokenizer) -> str:
    """What decides a tokenizer's ids for a text: its pipeline (or its vocabulary, for one without a `tokenizers`
    backend) and the end-of-text token put between documents."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return f"{type(tokenizer).__name__}\n{pipeline}\n{tokenizer.eos_token!r} {tokenizer.eos_token_id}"


def _write_chunks(tokenizer, files: tuple[Path, ...], out: Path) -> None:
    """The shards' tokens as litdata chunks, in order, written here: the tokenizer's own threads do the work, and
    no process is spawned (which would run a user's script again when it calls fit without a __main__ guard)."""
    from litdata import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    items = 0
    writer = BinaryWriter(str(out), chunk_size=CHUNK_TOKENS, item_loader=TokensLoader())
    for tokens in piece_tokens(tokenizer, TextShards(files, 0, 0, ()).pieces()):
        writer.add_item(items, torch.from_numpy(tokens.astype(dtype)))
        items += 1
    if not items:  # litdata would wait for an index that an empty writer never writes
        raise GenlabError(f"data: {', '.join(f.name for f in files) or 'a split'} holds no text to tokenize")
    writer.done()
    writer.merge()
