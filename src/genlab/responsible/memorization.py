"""What a model copies from its training set.

Text: a hashed index of every 50-character window of the training text, built at fit time and kept in the
model folder (training_windows.npy).

Only 64-bit hashes are kept, one per window: the index answers "was this window in the training text", so it
confirms a guessed passage but does not hold the text. A copy is a run of windows that all were: `find_copies`
reports it as one finding.

    index = CopyIndex.build(documents); index.save(folder)
    CopyIndex.load(folder).find_copies(text, min_chars=50) -> [Finding("memorized", start, end, text)]

Images: `ImageCopies` flags samples nearer a training image, in a feature space, than held-out real images
come (the real-vs-real nearest-neighbour distances set the radius).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.responsible.pii import Finding

WINDOW = 50  # characters: the shortest copy the index can find
INDEX_FILE = "training_windows.npy"
IMAGE_CHECK_FILE = "copy_check.safetensors"  # image models: training features, radius and feature network
_BASE = np.uint64(0x100000001B3)  # an odd multiplier: the hash of a window is a polynomial in it mod 2^64


def window_hashes(text: str, piece: int = 1 << 20) -> np.ndarray:
    """The hash of every WINDOW-character window of `text`, by start position (empty when it is shorter); a long
    text a `piece` of windows at a time, so its temporaries stay a few MB."""
    if len(text) > piece + WINDOW:
        return np.concatenate([_hashes(text[i:i + piece + WINDOW - 1]) for i in range(0, len(text) - WINDOW + 1,
                                                                                       piece)])
    return _hashes(text)


def _hashes(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = len(codes) - WINDOW + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    hashes = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):  # wrapping is the modulus
        for j in range(WINDOW):
            hashes = hashes * _BASE + codes[j:j + count]
        hashes ^= hashes >> np.uint64(31)  # mix the high bits down: the low bits of a power sum vary least
        hashes *= np.uint64(0x9E3779B97F4A7C15)
    return hashes


class CopyIndex:
    """The sorted, distinct window hashes of a training text."""

    def __init__(self, hashes: np.ndarray) -> None:
        self.hashes = hashes

    @classmethod
    def build(cls, documents: list[str]) -> CopyIndex:
        parts = [np.unique(window_hashes(doc)) for doc in documents]  # no window spans two documents
        if not parts:
            return cls(np.zeros(0, np.uint64))
        hashes = np.concatenate(parts)
        del parts
        hashes.sort()  # in place: the index's own size and a mask, where np.unique would copy
        return cls(hashes[np.r_[True, hashes[1:] != hashes[:-1]]] if len(hashes) else hashes)

    def save(self, folder: str | Path) -> None:
        np.save(Path(folder) / INDEX_FILE, self.hashes, allow_pickle=False)

    @classmethod
    def load(cls, folder: str | Path) -> CopyIndex | None:
        """The index kept in a model folder; None for a model trained without one."""
        file = Path(folder) / INDEX_FILE
        if not file.is_file():
            return None
        hashes = np.load(file, allow_pickle=False)
        if hashes.dtype != np.uint64 or hashes.ndim != 1:
            raise GenlabError(f"{file}: not a genlab copy index (expected one row of 64-bit hashes)")
        return cls(hashes)

    def __len__(self) -> int:
        return len(self.hashes)

    def seen(self, hashes: np.ndarray) -> np.ndarray:
        """Whether each hash is a training window's."""
        at = np.searchsorted(self.hashes, hashes).clip(max=max(len(self.hashes) - 1, 0))
        return self.hashes[at] == hashes if len(self.hashes) else np.zeros(len(hashes), bool)

    def find_copies(self, text: str, min_chars: int = WINDOW) -> list[Finding]:
        """The spans of `text` of at least `min_chars` characters whose every window is in the training text."""
        if min_chars < WINDOW:
            raise GenlabError(f"min_chars: {min_chars}; the index finds copies of {WINDOW} characters or more")
        starts = np.flatnonzero(self.seen(window_hashes(text)))
        if not len(starts):
            return []
        breaks = np.flatnonzero(np.diff(starts) > WINDOW) + 1  # overlapping or touching windows make one span
        found = []
        for run in np.split(starts, breaks):
            start, end = int(run[0]), int(run[-1]) + WINDOW
            if end - start >= min_chars:
                found.append(Finding("memorized", start, end, text[start:end]))
        return found

    def copied_share(self, texts: list[str], min_chars: int = WINDOW) -> float:
        """The share of `texts` that hold a copy of at least `min_chars` characters."""
        return sum(bool(self.find_copies(t, min_chars)) for t in texts) / max(len(texts), 1)


class ImageCopies:
    """Generated images that sit nearer a training image than fresh real images do, in a feature space.

    The radius is calibrated on held-out real images: `ratio` times the `quantile` of their distances to the
    nearest training image. A generator that does not copy lands inside it about as rarely as held-out images
    do (at most `quantile` of the time); a copy, or a training image with a little noise, lands inside. With
    its feature network, `genlab evaluate` keeps it in an image model's folder, where a server's memorized
    filter finds it."""

    def __init__(self, train: torch.Tensor, radius: float, real_distances: torch.Tensor | None = None,
                 net: torch.nn.Module | None = None) -> None:
        self.train, self.radius, self.real_distances, self.net = train, radius, real_distances, net

    @classmethod
    def calibrate(cls, train: torch.Tensor, held_out: torch.Tensor, quantile: float = 0.05, ratio: float = 0.5,
                  net: torch.nn.Module | None = None) -> ImageCopies:
        """From the features of the training and held-out images."""
        real = torch.cdist(held_out, train).min(dim=1).values
        return cls(train, ratio * torch.quantile(real, quantile).item(), real, net)

    def nearest(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's distance to its nearest training image, and that image's index."""
        return torch.cdist(samples, self.train).min(dim=1)

    def figures(self, samples: torch.Tensor) -> dict[str, float]:
        distances = self.nearest(samples)[0]
        return {"memorized_share": (distances < self.radius).double().mean().item(),
                "memorized_share_real": (self.real_distances < self.radius).double().mean().item(),
                "memorized_radius": self.radius,
                "nearest_train_median": distances.median().item(),
                "nearest_train_median_real": self.real_distances.median().item()}

    @torch.no_grad()
    def copied(self, images: torch.Tensor) -> torch.Tensor:
        """Which images (in [0, 1], as samplers return them) are copies, by the kept feature network."""
        return self.nearest(self.net(images.float()))[0] < self.radius

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        weights = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        shape = {"channels": str(self.net.body[0].in_channels), "classes": str(self.net.head.out_features)}
        save_file({**weights, "train": self.train.double().contiguous(), "radius": torch.tensor([self.radius])},
                  Path(folder) / IMAGE_CHECK_FILE, metadata=shape)

    @classmethod
    def load(cls, folder: str | Path) -> ImageCopies | None:
        """The check `genlab evaluate` kept in an image model's folder; None when it has not run."""
        from safetensors import safe_open

        from genlab.evaluation.features import FeatureNet

        file = Path(folder) / IMAGE_CHECK_FILE
        if not file.is_file():
            return None
        with safe_open(file, "pt") as f:
            shape, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        net = FeatureNet(int(shape["channels"]), int(shape["classes"]))
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return cls(tensors["train"], tensors["radius"].item(), net=net.eval())
