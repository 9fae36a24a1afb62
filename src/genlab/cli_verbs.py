"""How the `genlab` command is built: the app, which lists every capability's verbs beside its own commands (a
capability registered at run time brings its verbs with it), the factory that makes a verb's command from its
declaration, and what every command shares (the consoles, user mistakes as one red line, genlab's log lines)."""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from genlab.cli_options import family_options, flag, options_help
from genlab.errors import ConfigError, GenlabError
from genlab.quiet import library_noise_silenced

EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}  # the family's options, parsed by genlab
err = Console(stderr=True)
out = Console(soft_wrap=True)  # long paths stay on one line in logs


class GenlabApp(typer.Typer):
    """The `genlab` app: its own commands, then every capability's verbs; `sample`'s help lists the families'
    options. Verbs are added once `complete` is set, after the module that defines the commands."""

    complete = False
    sample_command: Any = None  # the callback whose help lists the families' sampling options

    @property
    def registered_commands(self) -> list:
        from genlab.capabilities import all_verbs

        if not self.complete:
            return self._commands
        # a fresh list each time: a capability unregistered since takes its verbs with it
        commands, have = list(self._commands), {c.name or c.callback.__name__ for c in self._commands}
        for verb in all_verbs():
            if verb.name not in have:
                commands.append(typer.models.CommandInfo(name=verb.name, callback=verb_command(verb), help=verb.help,
                                                         context_settings=EXTRA if verb.sampling else None))
                have.add(verb.name)
        for command in commands:
            if command.callback is self.sample_command:
                command.epilog = options_help()
        return commands

    @registered_commands.setter
    def registered_commands(self, value: list) -> None:
        self._commands = value


def user_errors(fn):
    """Turn a user mistake into one red line and a non-zero exit; a bug keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _one_line_logs()
        try:
            with library_noise_silenced():
                return fn(*args, **kwargs)
        except GenlabError as e:
            for line in str(e).splitlines():
                err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


class _OneLine(logging.Handler):
    """genlab's own warnings and notes, as one plain line each (no logger name, no source line)."""

    def emit(self, record: logging.LogRecord) -> None:
        tag = "[yellow]warning:[/yellow] " if record.levelno >= logging.WARNING else ""
        err.print(f"{tag}{escape(record.getMessage())}", highlight=False, soft_wrap=True)


def _one_line_logs() -> None:
    log = logging.getLogger("genlab")
    if not any(isinstance(h, _OneLine) for h in log.handlers):
        log.addHandler(_OneLine())
        log.setLevel(logging.INFO)
        log.propagate = False


def verb_command(verb: Any) -> Any:
    """A command for `verb`: RUN, then the verb's arguments as its `arguments` class declares them; at run time, the
    run's family's declaration of the verb is the one that runs (a family without it is refused, naming those with
    it)."""
    P = inspect.Parameter
    params = [P("ctx", P.KEYWORD_ONLY, annotation=typer.Context),
              P("run_dir", P.KEYWORD_ONLY, annotation=Annotated[Path, typer.Argument(help="A run directory.")])]
    for name, field in verb.arguments.model_fields.items():
        info = (typer.Argument(help=field.description) if name in verb.inputs else
                typer.Option(f"--{flag(name)}", help=field.description))
        params.append(P(name, P.KEYWORD_ONLY, annotation=Annotated[field.annotation, info],
                        default=P.empty if field.is_required() else field.get_default(call_default_factory=True)))

    @user_errors
    def command(ctx: typer.Context, run_dir: Path, **arguments: Any) -> None:
        from pydantic import ValidationError

        from genlab.capabilities import check_verb
        from genlab.run import Run

        run = Run(run_dir)
        declared = check_verb(run.config.model.family, verb.name, run.path)
        try:
            checked = declared.arguments.model_validate(arguments).model_dump()
        except ValidationError as e:
            raise ConfigError("\n".join(f"--{flag(str(x['loc'][0]))}: {x['msg']}" for x in e.errors())) from None
        options = family_options(run, ctx.args)[0] if declared.sampling else {}
        done = declared.call(run, **checked, **options)
        for line in done.lines:
            out.print(line, highlight=False, markup=False)
        for line in done.failed:
            err.print(f"[red]error:[/] {escape(line)}", highlight=False)
        if done.failed:
            raise typer.Exit(1)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = command.__qualname__ = verb.name
    command.__doc__ = verb.help
    return command
