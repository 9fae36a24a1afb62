"""Tabular VAE: mixed numeric and categorical columns, trained with the missing cells in place.

Missing cells are masked out of the likelihood (MIWAE, HI-VAE), never dropped: the encoder sees
the observed values and the missingness mask, the decoder gives every cell a distribution
(Student-t or Gaussian for numbers, a categorical for categories), and the loss is the
importance-weighted bound over the observed cells only. The same weights impute (the posterior
mean of each missing cell under self-normalized importance sampling), score anomalies (the negative
bound on log p(observed cells)) and draw synthetic rows. Raw rows go in and come out:
`data/columns.py` holds the column transforms, saved with the model as columns.json.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_model
from torch import nn

from genlab.config import TrainConfig
from genlab.config.tabular_vae import TabularSampling, TabularVAEConfig
from genlab.data.columns import Columns
from genlab.data.records import Dataset, DataSpec, Split
from genlab.errors import GenlabError
from genlab.media.formats import TABLES
from genlab.models.base import GenerativeModel
from genlab.models.protocol import Suits

log = logging.getLogger("genlab")


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


class TabularNet(nn.Module, PyTorchModelHubMixin):
    """Encoder q(z | observed cells, mask) and decoder p(row | z), for columns of the given kinds and sizes."""

    def __init__(self, numeric: int, categories: list[int], latent_dim: int, hidden: list[int],
                 encoding: str = "onehot", embedding_dim: int = 4) -> None:
        super().__init__()
        self.numeric, self.categories, self.encoding = numeric, categories, encoding
        if encoding == "embedding":  # index k (one past the categories) stands for a missing cell
            self.embeddings = nn.ModuleList(nn.Embedding(k + 1, embedding_dim) for k in categories)
            cat_width = embedding_dim * len(categories)
        else:
            cat_width = sum(categories)
        inputs = numeric + cat_width + numeric + len(categories)  # values, then the mask
        self.encoder = mlp([inputs, *hidden, 2 * latent_dim])
        self.decoder = mlp([latent_dim, *hidden[::-1], 2 * numeric + sum(categories)])

    def encode(self, num: torch.Tensor, cats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`num` (N, numeric) scaled values, `cats` (N, categorical) indices (-1: missing), `mask` 1 if observed."""
        parts = [num]
        for j, k in enumerate(self.categories):
            code = cats[:, j]
            if self.encoding == "embedding":
                parts.append(self.embeddings[j](torch.where(code < 0, k, code)))
            else:
                parts.append(F.one_hot(code.clamp(min=0), k).float() * (code >= 0).unsqueeze(1))
        mean, log_var = self.encoder(torch.cat([*parts, mask], dim=1)).chunk(2, dim=1)
        return mean, log_var.clamp(-20, 10)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Location and scale of each number, and the logits of each categorical column."""
        out = self.decoder(z)
        loc, raw_scale = out[..., : self.numeric], out[..., self.numeric : 2 * self.numeric]
        logits = list(out[..., 2 * self.numeric :].split(self.categories, dim=-1)) if self.categories else []
        return loc, F.softplus(raw_scale) + 1e-3, logits


class TabularVAE(GenerativeModel):
    Config = TabularVAEConfig
    Sampling = TabularSampling
    media = TABLES
    suits = Suits("table", "a VAE over mixed numeric and categorical columns: synthetic rows, imputation of "
                  "missing cells and anomaly scores from one model", "cancer-tabular")
    network = "net"
    columns: Columns  # the training table's columns: names, dtypes, categories, scaling

    def __init__(self, config: TabularVAEConfig, spec: DataSpec, columns: Columns,
                 train: TrainConfig | None = None) -> None:
        super().__init__(config, spec, train)
        self.columns = columns
        kinds = [c.kind for c in columns.columns]
        self.num_idx = [i for i, k in enumerate(kinds) if k == "numeric"]
        self.cat_idx = [i for i, k in enumerate(kinds) if k == "categorical"]
        self.net = TabularNet(len(self.num_idx), [len(columns.columns[i].categories) for i in self.cat_idx],
                              config.latent_dim, config.hidden, config.encoding, config.embedding_dim)
        if config.group_weighted_loss is not None:
            names, column = columns.names, config.group_weighted_loss
            if column not in names or names.index(column) not in self.cat_idx:
                categorical = [names[i] for i in self.cat_idx]
                raise GenlabError(f"model.group_weighted_loss: {column!r} is not a categorical column of the table "
                                  f"(those are: {', '.join(categorical) or 'none'})")
            self.group_column = self.cat_idx.index(names.index(column))
            groups = len(columns.columns[names.index(column)].categories)
            # each group's weight, the last for rows whose group is missing; a buffer: checkpoints resume it
            self.register_buffer("group_weights", torch.full((groups + 1,), 1.0 / (groups + 1)))

    @classmethod
    def build(cls, config: TabularVAEConfig, dataset: Dataset, train: TrainConfig | None = None
              ) -> tuple[TabularVAE, Dataset]:
        columns = Columns.fit(dataset.train.x, config.scaling, config.categorical)
        model = cls(config, dataset.spec, columns, train)
        encoded = [Split(columns.encode(s.x, f"{name} split"), weights=s.weights) for name, s in
                   (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))]
        return model, Dataset(dataset.spec, *encoded, dataset.notes)

    # --- the bound -------------------------------------------------------------------------------------

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        observed = ~torch.isnan(x)
        num = torch.nan_to_num(x[:, self.num_idx])
        cats = torch.nan_to_num(x[:, self.cat_idx], nan=-1).long()
        mask = torch.cat([observed[:, self.num_idx], observed[:, self.cat_idx]], dim=1).float()
        return num, cats, mask

    def log_weights(self, x: torch.Tensor, k: int, hide: float = 0.0) -> tuple[torch.Tensor, tuple]:
        """log p(observed, z_i) - log q(z_i | observed) for k draws per row: (k, N); and the decoder's outputs.
        `hide` > 0 hides up to that share of each row's observed cells from the encoder (not from the
        likelihood), so the model learns to infer cells it cannot see: a table without holes still
        teaches imputation. q may condition on less, so this stays a bound on log p(observed)."""
        num, cats, mask = self._split(x)
        seen_num, seen_cats, seen = num, cats, mask
        if hide > 0:
            share = torch.rand(len(x), 1, device=x.device) * hide
            seen = mask * (torch.rand_like(mask) >= share)
            n_num = len(self.num_idx)
            seen_num = num * seen[:, :n_num]
            seen_cats = torch.where(seen[:, n_num:] > 0, cats, -1)
        mean, log_var = self.net.encode(seen_num, seen_cats, seen)
        eps = torch.randn((k, *mean.shape), device=mean.device)
        z = mean + (0.5 * log_var).exp() * eps
        log_q = (-0.5 * eps.square() - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
        loc, scale, logits = self.net(z)
        n_num = len(self.num_idx)
        log_px = (self._log_number(num, loc, scale) * mask[:, :n_num]).sum(-1)
        for j, lg in enumerate(logits):
            picked = lg.log_softmax(-1).gather(-1, cats[:, j].clamp(min=0).expand(k, -1).unsqueeze(-1)).squeeze(-1)
            log_px = log_px + picked * mask[:, n_num + j]
        return log_px + log_prior - log_q, (loc, scale, logits)

    def _log_number(self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.config.likelihood == "gaussian":
            return torch.distributions.Normal(loc, scale).log_prob(x)
        return torch.distributions.StudentT(self.config.degrees_of_freedom, loc, scale).log_prob(x)

    def bound(self, x: torch.Tensor, k: int, hide: float = 0.0) -> torch.Tensor:
        """The importance-weighted lower bound on log p(observed cells), per row."""
        log_w, _ = self.log_weights(x, k, hide)
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        rows = -self.bound(batch["x"], self.config.importance_samples, self.config.hide)
        loss = rows.mean()
        self.log("train/loss", loss)
        return loss if self.config.group_weighted_loss is None else self.group_loss(batch["x"], rows)

    def group_loss(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The mean loss of each group in the batch, weighted by the group weights (equal, or grown by
        exp(group_dro_step * loss) each step, so that the worst-fitted group gains weight)."""
        _, cats, _ = self._split(x)
        group = torch.where(cats[:, self.group_column] < 0, len(self.group_weights) - 1, cats[:, self.group_column])
        count = torch.bincount(group, minlength=len(self.group_weights))
        means = torch.zeros_like(self.group_weights).scatter_add(0, group, rows) / count.clamp(min=1)
        present = count > 0
        with torch.no_grad():
            grown = self.group_weights * torch.exp(self.config.group_dro_step * means.detach() * present)
            self.group_weights.copy_(grown / grown.sum())
        weights = self.group_weights * present
        return (weights * means).sum() / weights.sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(batch_idx)
            loss = -self.bound(batch["x"], self.config.importance_samples).mean()
        self.log("val/loss", loss, batch_size=len(batch["x"]), sync_dist=True)

    # --- raw rows in, raw rows out ------------------------------------------------------------------

    def conform(self, frame: pd.DataFrame, where: str = "table") -> tuple[pd.DataFrame, list[str]]:
        """`frame` with the model's columns in its order: a column it lacks comes in empty (so it is imputed,
        or left out of a score) and a column the model does not know is set aside, each with a warning."""
        names = self.columns.names
        lacking = [n for n in names if n not in frame.columns]
        unknown = [str(c) for c in frame.columns if str(c) not in names]
        if lacking:
            log.warning(f"{where}: no column(s) {', '.join(lacking)}; treated as all missing")
        if unknown:
            log.warning(f"{where}: column(s) {', '.join(unknown)} are not the model's; passed through unchanged")
        known = frame.rename(columns=str).reindex(columns=names)
        return known, unknown

    @torch.no_grad()
    def impute(self, frame: pd.DataFrame, seed: int = 0, where: str = "table") -> pd.DataFrame:
        """`frame` with each missing cell filled by its posterior mean (numbers) or likeliest category;
        every present cell, the row order, the column order and the dtypes stay as they were."""
        original = frame
        frame, _ = self.conform(frame, where)
        x = self.columns.encode(frame, where).to(self.device)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            log_w, (loc, scale, logits) = self.log_weights(x, self.config.impute_samples)
        w = log_w.softmax(dim=0).unsqueeze(-1)  # self-normalized importance weights, (k, N, 1)
        guess = x.clone()
        guess[:, self.num_idx] = (w * loc).sum(0)
        for j, lg in enumerate(logits):
            guess[:, self.cat_idx[j]] = (w * lg.softmax(-1)).sum(0).argmax(-1).float()
        filled = self.columns.decode(guess)
        out = original.rename(columns=str).copy()
        for col in self.columns.columns:
            if col.name not in out.columns:
                out[col.name] = filled[col.name]
                continue
            hole = out[col.name].isna().to_numpy()
            if hole.any():
                column = out[col.name]
                if "int" in col.dtype.lower() and pd.api.types.is_float_dtype(column):
                    column = column.astype("Int64")  # integers stay integers once filled
                out[col.name] = _fill(column, hole, filled.loc[hole, col.name].to_numpy())
        return out

    @torch.no_grad()
    def score(self, frame: pd.DataFrame, seed: int = 0, where: str = "table") -> pd.Series:
        """Anomaly score per row: the negative importance-weighted bound on log p(observed cells); higher is odder."""
        frame, _ = self.conform(frame, where)
        x = self.columns.encode(frame, where).to(self.device)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            nll = -self.bound(x, self.config.impute_samples)
        return pd.Series(nll.cpu().numpy(), index=frame.index, name="anomaly_score")

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0) -> pd.DataFrame:
        """`n` synthetic rows with the training table's column names, dtypes and category sets."""
        if isinstance(generator, list):
            raise GenlabError("generator: a tabular model takes one generator per call")
        seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(seed)
            z = torch.randn(n, self.config.latent_dim, device=self.device) * temperature
            loc, scale, logits = self.net(z)
            if self.config.likelihood == "gaussian":
                numbers = torch.distributions.Normal(loc, scale).sample()
            else:
                numbers = torch.distributions.StudentT(self.config.degrees_of_freedom, loc, scale).sample()
            rows = torch.empty(n, len(self.columns.columns), device=self.device)
            rows[:, self.num_idx] = numbers
            for j, lg in enumerate(logits):
                rows[:, self.cat_idx[j]] = torch.multinomial(lg.softmax(-1), 1).squeeze(1).float()
        return self.columns.decode(rows)

    # --- the model folder --------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        super().save_pretrained(path)
        self.columns.save(Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TabularVAE:
        config, spec = cls.read_meta(path)
        model = cls(config, spec, Columns.load(Path(path)))
        load_model(model.net, Path(path) / "model.safetensors")
        return model.eval()



def _fill(column: pd.Series, hole, values) -> pd.Series:
    """`column` with `values` where `hole`; a column that a bad cell made text holds both kinds."""
    column = column.copy()
    try:
        column[hole] = values
    except (TypeError, ValueError):
        column = column.astype(object)
        column[hole] = values
    return column
