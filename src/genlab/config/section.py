"""The base of every config section, apart so that section files (prepare's steps) and the run config share it."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Sampling(Section):
    """A family's keyword options of `sample`: configs (eval.sampling), the CLI and the server all take them
    from here, with each field's type, bounds and description."""

    per_sample: ClassVar[frozenset[str]] = frozenset()  # options that may differ between the samples of one call
