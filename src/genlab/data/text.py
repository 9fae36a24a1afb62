"""Text sources: each returns documents (`Loaded(x=list of str, modality="text")`), split by document.

Tokenizing is the family's job (its tokenizer is trained on the training split only), so sources
hand over plain strings. Bad input is counted and skipped, never fatal while some text is valid:
empty files, undecodable bytes, JSONL lines that are not JSON or lack the text field.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import sysconfig
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

from genlab.data.sources import Loaded
from genlab.errors import GenlabError
from genlab.media.suffixes import TEXT_SUFFIXES

log = logging.getLogger("genlab")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


def text(cfg) -> Loaded:
    """A .txt file, a .jsonl file (field `data.text_field`), or a folder of them (one document per file/line)."""
    if cfg.path is None:
        raise GenlabError("data.path: required for data.source 'text' (a .txt or .jsonl file, or a folder of them)")
    root = Path(cfg.path).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise GenlabError(f"data.path: no text files ({', '.join(sorted(TEXT_SUFFIXES))}) under {root}")
    elif root.is_file():
        files = [root]
    else:
        raise GenlabError(f"data.path: {root} does not exist")
    docs, report = [], _Report()
    for path in files:
        name = path.relative_to(root).as_posix() if root.is_dir() else path.name
        content = report.decode(path.read_bytes(), name)
        if path.suffix.lower() == ".jsonl":
            docs += _jsonl_documents(content, name, cfg.text_field, report)
        elif content.strip():
            docs.append(content)
        else:
            report.skip("empty file", name)
    return report.finish(docs, str(root), cfg.limit)


def python_docs(cfg) -> Loaded:
    """CPython's own documentation topics (`pydoc_data`, shipped with every Python): 79 documents."""
    from pydoc_data.topics import topics

    return _Report().finish([topics[k] for k in sorted(topics)], "pydoc_data", cfg.limit)


def tinyshakespeare(cfg) -> Loaded:
    """Tiny shakespeare (1.1 MB, public domain; shipped with genlab), split as nanoGPT splits it: the first 90% of
    the characters train, the last 10% validate (`data.val_fraction` / `test_fraction` do not apply)."""
    text = gzip.decompress(files("genlab.data").joinpath("files/tinyshakespeare.txt.gz").read_bytes()).decode()
    cut = int(len(text) * 0.9)
    return Loaded([text[:cut], text[cut:]], modality="text", parts=(1, 1))


def python_code(cfg) -> Loaded:
    """The standard library's own .py files (tests and site-packages left out): a code corpus of ~12 MB."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))
    report = _Report()
    docs = [d for p in files if (d := report.decode(p.read_bytes(), p.name)).strip()]
    return report.finish(docs, str(root), cfg.limit)


def _jsonl_documents(content: str, name: str, field: str, report: _Report) -> list[str]:
    docs = []
    for where, record in json_records(content, name, report):
        value = record.get(field)
        if isinstance(value, str) and value.strip():
            docs.append(value)
        else:
            report.skip(f"no text in field {field!r}", where)
    return docs


def json_records(content: str, name: str, report: _Report) -> Iterator[tuple[str, dict]]:
    """(file:line, record) for each JSONL line that holds a JSON object; the others are reported."""
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            yield f"{name}:{number}", record
        else:
            report.skip("line not a JSON object", f"{name}:{number}")


class _Report:
    """Counts what was skipped, by reason, with the first few places of each."""

    def __init__(self) -> None:
        self.skipped: dict[str, list[str]] = {}
        self.bad_bytes = 0

    def decode(self, raw: bytes, name: str) -> str:
        content = raw.decode("utf-8", errors="surrogateescape")
        bad = len(_UNDECODABLE.findall(content))
        if bad:
            self.bad_bytes += bad
            self.skip("undecodable bytes dropped", name)
            content = _UNDECODABLE.sub("", content)
        return content

    def skip(self, reason: str, where: str) -> None:
        self.skipped.setdefault(reason, []).append(where)

    def finish(self, docs: list, where: str, limit: int | None, modality: str = "text") -> Loaded:
        notes = []
        for reason, places in self.skipped.items():
            count = f"{self.bad_bytes} bytes in {len(places)} file(s)" if reason.startswith("undecodable") else \
                str(len(places))
            shown = ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
            log.warning(f"{where}: {reason}: {count} ({shown})")
            notes.append(f"{reason}: {count}: {', '.join(places)}")
        if not docs:
            raise GenlabError(f"data.path: no usable text in {where}" + (f" ({'; '.join(notes)})" if notes else ""))
        return Loaded(docs[:limit] if limit else docs, notes=notes, modality=modality)
