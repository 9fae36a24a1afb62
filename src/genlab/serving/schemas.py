"""Request bodies: OpenAI's shapes for text and images, and genlab's own for upscaling and tables.

Fields OpenAI defines but genlab does not implement are accepted at their neutral value and refused
otherwise, so a client never gets silently different behaviour; unknown fields are ignored, as
OpenAI's own server does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampling(Request):
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=2**31 - 1)  # genlab: 0 is no cut; bounded, as it reaches a tensor
    repetition_penalty: float = Field(1.0, gt=0, le=10)  # genlab
    min_tokens: int = Field(0, ge=0, le=2**31 - 1)  # genlab, as vLLM's: no end-of-text before this many tokens
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    n: int = Field(1, ge=1)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)  # OpenAI's: by a token's count in the output so far
    presence_penalty: float = Field(0.0, ge=-2, le=2)  # OpenAI's: once a token is in the output
    logit_bias: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop strings")
        return stops

    @model_validator(mode="after")
    def _unsupported(self) -> Sampling:
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        return self

    def top_logprobs_asked(self) -> int | None:
        """How many alternatives to return beside each token's logprob; None: no logprobs."""
        return None

    def echoes(self) -> bool:
        """Whether the prompt comes back, scored, before the output."""
        return False


class CompletionRequest(Sampling):
    # text, texts, or token ids (one list, or a list per prompt), as OpenAI's API takes them
    prompt: str | list[str] | list[int] | list[list[int]] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=0)  # 0 with echo: score the prompt alone
    echo: bool = False  # the prompt comes back before the completion (and its tokens' logprobs, with logprobs)
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion_only(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.echo and self.stream:
            raise ValueError("echo is answered whole: not with stream")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    def top_logprobs_asked(self) -> int | None:
        return self.logprobs

    def echoes(self) -> bool:
        return self.echo


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "input_text", "output_text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def top_logprobs_asked(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ResponsesRequest(Request):
    input: str | list[Message]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # genlab
    stream: bool = False

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: str | list[Message]) -> str | list[Message]:
        if not value:
            raise ValueError("input is empty")
        return value


class ImageRequest(Request):
    prompt: str = Field("", max_length=4000)  # a class name here picks that class, as `label` does
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json"] = "b64_json"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    label: int | str | None = None
    quality: str | None = None  # OpenAI's; genlab draws at the model's one quality
    style: str | None = None
    user: str | None = None
    # any other field is one of the model family's sampling options (its `Sampling` class), checked there
    model_config = ConfigDict(extra="allow")


class UpscaleRequest(Request):
    images: list[str] = Field(min_length=1)  # base64 PNG or JPEG


class RowsRequest(Request):
    rows: list[dict[str, Any]] = Field(min_length=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)


class TableSampleRequest(Request):
    n: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
