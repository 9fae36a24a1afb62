"""The base of every request body. Each capability declares its own bodies beside its routes (OpenAI's shapes where
OpenAI has one: text, images, speech; genlab's own for upscaling and tables).

Fields OpenAI defines but genlab does not implement are accepted at their neutral value and refused otherwise, so
a client never gets silently different behaviour.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
