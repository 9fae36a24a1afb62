"""Seq2seq family: an encoder-decoder from `transformers` (T5- or BART-style), for translation and
summarization of (source, target) text pairs.

From scratch, the tokenizer is trained on the training pairs. `init_from` takes a seq2seq folder as
it is, or warm-starts both halves of an encoder-decoder from an encoder-only checkpoint (BERT-style),
as transformers' `EncoderDecoderModel` does. The folder loads with `AutoModelForSeq2SeqLM`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    T5Config,
)

from genlab.config import TrainConfig, sampling_options
from genlab.config.seq2seq import Seq2SeqConfig, Seq2SeqSampling
from genlab.data.records import Dataset, DataSpec, Split
from genlab.data.tokenize import train_tokenizer
from genlab.errors import GenlabError
from genlab.media.formats import TEXTS
from genlab.models.base import GenerativeModel
from genlab.models.hf import layer_classes, load_folder, lora_wrap, part_of, save_folder
from genlab.models.protocol import Suits
from genlab.quiet import library_noise_silenced
from genlab.responsible.memorization import CopyIndex

IGNORE = -100  # label positions the loss skips (padding)


def hf_config(config: Seq2SeqConfig, tokenizer) -> T5Config | BartConfig:
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ff = config.mlp_width or 4 * config.width
    if config.architecture == "t5":
        return T5Config(vocab_size=len(tokenizer), d_model=config.width, d_kv=config.width // config.heads, d_ff=ff,
                        num_layers=config.layers, num_heads=config.heads, dropout_rate=config.dropout,
                        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
    return BartConfig(vocab_size=len(tokenizer), d_model=config.width, encoder_layers=config.layers,
                      decoder_layers=config.layers, encoder_attention_heads=config.heads,
                      decoder_attention_heads=config.heads, encoder_ffn_dim=ff, decoder_ffn_dim=ff,
                      dropout=config.dropout, max_position_embeddings=max(config.max_source_length,
                                                                          config.max_target_length) + 2,
                      pad_token_id=pad, eos_token_id=eos, bos_token_id=eos, decoder_start_token_id=eos,
                      forced_eos_token_id=eos)


def pretrained_seq2seq(name: str, tokenizer, weights: bool = True):
    """A seq2seq model from `name`; an encoder-only checkpoint becomes both halves of an encoder-decoder.
    Without `weights`, the same architecture with fresh weights: the from-scratch baseline of a warm start."""
    config = AutoConfig.from_pretrained(name)
    if config.is_encoder_decoder:
        return (AutoModelForSeq2SeqLM.from_pretrained(name) if weights else AutoModelForSeq2SeqLM.from_config(config)
                ).train()
    if weights:
        net = EncoderDecoderModel.from_encoder_decoder_pretrained(name, name)
    else:
        decoder = copy.deepcopy(config)
        decoder.is_decoder, decoder.add_cross_attention = True, True
        net = EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(config, decoder))
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    net.config.decoder_start_token_id = start if start is not None else tokenizer.eos_token_id
    net.config.pad_token_id, net.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    net.generation_config.decoder_start_token_id = net.config.decoder_start_token_id
    net.generation_config.pad_token_id, net.generation_config.eos_token_id = net.config.pad_token_id, \
        net.config.eos_token_id
    return net.train()


def _load_seq2seq(path: str | Path):
    if AutoConfig.from_pretrained(path).model_type == "encoder-decoder":  # not in AutoModelForSeq2SeqLM's map
        return EncoderDecoderModel.from_pretrained(path)
    return AutoModelForSeq2SeqLM.from_pretrained(path)


class Seq2Seq(GenerativeModel):
    Config = Seq2SeqConfig
    Sampling = Seq2SeqSampling
    media = TEXTS
    preview_limits = {"max_new_tokens": 200}
    suits = Suits("pairs", "an encoder-decoder for text to text (translation, summaries, formats)", "dates-seq2seq")
    hub_library = "transformers"
    tokenizer: Any

    def __init__(self, config: Seq2SeqConfig, spec: DataSpec, train: TrainConfig | None = None, *,
                 tokenizer=None, net=None) -> None:
        super().__init__(config, spec, train)
        if tokenizer is None:
            raise GenlabError("a seq2seq model is built with its tokenizer: use Seq2Seq.build or from_pretrained")
        self.tokenizer = tokenizer
        if net is None:
            net = (pretrained_seq2seq(config.init_from, tokenizer, config.pretrained_weights) if config.init_from
                   else AutoModelForSeq2SeqLM.from_config(hf_config(config, tokenizer)))
            if config.lora is not None:
                net = lora_wrap(net, config.lora, "SEQ_2_SEQ_LM")
        self.net = net
        self.preview_sources: list[str] = []

    @classmethod
    def build(cls, config: Seq2SeqConfig, dataset: Dataset, train: TrainConfig | None = None
              ) -> tuple[Seq2Seq, Dataset]:
        """Train the tokenizer on the training pairs (or take init_from's); encode every split."""
        if config.init_from:
            tokenizer = AutoTokenizer.from_pretrained(config.init_from)
            if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None and tokenizer.sep_token is None:
                raise GenlabError(f"model.init_from: the tokenizer of {config.init_from} lacks a pad or end token")
            if tokenizer.eos_token_id is None:  # BERT-style: [SEP] ends a sequence
                tokenizer.eos_token = tokenizer.sep_token
        else:
            texts = [t for pair in dataset.train.x for t in pair]
            tokenizer = train_tokenizer(config.tokenizer, texts, config.vocab_size, pad=True)
        model = cls(config, DataSpec("pairs", (config.max_source_length,)), train, tokenizer=tokenizer)
        model.preview_sources = [s for s, _ in (dataset.val.x or dataset.train.x)[:4]]
        model.copies = CopyIndex.build([t for _, t in dataset.train.x])
        splits = [Split(*model.encode(split.x)) for split in (dataset.train, dataset.val, dataset.test)]
        if not len(splits[0]):
            raise GenlabError("data: the training split holds no pairs to train on")
        return model, Dataset(model.spec, *splits, dataset.notes)

    def encode(self, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs as (sources, labels): padded token ids, labels IGNORE past each target's end."""
        sources = self._ids([s for s, _ in pairs], self.config.max_source_length, specials=True)
        labels = self._ids([t for _, t in pairs], self.config.max_target_length)
        labels[labels == self.tokenizer.pad_token_id] = IGNORE
        return sources, labels

    def _ids(self, texts: list[str], length: int, specials: bool = False) -> torch.Tensor:
        """Token ids padded to `length`, each row ending in EOS; `specials`: the tokenizer's own markers too
        (a BERT encoder's [CLS] ... [SEP]), as a pretrained encoder saw its inputs."""
        if not texts:
            return torch.empty(0, length, dtype=torch.long)
        eos = self.tokenizer.eos_token_id
        encoded = self.tokenizer(texts, add_special_tokens=specials, truncation=True, max_length=length)["input_ids"]
        rows = [ids if len(ids) <= length and ids[-1:] == [eos] else ids[: length - 1] + [eos] for ids in encoded]
        pad = self.tokenizer.pad_token_id
        return torch.tensor([row + [pad] * (length - len(row)) for row in rows], dtype=torch.long)

    # --- training --------------------------------------------------------------------------------

    def seq2seq_loss(self, batch: dict) -> torch.Tensor:
        x = batch["x"]
        mask = (x != self.tokenizer.pad_token_id).long()
        with library_noise_silenced():
            return self.net(input_ids=x, attention_mask=mask, labels=batch["y"], use_cache=False).loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.seq2seq_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def tokens_in(self, batch: dict) -> int:
        return int((batch["x"] != self.tokenizer.pad_token_id).sum() + (batch["y"] != IGNORE).sum())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.seq2seq_loss(batch), prog_bar=True, batch_size=len(batch["x"]), sync_dist=True)

    # --- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | list[torch.Generator] | None = None,
               source: str | list[str] = "", **options: Any) -> list[str]:
        """The model's output for each source (one, or one per sample)."""
        opts = Seq2SeqSampling(**sampling_options(self.config.family, options))  # ConfigError naming a bad key
        sources = [source] * n if isinstance(source, str) else list(source)
        if len(sources) != n:
            raise GenlabError(f"source: got {len(sources)} sources for {n} samples")
        if isinstance(generator, list):
            return [self._generate([s], g, opts)[0] for s, g in zip(sources, generator, strict=True)]
        return self._generate(sources, generator, opts)

    def respond(self, prompts: list[str], *, generator: torch.Generator | None = None, **options: Any) -> list[str]:
        """The output for each prompt as a source (what an audit of text asks every text family for)."""
        return self.sample(len(prompts), generator=generator, source=prompts, **options)

    @torch.no_grad()
    def log_likelihood(self, texts: list[str], source: str = "") -> list[float]:
        """Each text's log-likelihood in nats as the output for `source` (the decoder as a language model)."""
        x = self._ids([source] * len(texts), self.config.max_source_length, specials=True).to(self.device)
        labels = self._ids(texts, self.config.max_target_length).to(self.device)
        kept = labels != self.tokenizer.pad_token_id
        with library_noise_silenced():
            logits = self.net(input_ids=x, attention_mask=(x != self.tokenizer.pad_token_id).long(),
                              labels=labels.masked_fill(~kept, IGNORE), use_cache=False).logits.float()
        logp = F.log_softmax(logits, -1).gather(2, labels[:, :, None]).squeeze(2)
        return (logp * kept).sum(1).tolist()

    def preview(self, n: int, generator: torch.Generator | None = None) -> list[str]:
        sources = [self.preview_sources[i % len(self.preview_sources)] for i in range(n)] if self.preview_sources \
            else [""] * n
        outputs = self.sample(n, generator=generator, source=sources, **self.preview_options())
        return [f"{s}\n-> {p}" for s, p in zip(sources, outputs, strict=True)]

    def _generate(self, sources: list[str], generator: torch.Generator | None, opts: Seq2SeqSampling) -> list[str]:
        ids = self._ids(sources, self.config.max_source_length, specials=True).to(self.device)
        ids = ids[:, : int((ids != self.tokenizer.pad_token_id).sum(1).max())]  # no columns of padding only
        sampled = opts.temperature > 0
        with torch.random.fork_rng(devices=[]):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            out = self.net.generate(
                input_ids=ids, attention_mask=(ids != self.tokenizer.pad_token_id).long(),
                max_new_tokens=opts.max_new_tokens, num_beams=opts.num_beams, do_sample=sampled,
                temperature=opts.temperature if sampled else None, top_k=opts.top_k if sampled else None,
                top_p=opts.top_p if sampled else None,
            )
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        return [text[:min(text.index(s) for s in opts.stop if s in text)] if any(s in text for s in opts.stop)
                else text for text in texts]

    # --- the model folder --------------------------------------------------------------------------

    def shard_layers(self) -> set[type[torch.nn.Module]]:
        return layer_classes(self.net, self.config.lora)

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        save_folder(self.net, self.tokenizer, self.config.lora, Path(path), part_of(state_dict, "net"))
        self.write_meta(Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Seq2Seq:
        config, spec = cls.read_meta(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        net = load_folder(path, _load_seq2seq, lambda: pretrained_seq2seq(config.init_from, tokenizer))
        model = cls(config, spec, tokenizer=tokenizer, net=net)
        model.copies = CopyIndex.load(path)
        return model.eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
