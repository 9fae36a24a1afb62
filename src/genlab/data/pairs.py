"""Sources of (source, target) text pairs for seq2seq: `Loaded(x=[(source, target), ...], modality="pairs")`.

`pairs` reads the user's JSONL; `dates` and `docstrings` are built-in tasks made offline: date
formats to ISO dates (generated from a seed), and standard-library functions to the first line of
their docstrings.
"""

from __future__ import annotations

import ast
import calendar
import datetime
import random
import sysconfig
import warnings
from pathlib import Path

from genlab.data.sources import Loaded
from genlab.data.text import _Report, json_records
from genlab.errors import GenlabError

DATES = 20_000  # pairs made when data.limit is not set


def pairs(cfg) -> Loaded:
    """A JSONL file with a source and a target field per line (`data.source_field`, `data.target_field`)."""
    if cfg.path is None:
        raise GenlabError("data.path: required for data.source 'pairs' (a .jsonl file of source/target records)")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise GenlabError(f"data.path: {path} is not a file")
    report, items = _Report(), []
    for where, record in json_records(report.decode(path.read_bytes(), path.name), path.name, report):
        fields = (record.get(cfg.source_field), record.get(cfg.target_field))
        if all(isinstance(v, str) and v.strip() for v in fields):
            items.append(fields)
        else:
            report.skip(f"no text in {cfg.source_field!r} or {cfg.target_field!r}", where)
    return report.finish(items, str(path), cfg.limit, modality="pairs")


def dates(cfg) -> Loaded:
    """Dates written many ways -> ISO 8601 ("Tuesday, 3 March 1987" -> "1987-03-03"), from `data.split_seed`."""
    rng = random.Random(cfg.split_seed)
    start, span = datetime.date(1900, 1, 1).toordinal(), 200 * 365
    items = []
    for _ in range(cfg.limit or DATES):
        day = datetime.date.fromordinal(start + rng.randrange(span))
        items.append((rng.choice(_DATE_FORMATS)(day), day.isoformat()))
    return Loaded(items, modality="pairs")


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


_DATE_FORMATS = [
    lambda d: f"{calendar.day_name[d.weekday()]}, {d.day} {calendar.month_name[d.month]} {d.year}",
    lambda d: f"{d.day} {calendar.month_name[d.month]} {d.year}",
    lambda d: f"{calendar.month_name[d.month]} {d.day}, {d.year}",
    lambda d: f"{calendar.month_abbr[d.month]} {d.day} {d.year}",
    lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",  # day first, as most of the world writes it
    lambda d: f"{d.day}.{d.month}.{d.year}",
    lambda d: f"the {_ordinal(d.day)} of {calendar.month_name[d.month]}, {d.year}",
    lambda d: f"{calendar.day_abbr[d.weekday()]} {calendar.month_abbr[d.month]} {d.day:02d} {d.year}",
    lambda d: f"{d.year}/{d.month}/{d.day}",
    lambda d: f"{calendar.month_name[d.month].upper()} {d.day}, {d.year}",
]


def docstrings(cfg) -> Loaded:
    """Standard-library functions with their docstring removed -> the docstring's first line."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__"}
    items = []
    for path in sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts)):
        items += _function_summaries(path.read_text(errors="replace"))
        if cfg.limit and len(items) >= cfg.limit:
            break
    return Loaded(items[: cfg.limit] if cfg.limit else items, modality="pairs")


def _function_summaries(code: str) -> list[tuple[str, str]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # old escapes in some modules
            tree = ast.parse(code)
    except SyntaxError:
        return []
    lines, found = code.splitlines(), []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        summary = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
        if len(summary) < 10 or len(node.body) < 2:
            continue
        first, docnode = node.lineno - 1, node.body[0]  # from the def line: decorators left out
        body = lines[first : docnode.lineno - 1] + lines[docnode.end_lineno : node.end_lineno]
        found.append(("\n".join(body), summary))
    return found
