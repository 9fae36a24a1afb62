"""Architecture advice: read the data, propose the families that suit it with the reason for each, and write a
starting config per proposal (a shipped recipe with the user's data) for the bake-off to settle.

    genlab advise DATA_OR_CONFIG [--budget SECONDS] [--goal quality|speed|control] [--out DIR] [--run]

Each family declares what it suits (`GenerativeModel.suits`: the data's modality, why, its recipe, its place
for each goal), so the advice asks the families and a new family is advised without a change here. The
declarations hold the mission's rules and what was measured on the recipes: diffusion for the best image
quality at a long enough budget, a GAN for quality within a short one and for fast sampling, a VAE for an
interpretable latent space, transformers for text, an encoder-decoder for text to text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genlab.config import RunConfig, load_config
from genlab.config.families import family_class, family_names
from genlab.data.registry import source_names
from genlab.errors import GenlabError
from genlab.media.suffixes import AUDIO_SUFFIXES, IMAGE_SUFFIXES, TABLE_SUFFIXES
from genlab.quiet import quiet

GOALS = ("quality", "speed", "control")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # the shipped recipes, in the package (configs/ links here)


@dataclass
class Proposal:
    name: str  # the recipe's name, which its config file takes
    family: str
    reason: str
    recipe: str  # the shipped recipe whose model, train and eval sections it starts from
    model: dict[str, Any] = field(default_factory=dict)  # changes to the recipe's model section


def data_section(target: str | Path) -> dict[str, Any]:
    """The data section for a config file, a built-in source's name, or a user's file or folder."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_config(path).data.model_dump(mode="json", exclude_defaults=True)
    if str(target) in source_names() and not path.exists():
        return {"source": str(target)}
    if path.is_dir():
        suffixes = {p.suffix.lower() for p in path.rglob("*") if p.is_file()}
        if suffixes & IMAGE_SUFFIXES:
            return {"source": "image_folder", "path": str(path)}
        if suffixes & AUDIO_SUFFIXES:
            return {"source": "audio_folder", "path": str(path)}
        raise GenlabError(f"{path}: a folder with no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or audio")
    if not path.is_file():
        raise GenlabError(f"{target}: not a config, a built-in data set ({', '.join(source_names())}), a file or "
                          "a folder")
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return {"source": "table", "path": str(path)}
    if suffix == ".jsonl":
        with path.open(errors="replace") as lines:
            try:
                first = json.loads(next((line for line in lines if line.strip()), "{}"))
            except ValueError as err:
                raise GenlabError(f"{path}: its first record is not JSON ({err})") from None
        return {"source": "pairs" if {"source", "target"} <= set(first) else "text", "path": str(path)}
    if suffix in (".txt", ".md"):
        return {"source": "text", "path": str(path)}
    raise GenlabError(f"{path}: genlab reads .csv/.parquet tables, .txt/.jsonl text and folders of images or audio")


def profile(data: dict[str, Any]) -> dict[str, Any]:
    """What the data are: modality, size (examples; characters of text), classes, and shape or columns."""
    from genlab.data.sources import load_dataset
    from genlab.data.streaming import TextShards

    cfg = load_config(None, [f"data.{k}={json.dumps(v)}" for k, v in data.items()]).data
    dataset = load_dataset(cfg)
    train, spec = dataset.train, dataset.spec
    out: dict[str, Any] = {"modality": spec.modality, "train": len(train), "held_out": len(dataset.test),
                           "classes": len(spec.class_names)}
    if hasattr(train.x, "columns"):  # a table
        numeric = len(train.x.select_dtypes("number").columns)
        out.update(columns=train.x.shape[1], numeric=numeric, categorical=train.x.shape[1] - numeric)
    elif isinstance(train.x, list):  # documents, or (source, target) pairs
        out["characters"] = sum(len(d) if isinstance(d, str) else sum(map(len, d)) for d in train.x)
    elif isinstance(train.x, TextShards):  # a set large enough to be streamed: its bytes, about its characters
        out["characters"] = train.x.size
    else:
        out["shape"] = list(spec.shape)
    return out


def propose(facts: dict[str, Any], goal: str = "quality", budget: float = 240) -> list[Proposal]:
    """The families whose `suits` declares the data's modality, in the order of their places for the goal."""
    if goal not in GOALS:
        raise GenlabError(f"--goal: {goal!r} is not one of {', '.join(GOALS)}")
    fitting = [(cls.suits, name) for name in family_names()
               if (cls := family_class(name)).suits is not None and cls.suits.modality == facts["modality"]]
    if not fitting:
        raise GenlabError(f"advise: no family declares that it suits {facts['modality']} data")
    fitting.sort(key=lambda pair: pair[0].place(goal, budget))
    labelled = facts.get("classes", 0) > 1
    out = []
    for suits, name in fitting:
        recipe, reason = suits.recipe, suits.reason
        if suits.large is not None and facts.get("characters", facts["train"]) >= suits.large[0]:
            _, recipe, reason = suits.large
        conditioned = labelled and suits.conditional
        if conditioned:
            reason += f"; conditioned on the {facts['classes']} classes, so you can ask for each"
        out.append(Proposal(recipe, name, reason, recipe, {"class_conditional": True} if conditioned else {}))
    return out


def starting_config(p: Proposal, data: dict[str, Any], budget: float) -> RunConfig:
    """The proposal's recipe (its model, train and eval sections; the family's defaults for a family of one's own
    that names none) on the user's data, its training time the budget."""
    file = RECIPES / f"{p.recipe}.yaml"
    recipe = yaml.safe_load(file.read_text()) if file.is_file() else {}
    train = {**recipe.get("train", {}), "max_time": budget}
    return RunConfig.model_validate({"name": p.name, "data": data, "eval": recipe.get("eval", {}), "train": train,
                                     "model": {**recipe.get("model", {}), "family": p.family, **p.model}})


@quiet
def advise(target: str | Path, *, goal: str = "quality", budget: float = 240, out: str | Path = "advice",
           changes: list[str] | tuple = ()) -> dict[str, Any]:
    """Profile the data, propose families, write a config per proposal into `out` (each with `changes`, `--set`
    overrides, applied); returns what was found."""
    from genlab.training.peak import matmul_peak

    data = data_section(target)
    facts = profile(data)
    proposals = propose(facts, goal, budget)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in proposals:
        path = out / f"{p.name}.yaml"
        path.write_text(load_config(starting_config(p, data, budget), changes).to_yaml())
        written.append(str(path))
    gflops = matmul_peak() / 1e9
    return {"data": data, "facts": facts, "goal": goal, "budget": budget, "matmul_gflops": gflops,
            "proposals": [{"name": p.name, "family": p.family, "reason": p.reason, "config": w}
                          for p, w in zip(proposals, written, strict=True)],
            "bakeoff": f"genlab bakeoff {' '.join(written)} --budget {budget:g} --out {out / 'bakeoff'}"
            if len(written) > 1 else None}


__all__ = ["advise", "data_section", "profile", "propose", "starting_config"]
