"""Data sources: each turns a DataConfig into in-memory tensors, split by a fixed seed.

A source is a plain function named in `genlab.data.registry` (`data.source: NAME` picks it) that returns a
`Loaded`: images are float tensors (N, C, H, W) in [-1, 1]; token windows or table rows fit the
same record with their own modality; labels are int64 (N,) or None.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.data.captions import read_captions
from genlab.data.records import Dataset, DataSpec, Loaded, Split, split_indices
from genlab.data.registry import FILES, source
from genlab.errors import GenlabError
from genlab.media.suffixes import IMAGE_SUFFIXES

__all__ = ["Dataset", "DataSpec", "Loaded", "Split", "load_dataset", "prepares"]  # the records live in records.py

log = logging.getLogger("genlab")


def load_dataset(cfg, in_memory: bool = False) -> Dataset:
    """Load `cfg.source` (or the set `genlab prepare` wrote, `cfg.prepared`) and split it by `cfg.split_seed`;
    with `cfg.balance_by`, the training split draws each group equally often. `in_memory`: an image or audio set
    that fit streams comes as a bounded spread of its training and test items instead (what evaluation compares)."""
    dataset = _load_split(cfg)
    if in_memory:
        from genlab.data.streamed_items import in_memory as held

        dataset = replace(dataset, train=held(dataset.train), test=held(dataset.test))
    return balanced(dataset, cfg.balance_by) if getattr(cfg, "balance_by", None) else dataset


def balanced(dataset: Dataset, by: str) -> Dataset:
    """`dataset` whose training split is weighted so that each group of `by` (the class label, or a table's
    column; a missing value is a group of its own) is drawn equally often, within any weights it had."""
    train = dataset.train
    if by == "label":
        if train.y is None or not dataset.spec.class_names:
            raise GenlabError("data.balance_by: label, but this data set has no class labels (class subfolders)")
        codes = train.y.numpy()
    elif hasattr(train.x, "columns"):
        if by not in train.x.columns:
            raise GenlabError(f"data.balance_by: no column {by!r} in the table; its columns are "
                              f"{', '.join(map(str, train.x.columns))}")
        codes = train.x[by].astype("string").fillna("<missing>").factorize()[0]
    else:
        raise GenlabError(f"data.balance_by: {by!r}; a data set without columns is balanced by its class label "
                          "(balance_by: label)")
    counts = np.bincount(codes)
    weights = torch.from_numpy(len(codes) / (np.count_nonzero(counts) * counts[codes]))
    if train.weights is not None:
        weights = weights * train.weights.double()
    notes = [*dataset.notes, f"training batches balanced by {by} ({np.count_nonzero(counts)} groups)"]
    return Dataset(dataset.spec, replace(train, weights=weights), dataset.val, dataset.test, notes,
                   dataset.factor_names)


def _load_split(cfg) -> Dataset:
    if prepares(cfg):
        from genlab.data.streaming import streamed_dataset
        from genlab.prepare import cached
        from genlab.prepare.store import load_prepared

        folder = Path(cfg.prepared or cached(cfg))
        if (streamed := streamed_dataset(folder, cfg)) is not None:
            return streamed
        data: Loaded = load_prepared(folder)
    elif cfg.streaming is True:
        raise GenlabError(f"data.streaming: true streams a prepared set (data.prepared, or a user's files); "
                          f"data.source {cfg.source!r} is read into memory (set data.streaming: auto)")
    else:
        data = source(cfg.source)(cfg)
    x, y = data.x, data.y
    if isinstance(x, list):  # documents, or (source, target) pairs
        return _split_documents(data, cfg)
    if not isinstance(x, torch.Tensor):  # a DataFrame, split by rows
        from genlab.data.table import split_table

        return split_table(data, cfg)
    if not torch.isfinite(x).all():
        raise GenlabError(f"data.source {cfg.source!r}: the data holds NaN or infinite values")
    if data.parts is None:
        train, val, test = split_indices(len(x), y, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    else:
        a, b = data.parts
        train, val, test = np.arange(a), np.arange(a, a + b), np.arange(a + b, len(x))
    spec = DataSpec(modality=data.modality, shape=tuple(x.shape[1:]), class_names=tuple(data.class_names),
                    sample_rate=data.sample_rate, captioned=data.captions is not None)

    def take(idx: np.ndarray) -> Split:
        return Split(x[idx], None if y is None else y[idx], None if data.factors is None else data.factors[idx],
                     None if data.weights is None else data.weights[idx],
                     captions=None if data.captions is None else [data.captions[i] for i in idx])

    held_out = take(test) if data.test is None else Split(data.test, names=data.test_names)
    return Dataset(spec, take(train), take(val), held_out, data.notes, data.factor_names)


def prepares(cfg) -> bool:
    """Whether training reads a prepared set: `data.prepared`; a user's files (image folder, text, table) through
    the default pipeline or the config's; a built-in set, fixed for benchmarks, only when the config lists steps.
    A pipeline of no steps, or only `augment`, reads the source as it is."""
    if cfg.prepared is not None:
        return True
    if cfg.pipeline is None:
        return cfg.source in FILES
    return any(step.step != "augment" for step in cfg.pipeline)


def _split_documents(data: Loaded, cfg) -> Dataset:
    """Whole documents go to one split. A single document (one .txt file) is cut into consecutive
    parts instead, train first and test last, as nanoGPT splits tiny shakespeare."""
    docs = data.x
    spec = DataSpec(data.modality, ())
    if data.parts is not None:
        a, b = data.parts
        return Dataset(spec, Split(docs[:a]), Split(docs[a:a + b]), Split(docs[a + b:]), data.notes)
    if len(docs) == 1 and isinstance(docs[0], str):
        text, n = docs[0], len(docs[0])
        a, b = round(n * (1 - cfg.val_fraction - cfg.test_fraction)), round(n * (1 - cfg.test_fraction))
        parts = [[t] if t else [] for t in (text[:a], text[a:b], text[b:])]
        return Dataset(spec, *(Split(p) for p in parts), data.notes)
    train, val, test = split_indices(len(docs), None, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    return Dataset(spec, *(Split([docs[i] for i in idx]) for idx in (train, val, test)), data.notes)


def _to_model_range(images: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> resized, channel-matched, in [-1, 1]."""
    if size is not None and images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif channels == 1 and images.shape[1] == 3:
        images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (images.clamp(0, 1) * 2 - 1).contiguous()


def digits(cfg) -> Loaded:
    """scikit-learn's 1,797 handwritten digits, 8x8 with 16 grey levels; it ships with the package."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(d.target, dtype=torch.long)
    return Loaded(_to_model_range(images, cfg.image_size, cfg.channels), labels, [str(c) for c in range(10)])


def image_folder(cfg) -> Loaded:
    """A folder of images; each subfolder is a class (images directly in the folder: no labels). Captions are read
    as data/captions.py says (then subfolders are no classes); an image without a usable one is skipped, named."""
    root = cfg.path
    if root is None:
        raise GenlabError("data.path: required for data.source 'image_folder' (a folder of PNG/JPEG files)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GenlabError(f"data.path: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    captions = read_captions(root, cfg.text_field)
    texts: list[str] | None = None
    if captions is not None:
        texts, captioned = [], []
        for p in files:
            text, why = captions.caption(p.relative_to(root).as_posix())
            if text is None:
                log.warning(f"skipped {p.relative_to(root)}: {why}")
                continue
            texts.append(text)
            captioned.append(p)
        if files and not captioned:
            first = files[0].relative_to(root).as_posix()
            raise GenlabError(f"data.path: none of the {len(files)} images under {root} has a usable caption "
                              f"({first}: {captions.caption(first)[1]})")
        files = captioned
    if not files:
        raise GenlabError(f"data.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    # as Hugging Face's imagefolder: with captions, subfolders are where images are kept, not their classes
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."}) if texts is None else []
    if classes and any(p.parent == root for p in files):
        raise GenlabError(f"data.path: {root} mixes images at the top with class subfolders; use one or the other")
    images, kept, notes = read_images(files, root, cfg)
    labels = [classes.index(files[i].parent.relative_to(root).as_posix()) for i in kept] if classes else None
    return Loaded(images, None if labels is None else torch.tensor(labels, dtype=torch.long), classes,
                  notes + (captions.notes if captions else []), captions=None if texts is None else
                  [texts[i] for i in kept])


def read_images(files: list[Path], root: Path, cfg) -> tuple[torch.Tensor, list[int], list[str]]:
    """Image files as the data config reads them (square, `image_size`, `channels`, in [-1, 1]): the images, the
    indices of the files that could be read, and notes on those that could not."""
    from PIL import Image, UnidentifiedImageError

    from genlab.media.images import decoder_notes

    size = cfg.image_size
    arrays, kept, skipped, complaints = [], [], [], []
    for i, p in enumerate(files):
        try:
            with decoder_notes(p.relative_to(root).as_posix(), complaints), Image.open(p) as im:
                im = im.convert("L" if cfg.channels == 1 or (cfg.channels is None and im.mode in ("L", "1")) else "RGB")
                im = _center_square(im).resize((size, size), Image.BICUBIC) if size else im
                arrays.append(np.asarray(im, dtype=np.float32) / 255.0)
        except (UnidentifiedImageError, OSError) as err:
            skipped.append(f"{p.relative_to(root)} ({err.__class__.__name__})")
            continue
        kept.append(i)
    if skipped:
        more = f" and {len(skipped) - 3} more (all listed in train.json)" if len(skipped) > 3 else ""
        log.warning(f"skipped {len(skipped)} unreadable image(s) under {root}: {', '.join(skipped[:3])}{more}")
    if not arrays:
        raise GenlabError(f"data.path: none of the {len(files)} image files under {root} could be read")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        if size is None:
            raise GenlabError(f"data.image_size: images under {root} differ in size {sorted(shapes)[:3]}; set one")
        # mixed grey and colour files: bring all to three channels
        arrays = [np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in arrays]
    stack = np.stack(arrays)
    images = torch.from_numpy(stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2).copy())
    if complaints:
        log.warning(f"the image decoder complained about {len(complaints)} file(s) under {root}: {complaints[0]}")
    notes = [f"skipped unreadable: {s}" for s in skipped] + complaints
    return _to_model_range(images, None, cfg.channels), kept, notes


def _center_square(im):
    w, h = im.size
    s = min(w, h)
    return im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
