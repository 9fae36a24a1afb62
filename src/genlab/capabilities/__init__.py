"""What a model can do beyond training, one module each: the members of a model it calls (a `typing.Protocol`),
its verbs and their API functions, its served kind with its routes and request bodies, and how it is scored.

    images     draw images: `genlab sample` grids, /v1/images/generations, FID and co., the audit by class
    speech     say a class: clips, /v1/audio/speech, the SC09 protocol, the audit of clips
    text       continue text (causal LMs): /v1/completions, /v1/chat/completions, /v1/responses
    text2text  turn text into text (seq2seq): the same routes, `genlab translate`, BLEU and co.
    upscale    make images larger: `genlab upscale`, /v1/images/upscale, PSNR and SSIM beside bicubic
    rows       table rows: `genlab impute|score`, /v1/tabular/impute|score|sample, the table evaluation
    latent     a latent space: `genlab reconstruct|interpolate|traverse`, ELBO, IWAE and MIG

A family lists what it has on its config class, most important first: `capabilities = ("images", "latent")`.
The first names the model's task on the Hub and its first headline figure ranks a bake-off. Registering a family
checks that it has every member its capabilities need, and names any it lacks. A capability of one's own is
`register_capability(Capability(...))`: its verbs become commands and its routes are served with it.

Declaring a capability imports no torch (the CLI lists every verb without it): a module here imports torch and
the other heavy libraries inside the functions that use them.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genlab.config.families import add_family, family_config, family_names
from genlab.config.section import Section
from genlab.errors import GenlabError
from genlab.evaluation.figures import Figure
from genlab.locate import locate


@dataclass(frozen=True)
class Verb:
    """A command beyond `sample`: `genlab NAME RUN INPUTS... --OPTIONS`, calling `call(run, **arguments) -> Done`."""

    name: str
    help: str
    arguments: type[Section]  # each field an option (its description the help), positional when named in `inputs`
    call: Callable[..., Done]
    inputs: tuple[str, ...] = ()
    sampling: bool = False  # also takes the family's sampling options (--temperature ...), as `sample` does


@dataclass
class Done:
    """What a verb did, for the terminal: lines to print, and lines for the inputs it could not use."""

    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Capability:
    name: str
    needs: type  # a typing.Protocol: the members of a model this capability calls
    verbs: tuple[Verb, ...] = ()
    served: type | None = None  # the `Served` kind a server wraps such a model in; its `router` brings the routes
    evaluator: str | None = None  # "module:function(run, ev, options) -> Scored": its part of `genlab evaluate`
    headline: tuple[Figure, ...] = ()  # what `genlab evaluate` prints of that part
    audit: str | None = None  # "module:function(run, n, **options) -> audit.json's content"
    hub_task: str | None = None  # the Hub's pipeline tag for a model card


BUILTIN = ("images", "speech", "text", "text2text", "upscale", "rows", "latent")  # modules of this package
_registered: dict[str, Capability] = {}


def capability_names() -> list[str]:
    return sorted({*BUILTIN, *_registered})


def capability(name: str) -> Capability:
    if name in _registered:
        return _registered[name]
    if name not in BUILTIN:
        raise GenlabError(f"capability {name!r} is not one of: {', '.join(capability_names())}")
    return locate(f"genlab.capabilities.{name}:CAPABILITY")


def register_capability(cap: Capability) -> Capability:
    if cap.name in BUILTIN or cap.name in _registered:
        raise ValueError(f"capability {cap.name!r} is registered twice")
    taken = {verb.name: c.name for c in map(capability, capability_names()) for verb in c.verbs}
    for verb in cap.verbs:
        if verb.name in taken:
            raise ValueError(f"capability {cap.name!r}: the verb {verb.name!r} is {taken[verb.name]}'s already")
    _registered[cap.name] = cap
    return cap


def unregister_capability(name: str) -> None:
    _registered.pop(name, None)


def capabilities_of(family: str) -> list[Capability]:
    """The family's capabilities, as its config class lists them (no torch)."""
    return [capability(name) for name in family_config(family).capabilities]


def needed(cap: Capability) -> list[str]:
    """The members a capability's Protocol declares: its methods, properties and annotated attributes."""
    names: set[str] = set()
    for base in cap.needs.__mro__:
        if base in (typing.Protocol, typing.Generic, object):
            continue
        names |= {n for n in (*vars(base), *getattr(base, "__annotations__", {})) if not n.startswith("_")}
    return sorted(names)


def _has(cls: type, name: str) -> bool:
    """A member on the class (not a stub every family must replace, such as the base's `sample`), or an attribute
    its instances carry that the class annotates (`tokenizer: Any`)."""
    if hasattr(cls, name):
        return not getattr(getattr(cls, name), "unimplemented", False)
    return any(name in getattr(base, "__annotations__", {}) for base in cls.__mro__)


def check_family(cls: type) -> None:
    """A GenlabError naming what the family lacks: its capabilities, what it samples (`media`), or a member one of
    its capabilities needs."""
    config = cls.Config
    name = config.model_fields["family"].default
    problems = []
    if not config.capabilities:
        problems.append(f"its config lists no capabilities (one or more of: {', '.join(capability_names())})")
    if not hasattr(cls, "media"):  # what `sample` returns: the base class names no modality
        problems.append("it declares no `media` (genlab.media.formats: IMAGES, TEXTS, TABLES, or one of its own)")
    for cap in map(capability, config.capabilities):
        lacking = [member for member in needed(cap) if not _has(cls, member)]
        if lacking:
            problems.append(f"{cap.name} needs {', '.join(lacking)}")
    if problems:
        raise GenlabError(f"family {name!r}: " + "; ".join(problems))


def register_family(cls: Any) -> Any:
    """Class decorator: make `cls` the family named by its config's `family` default, once it has what its
    capabilities need."""
    check_family(cls)
    return add_family(cls)


def family_verbs(family: str) -> dict[str, Verb]:
    return {verb.name: verb for cap in capabilities_of(family) for verb in cap.verbs}


def all_verbs() -> list[Verb]:
    """Every verb of every registered capability, once each: the CLI's commands beyond its own."""
    return [verb for name in capability_names() for verb in capability(name).verbs]


def check_verb(family: str, verb: str, where: Any) -> Verb:
    """The family's `verb`; a GenlabError naming the families that have it when this one does not."""
    verbs = family_verbs(family)
    if verb not in verbs:
        _refuse(family, verb, where, lambda f: verb in family_verbs(f))
    return verbs[verb]


def check_has(family: str, name: str, where: Any) -> Capability:
    """The family's capability `name`; a GenlabError naming the families that have it when this one does not."""
    found = next((cap for cap in capabilities_of(family) if cap.name == name), None)
    if found is None:
        _refuse(family, name, where, lambda f: name in family_config(f).capabilities)
    return found


def _refuse(family: str, what: str, where: Any, has: Callable[[str], bool]) -> None:
    doers = " or ".join(f for f in family_names() if has(f)) or "no known"
    raise GenlabError(f"{where}: a {family} run; {what} needs a {doers} run")


def served_kind(family: str) -> type:
    """The served kind of the family's first capability that a server can answer."""
    kind = next((cap.served for cap in capabilities_of(family) if cap.served is not None), None)
    if kind is None:
        names = ", ".join(family_config(family).capabilities)
        raise GenlabError(f"a {family} model ({names}) has no capability genlab serves")
    return kind


def headline(family: str) -> tuple[Figure, ...]:
    """What `genlab evaluate` prints for the family, each capability's figures in its order; the first ranks."""
    return tuple(figure for cap in capabilities_of(family) for figure in cap.headline)


def evaluators(family: str) -> list[Callable]:
    return [locate(cap.evaluator) for cap in capabilities_of(family) if cap.evaluator is not None]


def audit_of(family: str) -> Callable | None:
    path = next((cap.audit for cap in capabilities_of(family) if cap.audit is not None), None)
    return None if path is None else locate(path)


def hub_task(family: str) -> str | None:
    caps = capabilities_of(family)
    return caps[0].hub_task if caps else None


