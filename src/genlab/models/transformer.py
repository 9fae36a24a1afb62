"""Transformer family: a causal language model from `transformers` (Llama-style or GPT-2).

Training is next-token cross-entropy on packed token windows. The tokenizer (character or
byte-level BPE) is trained on the training split, or comes with `init_from`'s pretrained model;
LoRA adapters through peft train only themselves. Generation is transformers' `generate` with
its KV cache. The model folder is a transformers folder: `pipeline("text-generation", folder)`
loads it without genlab.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    LogitsProcessor,
    LogitsProcessorList,
)

from genlab.config import TrainConfig, sampling_options
from genlab.config.transformer import TextSampling, TransformerConfig
from genlab.data.records import Dataset, DataSpec, Split
from genlab.data.streaming import TextShards, tokenized, tokenizer_corpus
from genlab.data.tokenize import pack, train_tokenizer
from genlab.errors import GenlabError
from genlab.media.formats import TEXTS
from genlab.models.base import GenerativeModel
from genlab.models.hf import layer_classes, load_folder, lora_wrap, part_of, save_folder
from genlab.models.protocol import Graph, Suits
from genlab.responsible.memorization import CopyIndex

log = logging.getLogger("genlab")


def hf_config(config: TransformerConfig, tokenizer) -> LlamaConfig | GPT2Config:
    """The transformers config of a from-scratch model, sized by ours."""
    eos = tokenizer.eos_token_id
    ids = {"vocab_size": len(tokenizer), "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos,
           "tie_word_embeddings": config.tie_embeddings}
    if config.architecture == "gpt2":
        return GPT2Config(n_positions=config.context, n_embd=config.width, n_layer=config.layers, n_head=config.heads,
                          n_inner=config.mlp_width, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
                          attn_pdrop=config.dropout, **ids)
    mlp = config.mlp_width or -(-8 * config.width // 3 // 32) * 32  # SwiGLU at about the parameters of 4x
    return LlamaConfig(hidden_size=config.width, intermediate_size=mlp, num_hidden_layers=config.layers,
                       num_attention_heads=config.heads, num_key_value_heads=config.kv_heads or config.heads,
                       max_position_embeddings=config.context, attention_dropout=config.dropout,
                       rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta}, **ids)


class _Logits(torch.nn.Module):
    """Token ids -> next-token logits, with no KV cache: one forward pass over the whole window."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


class Transformer(GenerativeModel):
    Config = TransformerConfig
    Sampling = TextSampling
    media = TEXTS
    preview_limits = {"max_new_tokens": 200}
    suits = Suits("text", "a causal transformer with characters as tokens, for a corpus this small (under 5 MB): no "
                  "vocabulary is spent on rare words", "shakespeare-char",
                  large=(5_000_000, "python-docs-lm", "a causal transformer with byte-level BPE tokens, for a corpus "
                                                      "this size"))
    hub_library = "transformers"
    tokenizer: Any
    lm: Any  # the transformers causal LM (peft-wrapped with LoRA)
    context: int  # tokens the model attends to

    def __init__(self, config: TransformerConfig, spec: DataSpec, train: TrainConfig | None = None, *,
                 tokenizer=None, lm=None) -> None:
        super().__init__(config, spec, train)
        if tokenizer is None:
            raise GenlabError("a transformer is built with its tokenizer: use Transformer.build or from_pretrained")
        self.tokenizer = tokenizer
        self.context = spec.shape[0]
        if lm is None:
            if config.init_from:
                lm = (AutoModelForCausalLM.from_pretrained(config.init_from) if config.pretrained_weights else
                      AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config.init_from))).train()
            else:
                lm = AutoModelForCausalLM.from_config(hf_config(config, tokenizer))
            if config.lora is not None:
                lm = lora_wrap(lm, config.lora, "CAUSAL_LM")
        self.lm = lm
        self.preview_prompts = [""]

    @classmethod
    def build(cls, config: TransformerConfig, dataset: Dataset, train: TrainConfig | None = None
              ) -> tuple[Transformer, Dataset]:
        """Train the tokenizer on the training documents (or take init_from's), pack every split into windows;
        a streamed set's training and validation splits are tokenized into chunks on disk instead."""
        streamed = isinstance(dataset.train.x, TextShards)
        if config.init_from:
            tokenizer = _pretrained_tokenizer(config.init_from)
            limit = _position_limit(config.init_from)
            context = min(config.context, limit) if limit else config.context
        else:
            corpus = tokenizer_corpus(dataset.train.x, config.tokenizer) if streamed else dataset.train.x
            tokenizer = train_tokenizer(config.tokenizer, corpus, config.vocab_size)
            context = config.context
        spec = DataSpec("text", (context,))
        if streamed:
            if config.window_stride is not None:
                raise GenlabError("model.window_stride: overlapping windows are for a corpus held in memory; a "
                                  "streamed set is read in windows of model.context (set data.streaming: false)")
            chunks = [Split(tokenized(tokenizer, s.x, context) if len(s) else []) for s in (dataset.train, dataset.val)]
            windows = [*chunks, dataset.test]  # evaluation reads the held-out text itself
            openings = (dataset.val.x or dataset.train.x).head(chars=1 << 16)[:3]
        else:
            windows = [Split(pack(tokenizer, dataset.train.x, context, config.window_stride)),
                       *(Split(pack(tokenizer, split.x, context)) for split in (dataset.val, dataset.test))]
            openings = (dataset.val.x or dataset.train.x)[:3]
        if not len(windows[0]):
            raise GenlabError("data: the training split holds no text to train on")
        model = cls(config, spec, train, tokenizer=tokenizer)
        # the index of the training text's windows costs 8 bytes a character: kept for sets held in memory
        model.copies = None if streamed else CopyIndex.build(dataset.train.x)
        model.preview_prompts = ["", *map(_opening, openings)]
        return model, Dataset(spec, *windows, dataset.notes)

    def encode(self, documents: list[str]) -> torch.Tensor:
        """Documents as the model's (N, context + 1) training windows (for evaluation on held-out text)."""
        return pack(self.tokenizer, documents, self.context)

    # --- training --------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        attention = self.config.attention
        if attention == "auto":
            cpu_bf16 = self.device.type == "cpu" and self.train_config.precision.startswith("bf16")
            attention = "eager" if cpu_bf16 else "sdpa"
        self.lm.set_attn_implementation(attention)

    def lm_loss(self, windows: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        windows = windows.long()  # packed windows are int32 (`pack`); the loss's targets are int64
        logits = self.lm(input_ids=windows[:, :-1], use_cache=False).logits
        return F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten(), reduction=reduction)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.lm_loss(batch["x"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def tokens_in(self, batch: dict) -> int:
        return batch["x"][:, 1:].numel()  # the predicted ones

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.lm_loss(batch["x"]), prog_bar=True, batch_size=len(batch["x"]), sync_dist=True)

    # --- sampling --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | list[torch.Generator] | None = None,
               prompt: str | list[str] = "", **options: Any) -> list[str]:
        """`n` continuations of `prompt` (one, or one per sample), without the prompt; the same seed, the same text.

        `generator` may be a list, one per sample: each is then drawn as if alone (as a server batches).
        """
        opts = TextSampling(**sampling_options(self.config.family, options))  # ConfigError naming a bad key
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise GenlabError(f"prompt: got {len(prompts)} prompts for {n} samples")
        if isinstance(generator, list):
            return [self._generate([p], g, opts)[0] for p, g in zip(prompts, generator, strict=True)]
        return self._generate(prompts, generator, opts)

    def respond(self, prompts: list[str], *, generator: torch.Generator | None = None, **options: Any) -> list[str]:
        """A continuation of each prompt (what an audit of text asks every text family for)."""
        return self.sample(len(prompts), generator=generator, prompt=prompts, **options)

    @torch.no_grad()
    def log_likelihood(self, texts: list[str]) -> list[float]:
        """Each text's log-likelihood in nats as a new document (after end-of-text), cut to the context."""
        eos = self.tokenizer.eos_token_id
        rows = [[eos, *self.tokenizer(t, add_special_tokens=False)["input_ids"]][: self.context] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        logits = self.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logp = F.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None]).squeeze(2)
        return (logp * mask[:, 1:]).sum(1).tolist()

    def shown(self, samples: list[str], prompt: str | list[str] = "", **conditions: Any) -> list[str]:
        """Each continuation after its prompt."""
        prompts = [prompt] * len(samples) if isinstance(prompt, str) else prompt
        return [p + s for p, s in zip(prompts, samples, strict=True)]

    def preview(self, n: int, generator: torch.Generator | None = None) -> list[str]:
        prompts = [self.preview_prompts[i % len(self.preview_prompts)] for i in range(n)]
        texts = self.sample(n, generator=generator, prompt=prompts, **self.preview_options())
        return [p + t for p, t in zip(prompts, texts, strict=True)]

    def _generate(self, prompts: list[str], generator: torch.Generator | None, opts: TextSampling) -> list[str]:
        seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else None
        eos = self.tokenizer.eos_token_id
        seqs = [self._prompt_ids(p, opts.max_new_tokens) for p in prompts]
        starts = [len(s) for s in seqs]
        done = [False] * len(seqs)
        remaining = opts.max_new_tokens
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            while remaining > 0 and not all(done):
                # within one context the KV cache carries the whole generation; past it, the
                # window slides by half a context and the cache is rebuilt once per slide
                longest = max(len(s) for s, d in zip(seqs, done, strict=True) if not d)
                keep = min(longest, max(self.context // 2, self.context - remaining))
                chunk = min(remaining, self.context - keep)
                active = [i for i, d in enumerate(done) if not d]
                new = self._generate_chunk([seqs[i][-keep:] for i in active], chunk, opts,
                                           [seqs[i][starts[i]:] for i in active])
                for i, tokens in zip(active, new, strict=True):
                    seqs[i] += tokens
                    text = self.tokenizer.decode(seqs[i][starts[i]:])
                    done[i] = eos in tokens or any(s in text for s in opts.stop)
                remaining -= chunk
        texts = []
        for seq, start in zip(seqs, starts, strict=True):
            gen = seq[start:]
            text = self.tokenizer.decode(gen[: gen.index(eos)] if eos in gen else gen)
            cuts = [text.index(s) for s in opts.stop if s in text]
            texts.append(text[: min(cuts)] if cuts else text)
        return texts

    def _generate_chunk(self, windows: list[list[int]], new_tokens: int, opts: TextSampling,
                        generated: list[list[int]]) -> list[list[int]]:
        """`new_tokens` more for each window; `generated`: each row's tokens so far (for min length and penalties)."""
        eos = self.tokenizer.eos_token_id
        width = max(len(w) for w in windows)  # left padding: every prompt ends where generation starts
        ids = torch.tensor([[eos] * (width - len(w)) + w for w in windows], device=self.device)
        mask = torch.tensor([[0] * (width - len(w)) + [1] * len(w) for w in windows], device=self.device)
        sampled = opts.temperature > 0
        penalties = LogitsProcessorList()
        if opts.frequency_penalty or opts.presence_penalty:
            penalties.append(_Penalties(opts.frequency_penalty, opts.presence_penalty, generated, len(self.tokenizer),
                                        width))
        out = self.lm.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=sampled,
            temperature=opts.temperature if sampled else None, top_k=opts.top_k or (0 if sampled else None),
            top_p=opts.top_p if sampled else None, repetition_penalty=opts.repetition_penalty,
            min_new_tokens=min(max(0, opts.min_new_tokens - len(generated[0])), new_tokens) or None,
            logits_processor=penalties, pad_token_id=eos, eos_token_id=eos,
        )
        return [row[width:].tolist() for row in out]

    def _prompt_ids(self, prompt: str, max_new_tokens: int) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        ids = ids or [self.tokenizer.eos_token_id]  # an empty prompt starts a new document
        room = self.context - min(max_new_tokens, self.context // 2)
        if len(ids) > room:
            log.warning(f"prompt: {len(ids)} tokens, more than the {room} that fit the model's context of "
                        f"{self.context} with room to generate; kept the last {room}")
            ids = ids[-room:]
        return ids

    # --- the model folder --------------------------------------------------------------------------

    def onnx_graphs(self) -> dict[str, Graph]:
        from torch.export import Dim

        ids = {"input_ids": torch.randint(0, len(self.tokenizer), (2, min(16, self.context)))}
        # transformers' attention masks trace only through torch.export, so the lengths are Dims
        return {"lm": Graph(_Logits(self.lm), ids, {"input_ids": {0: "batch", 1: "length"}},
                            "next-token logits (N, length, vocab); no KV cache", output="logits",
                            output_axes={0: "batch", 1: "length"},
                            traced={"input_ids": {0: Dim("batch"), 1: Dim("length", max=self.context)}})}

    def shard_layers(self) -> set[type[torch.nn.Module]]:
        return layer_classes(self.lm, self.config.lora)

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None) -> None:
        save_folder(self.lm, self.tokenizer, self.config.lora, Path(path), part_of(state_dict, "lm"))
        self.write_meta(Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Transformer:
        config, spec = cls.read_meta(path)
        lm = load_folder(path, AutoModelForCausalLM.from_pretrained,
                         lambda: AutoModelForCausalLM.from_pretrained(config.init_from))
        model = cls(config, spec, tokenizer=AutoTokenizer.from_pretrained(path), lm=lm)
        model.copies = CopyIndex.load(path)
        return model.eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.lm.parameters())


class _Penalties(LogitsProcessor):
    """OpenAI's frequency and presence penalties (as the serving engine applies them): each token's logit less
    `frequency` times its count in the output so far, and less `presence` once it is there."""

    def __init__(self, frequency: float, presence: float, generated: list[list[int]], vocabulary: int,
                 width: int) -> None:
        self.frequency, self.presence, self.seen = frequency, presence, width
        self.counts = torch.zeros(len(generated), vocabulary)
        for row, tokens in enumerate(generated):
            self.counts[row] += torch.bincount(torch.tensor(tokens, dtype=torch.long), minlength=vocabulary)[
                :vocabulary].float()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.counts = self.counts.to(scores.device)
        drawn = input_ids[:, self.seen:]  # the tokens drawn since the last call
        self.counts.scatter_add_(1, drawn, torch.ones_like(drawn, dtype=self.counts.dtype))
        self.seen = input_ids.shape[1]
        return scores - self.frequency * self.counts - self.presence * (self.counts > 0).float()


def _pretrained_tokenizer(name: str):
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.eos_token_id is None:
        raise GenlabError(f"model.init_from: the tokenizer of {name} has no end-of-text token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _position_limit(name: str) -> int | None:
    cfg = AutoConfig.from_pretrained(name)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _opening(document: str, chars: int = 24) -> str:
    """The start of a document, cut at a word boundary: a prompt the model has never been trained on."""
    head = document[:chars]
    return head[: head.rfind(" ")] if " " in head.strip() else head
