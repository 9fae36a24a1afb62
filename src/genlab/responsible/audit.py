"""An audit of an image run by class, the groups a labelled data set has: is every group in the training
data, in the model's outputs, and generated as well as the others?

    genlab audit RUN [--n N]   -> audit.json and audit.html in the run directory

- data: each class's share of the training split, the imbalance ratio, classes under `min_share`;
- outputs: N samples (the run's eval sampling) classified by the run's feature extractor, each class's
  generated share beside its share of the held-out images, and a chi-square test of the whole mix; a
  class generated at under half its real share is flagged;
- quality by class: precision and recall (k-NN manifolds) of the samples classified as a class against
  the real images of that class; a class whose recall is under half the median is flagged;
- mitigation: what to change for each kind of flag, in the report.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import torch

from genlab.errors import GenlabError
from genlab.evaluation.features import FeatureNet, predict
from genlab.evaluation.metrics import precision_recall
from genlab.locate import locate
from genlab.run import Run, write_json

MIN_PER_CLASS = 4  # samples of a class (generated and real) for its precision and recall
MITIGATION = {
    "rare in the training data": "balance the batches: genlab prepare's labels step with `weights: true` "
                                 "(data.pipeline) writes class-balanced weights, and fit draws its batches by them",
    "under-represented in the outputs": "train with class-balanced weights, or make the model class-conditional "
                                        "(model.class_conditional) and ask for the class",
    "generated worse than the others": "more data or steps for the class; balanced weights; check its "
                                       "real images in the data report",
}


def audit_classes(net: FeatureNet, real: torch.Tensor, real_y: torch.Tensor, train_y: torch.Tensor,
                  fake: torch.Tensor, names: list[str], min_share: float = 0.05) -> dict[str, Any]:
    """The audit's figures and flags from images in [0, 1]: held-out real with labels, the training labels, samples."""
    from scipy.stats import chisquare

    k = len(names)
    predicted = predict(net, fake)
    train_share = torch.bincount(train_y, minlength=k).double() / len(train_y)
    real_share = torch.bincount(real_y, minlength=k).double() / len(real_y)
    fake_count = torch.bincount(predicted, minlength=k).double()
    present = real_share > 0
    observed = fake_count[present]
    test = chisquare(observed.numpy(), (real_share[present] / real_share[present].sum() * observed.sum()).numpy())
    classes = []
    for c, name in enumerate(names):
        mine, theirs = fake[predicted == c], real[real_y == c]
        # k-NN radii need k + 1 points (k = 3): too few real images, and nothing can be said (None); too few
        # samples of the class, and they cover nothing measurable (recall 0)
        if len(theirs) < MIN_PER_CLASS:
            quality = {"recall": None}
        elif len(mine) < MIN_PER_CLASS:
            quality = {"recall": 0.0}
        else:
            quality = precision_recall(net, theirs, mine)
        classes.append({"class": name, "train_share": float(train_share[c]), "real_share": float(real_share[c]),
                        "generated_share": float(fake_count[c] / len(fake)),
                        "precision": quality.get("precision"), "recall": quality["recall"]})
    recalls = torch.tensor([c["recall"] for c in classes if c["recall"] is not None])
    median = float(recalls.median()) if len(recalls) else 0.0
    flags = []
    for c in classes:
        if c["train_share"] < min_share:
            flags.append(_flag("rare in the training data", c["class"], f"{c['train_share']:.1%} of the training "
                               f"images (under {min_share:.0%})"))
        if c["real_share"] > 0 and c["generated_share"] < 0.5 * c["real_share"]:
            flags.append(_flag("under-represented in the outputs", c["class"], f"{c['generated_share']:.1%} of the "
                               f"samples against {c['real_share']:.1%} of the real images"))
        if c["recall"] is not None and c["recall"] < 0.5 * median:
            flags.append(_flag("generated worse than the others", c["class"], f"recall {c['recall']:.2f} against "
                               f"a median of {median:.2f}"))
    shares = train_share[train_share > 0]
    return {"classes": classes, "flags": flags, "samples": len(fake),
            "imbalance_ratio": float(shares.max() / shares.min()),
            "mix_test": {"test": "chi-square, generated class counts against the held-out shares",
                         "statistic": float(test.statistic), "p_value": float(test.pvalue)}}


def _flag(kind: str, name: str, detail: str) -> dict[str, str]:
    return {"kind": kind, "class": name, "detail": detail, "mitigation": MITIGATION[kind]}


def audit_run(run: Run, n: int | None = None) -> dict[str, Any]:
    """The audit the run's family declares (`GenerativeModel.audit`), written beside its other results."""
    family = run.config.model.family
    if run.model.audit is None:
        raise GenlabError(f"audit: {run.path} is a {family} run, and the {family} family declares no audit")
    return locate(run.model.audit)(run, n)


def audit_by_class(run: Run, n: int | None = None) -> dict[str, Any]:
    """Sample the run, audit it by class, write audit.json and audit.html beside its other results."""
    from genlab.config import sampling_options
    from genlab.data.sources import load_dataset
    from genlab.evaluation.features import feature_net
    from genlab.evaluation.metrics import generate_images

    cfg = run.config
    dataset = load_dataset(cfg.data)
    held_out = dataset.test if len(dataset.test) >= 2 else dataset.val
    names = list(dataset.spec.class_names)
    if len(names) < 2 or held_out.y is None:
        raise GenlabError(f"audit: {cfg.data.source} has no classes to audit by; label the data (class subfolders)")
    net, extractor = feature_net(dataset.train, len(names), cfg.eval.feature_steps, run.paths.eval_cache)
    ev = cfg.eval.model_copy(update={"num_samples": n or cfg.eval.num_samples})
    conditional = bool(getattr(run.model.config, "class_conditional", False))
    labels = dataset.train.y[torch.randint(0, len(dataset.train.y), (ev.num_samples,),
                                           generator=torch.Generator().manual_seed(ev.seed))] if conditional else None
    fake = generate_images(run.model, ev, sampling_options(cfg.model.family, ev.sampling), labels)
    result = audit_classes(net, held_out.x / 2 + 0.5, held_out.y, dataset.train.y, fake, names)
    result["feature_extractor"] = extractor
    write_json(run.path / "audit.json", result)
    _write_html(run.path / "audit.html", run, result)
    return result


def _write_html(path: Path, run: Run, result: dict[str, Any]) -> None:
    def pct(v: float | None) -> str:
        return "" if v is None else f"{v:.1%}"

    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.2f}"

    flagged = {(f["class"]) for f in result["flags"]}
    rows = "".join(
        f"<tr{' class=flag' if c['class'] in flagged else ''}><td>{html.escape(c['class'])}</td>"
        f"<td>{pct(c['train_share'])}</td><td>{pct(c['real_share'])}</td><td>{pct(c['generated_share'])}</td>"
        f"<td>{num(c['precision'])}</td><td>{num(c['recall'])}</td></tr>" for c in result["classes"])
    flags = "".join(f"<li><b>{html.escape(f['class'])}</b>: {html.escape(f['kind'])} ({html.escape(f['detail'])})."
                    f" <i>What to do:</i> {html.escape(f['mitigation'])}.</li>" for f in result["flags"]) or \
        "<li>no flags</li>"
    test = result["mix_test"]
    path.write_text(f"""<!doctype html><meta charset="utf-8"><title>audit: {html.escape(run.path.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd}}
tr.flag{{background:#fde8e8}}</style>
<h1>Audit by class: {html.escape(run.path.name)}</h1>
<p>{result['samples']} samples classified by {html.escape(result['feature_extractor'])}. Training imbalance ratio
{result['imbalance_ratio']:.2f}. Class mix of the samples against the held-out images: {test['test']},
p = {test['p_value']:.3g}.</p>
<h2>Flags</h2><ul>{flags}</ul>
<h2>Classes</h2><table><tr><th>class</th><th>train share</th><th>held-out share</th><th>generated share</th>
<th>precision</th><th>recall</th></tr>{rows}</table>""")
