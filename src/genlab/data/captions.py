"""Captions of an image folder, read as Hugging Face's `imagefolder` loader and the fine-tuning tools read them.

A `metadata.jsonl` or `metadata.csv` in any folder names images relative to that folder (`file_name`) and holds
each one's caption in the column `data.text_field` ("text" by default); a `NAME.txt` beside `NAME.png` holds that
one image's caption. A folder with neither has no captions; a folder with some has them for every image, and an
image whose caption is missing, empty or not UTF-8 is named and skipped (the caption it lacks is the reason).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from genlab.errors import GenlabError
from genlab.media.suffixes import IMAGE_SUFFIXES

METADATA = ("metadata.jsonl", "metadata.csv")
MAX_CAPTION = 10_000  # characters: a caption is a sentence or a paragraph, not a document


@dataclass
class Captions:
    """Each image's caption by its path under the root (posix), or why it has none; the files that hold them."""

    text: dict[str, str] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)  # path -> the reason its caption cannot be used
    files: set[Path] = field(default_factory=set)  # metadata and sidecar files: not images, not read as such
    notes: list[str] = field(default_factory=list)

    def caption(self, where: str) -> tuple[str | None, str | None]:
        """(the caption, None) or (None, why this image has no usable caption)."""
        if where in self.text:
            return self.text[where], None
        return None, self.bad.get(where, "missing caption")


def read_captions(root: Path, text_field: str) -> Captions | None:
    """The captions under `root` (a folder), or None when it holds no metadata file and no caption sidecar."""
    if not root.is_dir():
        return None
    found = Captions()
    metadata = sorted(p for name in METADATA for p in root.rglob(name) if p.is_file())
    for path in metadata:
        found.files.add(path)
        _read_metadata(path, root, text_field, found)
    in_metadata = set(found.text) | set(found.bad)
    ignored = 0
    for sidecar in sorted(root.rglob("*.txt")):
        image = next((sidecar.with_suffix(s) for s in _suffixes(sidecar) if sidecar.with_suffix(s).is_file()), None)
        if image is None:
            continue  # a text file that captions nothing is not ours to read
        found.files.add(sidecar)
        where = image.relative_to(root).as_posix()
        if where in in_metadata:
            ignored += 1
            continue
        _keep(found, where, sidecar.read_bytes())
    if ignored:
        found.notes.append(f"{ignored} caption file(s) (NAME.txt) ignored: the metadata captions those images")
    return found if found.files else None


def _suffixes(sidecar: Path) -> list[str]:
    """Image suffixes in the case the folder uses them (name.PNG and name.png both count)."""
    return [s for suffix in sorted(IMAGE_SUFFIXES) for s in (suffix, suffix.upper())]


def _read_metadata(path: Path, root: Path, text_field: str, found: Captions) -> None:
    folder = path.parent
    where = path.relative_to(root).as_posix()
    raw = path.read_bytes().decode("utf-8", errors="surrogateescape")  # a bad byte spoils one caption, not the file
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                found.notes.append(f"{where}:{number}: not a JSON object; the image it names has no caption")
                continue
            rows.append((number, row if isinstance(row, dict) else {}))
    else:
        reader = csv.DictReader(io.StringIO(raw))
        rows = [(number, row) for number, row in enumerate(reader, 2)]
        if reader.fieldnames is not None and text_field not in reader.fieldnames:
            raise GenlabError(f"data.text_field: {where} has no column {text_field!r}; its columns are "
                              f"{', '.join(reader.fieldnames)}")
    for number, row in rows:
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            found.notes.append(f"{where}:{number}: no file_name; the row captions nothing")
            continue
        image = (folder / name).resolve()
        if not image.is_relative_to(root.resolve()) or not image.is_file():
            found.notes.append(f"{where}:{number}: {name} is not an image in the folder")
            continue
        text = row.get(text_field)
        if text is None and text_field not in row:
            raise GenlabError(f"data.text_field: {where}:{number} has no field {text_field!r}; its fields are "
                              f"{', '.join(map(str, row))}")
        _keep(found, image.relative_to(root.resolve()).as_posix(), text)


def _keep(found: Captions, where: str, text: object) -> None:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            found.bad[where] = "caption not UTF-8"
            return
    if not isinstance(text, str):
        found.bad[where] = "caption not text"
        return
    if any("\udc80" <= c <= "\udcff" for c in text):  # a byte that was not UTF-8, kept by surrogateescape
        found.bad[where] = "caption not UTF-8"
        return
    text = " ".join(text.split())
    if not text:
        found.bad[where] = "empty caption"
    elif len(text) > MAX_CAPTION:
        found.bad[where] = f"caption longer than {MAX_CAPTION:,} characters"
    else:
        found.text[where] = text
