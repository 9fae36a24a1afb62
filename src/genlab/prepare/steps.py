"""clean and normalize, per modality: text, images and tables.

Each function takes the items (a DataFrame for tables), the step's options and its log, and
returns what goes on; everything it removes or changes is counted in the log.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

import numpy as np
import pandas as pd

from genlab.config.prepare import Clean, Missing, Normalize
from genlab.prepare.record import Item, StepLog

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_TRAILING = re.compile(r"[ \t\u00a0]+$", re.MULTILINE)
_BEFORE_NEWLINE = re.compile(r"[ \t\u00a0]+(?=\n)")  # a piece may end mid-line: its last spaces stay


# --- text ------------------------------------------------------------------------------------------------

def clean_document(text: str, opts: Clean, boilerplate: set[str], piece: bool = False) -> str:
    """One document cleaned: NFC, control characters, the corpus's boilerplate lines, spaces. A `piece` of a
    longer document keeps its blank lines at both ends: the pieces are joined back as they were."""
    if opts.nfc:
        text = unicodedata.normalize("NFC", text)
    if opts.control:
        text = _CONTROL.sub("", text.replace("\r\n", "\n"))
    if boilerplate:
        text = "".join(line for line in text.splitlines(keepends=True) if line.strip() not in boilerplate)
    if opts.whitespace == "collapse":
        text = _SPACES.sub(" ", text)
    if opts.whitespace != "keep":
        text = (_BEFORE_NEWLINE if piece else _TRAILING).sub("", text)
    return text if piece else text.strip("\n")


# --- images -----------------------------------------------------------------------------------------------

GREY = ("L", "1", "I;16", "I")  # image modes of one channel


def clean_images(items: list[Item], opts: Clean, log: StepLog) -> list[Item]:
    """Convert to the configured mode (grey data stays grey by default; CMYK, palettes, alpha become RGB)."""
    mode = opts.mode or ("L" if all(i.value.mode in GREY for i in items) else "RGB")
    out = []
    for item in items:
        image = item.value
        if min(image.size) < opts.min_side:
            log.remove(f"smaller than {opts.min_side} pixels a side", f"{item.where} ({image.size[0]}x"
                                                                      f"{image.size[1]})")
            continue
        if image.mode != mode:
            image = image.convert(mode)
            log.changed += 1
        out.append(replace(item, value=image))
    log.kept = len(out)
    log.notes.append(f"mode {mode}")
    return out


def normalize_images(items: list[Item], opts: Normalize, size: int | None, log: StepLog) -> list[Item]:
    """Resize to size x size (centre crop first, keeping the aspect ratio), as uint8 arrays (H, W, C)."""
    from PIL import Image

    out = []
    for item in items:
        image = item.value
        if size is not None:
            if opts.keep_aspect:
                w, h = image.size
                s = min(w, h)
                image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            if image.size != (size, size):
                image = image.resize((size, size), Image.BICUBIC)
                log.changed += 1
        array = np.asarray(image, dtype=np.uint8)
        out.append(replace(item, value=array[..., None] if array.ndim == 2 else array))
    if size is None and len({i.value.shape for i in out}) > 1:
        raise sizes_differ()
    log.kept = len(out)
    return out


def sizes_differ() -> Exception:
    from genlab.errors import GenlabError

    return GenlabError("data.image_size: the images differ in size; set a size for normalize to bring them to")


# --- tables -----------------------------------------------------------------------------------------------

def clean_table(frame: pd.DataFrame, opts: Clean, log: StepLog) -> pd.DataFrame:
    """Columns with no values go. Columns that are mostly numbers (`numeric_share`) become numeric; each cell
    that is not a number is named and emptied. Numeric cells more than `outlier_z` deviations from their
    column's median are flagged (kept)."""
    empty = [c for c in frame.columns if frame[c].isna().all()]  # a column with no values teaches nothing
    for column in empty:
        log.change("column with no values dropped", str(column))
    frame = frame.drop(columns=empty)
    for column in frame.columns:
        values = frame[column]
        numbers = pd.to_numeric(values, errors="coerce")
        present = values.notna()
        if not present.any() or numbers[present].notna().mean() < opts.numeric_share:
            continue  # a text or category column
        bad = present & numbers.isna()
        for where in bad[bad].index:
            log.change(f"not a number in numeric column {column!r} (cell emptied, row kept)",
                       f"{where}, {column}: {values[where]!r}")
        frame[column] = numbers
        spread = (numbers - numbers.median()).abs()
        scale = 1.4826 * spread.median() or numbers.std() or 1.0
        outliers = int((spread / scale > opts.outlier_z).sum())
        if outliers:
            log.notes.append(f"{column}: {outliers} outlier cell(s) beyond {opts.outlier_z} deviations (kept)")
    log.kept = len(frame)
    return frame


def normalize_table(frame: pd.DataFrame, opts: Normalize, log: StepLog) -> tuple[pd.DataFrame, dict]:
    """Per numeric column scaling; returns the parameters to invert it: x = z * scale + shift."""
    if opts.scaling == "none":
        log.kept = len(frame)
        return frame, {}
    frame, params = frame.copy(), {}
    for column in frame.select_dtypes("number").columns:
        values = frame[column]
        shift, scale = (values.mean(), values.std()) if opts.scaling == "standard" else \
            (values.min(), values.max() - values.min())
        scale = float(scale) if scale and np.isfinite(scale) else 1.0
        frame[column] = (values - shift) / scale
        params[column] = {"shift": float(shift), "scale": scale}
        log.changed += 1
    log.kept = len(frame)
    return frame, params


def missing_table(frame: pd.DataFrame, opts: Missing, log: StepLog) -> pd.DataFrame:
    holes = frame.isna()
    counts = {c: int(n) for c, n in holes.sum().items() if n}
    log.notes.append("missing cells: " + (", ".join(f"{c} {n}" for c, n in counts.items()) or "none"))
    if opts.strategy == "flag":  # the holes stay, for models that learn with them (the tabular VAE)
        log.kept = len(frame)
        return frame
    if opts.strategy == "drop":
        for where in holes.any(axis=1)[lambda s: s].index:
            log.remove("a missing cell", where)
        frame = frame[~holes.any(axis=1)]
    else:
        frame = frame.copy()
        for column in counts:
            numeric = pd.api.types.is_numeric_dtype(frame[column])
            if opts.strategy == "constant":
                fill = opts.value
            elif opts.strategy == "mode" or not numeric:
                fill = frame[column].mode().iloc[0]
            else:
                fill = getattr(frame[column], opts.strategy)()
            frame[column] = frame[column].fillna(fill)
            log.changed += counts[column]
    log.kept = len(frame)
    return frame
