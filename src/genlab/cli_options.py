"""What a run's family brings to the command line: the options its `Sampling` class declares, the conditions its
`sample` takes, parsed from `--name value` pairs and checked, and the help that lists them."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from genlab.errors import ConfigError, GenlabError


def family_options(run: Any, args: list[str], conditions: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The --options after a run that its family's `Sampling` class declares (typed and checked; the rest are the
    model's own), and the conditions its `sample` takes (--NAME-file reads NAME from a file)."""
    from genlab.config import sampling_options
    from genlab.config.families import family_sampling

    family = run.config.model.family
    fields = family_sampling(family).model_fields
    parsed = _parse_options(args)
    # the conditions' names need the family's model class, whose imports (torch, Lightning) take seconds: only
    # an option that is not a sampling option waits for them, so a mistyped value is answered at once
    taken = _conditions_taken(run) if conditions and any(key not in fields for key in parsed) else []
    given, extra = {}, {}
    for key, values in parsed.items():
        if key in fields:
            annotation = fields[key].annotation
            if annotation is bool or annotation == bool | None:  # a bare --flag switches it on
                values = ["true" if v is None else v for v in values]
            many = typing.get_origin(annotation) is list
            given[key] = [_valued(key, v) for v in values] if many else _one(key, values)
        elif key in taken:
            extra[key] = _one(key, values)
        elif key.endswith("_file") and key[: -len("_file")] in taken:
            extra[key[: -len("_file")]] = _read_text(key, _one(key, values))
        else:
            allowed = [*fields, *taken]
            hint = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(f"--{flag(key)}: a {family} run takes no such option"
                              + (f"; did you mean --{flag(hint[0])}?" if hint else "")
                              + f" (its options: {', '.join('--' + flag(k) for k in allowed) or 'none'})")
    checked = sampling_options(family, {**run.sampling, **given})  # typed and bounded beside the model's own
    return {key: checked[key] for key in given}, extra


def _conditions_taken(run: Any) -> list[str]:
    """What the family's `sample` takes besides its sampling options: labels, a prompt..."""
    from genlab.config.families import family_class, family_sampling
    from genlab.run import sample_keywords

    fields = family_sampling(run.config.model.family).model_fields
    return [name for name in sample_keywords(family_class(run.config.model.family).sample) if name not in fields]


def _parse_options(args: list[str]) -> dict[str, list[str | None]]:
    """`--name value`, `--name=value` and bare `--flag` (None) -> {name: [values]}, in the order given."""
    parsed: dict[str, list[str | None]] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"{token!r}: unexpected argument (options are --name value)")
        name, eq, value = token[2:].partition("=")
        if not eq:
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            value = args[i + 1] if has_value else None
            i += has_value
        parsed.setdefault(name.replace("-", "_"), []).append(value)
        i += 1
    return parsed


def _one(key: str, values: list[str | None]) -> str:
    if len(values) > 1:
        raise ConfigError(f"--{flag(key)}: given {len(values)} times; it takes one value")
    return _valued(key, values[0])


def _valued(key: str, value: str | None) -> str:
    if value is None:
        raise ConfigError(f"--{flag(key)}: needs a value (--{flag(key)} VALUE)")
    return value


def _read_text(key: str, path: str) -> str:
    if not Path(path).is_file():
        raise GenlabError(f"--{flag(key)}: {path} is not a file")
    return Path(path).read_text(errors="replace")


def flag(name: str) -> str:
    return name.replace("_", "-")


def options_help() -> str:
    """Each registered family's sampling options, from its `Sampling` class: the `sample` command's epilog."""
    from genlab.config.families import family_names, family_sampling

    lines = []
    for family in family_names():
        fields = family_sampling(family).model_fields
        if fields:
            lines.append(f"{family}: " + "; ".join(f"--{flag(k)} ({_type_name(f.annotation)}) {f.description or ''}"
                                                    .rstrip() for k, f in fields.items()))
    return "Family options:\n\n" + "\n\n".join(lines)


def _type_name(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(map(str, args))
    if typing.get_origin(annotation) is list:
        return f"{_type_name(args[0])}, repeatable"
    if args:
        return _type_name(args[0])
    return getattr(annotation, "__name__", str(annotation))


def check_taken(run: Any, conditions: dict[str, Any]) -> None:
    """Refuse a condition the family's `sample` does not take (families with **options check only their own)."""
    taken = _conditions_taken(run)
    for key in conditions:
        if key not in taken:
            raise GenlabError(f"{key}: a {run.config.model.family} model does not take it (its samples take: "
                              f"{', '.join(taken) or 'nothing'})")
