"""What `genlab serve --config serve.yaml` may set: batching, limits, keys, rate limits, filters, CORS."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, model_validator

from genlab.config import Section
from genlab.errors import ConfigError


class RateLimit(Section):
    """Per API key (per client address when no keys are set)."""

    requests_per_minute: int | None = Field(None, ge=1)
    # generated tokens: a request's max_tokens is reserved when it is admitted, what it did not use is refunded
    tokens_per_minute: int | None = Field(None, ge=1)
    concurrent_requests: int | None = Field(64, ge=1)  # in flight at once; None: only max_queue bounds them
    # the share of a model's queue (max_queue sequences or items, waiting or running) one identity may hold; 1: any
    queue_share: float = Field(0.5, gt=0, le=1)


class Limits(Section):
    max_n: int = Field(8, ge=1)  # completions or images per request
    max_prompt_chars: int = Field(32_000, ge=1)
    max_tokens: int = Field(4096, ge=1)  # new tokens per choice, whatever the model's context (seq2seq has none)
    max_body_bytes: int = Field(8_000_000, ge=1024)
    max_image_side: int = Field(1024, ge=8)  # images sent for upscaling
    # memory one upscale request may take (tiles, outputs, their PNGs and JSON), from the sizes in the images'
    # headers: keep it under the container's memory limit (the exported one: 4 Gi), with room for the rest
    max_upscale_bytes: int = Field(2**30, ge=2**20)
    # memory the running upscale requests of every model take together: past it a request waits its turn
    max_memory_bytes: int = Field(3 * 2**30, ge=2**20)
    max_rows: int = Field(10_000, ge=1)  # table rows per request
    max_steps: int = Field(250, ge=1)  # diffusion sampler steps per request

    @model_validator(mode="after")
    def _one_request_fits(self) -> Limits:
        if self.max_upscale_bytes > self.max_memory_bytes:
            raise ValueError(f"max_upscale_bytes ({self.max_upscale_bytes:,}) exceeds max_memory_bytes "
                             f"({self.max_memory_bytes:,}): a request that large could never run")
        return self


class BlocklistFilter(Section):
    """Terms matched case-insensitively on word boundaries; a match replaces the output or refuses it."""

    type: Literal["blocklist"] = "blocklist"
    terms: list[str] = []
    action: str = Field("refuse", pattern="^(refuse|replace)$")
    replacement: str = "[filtered]"


class PIIFilter(Section):
    """Personal data (genlab.responsible.pii): flagged in the response, redacted as [EMAIL], [CARD]..., or the
    output refused."""

    type: Literal["pii"] = "pii"
    kinds: list[Literal["email", "card", "iban", "ssn", "ipv4", "ipv6", "phone"]] = ["email", "card", "iban",
                                                                                       "ssn", "ipv4", "ipv6", "phone"]
    action: Literal["flag", "redact", "refuse"] = "redact"


class OffensiveFilter(Section):
    """Offensive sentences (genlab.responsible.offensive, alt-profanity-check): flagged, redacted as [OFFENSIVE], or
    the output refused. A stream releases each sentence once it has ended and been judged."""

    type: Literal["offensive"] = "offensive"
    threshold: float = Field(0.8, ge=0.05, le=1.0)  # the model's probability from which a sentence is offensive
    action: Literal["flag", "redact", "refuse"] = "redact"

    @model_validator(mode="after")
    def _installed(self) -> OffensiveFilter:
        from genlab.responsible.offensive import available

        if not available():
            raise ValueError("an offensive-text filter needs alt-profanity-check: pip install 'genlab[audit]'")
        return self


class MemorizedFilter(Section):
    """Continuations that copy `min_chars` or more characters verbatim from the model's training text (the copy
    index that `genlab fit` keeps in a text model's folder): flagged, redacted as [MEMORIZED], or refused."""

    type: Literal["memorized"] = "memorized"
    min_chars: int = Field(50, ge=50, le=10_000)  # 50: the window the index is built on
    action: Literal["flag", "redact", "refuse"] = "redact"
    # a copy may begin in the prompt: a client that feeds a training passage back piece by piece is caught. The
    # cost: a prompt that quotes training text has its continuation of the quote redacted too
    prompt: bool = False


def _filter_type(value: Any) -> str:
    return value.get("type", "blocklist") if isinstance(value, dict) else getattr(value, "type", "blocklist")


OutputRule = Annotated[Annotated[BlocklistFilter, Tag("blocklist")] | Annotated[PIIFilter, Tag("pii")]
                       | Annotated[OffensiveFilter, Tag("offensive")] | Annotated[MemorizedFilter, Tag("memorized")],
                       Discriminator(_filter_type)]


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    names: list[str] = []  # a name per model, in the order given; default: each run's name
    max_batch_size: int = Field(32, ge=1)  # sequences decoded together, or images sampled in one call
    max_wait_ms: float = Field(5.0, ge=0)  # how long an idle worker waits for company before it starts
    max_queue: int = Field(256, ge=1)  # waiting requests per model; beyond it: 503 with Retry-After
    # a causal LM decodes in a process of its own (the server's event loop keeps its interpreter lock), or in a
    # thread of the server's (starts faster, one copy of the weights in one process)
    engine: Literal["process", "thread"] = "process"
    api_keys: list[str] = []  # also GENLAB_API_KEYS (comma-separated); any key set: generation routes need one
    rate_limit: RateLimit = RateLimit()
    limits: Limits = Limits()
    filters: list[OutputRule] = []  # each output passes every rule, as it streams
    cors_origins: list[str] = []
    # addresses (or networks) of the proxies in front whose X-Forwarded-For is believed; none by default, so that
    # a client cannot choose the address its limits are kept under
    trusted_proxies: list[str] = []
    # what answers without a key when keys are set (every generation route and /v1/models always need one)
    public: list[Literal["health", "ready", "metrics", "docs"]] = ["health"]
    shutdown_seconds: float = Field(30.0, ge=0)  # graceful shutdown: how long in-flight requests may finish
    # on SIGTERM or SIGINT, before shutdown_seconds: /ready answers 503 while requests are still served, for a
    # load balancer (a Kubernetes Service) that goes on sending new ones for a few seconds; a second signal: now
    drain_seconds: float = Field(5.0, ge=0)
    # a second port where /health, /ready and /metrics answer without a key (probes, scraping), not to expose; on
    # `port` they follow `public` as before
    ops_port: int | None = Field(None, ge=1, le=65535)

    def keys(self) -> set[str]:
        env = os.environ.get("GENLAB_API_KEYS", "")
        return {k.strip() for k in [*self.api_keys, *env.split(",")] if k.strip()}


def load_serve_config(path: str | Path | None, **overrides) -> ServeConfig:
    """The serve config from YAML (or defaults), with command-line values on top; ConfigError names each problem."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"serve config not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a serve config is a mapping (host, port, api_keys, limits, ...)")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServeConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()]
        raise ConfigError(f"{path or 'serve config'}:\n" + "\n".join(lines)) from None
