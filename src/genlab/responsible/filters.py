"""The post-generation filters by kind, as `genlab filter` and the library use them: personal data (pii.py),
offensive sentences (offensive.py) and text or images copied from a model's training set (memorization.py). The
server applies the same finders as text streams (serving/guard.py)."""

from __future__ import annotations

import json
from pathlib import Path

from genlab.errors import GenlabError
from genlab.responsible.memorization import IMAGE_CHECK_FILE, WINDOW, CopyIndex, ImageCopies
from genlab.responsible.offensive import THRESHOLD, available, find_offensive
from genlab.responsible.pii import KINDS, Finding, find_pii, redact

ALL_KINDS = (*KINDS, "offensive", "memorized")


def chosen_kinds(kinds: list[str] | tuple[str, ...] = (), copies: CopyIndex | None = None) -> tuple[str, ...]:
    """The kinds asked for, checked; none asked: every personal-data kind, offensive text when its model is
    installed, and copies when a model's training-text index is given."""
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        raise GenlabError(f"--kind: {', '.join(unknown)} not one of {', '.join(ALL_KINDS)}")
    if "memorized" in kinds and copies is None:
        raise GenlabError("--kind memorized: name the model whose training text to look for (--model RUN)")
    return tuple(kinds) or (*KINDS, *(("offensive",) if available() else ()), *(("memorized",) if copies else ()))


def find(text: str, kinds: tuple[str, ...], threshold: float = THRESHOLD, copies: CopyIndex | None = None,
         min_chars: int = WINDOW) -> list[Finding]:
    """Every finding of the kinds in `text`, in order; findings that overlap are joined into one span under the
    kind of the first (redacting then takes out all that any filter found)."""
    personal = [k for k in kinds if k in KINDS]
    found = find_pii(text, personal) if personal else []
    if "offensive" in kinds:
        found += find_offensive(text, threshold)
    if "memorized" in kinds and copies is not None:
        found += copies.find_copies(text, min_chars)
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.start, -f.end)):
        if kept and f.start < kept[-1].end:
            last = kept[-1]
            end = max(last.end, f.end)
            kept[-1] = Finding(last.kind, last.start, end, text[last.start:end])
        else:
            kept.append(f)
    return kept

def copied_images(folder: Path, where: Path) -> tuple[list[Path], list[Path]]:
    """(the images under `folder` that copy a training image of the model whose folder is `where`, every image
    read), by the copy check `genlab evaluate` keeps there; images are read as the model's data were."""
    from types import SimpleNamespace

    from genlab.data.sources import read_images
    from genlab.media.suffixes import IMAGE_SUFFIXES
    from genlab.models.base import META_FILE

    check = ImageCopies.load(where)
    if check is None:
        raise GenlabError(f"--model {where}: its folder has no copy check ({IMAGE_CHECK_FILE}); `genlab evaluate` "
                          "keeps one for image models")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise GenlabError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
    channels, size, _ = json.loads((where / META_FILE).read_text())["spec"]["shape"]
    images, kept, _ = read_images(files, folder, SimpleNamespace(image_size=size, channels=channels))
    read = [files[i] for i in kept]
    return [p for p, c in zip(read, check.copied(images / 2 + 0.5).tolist(), strict=True) if c], read


__all__ = ["ALL_KINDS", "chosen_kinds", "copied_images", "find", "redact"]
