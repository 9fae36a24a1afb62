"""What a family does beyond `sample`, declared on its config class so that the CLI can list it without torch.

A verb is a name, a line of help, its arguments (a `Section`: typed, bounded, each field's description
its help) and the function that runs it. `genlab NAME RUN ...` exists for every verb a registered family
declares; a run of a family that does not declare it is refused, naming the families that do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genlab.config.section import Section


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    arguments: type[Section]
    call: str  # "module:function", called as function(run, **arguments) -> Done
    inputs: tuple[str, ...] = ()  # arguments given by position after RUN (the rest are --options)
    sampling: bool = False  # also takes the family's sampling options (--temperature ...), as `sample` does


@dataclass
class Done:
    """What a verb did, for the terminal: lines to print, and lines for the inputs it could not use."""

    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
