"""An audit of a labelled run by class, the groups a labelled data set has: is every group in the training
data, in the model's outputs, and generated as well as the others?

    genlab audit RUN [--n N] [--target data|parity] [--fail-on EXPR]   -> audit.json, audit.html
    genlab audit RUN --manifest FILES.csv --group COLUMN   (images by an attribute a manifest gives each file)

- data: each class's share of the training split, the imbalance ratio, classes under `min_share` (default:
  half of an equal share);
- outputs: N samples classified by the run's feature extractor. Each class's generated share has a bootstrap
  interval and its gap to the target share (the held-out mix, or parity) an exact binomial test, Holm-corrected
  across classes; a class generated at under half its target, significantly, is flagged. A chi-square test of
  the whole mix says when its expected counts are too small to trust. A class-conditional model is asked for
  every class equally, and audited on whether it draws what it is asked for (label accuracy per class);
- quality by class: precision and recall (k-NN manifolds) of the samples classified as a class against
  the real images of that class; a class whose recall is under half the median is flagged;
- mitigation: what to change for each kind of flag, in the report; `--fail-on` turns flags or figures into
  a non-zero exit status, so that a CI job can stop a release on them.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genlab.data.records import Split
from genlab.errors import GenlabError
from genlab.evaluation.features import FeatureNet, predict
from genlab.evaluation.metrics import precision_recall
from genlab.responsible.stats import binomial_p, holm, mix_test, share_intervals
from genlab.run import Run, write_json

MIN_PER_CLASS = 4  # samples of a class (generated and real) for its precision and recall
ALPHA = 0.05  # the family-wise error of the per-class tests
OPTIONS = ("target", "min_share", "group", "probes", "manifest")  # what `genlab audit` may pass to a family's audit
TARGETS = ("data", "parity")  # the class mix an unconditional model's outputs are held to
MITIGATION = {
    "rare in the training data": "balance the batches: `data.balance_by: label` (or a table's group column) "
                                 "draws each group equally often; a tabular VAE can also train with "
                                 "`model.group_weighted_loss: COLUMN`",
    "under-represented in the outputs": "train with balanced batches (data.balance_by), or make the model "
                                        "class-conditional (model.class_conditional) and ask for the class",
    "not drawn when asked for": "train longer or raise guidance_scale (classifier-free guidance); class-balanced "
                                "weights if the class is rare in the training data",
    "generated worse than the others": "more data or steps for the class; balanced weights; check its "
                                       "real images in the data report",
}


def audit_classes(net: FeatureNet, real: torch.Tensor, real_y: torch.Tensor, train_y: torch.Tensor,
                  fake: torch.Tensor, names: list[str], *, target: str = "data", min_share: float | None = None,
                  requested: torch.Tensor | None = None, seed: int = 0) -> dict[str, Any]:
    """The audit's figures and flags from images in [0, 1]: held-out real with labels, the training labels,
    samples (and the class each was asked for, for a class-conditional model)."""
    predicted = predict(net, fake)
    result = group_shares(predicted, train_y, real_y, names, target=target, min_share=min_share,
                          requested=requested, seed=seed)
    for c, entry in enumerate(result["classes"]):
        mine, theirs = fake[predicted == c], real[real_y == c]
        # k-NN radii need k + 1 points (k = 3): too few real images, and nothing can be said (None); too few
        # samples of the class, and they cover nothing measurable (recall 0)
        if len(theirs) < MIN_PER_CLASS:
            quality = {"recall": None}
        elif len(mine) < MIN_PER_CLASS:
            quality = {"recall": 0.0}
        else:
            quality = precision_recall(net, theirs, mine)
        entry.update(precision=quality.get("precision"), recall=quality["recall"])
        if requested is not None and (requested == c).any():
            asked = predicted[requested == c] == c
            entry["label_accuracy"] = float(asked.double().mean())
            entry["label_accuracy_interval"] = [float(v) for v in share_intervals(asked.long(), 2, seed=seed)[1]]
    result["flags"] += _quality_flags(result["classes"])
    return result


def group_shares(generated: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor, names: list[str], *,
                 target: str = "data", min_share: float | None = None, requested: torch.Tensor | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Each group's share of the training data, the held-out data and the outputs (group ids), the outputs' gap to
    the target share with intervals and Holm-corrected exact tests, and the flags they raise."""
    k = len(names)
    min_share = 0.5 / k if min_share is None else min_share
    train_share = torch.bincount(train, minlength=k).double() / max(1, len(train))
    real_share = torch.bincount(held_out, minlength=k).double() / max(1, len(held_out))
    if requested is not None:  # asked for each class: the mix to draw is the mix asked for
        goal = torch.bincount(requested, minlength=k).double() / len(requested)
    elif target == "parity":
        goal = (real_share > 0).double() / (real_share > 0).sum()
    elif target == "data":
        goal = real_share
    else:
        raise GenlabError(f"--target: {target!r} is not one of {', '.join(TARGETS)}")
    n = len(generated)
    counts = torch.bincount(generated, minlength=k)
    intervals = share_intervals(generated, k, seed=seed)
    p_values = [binomial_p(int(counts[c]), n, float(goal[c])) for c in range(k)]
    adjusted = holm(p_values)
    classes, flags = [], []
    for c, name in enumerate(names):
        share, want = float(counts[c]) / max(1, n), float(goal[c])
        low, high = (float(v) for v in intervals[c])
        classes.append({"class": name, "train_share": float(train_share[c]), "real_share": float(real_share[c]),
                        "target_share": want, "generated_share": share, "generated_interval": [low, high],
                        "gap": share - want, "gap_interval": [low - want, high - want], "p_value": p_values[c],
                        "p_holm": adjusted[c]})
        if train_share[c] < min_share:
            flags.append(flag("rare in the training data", name, f"{float(train_share[c]):.1%} of the training "
                              f"data (under {min_share:.1%})"))
        if requested is None and share < 0.5 * want and adjusted[c] < ALPHA:
            flags.append(flag("under-represented in the outputs", name, f"{share:.1%} of the samples against a "
                              f"target of {want:.1%} (Holm p = {adjusted[c]:.2g})"))
    shares = train_share[train_share > 0]
    return {"classes": classes, "flags": flags, "samples": n, "target": "requested" if requested is not None
            else target, "min_share": min_share, "imbalance_ratio": float(shares.max() / shares.min()),
            "mix_test": mix_test(counts, goal), "correction": f"Holm across {k} groups, family-wise {ALPHA}",
            "interval_level": 0.9}


def _quality_flags(classes: list[dict[str, Any]]) -> list[dict[str, str]]:
    recalls = torch.tensor([c["recall"] for c in classes if c["recall"] is not None])
    median = float(recalls.median()) if len(recalls) else 0.0
    accuracies = torch.tensor([c["label_accuracy"] for c in classes if "label_accuracy" in c])
    accuracy_median = float(accuracies.median()) if len(accuracies) else 0.0
    flags = []
    for c in classes:
        if "label_accuracy" in c and c["label_accuracy_interval"][1] < 0.5 * accuracy_median:
            flags.append(flag("not drawn when asked for", c["class"], f"{c['label_accuracy']:.0%} of the samples "
                              f"asked for it are classified as it, against a median of {accuracy_median:.0%}"))
        if c["recall"] is not None and c["recall"] < 0.5 * median:
            flags.append(flag("generated worse than the others", c["class"], f"recall {c['recall']:.2f} against "
                              f"a median of {median:.2f}"))
    return flags


def flag(kind: str, name: str, detail: str, mitigation: str | None = None) -> dict[str, str]:
    """One flag: its kind, the group it names, what was measured, and what to do about it."""
    return {"kind": kind, "class": name, "detail": detail, "mitigation": mitigation or MITIGATION[kind]}


def gate(result: dict[str, Any], expression: str) -> list[str]:
    """What in `result` meets `expression`: comma-separated terms, each `gap>X` (a group's gap to its target, or a
    gap the audit measures between groups or models, beyond X with its interval clear of 0), `p<X` (a Holm-corrected
    p-value, or a valid mix test's), `flags` or `flags>N`, or words of a flag's kind (`under-represented`). Empty:
    the gate passes."""
    met = []
    for term in (t.strip() for t in expression.split(",") if t.strip()):
        if m := re.fullmatch(r"gap\s*>\s*([0-9.]+)", term):
            limit = float(m[1])
            gaps = [(f"class {c['class']}", c["gap"], c["gap_interval"]) for c in result["classes"]]
            gaps += [(g["name"], g["gap"], g["interval"]) for g in result.get("gaps", [])]
            met += [f"{term}: {name} gap {gap:+.3f} [{low:+.3f}, {high:+.3f}]" for name, gap, (low, high) in gaps
                    if abs(gap) > limit and (low > 0 or high < 0)]
        elif m := re.fullmatch(r"p\s*<\s*([0-9.eE-]+)", term):
            limit = float(m[1])
            tested = [(f"class {c['class']}", c["p_holm"]) for c in result["classes"]]
            tested += [(g["name"], g["p_holm"]) for g in result.get("gaps", []) if "p_holm" in g]
            met += [f"{term}: {name} Holm p = {p:.3g}" for name, p in tested if p < limit]
            test = result.get("mix_test")
            if test and test["valid"] and test["p_value"] < limit:
                met.append(f"{term}: the group mix, p = {test['p_value']:.3g}")
        elif m := re.fullmatch(r"flags(?:\s*>\s*(\d+))?", term):
            if len(result["flags"]) > int(m[1] or 0):
                met.append(f"{term}: {len(result['flags'])} flag(s)")
        elif re.fullmatch(r"[a-z][a-z -]*", term):
            met += [f"{term}: {f['class']}: {f['kind']}" for f in result["flags"] if term in f["kind"]]
        else:
            raise GenlabError(f"--fail-on: {term!r} is not gap>X, p<X, flags[>N] or words of a flag's kind "
                              f"(such as {', '.join(MITIGATION)})")
    return met


def audit_by_class(run: Run, n: int | None = None, *, target: str = "data", min_share: float | None = None,
                   group: str | None = None, manifest: Path | None = None,
                   as_images: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                   samples_as_images: Callable[[Any, torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """Sample the run, audit it by class (or by a `manifest`'s `group` column), write audit.json and audit.html
    beside its other results. A family whose data are not images gives `as_images` (its data -> images in
    [0, 1]) and `samples_as_images`."""
    from genlab.config import sampling_options
    from genlab.data.sources import load_dataset
    from genlab.evaluation.features import feature_net
    from genlab.evaluation.metrics import generate_images

    by_manifest = group is not None or manifest is not None
    if by_manifest and (group is None or manifest is None or as_images is not None):
        raise GenlabError("--manifest and --group: an image run is audited by an attribute when both are given "
                          "(a CSV with a `file` column and the attribute's column)")
    as_images = as_images or (lambda model, x: x / 2 + 0.5)
    samples_as_images = samples_as_images or (lambda model, samples: samples)
    cfg, model = run.config, run.model
    cache = run.paths.eval_cache
    if by_manifest:
        train, held_out, names = manifest_groups(Path(manifest), group, cfg.data)
        cache = cache / f"manifest-{re.sub(r'[^A-Za-z0-9_-]', '_', group)}"  # the evaluation keeps its own
    else:
        dataset = load_dataset(cfg.data, in_memory=True)
        held_out = dataset.held_out
        names = list(dataset.spec.class_names)
        if len(names) < 2 or held_out.y is None:
            raise GenlabError(f"audit: {cfg.data.source} has no classes to audit by; label the data (class "
                              "subfolders), or give a manifest of attributes (--manifest FILE --group COLUMN)")
        train = Split(as_images(model, dataset.train.x) * 2 - 1, dataset.train.y)
    net, extractor = feature_net(train, len(names), cfg.eval.feature_steps, cache)
    ev = cfg.eval.model_copy(update={"num_samples": n or cfg.eval.num_samples})
    conditional = model.takes_labels
    requested = torch.arange(ev.num_samples) % len(names) if conditional else None
    options = sampling_options(cfg.model.family, model.sampling)  # the run's own, as evaluate and serve sample
    fake = samples_as_images(model, generate_images(model, ev, options, requested))
    result = audit_classes(net, as_images(model, held_out.x), held_out.y, train.y, fake, names,
                           target=target, min_share=min_share, requested=requested, seed=ev.seed)
    result["feature_extractor"] = extractor
    test = result["mix_test"]
    result["summary"] = [f"class mix of {result['samples']} samples against the target ({result['target']}): "
                         f"p = {test['p_value']:.3g}{' (' + test['note'] + ')' if not test['valid'] else ''}; "
                         f"training imbalance ratio {result['imbalance_ratio']:.2f}"]
    write_json(run.path / "audit.json", result)
    _write_html(run.path / "audit.html", run, result)
    return result


def manifest_groups(path: Path, column: str, data) -> tuple[Split, Split, list[str]]:
    """The images a manifest CSV lists (`file`, relative to the CSV or absolute) read as the run's data config
    reads images and labelled by `column`, split 80/20 within each group: (train, held out, group names)."""
    import pandas as pd

    from genlab.data.records import split_indices
    from genlab.data.sources import read_images

    if not path.is_file():
        raise GenlabError(f"--manifest: {path}: no such file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise GenlabError(f"--manifest: {path} is not a CSV file ({err})") from None
    for needed in ("file", column):
        if needed not in table.columns:
            raise GenlabError(f"--manifest: {path} has no column {needed!r}; its columns: {', '.join(table.columns)}")
    table = table[table[column].str.strip() != ""]  # a file with no value for the attribute is left out
    if table[column].nunique() < 2:
        raise GenlabError(f"--group {column}: the manifest gives {table[column].nunique()} value(s) of it; an "
                          "audit compares two or more groups")
    files = [Path(f) if Path(f).is_absolute() else path.parent / f for f in table["file"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise GenlabError(f"--manifest: {len(missing)} listed file(s) not found, such as {', '.join(missing[:3])}")
    root = Path(os.path.commonpath([f.parent for f in files])) if files else path.parent
    images, kept, _ = read_images(files, root, data)
    names = sorted(set(table[column].iloc[kept]))
    if len(names) < 2:
        raise GenlabError(f"--group {column}: the manifest's readable files hold {len(names)} value(s) of it; an "
                          "audit compares two or more groups")
    y = torch.tensor([names.index(v) for v in table[column].iloc[kept]])
    train, val, test = split_indices(len(y), y, 0.0, 0.2, seed=0)
    return Split(images[train], y[train]), Split(images[test], y[test]), names


def _write_html(path: Path, run: Run, result: dict[str, Any]) -> None:
    def pct(v: float | None) -> str:
        return "" if v is None else f"{v:.1%}"

    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.2f}"

    flagged = {(f["class"]) for f in result["flags"]}
    conditional = result["target"] == "requested"
    rows = "".join(
        f"<tr{' class=flag' if c['class'] in flagged else ''}><td>{html.escape(c['class'])}</td>"
        f"<td>{pct(c['train_share'])}</td><td>{pct(c['target_share'])}</td>"
        f"<td>{pct(c['generated_share'])} [{pct(c['generated_interval'][0])}, "
        f"{pct(c['generated_interval'][1])}]</td>"
        f"<td>{c['p_holm']:.2g}</td>"
        + (f"<td>{pct(c.get('label_accuracy'))}</td>" if conditional else "")
        + f"<td>{num(c['precision'])}</td><td>{num(c['recall'])}</td></tr>" for c in result["classes"])
    test = result["mix_test"]
    target = {"data": "the held-out mix", "parity": "an equal share for every class",
              "requested": "the mix asked for (every class equally)"}[result["target"]]
    write_page(path, run, "Audit by class", result["flags"], f"""{result['samples']} samples classified by
{html.escape(result['feature_extractor'])}; target: {target}.
Training imbalance ratio {result['imbalance_ratio']:.2f}. Class mix of the samples against the target:
{test['test']}, p = {test['p_value']:.3g}. {html.escape(test['note'])} Intervals are 90% bootstrap intervals;
per-class p-values are exact binomial tests against the target share, {html.escape(result['correction'])}.""",
               f"""<h2>Classes</h2><table><tr><th>class</th><th>train share</th><th>target share</th>
<th>generated share</th><th>Holm p</th>{'<th>label accuracy</th>' if conditional else ''}<th>precision</th>
<th>recall</th></tr>{rows}</table>""")


def write_page(path: Path, run: Run, title: str, flags: list[dict[str, str]], intro: str, body: str) -> None:
    """An audit's report: its title, what it measured (`intro`), its flags with what to do, then `body`."""
    items = "".join(f"<li><b>{html.escape(f['class'])}</b>: {html.escape(f['kind'])} ({html.escape(f['detail'])})."
                    f" <i>What to do:</i> {html.escape(f['mitigation'])}.</li>" for f in flags) or "<li>no flags</li>"
    path.write_text(f"""<!doctype html><meta charset="utf-8"><title>audit: {html.escape(run.path.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd}}
tr.flag{{background:#fde8e8}}</style>
<h1>{html.escape(title)}: {html.escape(run.path.name)}</h1>
<p>{intro}</p>
<h2>Flags</h2><ul>{items}</ul>
{body}""")
