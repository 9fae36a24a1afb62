"""An audit of a table run by a group column: is each group in the synthetic rows as it is in the real ones,
generated as faithfully, and is a model trained on the synthetic rows as fair as one trained on the real rows?

    genlab audit RUN --group COLUMN [--n N] [--target data|parity] [--fail-on EXPR]

- groups: each group's share of the training rows and of N synthetic rows (bootstrap intervals); its gap to
  the target share (the held-out mix, or parity) gets an exact binomial test, Holm-corrected across groups,
  and a group generated at under half its target, significantly, is flagged;
- fidelity by group: the mean KS statistic (numbers) or total variation (categories) of the other columns
  between a group's synthetic rows and its real training rows; a group at over twice the median is flagged;
- fairness, when the table's target (`data.target`) is categorical: a random forest trained on the synthetic
  rows and one trained on the real training rows predict the held-out real rows, and fairlearn's MetricFrame
  gives accuracy and selection rate by group, the demographic parity and equalized odds differences, with
  bootstrap intervals over the held-out rows. Synthetic training that is less fair than real training, the
  paired interval clear of zero, is flagged.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genlab.errors import GenlabError
from genlab.responsible.audit import flag, group_shares, write_page
from genlab.responsible.stats import LEVEL
from genlab.run import Run, write_json

DRAWS = 200  # bootstrap resamples of the held-out rows for the fairness intervals
MITIGATION = {
    "less fair than the real data": "draw synthetic rows by group (oversample the groups whose rates moved), or "
                                    "train with group weights; check the group's rows in the data report",
    "generated worse than the others": "more rows of the group, or more steps; a group this unlike the others "
                                       "may need a column the model does not see",
}


def audit_table(run: Run, n: int | None = None, *, group: str | None = None, target: str = "data",
                min_share: float | None = None) -> dict[str, Any]:
    """Sample the run and audit it by `group`; writes audit.json and audit.html beside its other results."""
    from genlab.data.sources import load_dataset

    cfg, model = run.config, run.model
    names = model.columns.names
    if group is None:
        raise GenlabError(f"audit: a table is audited by a group column: --group COLUMN, one of {', '.join(names)}")
    if group not in names:
        raise GenlabError(f"--group: {group!r} is not a column of this table; its columns: {', '.join(names)}")
    if _kind(model.columns, group) != "categorical":
        raise GenlabError(f"--group: {group!r} is a numeric column; audit by a categorical one (or bin it first)")
    dataset = load_dataset(cfg.data)
    train, test = dataset.train.x, dataset.test.x
    if len(test) < 2:
        raise GenlabError("audit: needs held-out rows; set data.test_fraction > 0 when training")
    rows = n or max(len(train), 200)
    seed = cfg.eval.seed
    synthetic = model.sample(rows, generator=torch.Generator().manual_seed(seed), **model.sampling)  # the run's own
    result = audit_frames(model.columns, train, test, synthetic, group, cfg.data.target, target=target,
                          min_share=min_share, seed=seed)
    write_json(run.path / "audit.json", result)
    _write_html(run.path / "audit.html", run, result)
    return result


def audit_frames(columns, train: pd.DataFrame, test: pd.DataFrame, synthetic: pd.DataFrame, group: str,
                 label: str | None, *, target: str = "data", min_share: float | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """The table audit's figures and flags from real training, held-out and synthetic rows."""
    groups = sorted(set(train[group].dropna().astype(str)) | set(test[group].dropna().astype(str)))
    index = {g: i for i, g in enumerate(groups)}

    def ids(frame: pd.DataFrame) -> torch.Tensor:
        known = frame[group].dropna().astype(str)
        return torch.tensor([index[g] for g in known if g in index], dtype=torch.long)

    result = group_shares(ids(synthetic), ids(train), ids(test), groups, target=target, min_share=min_share,
                          seed=seed)
    for entry in result["classes"]:
        entry.update(_fidelity(columns, train, test, synthetic, group, entry["class"], seed))
    scores = [e["fidelity"] for e in result["classes"] if e["fidelity"] is not None]
    median = float(np.median(scores)) if scores else 0.0
    for entry in result["classes"]:
        floor = entry.get("fidelity_real") or 0.0  # a small group's distances are large even for real rows
        if entry["fidelity"] is not None and entry["fidelity"] > 2 * max(median, floor) > 0:
            result["flags"].append(flag("generated worse than the others", entry["class"],
                                        f"mean KS/TV {entry['fidelity']:.2f} against a median of {median:.2f}",
                                        MITIGATION["generated worse than the others"]))
    result.update(group=group, gaps=[])
    if label is not None and label != group and _kind(columns, label) == "categorical":
        result["fairness"] = fairness(columns, train, synthetic, test, group, label, seed=seed)
        for metric, figures in result["fairness"]["difference"].items():
            result["gaps"].append({"name": f"{metric} (synthetic - real training)", **figures})
            if figures["interval"][0] > 0:
                result["flags"].append(flag("less fair than the real data", metric.replace("_", " "),
                                            f"{figures['gap']:+.3f} [{figures['interval'][0]:+.3f}, "
                                            f"{figures['interval'][1]:+.3f}] against training on the real rows",
                                            MITIGATION["less fair than the real data"]))
    result["summary"] = [f"{group}: {len(groups)} groups in {result['samples']} synthetic rows against the target "
                         f"({result['target']}), mix p = {result['mix_test']['p_value']:.3g}"]
    if "fairness" in result:
        f = result["fairness"]
        result["summary"].append(
            f"fairness on {f['rows']} held-out rows ({label} = {f['positive']!r} as the positive outcome): "
            + "; ".join(f"{m.replace('_', ' ')} {f['train_on_synthetic'][m]:.3f} trained on synthetic rows, "
                        f"{f['train_on_real'][m]:.3f} on real rows" for m in f["difference"]))
    return result


def fairness(columns, train: pd.DataFrame, synthetic: pd.DataFrame, test: pd.DataFrame, group: str, label: str,
             seed: int = 0) -> dict[str, Any]:
    """Demographic parity and equalized odds of a forest trained on synthetic rows and of one trained on real rows,
    on the held-out real rows, with paired bootstrap intervals of the synthetic one's excess."""
    from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference, selection_rate

    from genlab.evaluation.tabular import predictor

    test = test[test[label].notna() & test[group].notna()]
    truth = test[label].astype(str).to_numpy()
    positive = pd.Series(truth).value_counts().index[-1]  # the rarer outcome: the one a model may withhold
    sensitive = test[group].astype(str).to_numpy()
    y = truth == positive
    predictions = {name: predictor(columns, rows, label)(test) == positive
                   for name, rows in (("train_on_real", train), ("train_on_synthetic", synthetic))}
    out: dict[str, Any] = {"positive": positive, "rows": len(test), "by_group": {}}
    for name, predicted in predictions.items():
        frame = MetricFrame(metrics={"accuracy": lambda t, p: float(np.mean(t == p)), "selection_rate": selection_rate},
                            y_true=y, y_pred=predicted, sensitive_features=sensitive)
        out["by_group"][name] = {g: {k: float(v) for k, v in row.items()} for g, row in frame.by_group.iterrows()}
        out[name] = {"demographic_parity_difference": float(demographic_parity_difference(
                         y, predicted, sensitive_features=sensitive)),
                     "equalized_odds_difference": float(equalized_odds_difference(
                         y, predicted, sensitive_features=sensitive))}
    rng = np.random.default_rng(seed)
    codes = np.unique(sensitive, return_inverse=True)[1]
    draws = {m: [] for m in out["train_on_real"]}
    for _ in range(DRAWS):
        rows = rng.integers(0, len(y), len(y))
        real = differences(y[rows], predictions["train_on_real"][rows], codes[rows])
        fake = differences(y[rows], predictions["train_on_synthetic"][rows], codes[rows])
        for m in draws:
            draws[m].append(fake[m] - real[m])
    q = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
    out["difference"] = {m: {"gap": out["train_on_synthetic"][m] - out["train_on_real"][m],
                             "interval": [float(v) for v in np.nanquantile(d, q)]} for m, d in draws.items()}
    return out


def differences(y: np.ndarray, predicted: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """fairlearn's demographic parity and equalized odds differences (worst case of the true and false positive
    rate gaps) for boolean outcomes and integer group codes, in numpy: the bootstrap calls it hundreds of times."""
    k = int(groups.max()) + 1

    def rate(where: np.ndarray) -> np.ndarray:
        counts = np.bincount(groups[where], minlength=k).astype(float)
        hits = np.bincount(groups[where & predicted], minlength=k).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, hits / counts, np.nan)

    def spread(r: np.ndarray) -> float:
        return float(np.nanmax(r) - np.nanmin(r)) if np.isfinite(r).any() else float("nan")

    everyone = np.ones_like(y, dtype=bool)
    return {"demographic_parity_difference": spread(rate(everyone)),
            "equalized_odds_difference": max(spread(rate(y)), spread(rate(~y)))}


def _fidelity(columns, train: pd.DataFrame, test: pd.DataFrame, synthetic: pd.DataFrame, group: str, value: str,
              seed: int, draws: int = 50) -> dict[str, Any]:
    """Mean KS (numbers) / total variation (categories) of the other columns within one group: synthetic rows
    against training rows with a 90% bootstrap interval, and held-out rows against training rows (the floor a
    faithful generator reaches at that group's size: these distances grow as groups shrink)."""
    from genlab.evaluation.tabular import column_distances

    def distance(real: pd.DataFrame, other: pd.DataFrame) -> float | None:
        found = column_distances(columns, real, other, skip=(group,))
        return float(np.mean(list(found.values()))) if found else None

    real, fake, held = (f[f[group].astype(str) == value] for f in (train, synthetic, test))
    if len(real) < 2 or len(fake) < 2:
        return {"fidelity": None}
    rng = np.random.default_rng(seed)
    again = [distance(real.sample(len(real), replace=True, random_state=rng),
                      fake.sample(len(fake), replace=True, random_state=rng)) for _ in range(draws)]
    again = [d for d in again if d is not None]
    return {"fidelity": distance(real, fake),
            "fidelity_interval": [float(np.quantile(again, 0.05)), float(np.quantile(again, 0.95))] if again else None,
            "fidelity_real": distance(real, held) if len(held) >= 2 else None}


def _interval(bounds: list[float] | None) -> str:
    return "" if bounds is None else f" [{bounds[0]:.3f}, {bounds[1]:.3f}]"


def _kind(columns, name: str) -> str:
    return next(c.kind for c in columns.columns if c.name == name)


def _write_html(path: Path, run: Run, result: dict[str, Any]) -> None:
    def pct(v: float | None) -> str:
        return "" if v is None else f"{v:.1%}"

    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    flagged = {f["class"] for f in result["flags"]}
    rows = "".join(
        f"<tr{' class=flag' if c['class'] in flagged else ''}><td>{html.escape(c['class'])}</td>"
        f"<td>{pct(c['train_share'])}</td><td>{pct(c['target_share'])}</td><td>{pct(c['generated_share'])} "
        f"[{pct(c['generated_interval'][0])}, {pct(c['generated_interval'][1])}]</td><td>{c['p_holm']:.2g}</td>"
        f"<td>{num(c['fidelity'])}{_interval(c.get('fidelity_interval'))}</td>"
        f"<td>{num(c.get('fidelity_real'))}</td></tr>"
        for c in result["classes"])
    fair = ""
    if "fairness" in result:
        f = result["fairness"]
        lines = "".join(f"<tr><td>{html.escape(m.replace('_', ' '))}</td><td>{f['train_on_real'][m]:.3f}</td>"
                        f"<td>{f['train_on_synthetic'][m]:.3f}</td><td>{d['gap']:+.3f} [{d['interval'][0]:+.3f}, "
                        f"{d['interval'][1]:+.3f}]</td></tr>" for m, d in f["difference"].items())
        fair = (f"<h2>Fairness on {f['rows']} held-out real rows (positive outcome: {html.escape(str(f['positive']))})"
                f"</h2><table><tr><th></th><th>trained on real rows</th><th>trained on synthetic rows</th>"
                f"<th>excess (90% interval)</th></tr>{lines}</table>")
    write_page(path, run, f"Audit by {result['group']}", result["flags"], f"""{result['samples']} synthetic rows;
target: {html.escape(result['target'])}. Intervals are 90% bootstrap intervals; per-group p-values are exact binomial
tests against the target share, {html.escape(result['correction'])}. Fidelity: the mean KS / total variation of the
other columns within the group against its training rows (0 is identical); the real floor is the same for its
held-out rows, which a faithful generator matches (small groups have large distances even then).""",
               f"""<h2>Groups</h2><table><tr><th>{html.escape(result['group'])}</th><th>train share</th>
<th>target share</th><th>synthetic share</th><th>Holm p</th><th>fidelity</th><th>real floor</th></tr>{rows}</table>
{fair}""")
