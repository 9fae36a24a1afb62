"""`photos`: crops of photographs for super-resolution, split by photograph, never by crop.

Built in: the photographs that ship with scikit-learn and scikit-image; a fixed few are held out whole
for validation and test, so the test photographs are never seen in training and are scored whole,
as super-resolution benchmarks score theirs. With `data.path`, a folder of the user's own
photographs is split the same way (by `data.split_seed`, `val_fraction`, `test_fraction`).
Training crops are cut at several scales of each photograph, turned by quarter turns and mirrored;
flat crops (sky, a black background) are drawn again, since they teach an upscaler nothing.
Crops are the high-resolution side (`data.image_size`); an SR model makes its inputs by downscaling.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genlab.data.sources import Loaded, _to_model_range
from genlab.errors import GenlabError
from genlab.media.suffixes import IMAGE_SUFFIXES

log = logging.getLogger("genlab")
TRAIN_CROPS, VAL_CROPS = 4096, 64
SCALES = (1.0, 0.75, 0.5)  # each training photograph is also cropped downscaled by these
FLAT = 0.02  # a crop whose grey levels vary less than this (std, in [0, 1]) is drawn again
MAX_TEST_SIDE = 1024  # a held-out photograph larger than this is scored on its centre
# which built-in photograph goes where; the test ones are never trained on (motorcycle_right is left out: it is
# motorcycle_left seen from a few centimetres away)
BUILT_IN = {
    "train": ("sklearn:china", "skimage:astronaut", "skimage:camera", "skimage:coins", "skimage:moon",
              "skimage:motorcycle_left", "skimage:hubble_deep_field", "skimage:retina", "skimage:ihc",
              "skimage:brick", "skimage:grass", "skimage:gravel", "skimage:page", "skimage:text"),
    "val": ("skimage:rocket",),
    "test": ("sklearn:flower", "skimage:chelsea", "skimage:coffee"),
}
SKIMAGE_FILES = {"hubble_deep_field": "hubble_deep_field.jpg", "retina": "retina.jpg", "rocket": "rocket.jpg"}


def photos(cfg) -> Loaded:
    size = cfg.image_size or 64
    notes: list[str] = []
    if cfg.path is not None:
        names = _user_split(cfg, notes)
    else:
        names = {split: [_built_in(name) for name in files] for split, files in BUILT_IN.items()}
    rng = np.random.default_rng(cfg.split_seed)
    train = _crops(names["train"], size, cfg.limit or TRAIN_CROPS, rng, augment=True, notes=notes)
    val = _crops(names["val"], size, VAL_CROPS, rng, augment=False, notes=notes) if names["val"] else train[:0]
    test, test_names = [], []
    for path in names["test"]:
        if (photo := _read(path, notes)) is not None:
            test.append(_to_model_range(_test_view(photo, path.stem, notes)[None], None, cfg.channels)[0])
            test_names.append(path.stem)
    notes.insert(0, f"photos: {len(train)} train crops of {len(names['train'])} photographs, {len(val)} val crops "
                    f"of {len(names['val'])}; test: {', '.join(test_names) or 'none'}, whole")
    images = _to_model_range(torch.cat([train, val]), None, cfg.channels)
    return Loaded(images, notes=notes, parts=(len(train), len(val)), test=test, test_names=test_names)


def _user_split(cfg, notes: list[str]) -> dict[str, list[Path]]:
    """The user's photographs, whole ones to each split; unreadable files are named and take no place."""
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise GenlabError(f"data.path: {root} is not a folder (data.source 'photos' reads a folder of photographs)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    files = [p for p in files if _read(p, notes, header_only=True) is not None]
    n_val = int(cfg.val_fraction > 0) * max(1, round(len(files) * cfg.val_fraction))
    n_test = int(cfg.test_fraction > 0) * max(1, round(len(files) * cfg.test_fraction))
    if len(files) < n_val + n_test + 1:
        raise GenlabError(f"data.path: {len(files)} photograph(s) under {root}; super-resolution holds whole "
                          f"photographs out ({n_val} for validation, {n_test} for test) and trains on the rest, so "
                          f"it needs at least {n_val + n_test + 1} (or set data.val_fraction / data.test_fraction "
                          "to 0)")
    order = [files[i] for i in np.random.default_rng(cfg.split_seed).permutation(len(files))]
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def _built_in(name: str) -> Path:
    """The file of a built-in photograph, found without importing its package."""
    package, image = name.split(":")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GenlabError(f"data.source 'photos': the built-in photographs need {package} (pip install "
                          f"{'scikit-image' if package == 'skimage' else 'scikit-learn'})")
    folder = Path(next(iter(spec.submodule_search_locations)))
    folder = folder / "datasets" / "images" if package == "sklearn" else folder / "data"
    return folder / (f"{image}.jpg" if package == "sklearn" else SKIMAGE_FILES.get(image, f"{image}.png"))


def _read(path: Path, notes: list[str], header_only: bool = False) -> torch.Tensor | tuple[int, int] | None:
    """A photograph as (3, H, W) in [0, 1] (grey ones repeated over three channels: SR learns luma; alpha
    dropped), or only its (width, height); None, with a note, when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    from genlab.media.images import read_image

    try:
        if header_only:
            with Image.open(path) as im:
                return im.size
        photo = read_image(path, notes)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        log.warning(f"data.path: {path} is not a readable image ({type(err).__name__}); left out")
        notes.append(f"{path.name}: not a readable image ({type(err).__name__}); left out")
        return None
    return photo[:3].contiguous() if len(photo) >= 3 else photo[:1].expand(3, -1, -1).contiguous()


def _crops(paths: list[Path], size: int, n: int, rng: np.random.Generator, *, augment: bool,
           notes: list[str]) -> torch.Tensor:
    """n crops of side `size`, from each photograph in proportion to the square root of its area; one
    photograph in memory at a time (a user's folder may hold many large ones)."""
    sizes = {p: wh for p in paths if (wh := _read(p, notes, header_only=True)) is not None}
    for p, (w, h) in list(sizes.items()):
        if min(w, h) < size:
            notes.append(f"{p.name}: {w}x{h}, smaller than a {size}-pixel crop; left out")
            del sizes[p]
    if not sizes:
        raise GenlabError(f"data.image_size: {size}; no readable photograph is that large on both sides")
    weights = np.sqrt([w * h for w, h in sizes.values()])
    out = []
    for p, count in zip(sizes, rng.multinomial(n, weights / weights.sum()), strict=True):
        if count == 0 or (photo := _read(p, notes)) is None:
            continue
        views = [photo] + [_shrink(photo, s) for s in SCALES[1:] if augment and min(photo.shape[-2:]) * s >= size]
        out += [_one_crop(views[rng.integers(len(views))], size, rng, augment) for _ in range(count)]
    if not out:
        raise GenlabError("data.path: none of the photographs could be decoded")
    return torch.stack(out)[torch.from_numpy(rng.permutation(len(out)))]


def _one_crop(photo: torch.Tensor, size: int, rng: np.random.Generator, augment: bool) -> torch.Tensor:
    _, h, w = photo.shape
    for _ in range(10):
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crop = photo[:, top : top + size, left : left + size]
        if crop.mean(0).std() >= FLAT:
            break
    if augment:
        crop = torch.rot90(crop, int(rng.integers(4)), dims=(1, 2))
        if rng.random() < 0.5:
            crop = crop.flip(-1)
    return crop.contiguous()


def _shrink(photo: torch.Tensor, scale: float) -> torch.Tensor:
    return F.interpolate(photo[None], scale_factor=scale, mode="bicubic", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def _test_view(photo: torch.Tensor, name: str, notes: list[str]) -> torch.Tensor:
    """The photograph cut to a multiple of 8 pixels (x2 and x4 divide it); a large one, to its centre."""
    _, h, w = photo.shape
    th, tw = min(h, MAX_TEST_SIDE), min(w, MAX_TEST_SIDE)
    if (th, tw) != (h, w):
        notes.append(f"{name}: {w}x{h}; scored on its central {tw}x{th}")
    top, left = (h - th) // 2, (w - tw) // 2
    return photo[:, top : top + th - th % 8, left : left + tw - tw % 8]
