"""`data.pipeline`: the steps of `genlab prepare`, each with its options (pydantic only).

A step's options say which modality they apply to; the others ignore them. `default_pipeline`
gives each modality's steps when the config names none (`data.pipeline` unset); `data.pipeline: []`
runs none, and `fit` then reads the source as it is.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from genlab.config.section import Section


class Validate(Section):
    """Read every input; name and skip what cannot be read (file and line or cell)."""

    step: Literal["validate"] = "validate"


class Clean(Section):
    step: Literal["clean"] = "clean"
    nfc: bool = True  # text: Unicode NFC
    control: bool = True  # text: drop control characters (tabs and newlines stay)
    # text: trailing spaces and tabs go; collapse: runs of them become one space too (not for code or verse)
    whitespace: Literal["keep", "trailing", "collapse"] = "trailing"
    # text: drop lines (20+ characters) found in at least this many documents; off by default, because
    # in code and verse a repeated line is content (`if __name__ == "__main__":`)
    boilerplate: int | None = Field(None, ge=2)
    min_chars: int = Field(1, ge=0)  # text: shorter documents are removed
    max_chars: int | None = Field(None, ge=1)  # text: longer documents are removed
    mode: Literal["L", "RGB"] | None = None  # images: None keeps grey data grey and makes the rest RGB
    min_side: int = Field(8, ge=1)  # images: smaller images are removed
    min_peak: float = Field(1e-3, ge=0, lt=1)  # audio: clips whose loudest sample is quieter are silent: removed
    outlier_z: float = Field(6.0, gt=0)  # tables: numeric cells this many deviations out are flagged (kept)
    numeric_share: float = Field(0.75, gt=0, le=1)  # tables: a column this much numbers is numeric; the rest emptied


class Normalize(Section):
    step: Literal["normalize"] = "normalize"
    keep_aspect: bool = True  # images: centre-crop to square before resizing (False: stretch)
    lowercase: bool = False  # text
    scaling: Literal["none", "standard", "minmax"] = "none"  # tables: per numeric column, stored to invert


class Deduplicate(Section):
    step: Literal["deduplicate"] = "deduplicate"
    exact: bool = True  # by content hash, every modality
    near: bool = True  # text: MinHash LSH; images: perceptual hash
    near_action: Literal["remove", "group"] = "remove"  # group: keep near copies, and split each cluster whole
    threshold: float = Field(0.8, gt=0, le=1)  # text: estimated Jaccard similarity of shingles
    shingle: int = Field(5, ge=1)  # text: characters per shingle
    num_perm: int = Field(128, ge=16, le=1024)  # text: MinHash permutations
    verify: bool = True  # text: an LSH candidate is near only if its exact Jaccard similarity reaches `threshold`
    hamming: int = Field(4, ge=0, le=64)  # images (32 pixels a side or more): at most this many pHash bits differ


class Missing(Section):
    step: Literal["missing"] = "missing"
    strategy: Literal["drop", "mean", "median", "mode", "constant", "flag"] = "flag"  # flag: keep the holes
    value: float | str | None = None  # constant


class Labels(Section):
    step: Literal["labels"] = "labels"
    min_share: float = Field(0.05, ge=0, lt=1)  # warn when a class holds less than this share of the items
    weights: bool = False  # write class-balanced sampling weights beside the items


class SplitStep(Section):
    """Train, val and test by data.val_fraction, data.test_fraction and data.split_seed, stratified by label;
    a near-duplicate cluster goes to one split whole."""

    step: Literal["split"] = "split"


class Augment(Section):
    """Images, applied on the fly to each training batch (in torch, reproducible on resume); text and tables: none."""

    step: Literal["augment"] = "augment"
    hflip: bool = False  # mirror half the images
    crop_scale: tuple[float, float] | None = None  # random resized crops keeping this range of the area, e.g. [0.7, 1]
    rotation: float = Field(0.0, ge=0, le=180)  # degrees, either way
    color_jitter: float = Field(0.0, ge=0, lt=1)  # brightness, contrast and saturation each scaled by 1 +- this


GROUP_PAIRS = [("he", "she"), ("his", "her"), ("him", "her"), ("himself", "herself"), ("man", "woman"),
               ("men", "women"), ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("fathers", "mothers"),
               ("son", "daughter"), ("sons", "daughters"), ("brother", "sister"), ("brothers", "sisters"),
               ("husband", "wife"), ("husbands", "wives"), ("king", "queen"), ("kings", "queens"), ("mr", "mrs"),
               ("sir", "madam"), ("gentleman", "lady"), ("gentlemen", "ladies"), ("male", "female"),
               ("uncle", "aunt"), ("nephew", "niece"), ("grandfather", "grandmother"), ("boyfriend", "girlfriend")]


class SwapGroups(Section):
    """Text: counterfactual augmentation. Each document that names a group gets a copy with every group term
    swapped for its pair (he <-> she, man <-> woman...), in the same split; runs after deduplicate, which would
    take the copies for near duplicates."""

    step: Literal["swap_groups"] = "swap_groups"
    # word pairs, swapped both ways on word boundaries, keeping capitals; a word in two pairs takes its first
    # (her -> his, not him)
    pairs: list[tuple[str, str]] = Field(default_factory=lambda: list(GROUP_PAIRS), min_length=1)


Step = Annotated[Validate | Clean | Normalize | Deduplicate | Missing | Labels | SplitStep | Augment | SwapGroups,
                 Field(discriminator="step")]

DEFAULTS = {
    "image": ["validate", "clean", "normalize", "deduplicate", "labels", "split"],
    "text": ["validate", "clean", "deduplicate", "split"],
    "table": ["validate", "clean", "deduplicate", "missing", "labels", "split"],
    "audio": ["validate", "clean", "deduplicate", "labels", "split"],
}


def default_pipeline(modality: str) -> list[Step]:
    kinds = {c.model_fields["step"].default: c for c in (Validate, Clean, Normalize, Deduplicate, Missing, Labels,
                                                        SplitStep, Augment, SwapGroups)}
    return [kinds[name]() for name in DEFAULTS[modality]]


def pipeline_of(data, modality: str) -> list[Step]:
    """The data config's steps; unset, the modality's default; `[]`, none."""
    return default_pipeline(modality) if data.pipeline is None else data.pipeline
