"""An audit of a text-to-image run by what its prompts ask for: is every colour, shape and size drawn as asked as
often as the others of its kind?

The run draws for the held-out captions (as `genlab evaluate` does) and the prompt-adherence judge reads each
image back. Every object a prompt names counts once for its colour, its shape and its size: a hit when the judge
reads that attribute as asked. Each group's rate has a Wilson 95% interval and is compared with the rest of its
kind's by Fisher's exact test, Holm-corrected across all groups; a group drawn as asked significantly less often
than the rest of its kind is flagged, with its rate on prompts of pairs never seen in training beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genlab.data import captioned_shapes as scenes
from genlab.errors import GenlabError
from genlab.evaluation.adherence import judge
from genlab.evaluation.rating import wilson
from genlab.responsible.audit import ALPHA, audit_by_class, flag, write_page
from genlab.responsible.stats import holm
from genlab.run import Run, write_json

KINDS = {"colour": (2, 6, tuple(scenes.COLOURS)), "shape": (1, 5, scenes.SHAPES + scenes.NEW_SHAPES),
         "size": (3, 7, scenes.SIZES)}  # each kind's factor columns (first object, second) and its values
MITIGATION = ("caption more training images with it, train longer, or raise guidance_scale; if it fails mostly on "
              "unseen pairs, it is bound to the shapes it was seen with: show it with more of them")


def audit_images(run: Run, n: int | None = None, *, target: str = "data", min_share: float | None = None,
                 group: str | None = None, manifest: Path | None = None) -> dict[str, Any]:
    """An image run's audit: by what its prompts ask for if it is drawn from text, else by class (or a manifest's
    attribute, `audit_by_class`)."""
    if run.model.takes_prompts and manifest is None:
        return audit_prompts(run, n)
    return audit_by_class(run, n, target=target, min_share=min_share, group=group, manifest=manifest)


def audit_prompts(run: Run, n: int | None = None) -> dict[str, Any]:
    """Draw `n` images for held-out captions, audit how often each attribute value is drawn as asked, and write
    audit.json and audit.html beside the run's other results."""
    from genlab.config import sampling_options
    from genlab.data.sources import load_dataset
    from genlab.evaluation.metrics import generate_images

    cfg, model = run.config, run.model
    dataset = load_dataset(cfg.data)
    held_out = dataset.held_out
    if dataset.factor_names != scenes.FACTORS or not held_out.captions:
        raise GenlabError(f"audit: a text-to-image run is audited by what its prompts ask for, which the judge "
                          f"reads on captioned_shapes scenes; {cfg.data.source} is not such a set")
    ev = cfg.eval.model_copy(update={"num_samples": n or cfg.eval.num_samples})
    rows, prompts = held_out.cycled(ev.num_samples)
    options = sampling_options(cfg.model.family, model.sampling)
    read = judge().read(generate_images(model, ev, options, None, prompts))
    result = prompt_groups(read, held_out.factors[rows])
    result["summary"] = [f"{ev.num_samples} samples for held-out captions, read by the prompt-adherence judge; "
                         f"{len(result['flags'])} group(s) drawn as asked less often than the rest of their kind"]
    write_json(run.path / "audit.json", result)
    _write_html(run, result)
    return result


def prompt_groups(read: torch.Tensor, asked: torch.Tensor) -> dict[str, Any]:
    """Each asked-for colour, shape and size: how often it is read as asked, overall and on unseen pairs, against
    the rest of its kind; Holm-corrected flags (factors `read` by the judge for prompts of factors `asked`)."""
    from scipy.stats import fisher_exact

    read, asked = read.long(), asked.long()
    pairs, unseen = asked[:, 0] == 1, scenes.held_out(asked)
    groups = []
    for kind, (first, second, names) in KINDS.items():
        value = torch.cat([asked[:, first], asked[pairs, second]])  # every object named, once
        hit = torch.cat([read[:, first] == asked[:, first], (read[:, second] == asked[:, second])[pairs]])
        novel = torch.cat([unseen, unseen[pairs]])
        for v, name in enumerate(names):
            mine = value == v
            if not mine.any():
                continue
            rest = (value != v) & (value >= 0)
            ours, theirs = (int(hit[mine].sum()), int(mine.sum())), (int(hit[rest].sum()), int(rest.sum()))
            table = [[ours[0], ours[1] - ours[0]], [theirs[0], theirs[1] - theirs[0]]]
            rate, rest_rate = ours[0] / ours[1], theirs[0] / max(1, theirs[1])
            on_unseen = mine & novel
            groups.append({"class": f"{kind} {name}", "asked": ours[1], "as_asked": rate,
                           "interval": list(wilson(ours[0], ours[1])), "rest": rest_rate,
                           "gap": rate - rest_rate, "gap_interval": _gap_interval(ours, theirs),
                           "p_value": float(fisher_exact(table).pvalue) if theirs[1] else 1.0,
                           "as_asked_unseen": float(hit[on_unseen].float().mean()) if on_unseen.any() else None})
    for group, adjusted in zip(groups, holm([g["p_value"] for g in groups]), strict=True):
        group["p_holm"] = adjusted
    flags = [flag("drawn as asked less often than the rest of its kind", g["class"],
                  f"{g['as_asked']:.0%} of {g['asked']} asked for against {g['rest']:.0%} for the rest "
                  f"(Holm p = {g['p_holm']:.2g})", MITIGATION)
             for g in groups if g["gap"] < 0 and g["p_holm"] < ALPHA]
    return {"classes": groups, "flags": flags, "samples": len(read), "target": "prompts",
            "correction": f"Holm across {len(groups)} groups, family-wise {ALPHA}"}


def _gap_interval(ours: tuple[int, int], theirs: tuple[int, int]) -> list[float]:
    """A 95% interval of the difference of two rates (Newcombe's, from each rate's Wilson interval)."""
    p, q = ours[0] / ours[1], theirs[0] / max(1, theirs[1])
    (l1, u1), (l2, u2) = wilson(*ours), wilson(*theirs) if theirs[1] else (q, q)
    return [p - q - ((p - l1) ** 2 + (u2 - q) ** 2) ** 0.5, p - q + ((u1 - p) ** 2 + (q - l2) ** 2) ** 0.5]


def _write_html(run: Run, result: dict[str, Any]) -> None:
    flagged = {f["class"] for f in result["flags"]}

    def pct(v: float | None) -> str:
        return "" if v is None else f"{v:.1%}"

    rows = "".join(
        f"<tr{' class=flag' if g['class'] in flagged else ''}><td>{g['class']}</td><td>{g['asked']}</td>"
        f"<td>{g['as_asked']:.1%} [{g['interval'][0]:.1%}, {g['interval'][1]:.1%}]</td><td>{g['rest']:.1%}</td>"
        f"<td>{g['p_holm']:.2g}</td><td>{pct(g['as_asked_unseen'])}</td></tr>" for g in result["classes"])
    write_page(run.path / "audit.html", run, "Audit by prompt", result["flags"],
               f"""{result['samples']} samples for held-out captions, each object read back by the prompt-adherence
judge. Intervals are Wilson 95% intervals; p-values are Fisher's exact tests of a group against the rest of its
kind, {result['correction']}.""",
               f"""<h2>Groups</h2><table><tr><th>asked for</th><th>times</th><th>drawn as asked</th>
<th>the rest of its kind</th><th>Holm p</th><th>drawn as asked, unseen pairs</th></tr>{rows}</table>""")
