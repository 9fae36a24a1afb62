"""Table runs: imputation, anomaly detection and synthetic rows, each beside scikit-learn's answers
computed in the same run on the same split.

- Imputation: held-out rows with a share of their cells hidden at random (MCAR), over several seeds;
  RMSE on numeric cells z-scored by the training statistics, accuracy on categorical cells; beside
  SimpleImputer (mean / most frequent), KNNImputer and IterativeImputer fitted on the training rows.
- Anomalies (when `data.normal_class` is set): AUROC of the anomaly score on the test rows, anomalies
  being the other classes; beside IsolationForest and LocalOutlierFactor(novelty=True).
- Synthetic rows: per-column similarity to the training rows (KS statistic for numbers, total
  variation for categories), the mean absolute difference of the correlation matrices, and
  train-on-synthetic / test-on-real against train-on-real when the table has a target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import ks_2samp
from sklearn.ensemble import IsolationForest, RandomForestClassifier, RandomForestRegressor
from sklearn.experimental import enable_iterative_imputer  # noqa: F401  (makes IterativeImputer importable)
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor

from genlab.config import EvalConfig
from genlab.data.columns import Columns
from genlab.data.sources import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation.report import Scored
from genlab.run import Run

MISSING_SHARE, SEEDS = 0.2, (0, 1, 2)


def evaluate_table(run: Run, ev: EvalConfig, options: dict[str, Any]) -> Scored:
    data = run.config.data
    dataset = load_dataset(data)
    model, columns = run.model, run.model.columns
    train = dataset.train.x
    test = dataset.test.x
    if not len(test):
        raise GenlabError("evaluate: needs held-out rows; set data.test_fraction > 0 when training")
    anomalous = None if dataset.test.y is None else dataset.test.y.numpy()
    normal = test if anomalous is None else test[~anomalous]
    metrics: dict[str, Any] = {"split": "test", "rows": {"train": len(train), "test": len(test)}, "sampling": options}
    started = time.perf_counter()
    metrics["imputation"] = imputation(model, columns, train, normal, MISSING_SHARE, SEEDS)
    metrics["imputation_rows"] = len(normal)  # the held-out rows that are not anomalies
    metrics["imputation_seconds"] = time.perf_counter() - started
    if anomalous is not None:
        metrics["anomaly"] = anomaly(model, columns, train, test, anomalous)
    synthetic = model.sample(max(len(train), 200), generator=torch.Generator().manual_seed(ev.seed), **options)
    metrics["synthetic"] = fidelity(columns, train, synthetic, test, data.target)
    metrics["synthetic"]["closeness"] = closeness(columns, train, synthetic, normal)
    metrics["synthetic"]["detection_auc"] = detection_auc(columns, train, synthetic, ev.seed)
    return Scored(metrics, _rows(metrics), [("imputation", f"{MISSING_SHARE:.0%} of held-out cells hidden (MCAR), "
                                                           f"seeds {list(SEEDS)}; sklearn fitted on the train rows")],
                  synthetic.head(20).to_html(index=False, float_format="%.4g"))


def imputation(model, columns: Columns, train: pd.DataFrame, rows: pd.DataFrame, share: float,
               seeds: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """RMSE (z-scored numbers) and accuracy (categories) on the hidden cells, per method, averaged over seeds."""
    numeric = [c.name for c in columns.columns if c.kind == "numeric"]
    categorical = [c.name for c in columns.columns if c.kind == "categorical"]
    results: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        hidden = np.random.default_rng(seed).random(rows.shape) < share
        hidden &= rows.notna().to_numpy()
        masked = rows.mask(hidden)
        answers = {"genlab": model.impute(masked, seed=seed)}
        answers.update(_sklearn_imputations(columns, train, masked))
        for name, filled in answers.items():
            results.setdefault(name, []).append(_imputation_errors(columns, rows, filled, hidden, numeric, categorical))
    return {name: {k: float(np.mean([r[k] for r in runs])) for k in runs[0]} for name, runs in results.items()}


def _imputation_errors(columns, truth, filled, hidden, numeric, categorical) -> dict[str, float]:
    out = {}
    if numeric:
        idx = [truth.columns.get_loc(c) for c in numeric]
        z_true, z_fill = columns.standardized(truth), columns.standardized(filled)
        cells = hidden[:, idx]
        out["rmse"] = float(np.sqrt(np.mean((z_true[cells] - z_fill[cells]) ** 2)))
    if categorical:
        right = [(truth[c].astype(str) == filled[c].astype(str)).to_numpy()[hidden[:, truth.columns.get_loc(c)]]
                 for c in categorical]
        right = np.concatenate(right)
        out["accuracy"] = float(right.mean()) if len(right) else float("nan")
    return out


def _sklearn_imputations(columns: Columns, train: pd.DataFrame, masked: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each imputer on the encoded table (numbers z-scored, categories as codes, rounded back to a code)."""
    train_x, masked_x = columns.encode(train).numpy(), columns.encode(masked).numpy()
    cats = [i for i, c in enumerate(columns.columns) if c.kind == "categorical"]
    nums = [i for i, c in enumerate(columns.columns) if c.kind == "numeric"]
    simple = np.empty_like(masked_x)
    if nums:
        simple[:, nums] = SimpleImputer(strategy="mean").fit(train_x[:, nums]).transform(masked_x[:, nums])
    if cats:
        simple[:, cats] = SimpleImputer(strategy="most_frequent").fit(train_x[:, cats]).transform(masked_x[:, cats])
    out = {"mean / most frequent": simple,
           "KNNImputer": KNNImputer().fit(train_x).transform(masked_x),
           "IterativeImputer": IterativeImputer(random_state=0, max_iter=20).fit(train_x).transform(masked_x)}
    frames = {}
    for name, values in out.items():
        for i in cats:
            values[:, i] = np.clip(np.round(values[:, i]), 0, len(columns.columns[i].categories) - 1)
        filled = masked.copy()
        decoded = columns.decode(torch.from_numpy(values))
        for c in columns.names:
            hole = filled[c].isna().to_numpy()
            if hole.any():
                filled.loc[hole, c] = decoded.loc[hole, c].to_numpy()
        frames[name] = filled
    return frames


def anomaly(model, columns: Columns, train: pd.DataFrame, test: pd.DataFrame, labels: np.ndarray) -> dict:
    """AUROC of genlab's score beside IsolationForest and LOF (novelty), fitted on the same train rows."""
    if labels.all() or not labels.any():
        return {"note": "the test rows hold one kind only; AUROC needs both"}
    features = [c.name for c in columns.columns if c.kind == "numeric"]
    fit_x = SimpleImputer().fit(columns.standardized(train))
    train_x, test_x = fit_x.transform(columns.standardized(train)), fit_x.transform(columns.standardized(test))
    scores = {
        "genlab": model.score(test).to_numpy(),
        "IsolationForest": -IsolationForest(random_state=0).fit(train_x).score_samples(test_x),
        "LocalOutlierFactor": -LocalOutlierFactor(novelty=True).fit(train_x).score_samples(test_x),
    }
    return {"auroc": {k: float(roc_auc_score(labels, v)) for k, v in scores.items()},
            "anomalies": int(labels.sum()), "normal": int((~labels).sum()),
            "baseline_features": f"{len(features)} numeric columns, z-scored"}


def column_distances(columns: Columns, real: pd.DataFrame, fake: pd.DataFrame, skip: tuple[str, ...] = ()
                     ) -> dict[str, float]:
    """Per column: the KS statistic between real and synthetic numbers, total variation between categories."""
    out = {}
    for c in columns.columns:
        a, b = real[c.name].dropna(), fake[c.name].dropna()
        if c.name in skip or not len(a) or not len(b):
            continue
        if c.kind == "numeric":
            out[c.name] = float(ks_2samp(a.astype(float), b.astype(float)).statistic)
        else:
            p, q = a.astype(str).value_counts(normalize=True), b.astype(str).value_counts(normalize=True)
            out[c.name] = float(0.5 * p.subtract(q, fill_value=0).abs().sum())
    return out


def fidelity(columns: Columns, train: pd.DataFrame, synthetic: pd.DataFrame, test: pd.DataFrame,
             target: str | None) -> dict[str, Any]:
    kinds = {c.name: c.kind for c in columns.columns}
    per_column = {name: {"ks" if kinds[name] == "numeric" else "tv": d}
                  for name, d in column_distances(columns, train, synthetic).items()}
    numeric = [c.name for c in columns.columns if c.kind == "numeric"]
    out: dict[str, Any] = {
        "rows": len(synthetic),
        "mean_ks": float(np.mean([v["ks"] for v in per_column.values() if "ks" in v])) if numeric else None,
        "mean_tv": float(np.mean([v["tv"] for v in per_column.values() if "tv" in v]))
        if len(numeric) < len(columns.columns) else None,
        "correlation_difference": float(np.nanmean(np.abs(train[numeric].astype(float).corr().to_numpy()
                                                          - synthetic[numeric].astype(float).corr().to_numpy())))
        if len(numeric) > 1 else None,
        "per_column": per_column,
    }
    if target in train.columns and train[target].nunique() > 1 and synthetic[target].nunique() > 1:
        out["train_on_synthetic"] = _utility(columns, synthetic, test, target)
        out["train_on_real"] = _utility(columns, train, test, target)
        out["utility_metric"] = "accuracy" if _is_categorical(columns, target) else "r2"
        if _is_categorical(columns, target):  # what always answering the commonest class scores
            out["majority_class"] = float(test[target].dropna().astype(str).value_counts(normalize=True).iloc[0])
    return out


def row_features(columns: Columns, frame: pd.DataFrame, reference: pd.DataFrame) -> np.ndarray:
    """Rows as points: numbers standardized by `reference` (missing: its mean), categories one-hot over its
    values (an unseen or missing one: all zeros)."""
    parts = []
    for c in columns.columns:
        if c.kind == "numeric":
            ref = reference[c.name].astype(float)
            scale = ref.std() or 1.0
            parts.append(((frame[c.name].astype(float) - ref.mean()) / scale).fillna(0).to_numpy()[:, None])
        else:
            values = sorted(reference[c.name].dropna().astype(str).unique())
            codes = pd.Categorical(frame[c.name].astype("string").to_numpy(), categories=values).codes
            parts.append(np.eye(len(values) + 1)[codes][:, : len(values)])  # code -1 (unseen) picks the last row
    return np.concatenate(parts, axis=1)


def closeness(columns: Columns, train: pd.DataFrame, synthetic: pd.DataFrame, holdout: pd.DataFrame
              ) -> dict[str, float]:
    """Distance to closest record (DCR): each synthetic row's distance to its nearest training row, beside the
    same for held-out real rows (what a model that does not copy reaches); the share of synthetic rows closer
    than all but 5% of held-out rows, and of exact copies."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=1).fit(row_features(columns, train, train))
    fake = index.kneighbors(row_features(columns, synthetic, train))[0][:, 0]
    real = index.kneighbors(row_features(columns, holdout, train))[0][:, 0]
    close = float(np.quantile(real, 0.05))
    return {"dcr_synthetic_median": float(np.median(fake)), "dcr_holdout_median": float(np.median(real)),
            "dcr_ratio": float(np.median(fake) / max(np.median(real), 1e-12)),
            "closer_than_holdout_5pct": float(np.mean(fake < close)), "exact_copies": float(np.mean(fake < 1e-9)),
            "exact_copies_holdout": float(np.mean(real < 1e-9))}


def detection_auc(columns: Columns, real: pd.DataFrame, synthetic: pd.DataFrame, seed: int = 0,
                  rows: int = 2000) -> float:
    """How well a random forest tells synthetic rows from real ones (ROC AUC, 5-fold cross-validated on equal
    numbers of each): 0.5 when it cannot, 1 when it always can."""
    from sklearn.model_selection import cross_val_predict

    n = min(len(real), len(synthetic), rows)
    a = real.sample(n, random_state=seed) if len(real) > n else real
    b = synthetic.sample(n, random_state=seed) if len(synthetic) > n else synthetic
    x = row_features(columns, pd.concat([a, b], ignore_index=True), real)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    forest = RandomForestClassifier(n_estimators=100, min_samples_leaf=3, random_state=seed)
    scores = cross_val_predict(forest, x, y, cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def _utility(columns: Columns, train: pd.DataFrame, test: pd.DataFrame, target: str) -> float:
    """A random forest trained on `train`'s other columns, scored on predicting `target` in `test`
    (rows whose target is missing take no part)."""
    test = test[test[target].notna()]
    predicted = predictor(columns, train, target)(test)
    if _is_categorical(columns, target):
        return float((predicted == test[target].astype(str).to_numpy()).mean())
    return float(r2_score(test[target].astype(float), predicted))


def predictor(columns: Columns, train: pd.DataFrame, target: str) -> Callable[[pd.DataFrame], np.ndarray]:
    """A random forest fitted on `train`'s other columns (missing cells imputed by their means) to predict `target`:
    class names as strings for a categorical target, numbers otherwise."""
    train = train[train[target].notna()]
    features = [c for c in columns.names if c != target]
    imputer = SimpleImputer().fit(columns.encode(train).numpy())

    def x(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(imputer.transform(columns.encode(frame).numpy()), columns=columns.names)[features]

    if _is_categorical(columns, target):
        model = RandomForestClassifier(n_estimators=200, random_state=0).fit(x(train), train[target].astype(str))
    else:
        model = RandomForestRegressor(n_estimators=200, random_state=0).fit(x(train), train[target].astype(float))
    return lambda frame: model.predict(x(frame))


def _is_categorical(columns: Columns, name: str) -> bool:
    return next(c.kind for c in columns.columns if c.name == name) == "categorical"


def _rows(m: dict) -> list[tuple[str, str]]:
    rows = []
    for method, figures in m["imputation"].items():
        rows.append((f"imputation: {method}", ", ".join(f"{k} {v:.3f}" for k, v in figures.items())))
    for method, auc in m.get("anomaly", {}).get("auroc", {}).items():
        rows.append((f"anomaly AUROC: {method}", f"{auc:.3f}"))
    s = m["synthetic"]
    for key in ("mean_ks", "mean_tv", "correlation_difference", "train_on_synthetic", "train_on_real"):
        if s.get(key) is not None:
            rows.append((f"synthetic: {key.replace('_', ' ')}", f"{s[key]:.3f}"))
    c = s["closeness"]
    rows.append(("synthetic: distance to closest training row, median (held-out real rows)",
                 f"{c['dcr_synthetic_median']:.3f} ({c['dcr_holdout_median']:.3f})"))
    rows.append(("synthetic: rows closer than 95% of held-out rows; exact copies",
                 f"{c['closer_than_holdout_5pct']:.1%}; {c['exact_copies']:.1%}"))
    rows.append(("synthetic: detection AUC (0.5: indistinguishable from real)", f"{s['detection_auc']:.3f}"))
    return rows
