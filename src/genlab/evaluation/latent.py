"""What an autoencoding model (a VAE) is scored on beyond its samples' FID: the ELBO and its terms,
the importance-weighted likelihood bound, the latent space's use (per-dimension KL, active units),
and, when the data's generative factors are known, disentanglement (MIG)."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import mutual_info_score

from genlab.data.records import Split
from genlab.data.sources import load_dataset
from genlab.evaluation.report import Scored

ACTIVE = 0.01  # a dimension is active when its posterior mean varies across data by more than this (Burda et al.)
MIG_BINS = 20  # disentanglement_lib's discretization


LABELS = {
    "elbo": "ELBO (nats per image; higher is better)",
    "nll_iwae": "NLL, importance-weighted bound (nats per image)",
    "reconstruction_mse": "reconstruction error (MSE per pixel)",
    "active_units": "active latent units",
    "mig": "MIG (disentanglement, 0 to 1)",
}


def evaluate_latent(run, ev, options: dict) -> Scored:
    """The likelihood and latent space of an autoencoding model on held-out images (its samples are scored as
    images are, by the images capability)."""
    dataset = load_dataset(run.config.data, in_memory=True)
    held_out = dataset.held_out
    parts = (held_out.x, held_out.y, held_out.factors)
    subset = Split(*(None if v is None else v[: ev.latent_images] for v in parts))
    metrics = latent_metrics(run.model, subset, dataset.factor_names, ev.likelihood_samples, seed=ev.seed)
    rows = [(label, f"{metrics[k]:.4g}") for k, label in LABELS.items() if metrics.get(k) is not None]
    more, shown = latent_section(run.model, held_out, metrics)
    return Scored(metrics, rows + more, html=shown)


def latent_section(model, held_out: Split, metrics: dict, steps: int = 9, rows_shown: int = 16
                   ) -> tuple[list[tuple[str, str]], str]:
    """The report's rows for MIG per factor, and a traversal around one held-out image of the `rows_shown`
    dimensions with the most KL, each named by the factors it is the most informative dimension of."""
    from genlab.evaluation.report import image_rows

    rows, holds = [], {}
    if "mig_per_factor" in metrics:
        for factor, d in metrics["mig_dimension"].items():
            holds[d] = f"{holds[d]}, {factor}" if d in holds else factor
        rows.append(("MIG per factor (its most informative dimension)", ", ".join(
            f"{f} {v:.3f} (z{metrics['mig_dimension'][f]})" for f, v in metrics["mig_per_factor"].items())))
    kl = torch.tensor(metrics["kl_per_dim"])
    order = kl.argsort(descending=True).tolist()[:rows_shown]
    values = torch.linspace(-2.5, 2.5, steps)
    grid = torch.cat([model.traverse(d, values, base=held_out.x[0] / 2 + 0.5) for d in order])
    names = ", ".join(f"z{d} (KL {kl[d]:.2f}{'; ' + holds[d] if d in holds else ''})" for d in order)
    which = "a row per latent dimension" if len(order) == len(kl) else f"the {len(order)} dimensions with the most KL"
    caption = f"{which}, swept from -2.5 to 2.5 around a held-out image's code: {names}"
    return rows, image_rows(grid, steps, caption)


@torch.no_grad()
def latent_metrics(model, held_out: Split, factor_names: tuple[str, ...], k: int, batch: int = 250,
                   seed: int = 0) -> dict:
    """ELBO, reconstruction, IWAE bound (k samples), per-dim KL, active units, and MIG when factors are known."""
    x = held_out.x / 2 + 0.5
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"log_px": [], "kl": [], "kl_dims": [], "mean": [], "iwae": [], "sq": []}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i in range(0, len(x), batch):
            chunk = x[i : i + batch].to(model.device)
            t = model.terms(chunk)
            for key in ("log_px", "kl", "kl_dims", "mean"):
                parts[key].append(t[key].cpu())
            parts["iwae"].append(model.log_likelihood(chunk, k, generator).cpu())
            parts["sq"].append((model.reconstruct(chunk) - chunk).square().flatten(1).sum(1).cpu())
    got = {key: torch.cat(v) for key, v in parts.items()}
    pixels = math.prod(x.shape[1:])
    kl_dims = got["kl_dims"].mean(0)
    variance = got["mean"].var(0)
    metrics = {
        "elbo": (got["log_px"] - got["kl"]).mean().item(),
        "reconstruction_nll": -got["log_px"].mean().item(),
        "reconstruction_mse": (got["sq"].mean() / pixels).item(),
        "kl": got["kl"].mean().item(),
        "nll_iwae": -got["iwae"].mean().item(),
        "bits_per_dim_iwae": -got["iwae"].mean().item() / (pixels * math.log(2)),
        "iwae_samples": k,
        "kl_per_dim": [round(v, 4) for v in kl_dims.tolist()],
        "active_units": int((variance > ACTIVE).sum()),
        "latent_dim": len(kl_dims),
        "num_images": len(x),
    }
    if held_out.factors is not None:
        score, per_factor, best = mig(got["mean"].numpy(), held_out.factors.numpy())
        metrics["mig"] = score
        metrics["mig_per_factor"] = dict(zip(factor_names, per_factor, strict=True))
        metrics["mig_dimension"] = dict(zip(factor_names, best, strict=True))
    return metrics


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> tuple[float, list[float], list[int]]:
    """Mutual Information Gap (Chen et al. 2018), as disentanglement_lib computes it: each code dimension
    cut into `bins` equal-width bins, its mutual information with each factor, and per factor the gap
    between the two most informative dimensions over the factor's entropy; the mean over factors.
    Returns the score, each factor's gap, and each factor's most informative dimension."""
    discrete = np.stack([np.digitize(c, np.histogram(c, bins)[1][:-1]) for c in codes.T])
    info = np.array([[mutual_info_score(f, d) for f in factors.T] for d in discrete])  # (dims, factors)
    entropy = np.array([mutual_info_score(f, f) for f in factors.T])
    top = np.sort(info, axis=0)[::-1]
    gaps = (top[0] - top[1]) / np.maximum(entropy, 1e-12) if len(top) > 1 else top[0] / np.maximum(entropy, 1e-12)
    return float(gaps.mean()), [round(float(g), 4) for g in gaps], info.argmax(0).tolist()
