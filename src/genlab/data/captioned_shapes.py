"""`captioned_shapes`: the text-to-image counterpart of `shapes`, drawn from a seed with no download.

Each image holds one or two objects on a light ground and its caption says what they are: shape, colour and
size, where a lone object stands, how two stand to each other, and how many there are:

    a small red square on the left            a large blue circle above a small yellow cross
    two large green triangles side by side    a small yellow triangle right of a large red circle

Every image's attributes are kept as factors (FACTORS), so a judge can check a generated image against its
prompt (`parse` turns a prompt back into factors). The factors are canonical: of two objects, the first is the
left (or upper) one, whichever the caption names first. Compositions are held out as GenEval holds them out:
no image of training or validation shows a pair of UNSEEN (no red triangle is ever seen), and the test split
holds as many images with such a pair as without one.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F

from genlab.data.records import Loaded
from genlab.data.sources import _to_model_range
from genlab.errors import GenlabError

SHAPES = ("square", "circle", "triangle", "cross")
NEW_SHAPES = ("star",)  # drawn by `render`, never in the set: a subject a fine-tune can add
COLOURS = {"red": (220, 50, 47), "green": (40, 160, 70), "blue": (40, 90, 220), "yellow": (235, 185, 10)}
SIZES = ("small", "large")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "side by side", "stacked")  # 4, 5: pairs
UNSEEN = frozenset({("red", "triangle"), ("green", "cross"), ("blue", "square"), ("yellow", "circle")})
FACTORS = ("count", "shape", "colour", "size", "place", "shape2", "colour2", "size2")
NONE = -1  # a lone object's second-object factors
GROUND = (245, 243, 236)
DEFAULT_COUNT = 20_000
TEST_SHARE = 0.15  # half of it with unseen pairs
VAL_SHARE = 0.05


def captioned_shapes(cfg) -> Loaded:
    """Training and validation images of seen pairs, then the test images: seen and unseen pairs alternating."""
    rng = np.random.default_rng(cfg.split_seed)
    n = cfg.limit or DEFAULT_COUNT
    n_test = max(2, round(n * TEST_SHARE))
    n_val = max(1, round(n * VAL_SHARE))
    seen = draw(rng, n - n_test // 2, unseen=False)
    unseen = draw(rng, n_test // 2, unseen=True)
    n_train = n - n_test - n_val
    test = torch.stack([seen[n_train + n_val:], unseen], 1).flatten(0, 1)  # alternating: any prefix holds both
    factors = torch.cat([seen[: n_train + n_val], test])
    size, generator = cfg.image_size or 32, torch.Generator().manual_seed(cfg.split_seed)
    images = torch.cat([render(factors[i : i + 1024], size, generator) for i in range(0, n, 1024)])
    captions = [caption(f, rng) for f in factors.tolist()]
    notes = [f"captioned_shapes: {n} images, seed {cfg.split_seed}; the test split's {n_test // 2} images of "
             f"unseen pairs ({', '.join(' '.join(p) for p in sorted(UNSEEN))}) never appear in training"]
    return Loaded(_to_model_range(images, None, cfg.channels), notes=notes, parts=(n_train, n_val),
                  factors=factors, factor_names=FACTORS, captions=captions)


SUBJECT = ("star", "yellow")  # shapes_subject's: a shape the set never shows
SUBJECT_IMAGES = 8  # DreamBooth's few images of its subject


def shapes_subject(cfg) -> Loaded:
    """A subject to teach a model (DreamBooth): one yellow star, alone, in every place and size; 8 training images
    (data.limit: fewer), as many for validation and four times as many held out. No captions: a DreamBooth
    config captions its subject itself."""
    n = min(cfg.limit or SUBJECT_IMAGES, SUBJECT_IMAGES)
    i = torch.arange(6 * n)
    shape, colour = (SHAPES + NEW_SHAPES).index(SUBJECT[0]), list(COLOURS).index(SUBJECT[1])
    factors = torch.stack([torch.zeros_like(i), torch.full_like(i, shape), torch.full_like(i, colour), i % 2,
                           (i // 2) % 4, *[torch.full_like(i, NONE)] * 3], 1)
    generator = torch.Generator().manual_seed(cfg.split_seed)
    images = torch.cat([render(factors[i : i + 1024], cfg.image_size or 32, generator)
                        for i in range(0, len(factors), 1024)])  # drawn at 4x: a chunk at a time bounds memory
    return Loaded(_to_model_range(images, None, cfg.channels), parts=(n, n), factors=factors, factor_names=FACTORS,
                  notes=[f"shapes_subject: a {SUBJECT[1]} {SUBJECT[0]}, {n} training images"])


def rendered_shapes(cfg) -> Loaded:
    """Uncaptioned scenes of every shape the renderer draws, the star too (one object in eight): the data of a
    first stage, an autoencoder, that must encode what a later fine-tune adds, as Stable Diffusion's autoencoder
    encodes far more than its UNet is ever asked to draw. Its pairs are the seen ones only."""
    rng = np.random.default_rng(cfg.split_seed)
    n = cfg.limit or DEFAULT_COUNT
    factors = any_factors(rng, n, unseen=False)
    generator = torch.Generator().manual_seed(cfg.split_seed)
    images = torch.cat([render(factors[i : i + 1024], cfg.image_size or 32, generator) for i in range(0, n, 1024)])
    n_test, n_val = max(2, round(n * TEST_SHARE)), max(1, round(n * VAL_SHARE))
    return Loaded(_to_model_range(images, None, cfg.channels), parts=(n - n_test - n_val, n_val), factors=factors,
                  factor_names=FACTORS, notes=[f"rendered_shapes: {n} scenes, stars among them, seed {cfg.split_seed}"])


def any_factors(rng: np.random.Generator, n: int, unseen: bool = True) -> torch.Tensor:
    """Factors of every combination the renderer draws, new shapes for one object in eight: seen and unseen pairs
    half and half, or (unseen=False) seen pairs only."""
    f = torch.cat([draw(rng, n - n // 2, unseen=False), draw(rng, n // 2, unseen=unseen)])
    new = torch.from_numpy(rng.random((n, 2)) < 1 / 8)
    for k, column in ((0, 1), (1, 5)):
        f[:, column] = torch.where(new[:, k] & (f[:, column] != NONE), len(SHAPES), f[:, column])
    return f[torch.from_numpy(rng.permutation(n))]


def draw(rng: np.random.Generator, n: int, unseen: bool) -> torch.Tensor:
    """(n, 8) factors: every image of `unseen` has at least one held-out pair, every other image none."""
    out = np.empty((0, len(FACTORS)), dtype=np.int64)
    while len(out) < n:
        k = 2 * (n - len(out)) + 16
        count = rng.integers(0, 2, k)
        a = [rng.integers(0, len(SHAPES), k), rng.integers(0, len(COLOURS), k), rng.integers(0, len(SIZES), k)]
        b = [rng.integers(0, len(SHAPES), k), rng.integers(0, len(COLOURS), k), rng.integers(0, len(SIZES), k)]
        twins = rng.random(k) < 0.25  # "two red circles": the second object is the first again
        b = [np.where(twins, x, y) for x, y in zip(a, b, strict=True)]
        place = np.where(count == 0, rng.integers(0, 4, k), rng.integers(4, 6, k))
        second = [np.where(count == 1, x, NONE) for x in b]
        rows = np.stack([count, *a, place, *second], 1)
        held = held_out(torch.from_numpy(rows)).numpy()
        out = np.concatenate([out, rows[held == unseen]])
    return torch.from_numpy(out[:n])


def held_out(factors: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the image shows a shape-colour pair of UNSEEN."""
    names = list(COLOURS)
    pairs = {(names.index(c), SHAPES.index(s)) for c, s in UNSEEN}
    f = factors.long()

    def hit(colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.stack([(colour == c) & (shape == s) for c, s in pairs]).any(0)

    return hit(f[:, 2], f[:, 1]) | (hit(f[:, 6], f[:, 5]) & (f[:, 0] == 1))


# --- captions ---------------------------------------------------------------------------------------------

def caption(f: list[int], rng: np.random.Generator | None = None) -> str:
    """The caption of one image's factors; `rng` picks which of two objects is named first (else the first)."""
    count, shape, colour, size, place, shape2, colour2, size2 = f
    one = _object(shape, colour, size)
    if count == 0:
        return f"a {one} {PLACES[place]}"
    if (shape, colour, size) == (shape2, colour2, size2):
        return f"two {SIZES[size]} {list(COLOURS)[colour]} {SHAPES[shape]}s " + \
            ("side by side" if place == 4 else "one above the other")
    two = _object(shape2, colour2, size2)
    if rng is not None and rng.random() < 0.5:
        return f"a {two} {'right of' if place == 4 else 'below'} a {one}"
    return f"a {one} {'left of' if place == 4 else 'above'} a {two}"


def _object(shape: int, colour: int, size: int) -> str:
    return f"{SIZES[size]} {list(COLOURS)[colour]} {(SHAPES + NEW_SHAPES)[shape]}"


_WORD = {"size": "|".join(SIZES), "colour": "|".join(COLOURS), "shape": "|".join(SHAPES + NEW_SHAPES)}
_OBJECT = r"(?P<size{n}>{size}) (?P<colour{n}>{colour}) (?P<shape{n}>{shape})"
_ONE = re.compile(r"an? " + _OBJECT.format(n=1, **_WORD) + r" (?P<place>on the left|on the right|at the top|"
                  r"at the bottom)")
_PAIR = re.compile(r"an? " + _OBJECT.format(n=1, **_WORD) + r" (?P<relation>left of|right of|above|below) an? "
                   + _OBJECT.format(n=2, **_WORD))
_TWINS = re.compile(r"two " + _OBJECT.format(n=1, **_WORD) + r"s (?P<how>side by side|one above the other)")


def parse(prompt: str) -> list[int]:
    """The canonical factors a prompt of this set's grammar asks for (GenlabError naming the prompt otherwise)."""
    text = " ".join(prompt.lower().split()).rstrip(".")
    if m := _ONE.fullmatch(text):
        return [0, *_ids(m, 1), PLACES.index(m["place"]), NONE, NONE, NONE]
    if m := _TWINS.fullmatch(text):
        ids = _ids(m, 1)
        return [1, *ids, 4 if m["how"] == "side by side" else 5, *ids]
    if m := _PAIR.fullmatch(text):
        first, second, relation = _ids(m, 1), _ids(m, 2), m["relation"]
        if relation in ("right of", "below"):
            first, second = second, first
        return [1, *first, 4 if relation in ("left of", "right of") else 5, *second]
    raise GenlabError(f"prompt: {prompt[:80]!r} is not a captioned_shapes caption (e.g. 'a small red square on the "
                      "left', 'a large blue circle above a small yellow cross', 'two small green triangles side by "
                      "side')")


def _ids(m: re.Match, n: int) -> list[int]:
    return [(SHAPES + NEW_SHAPES).index(m[f"shape{n}"]), list(COLOURS).index(m[f"colour{n}"]),
            SIZES.index(m[f"size{n}"])]


# --- drawing ------------------------------------------------------------------------------------------------

CENTRES = {0: (0.27, 0.5), 1: (0.73, 0.5), 2: (0.5, 0.27), 3: (0.5, 0.73)}  # a lone object's (x, y)
RADIUS = (0.12, 0.19)  # half-extent of a small and a large object, in frame units
SUPERSAMPLE = 4


def render(factors: torch.Tensor, size: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 8) factors -> (N, 3, size, size) images in [0, 1], drawn at 4x and averaged down (smooth edges).
    Each object stands a little off its place, drawn from `generator`."""
    f = factors.long()
    n, side = len(f), size * SUPERSAMPLE
    jitter = (torch.rand(n, 2, 2, generator=generator) - 0.5) * 0.08
    image = (torch.tensor(GROUND) / 255).view(1, 3, 1, 1).repeat(n, 1, side, side)
    grid = (torch.arange(side) + 0.5) / side
    palette = torch.tensor(list(COLOURS.values())) / 255
    for k, (shape, colour, size_) in enumerate(((f[:, 1], f[:, 2], f[:, 3]), (f[:, 5], f[:, 6], f[:, 7]))):
        cx, cy = _centre(f[:, 4], k)
        cx, cy = cx + jitter[:, k, 0], cy + jitter[:, k, 1]
        radius = torch.tensor(RADIUS)[size_.clamp(min=0)]
        for kind, inside in enumerate(SHAPE_TESTS):  # each shape's test on the rows that draw it
            rows = torch.nonzero((shape == kind) & ((f[:, 0] == 1) if k else True)).squeeze(1)
            if not len(rows):
                continue
            r = radius[rows].view(-1, 1, 1)
            u = (grid.view(1, 1, side) - cx[rows].view(-1, 1, 1)) / r
            v = (grid.view(1, side, 1) - cy[rows].view(-1, 1, 1)) / r
            mask = inside(u, v).unsqueeze(1)
            image[rows] = torch.where(mask, palette[colour[rows]].view(-1, 3, 1, 1), image[rows])
    return F.avg_pool2d(image, SUPERSAMPLE)


def _centre(place: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Object k's centre: a lone object where its place says; of a pair, the first left of (or above) the second."""
    table = torch.tensor([CENTRES[p] if p < 4 else ((0.27, 0.5), (0.5, 0.27))[p - 4] for p in range(6)] if k == 0
                         else [(0.0, 0.0)] * 4 + [(0.73, 0.5), (0.5, 0.73)])
    return table[place, 0], table[place, 1]


def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    rho, theta = torch.sqrt(u.square() + v.square()), torch.atan2(v, u)
    return rho <= 0.42 + 0.53 * ((torch.cos(5 * (theta + math.pi / 2)) + 1) / 2).pow(3)


# whether (u, v), in an object's own frame ([-1, 1] across), is inside each shape of SHAPES + NEW_SHAPES
SHAPE_TESTS = (
    lambda u, v: (u.abs() <= 0.8) & (v.abs() <= 0.8),
    lambda u, v: u.square() + v.square() <= 0.85**2,
    lambda u, v: (v <= 0.75) & (v >= -0.9) & (u.abs() <= (v + 0.9) / 1.65 * 0.95),  # upright
    lambda u, v: ((u.abs() <= 0.3) & (v.abs() <= 0.9)) | ((v.abs() <= 0.3) & (u.abs() <= 0.9)),
    _star,
)
