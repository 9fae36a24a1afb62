"""Tokenizers trained on a training split, and documents packed into fixed-length token windows.

Both tokenizers are `tokenizers` pipelines wrapped as a transformers fast tokenizer, so the model
folder loads with `AutoTokenizer.from_pretrained` and no genlab code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from itertools import chain

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"  # between documents, and the end of a generation
PAD = "<pad>"  # only where padding must differ from the end (seq2seq batches)
_CHARACTER = "(?m)."  # a character tokenizer's pieces; (?m): '.' matches \n too


def train_tokenizer(kind: str, documents: Iterable[str], vocab_size: int, pad: bool = False
                    ) -> PreTrainedTokenizerFast:
    """'char': one token per character seen in `documents`; 'bpe': byte-level BPE of `vocab_size` tokens.

    Padding is EOS unless `pad`, which adds a token of its own.
    """
    specials = [EOS, PAD] if pad else [EOS]
    if kind == "char":
        seen: set[str] = set()
        for doc in documents:  # one at a time: `documents` may be a stream of more text than memory holds
            seen.update(doc)
        chars = sorted(seen)
        vocab = {**{s: i for i, s in enumerate(specials)}, **{c: i + len(specials) for i, c in enumerate(chars)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(_CHARACTER), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(documents, trainer)
    # clean_up_tokenization_spaces would turn " ." into "." when decoding: text must round-trip
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD if pad else EOS,
                                   clean_up_tokenization_spaces=False)


PIECE = 1 << 18  # characters of one document tokenized at once
BATCH = 1 << 21  # characters tokenized in one call: enough pieces for the tokenizer's threads, few Python ints


def _pieces(doc: str) -> list[str]:
    """The document cut after a newline that a non-space follows, about every PIECE characters: where byte-level
    BPE's pre-tokenizer and a character tokenizer split already, so the tokens of the pieces are the document's."""
    pieces, start = [], 0
    while len(doc) - start > PIECE:
        cut = _newline_before_word.search(doc, start + PIECE)
        if cut is None:
            break
        pieces.append(doc[start:cut.end()])
        start = cut.end()
    return [*pieces, doc[start:]]


_newline_before_word = re.compile(r"\n(?=\S)")


def token_chunks(tokenizer, documents: Iterable[str]) -> Iterator[np.ndarray]:
    """The documents' tokens with EOS after each, as int32 arrays of about BATCH characters each: no long list of
    Python ints ever exists."""
    return piece_tokens(tokenizer, ((doc, True) for doc in documents))


def piece_tokens(tokenizer, texts: Iterable[tuple[str, bool]]) -> Iterator[np.ndarray]:
    """`token_chunks` of documents given in parts: (text, whether it ends its document). A part's text waits for
    the next from its last safe cut on (a newline before a word, where the tokenizer splits anyway), so the tokens
    are the whole document's; a tokenizer that may join across lines (Metaspace...) gets whole documents."""
    spec = _pipeline(tokenizer)  # read once a call: a BPE pipeline's JSON is megabytes
    table, added = _character_table(spec), tuple(tokenizer.get_added_vocab())
    cut = _pieces if _splits_at_line_ends(spec) else (lambda text: [text])
    pieces: list[str] = []
    ends: list[bool] = []  # per piece: whether it closes its document
    size, held = 0, ""
    for text, closes in texts:
        parts = cut(held + text)
        held = "" if closes else parts.pop()  # the tail, after the last safe cut, goes on in the next part
        for j, piece in enumerate(parts):
            if size >= BATCH:
                yield _tokens(tokenizer, pieces, ends, table, added)
                pieces, ends, size = [], [], 0
            pieces.append(piece)
            ends.append(closes and j == len(parts) - 1)
            size += len(piece)
    if held:
        pieces.append(held)
        ends.append(False)
    if pieces:
        yield _tokens(tokenizer, pieces, ends, table, added)


def _tokens(tokenizer, pieces: list[str], ends: list[bool], table: np.ndarray | None, added: tuple[str, ...]
            ) -> np.ndarray:
    eos = tokenizer.eos_token_id
    text = "".join(pieces)
    if table is not None and not any(token in text for token in added):  # an added token is matched whole
        try:
            codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        except UnicodeEncodeError:  # a lone surrogate: the tokenizer's own way below
            codes = None
        if codes is not None:
            closes = np.cumsum([len(p) for p in pieces])[np.asarray(ends, bool)]
            return np.insert(table[np.minimum(codes, len(table) - 1)], closes, eos)
    ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
    return np.fromiter(chain.from_iterable((*i, eos) if end else i for i, end in zip(ids, ends, strict=True)),
                       np.int32, count=sum(map(len, ids)) + sum(ends))


def _pipeline(tokenizer) -> dict:
    """The `tokenizers` pipeline behind a tokenizer, as its JSON; {} for one without (a Python or SentencePiece one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else {}


def _is_characters(spec: dict) -> bool:
    split = spec.get("pre_tokenizer") or {}
    return (spec.get("model", {}).get("type") == "WordLevel" and not spec.get("normalizer")
            and split.get("type") == "Split" and split.get("pattern") == {"Regex": _CHARACTER})


def _splits_at_line_ends(spec: dict) -> bool:
    """Whether the tokenizer (its `_pipeline`) never joins a line's end to the next line's start: its tokens of the
    text cut after a newline are the text's. True for genlab's character and byte-level BPE tokenizers (and GPT-2's)."""
    split = spec.get("pre_tokenizer") or {}
    byte_level = split.get("type") == "ByteLevel" and not split.get("add_prefix_space") and not spec.get("normalizer")
    return _is_characters(spec) or byte_level


def _character_table(spec: dict) -> np.ndarray | None:
    """A character tokenizer's (`train_tokenizer("char")`, given as its `_pipeline`) ids by code point, the last
    entry for every code point past the table: unknown characters get its unknown token, as its WordLevel model
    gives them. Looking text up in it is the tokenizer's answer at a hundred times its speed. None for any other."""
    if not _is_characters(spec):
        return None
    model = spec["model"]
    chars = {ord(k): v for k, v in model["vocab"].items() if len(k) == 1}
    table = np.full(max(chars, default=0) + 2, model["vocab"][model["unk_token"]], np.int32)
    table[list(chars)] = list(chars.values())
    return table


def pack(tokenizer, documents: list[str], context: int, stride: int | None = None) -> torch.Tensor:
    """Documents joined with EOS after each, cut into (N, context + 1) windows: inputs and shifted targets.

    By default windows overlap by one token, so every token is a target exactly once; the tail shorter
    than a window is dropped, unless it is all there is. A smaller `stride` starts a window every `stride`
    tokens. The windows are a view over one int32 stream, so they cost four bytes a token whatever the
    stride (models take them as indices; `long()` per batch for losses).
    """
    eos = tokenizer.eos_token_id
    stream = np.concatenate([np.empty(0, np.int32), *token_chunks(tokenizer, documents)])
    if not len(stream):
        return torch.empty(0, context + 1, dtype=torch.int32)
    if len(stream) < context + 1:
        stream = np.concatenate([stream, np.full(context + 1 - len(stream), eos, np.int32)])
    tokens = torch.from_numpy(stream)
    step = stride if stride is not None and stride < context else context
    return tokens.unfold(0, context + 1, step)
