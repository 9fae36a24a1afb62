"""A latent space: `genlab reconstruct|interpolate|traverse RUN` draw grids of held-out images through it
(`genlab.latent_grid`), and `genlab evaluate` adds its likelihood and how it is used: ELBO, the importance-weighted
bound, KL per dimension, active units, and MIG when the data's factors are known (evaluation/latent.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pydantic import Field

from genlab.capabilities import Capability, Done, Verb, check_has
from genlab.config.section import Section
from genlab.errors import GenlabError
from genlab.evaluation.figures import Figure
from genlab.quiet import quiet
from genlab.run import Run, as_run


class LatentModel(Protocol):
    latent_dim: int

    def reconstruct(self, images: Any) -> Any: ...
    def interpolate(self, a: Any, b: Any, steps: int = 8) -> Any: ...
    def traverse(self, dim: int, values: Any, base: Any = None) -> Any: ...
    def terms(self, x: Any, sample: bool = True) -> dict[str, Any]: ...  # log p(x|z), KL, its parts, the code mean
    def log_likelihood(self, images: Any, k: int = 64, generator: Any = None) -> Any: ...  # the IWAE bound


MODES = ("reconstruct", "interpolate", "traverse")


@quiet
def latent_grid(run: Run | str | Path, mode: str, n: int = 8, *, seed: int = 0, steps: int = 8,
                dims: list[int] | None = None, out: str | Path | None = None) -> Path:
    """The latent space as a PNG grid, from held-out images drawn by `seed`: `reconstruct` (a row of n originals
    over their reconstructions), `interpolate` (n rows from one image to another in `steps`), `traverse` (a row per
    latent dimension in `dims`, each swept over `steps` values from -3 to 3)."""
    import torch

    from genlab.data.sources import load_dataset
    from genlab.media.images import save_grid

    run = as_run(run)
    if mode not in MODES:
        raise GenlabError(f"mode: {mode!r} is not one of: {', '.join(MODES)}")
    check_has(run.config.model.family, "latent", run.path)
    model = run.model
    dataset = load_dataset(run.config.data, in_memory=True)
    held_out = dataset.test if len(dataset.test) else dataset.val
    pick = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed))
    images = held_out.x[pick[: 2 * n]] / 2 + 0.5
    if mode == "reconstruct":
        grid, columns = torch.cat([images[:n], model.reconstruct(images[:n])]), min(n, len(images))
    elif mode == "interpolate":
        pairs = images[: 2 * (len(images) // 2)].view(-1, 2, *images.shape[1:])[:n]
        grid, columns = torch.cat([model.interpolate(a, b, steps) for a, b in pairs]), steps
    else:
        values = torch.linspace(-3, 3, steps)
        dims = list(range(model.latent_dim)) if dims is None else dims
        grid, columns = torch.cat([model.traverse(d, values, base=images[0]) for d in dims]), steps
    out = Path(out) if out is not None else run.paths.samples / f"{mode}_seed{seed}.png"
    return save_grid(grid, out, nrow=columns, scale=4)


class LatentGrid(Section):
    """Arguments of the latent-space verbs: held-out images drawn by `seed`, written as one PNG grid."""

    n: int = Field(8, ge=1, le=256, description="Images (reconstruct), rows (interpolate).")
    steps: int = Field(8, ge=2, le=64, description="Points along each row (interpolate, traverse).")
    seed: int = Field(0, ge=0, description="Which held-out images are drawn.")
    out: Path | None = Field(None, description="The PNG to write (default: RUN/samples/<verb>_seed<seed>.png).")


class Traverse(LatentGrid):
    dim: list[int] = Field([], description="Latent dimensions to sweep, a row each (repeatable; default all).")


def _verb(mode: str, what: str, arguments: type[Section] = LatentGrid) -> Verb:
    def draw(run: Run, n: int, steps: int, seed: int, out: Path | None, dim: list[int] | None = None) -> Done:
        path = latent_grid(run, mode, n, seed=seed, steps=steps, dims=dim or None, out=out)
        return Done([f"wrote the {mode} grid to {path}"])

    return Verb(mode, what, arguments, draw)


CAPABILITY = Capability(
    "latent", LatentModel,
    verbs=(_verb("reconstruct", "Held-out images over their reconstructions, as a PNG grid."),
           _verb("interpolate", "Rows that walk the latent space from one held-out image to another."),
           _verb("traverse", "A row per latent dimension, each swept from -3 to 3 around one image.", Traverse)),
    evaluator="genlab.evaluation.latent:evaluate_latent",
    headline=(Figure("nll_iwae", "NLL (IWAE)", False), Figure("mig", "MIG", True)))
