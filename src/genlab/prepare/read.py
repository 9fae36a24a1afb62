"""validate: read every input of a data config, naming and skipping what cannot be read.

Images: every file under data.path (zero bytes, not an image, truncated), labels from subfolders.
Text: .txt / .md / .rst files (one document each) and JSONL (one per line); a line with bytes that
are not UTF-8 is named with its file and line and skipped, the rest of the file kept. Tables: CSV
rows with another number of fields than the header are named by line and skipped. A built-in
source (digits, python_docs, wine...) is read through its loader: it holds nothing to skip.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from genlab.errors import GenlabError
from genlab.media.suffixes import PARQUET_SUFFIXES
from genlab.prepare.record import Item, StepLog

logger = logging.getLogger("genlab")



def files_under(path: Path, suffixes: set[str] | None = None) -> list[Path]:
    if path.is_file():
        if suffixes is not None and path.suffix.lower() not in suffixes:
            raise GenlabError(f"data.path: {path.name} is not one of the files this source reads "
                              f"({', '.join(sorted(suffixes))})")
        return [path]
    if not path.is_dir():
        raise GenlabError(f"data.path: {path} does not exist")
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and (suffixes is None or p.suffix.lower() in suffixes))


def validate_images(root: Path, paths: list[Path], log: StepLog, limit: int | None = None, text_field: str = "text"
                    ) -> list[Item]:
    """Each of `paths` (files under `root`) that decodes as an image (the first `limit`); subfolder names are the
    labels. In a captioned folder (data/captions.py), each image with its caption instead, and those without a usable
    one named."""
    from PIL import Image

    from genlab.data.captions import read_captions
    from genlab.media.images import decoder_notes  # here: text's Ray tasks import this module, and torch with it

    captions = read_captions(root, text_field)
    if captions is not None:
        log.notes += captions.notes
    items = []
    for path in paths:
        if limit is not None and len(items) >= limit:
            break
        if captions is not None and path in captions.files:
            continue
        where = path.relative_to(root).as_posix() if root.is_dir() else path.name
        log.megabytes += path.stat().st_size / 1e6
        if path.stat().st_size == 0:
            log.remove("zero-byte file", where)
            continue
        try:
            with decoder_notes(where, log.notes), Image.open(path) as img:
                img.load()  # decodes every pixel: a truncated file fails here, not later
                image = img.copy()
                kind = img.format
        except Exception as err:  # PIL raises several kinds; every one is a file that is not a readable image
            message = str(err).replace(f" '{path}'", "")[:80]  # PIL names the whole path; `where` says it shorter
            log.remove("not a readable image", f"{where} ({type(err).__name__}: {message})")
            continue
        if kind and path.suffix.lower().lstrip(".") not in _SUFFIX.get(kind, {kind.lower()}):
            log.notes.append(f"{where}: the content is {kind}, the name says {path.suffix}; read as {kind}")
            log.changed += 1
        caption = None
        if captions is not None:  # after decoding: a file that is no image is named as such, caption or not
            caption, why = captions.caption(where)
            if caption is None:
                log.remove(why, where)
                continue
        label = (path.parent.relative_to(root).as_posix() if root.is_dir() and path.parent != root
                 and captions is None else None)  # captioned: subfolders are no classes, as in imagefolder
        items.append(Item(where, image, label, caption))
    log.kept = len(items)
    return items


def warn_decoder_notes(log: StepLog) -> None:
    """One warning for the files the image decoder complained about but read (the report lists them)."""
    warned = [n for n in log.notes if n.endswith("(read all the same)")]
    if warned:
        more = f" and {len(warned) - 1} more" if len(warned) > 1 else ""
        logger.warning(f"the image decoder complained about {len(warned)} file(s): {warned[0]}{more} "
                       "(all listed in data_report.html)")


_SUFFIX = {"JPEG": {"jpg", "jpeg"}, "PNG": {"png"}, "TIFF": {"tif", "tiff"}}


def text_file(root: Path, path: Path, text_field: str, log: StepLog, fractions: tuple[float, float] | None = None,
              start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[Item]:
    """The documents of one file under `root`, one at a time: one per text file, one per JSONL line (undecodable
    and malformed lines named and skipped); of a JSONL file, those of the lines between two byte offsets. `root`
    that is one plain text file, with `fractions` (val, test), comes in pieces cut where the splits begin, as
    nanoGPT cuts tiny shakespeare."""
    where = path.relative_to(root).as_posix() if root.is_dir() else path.name
    size = path.stat().st_size
    log.megabytes += ((size if end is None else end) - start) / 1e6
    lines = _decoded(path, where, log, start, end, first_line)
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl(lines, where, text_field, log)
    elif root.is_file() and fractions is not None:
        yield from _pieces(lines, where, size, fractions, log)
    else:
        named = log.removed
        text = "".join(t for _, _, t in lines)
        if text.strip():
            log.kept += 1
            yield Item(where, text)
        elif log.removed == named:  # not a file whose every line was named as undecodable already
            log.remove("empty file", where)


PIECE = 1 << 20  # characters: what one piece of a long text file holds in memory


def _pieces(lines: Iterable[tuple[int, int, str]], where: str, size: int, fractions: tuple[float, float],
            log: StepLog) -> Iterator[Item]:
    """One long document in pieces: train takes the first 1 - val - test of its bytes, then val, then test."""
    val, test = fractions
    bounds = [round(size * (1 - val - test)), round(size * (1 - test)), size + 1]
    split, offset, held, chars, first_line, starts = 0, 0, [], 0, 1, True

    def piece() -> Item:
        nonlocal held, chars, starts
        item = Item(f"{where}:{first_line}", "".join(held), split=split, continues=not starts)
        held, chars, starts = [], 0, False
        return item

    for number, nbytes, text in lines:
        if not held:
            first_line = number
        while offset + nbytes > bounds[split]:  # this line crosses into the next split: cut it there
            k = len(text.encode()[: bounds[split] - offset].decode("utf-8", "ignore"))
            held.append(text[:k])
            if any(held):
                yield piece()
            held, chars, starts, first_line = [], 0, True, number
            cut = len(text[:k].encode())
            offset, nbytes, text, split = offset + cut, nbytes - cut, text[k:], split + 1
        if text:
            held.append(text)
        offset, chars = offset + nbytes, chars + len(text)
        if chars >= PIECE:
            yield piece()
    if any(held):
        yield piece()
    if offset:
        log.kept += 1
    else:
        log.remove("empty file", where)


def _decoded(path: Path, where: str, log: StepLog, start: int = 0, end: int | None = None, first_line: int = 1
             ) -> Iterator[tuple[int, int, str]]:
    """(line number, its bytes, its text) for each line that is UTF-8, from byte `start` (where line `first_line`
    begins) to `end`; a file that cannot be opened is named."""
    try:
        f = path.open("rb")
    except OSError as err:
        log.remove("cannot be opened", f"{where} ({err.strerror})")
        return
    with f:
        f.seek(start)
        lines = iter(f) if end is None else iter(lambda: f.readline() if f.tell() < end else b"", b"")
        for number, line in enumerate(lines, first_line):
            try:
                yield number, len(line), line.decode("utf-8")
            except UnicodeDecodeError as err:
                log.remove("not UTF-8", f"{where}:{number} (byte {err.start})")


def _jsonl(lines: Iterable[tuple[int, int, str]], where: str, field: str, log: StepLog) -> Iterator[Item]:
    for number, _, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.remove("not a JSON object", f"{where}:{number}")
            continue
        value = record.get(field) if isinstance(record, dict) else None
        if isinstance(value, str) and value.strip():
            log.kept += 1
            yield Item(f"{where}:{number}", value)
        else:
            log.remove(f"no text in field {field!r}", f"{where}:{number}")


def validate_table(root: Path, paths: list[Path], log: StepLog) -> pd.DataFrame | None:
    """Rows of each of `paths` (CSV or parquet files under `root`) as strings (clean coerces types), with `where` per
    row; None when none has a readable row."""
    frames = []
    for path in paths:
        where = path.relative_to(root).as_posix() if root.is_dir() else path.name
        log.megabytes += path.stat().st_size / 1e6
        if path.suffix.lower() in PARQUET_SUFFIXES:
            try:
                frame = pd.read_parquet(path).astype("object")
            except Exception as err:
                log.remove("not a readable parquet file", f"{where} ({type(err).__name__})")
                continue
            frame.index = [f"{where}:row {i + 1}" for i in range(len(frame))]
            frames.append(frame)
            continue
        frame = _csv(path, where, log)
        if frame is not None:
            frames.append(frame)
    if not frames:
        return None
    table = pd.concat(frames)
    log.kept = len(table)
    return table


def _csv(path: Path, where: str, log: StepLog) -> pd.DataFrame | None:
    lines = []
    for number, _, line in _decoded(path, where, log):  # a line that is not UTF-8 is named; its row is skipped
        lines.extend([""] * (number - 1 - len(lines)) + [line.removeprefix("\ufeff") if number == 1 else line])
    text = "\n".join(line.rstrip("\r\n") for line in lines)
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: a stray quote is an error, not a merge
    try:
        header = next(rows, None)
    except csv.Error as err:
        log.remove("malformed CSV header", f"{where}:1 ({err})")
        return None
    if not header:
        log.remove("empty file", where)
        return None
    kept, places = [], []
    while True:
        line = rows.line_num + 1  # where the next row starts; it may span lines inside quotes
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as err:  # the reader goes on with the next line
            log.remove("malformed CSV row", f"{where}:{line} ({err})")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            log.remove("wrong number of fields", f"{where}:{line} ({len(row)} fields, the header has {len(header)})")
            continue
        kept.append(row)
        places.append(f"{where}:{line}")
    frame = pd.DataFrame(kept, columns=header, index=places, dtype="object")
    return frame.replace({"": None})
