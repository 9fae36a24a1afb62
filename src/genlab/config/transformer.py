"""The transformer family's config and sampling options (pydantic only: configs validate without torch)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints, model_validator

from genlab.config import ModelConfig, Section
from genlab.config.section import Sampling


class LoraConfig(Section):
    r: int = Field(8, ge=1)  # rank of each adapter
    alpha: float = Field(16.0, gt=0)  # the update is scaled by alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"  # peft's names, e.g. [q_proj, v_proj]
    export: Literal["merged", "adapter"] = "merged"  # model/: plain transformers weights, or a peft adapter


class TransformerConfig(ModelConfig):
    family: Literal["transformer"] = "transformer"
    capabilities: ClassVar[tuple[str, ...]] = ("text",)
    architecture: Literal["llama", "gpt2"] = "llama"  # llama: RoPE, RMSNorm, SwiGLU; gpt2: learned positions
    tokenizer: Literal["char", "bpe"] = "char"  # trained on the training split only
    vocab_size: int = Field(2048, ge=260)  # bpe only: a char vocabulary is the training text's characters
    context: int = Field(256, ge=4)  # tokens per training window, and the longest sequence the model sees
    # training windows start every window_stride tokens (1: at every offset, as nanoGPT samples them);
    # None: every `context` tokens, disjoint. Held-out windows are always disjoint.
    window_stride: int | None = Field(None, ge=1)
    layers: int = Field(4, ge=1)
    width: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    kv_heads: int | None = Field(None, ge=1)  # llama: grouped-query attention; None: one per head
    mlp_width: int | None = Field(None, ge=8)  # None: 4 x width (gpt2); 8/3 x width, to a multiple of 32 (llama)
    dropout: float = Field(0.0, ge=0, lt=1)
    tie_embeddings: bool = True
    rope_theta: float = Field(10000.0, gt=0)
    # auto: eager for bf16 on a CPU (there torch's flash-attention backward made the shakespeare step 1.5x
    # slower, bench/transformer_levers.py), sdpa elsewhere (fp32 on a CPU: sdpa is 1.15x faster)
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    init_from: str | None = None  # a transformers folder or hub id: its weights and tokenizer replace the above
    pretrained_weights: bool = True  # False: init_from's architecture and tokenizer, fresh weights (a baseline)
    lora: LoraConfig | None = None  # train low-rank adapters only (needs init_from)

    @model_validator(mode="after")
    def _consistent(self) -> TransformerConfig:
        check_text_model(self)
        if self.window_stride and self.window_stride > self.context:
            raise ValueError(f"window_stride {self.window_stride} must not exceed context {self.context}: "
                             "text between windows would never be trained on")
        if self.kv_heads and self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} must divide by kv_heads {self.kv_heads}")
        return self


def check_text_model(config: TransformerConfig | ModelConfig) -> None:
    """What every text family's config must hold together (the seq2seq config shares it)."""
    if config.width % config.heads:
        raise ValueError(f"width {config.width} must divide by heads {config.heads}")
    if config.lora is not None and config.init_from is None:
        raise ValueError("lora trains adapters on a pretrained model: set model.init_from")


Stops = Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=256)]], Field(max_length=4)]


class TextSampling(Sampling):
    """A causal LM's options: `genlab sample`, eval.sampling, and the server's requests (OpenAI's fields under
    these names) all take them from here."""

    max_new_tokens: int = Field(200, ge=0, le=1_000_000, description="Tokens to generate.")
    min_new_tokens: int = Field(0, ge=0, le=1_000_000, description="No end of text before this many tokens.")
    temperature: float = Field(1.0, ge=0, le=100, description="0 is greedy.")
    top_k: int | None = Field(None, ge=1, le=2**31 - 1, description="Sample from the k likeliest tokens.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling: the smallest set with this mass.")
    repetition_penalty: float = Field(1.0, gt=0, le=100, description="Above 1 discourages repeats.")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="Less likely by a token's count in the output.")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="Less likely once a token is in the output.")
    stop: Stops = Field([], description="Cut the text before the first of these (up to 4).")
