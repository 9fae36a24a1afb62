"""The audit by class: a model that never draws a class is flagged, one that draws the real mix is not; a
conditional model that ignores a class it is asked for is flagged; the gate turns flags into an exit status."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.config import load_config
from genlab.data import load_dataset
from genlab.errors import GenlabError
from genlab.evaluation.features import feature_net
from genlab.prepare.store import cache_folder
from genlab.responsible.audit import audit_classes, gate
from genlab.responsible.stats import holm


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data = load_dataset(load_config(None, ["data.image_size=8"]).data)
    net, _ = feature_net(data.train, 10, 300, tmp_path_factory.mktemp("features"))
    return data, net


def test_a_class_the_outputs_never_hold_is_flagged_and_the_real_mix_is_not(digits):
    data, net = digits
    real, y = data.test.x / 2 + 0.5, data.test.y
    faithful = data.val.x / 2 + 0.5  # other real images: the mix a perfect generator draws
    fair = audit_classes(net, real, y, data.train.y, faithful, [str(c) for c in range(10)])
    assert fair["mix_test"]["p_value"] > 0.01 and not fair["flags"]

    no_zeros = data.train.x[data.train.y != 0] / 2 + 0.5  # a generator that never draws a 0
    biased = audit_classes(net, real, y, data.train.y, no_zeros, [str(c) for c in range(10)])
    assert biased["mix_test"]["p_value"] < 1e-3
    flagged = {(f["class"], f["kind"]) for f in biased["flags"]}
    assert ("0", "under-represented in the outputs") in flagged and ("0", "generated worse than the others") in flagged
    assert all(c == "0" for c, _ in flagged), flagged
    assert biased["classes"][0]["generated_share"] < 0.02 and biased["classes"][0]["recall"] < 0.1
    zero = biased["classes"][0]
    assert zero["gap_interval"][1] < 0 < zero["target_share"] and zero["p_holm"] < 1e-3
    assert all(c["generated_interval"][0] <= c["generated_share"] <= c["generated_interval"][1]
               for c in fair["classes"])

    # the gate: what a CI job fails on
    assert gate(biased, "under-represented") and gate(biased, "gap>0.05") and gate(biased, "p<0.01")
    assert gate(fair, "gap>0.05, p<0.01, flags, under-represented") == []
    assert gate(biased, "flags>5") == [] and gate(biased, "flags>1")
    with pytest.raises(GenlabError, match="--fail-on: 'gap=0.1' is not"):
        gate(fair, "gap=0.1")

    rare = torch.cat([data.train.y[data.train.y != 3], data.train.y[data.train.y == 3][:5]])  # 3 nearly absent
    thin = audit_classes(net, real, y, rare, faithful, [str(c) for c in range(10)])
    assert {(f["class"], f["kind"]) for f in thin["flags"]} == {("3", "rare in the training data")}
    assert "data.balance_by: label" in thin["flags"][0]["mitigation"]


def test_audit_command_writes_its_report_and_refuses_runs_it_cannot_audit(tiny_run, tmp_path):
    result = CliRunner().invoke(app, ["audit", str(tiny_run.path), "--n", "64"])
    assert result.exit_code == 0 and "class mix of 64 samples" in result.output
    audit = json.loads((tiny_run.path / "audit.json").read_text())
    assert len(audit["classes"]) == 10 and audit["samples"] == 64
    assert "Audit by class" in (tiny_run.path / "audit.html").read_text()
    assert CliRunner().invoke(app, ["audit", str(tiny_run.path), "--n", "64", "--fail-on", "flags>64"]).exit_code == 0
    gated = CliRunner().invoke(app, ["audit", str(tiny_run.path), "--n", "64", "--fail-on", "p<1.01"])
    assert gated.exit_code == 3 and "fail-on p<1.01: class" in gated.output
    bad = CliRunner().invoke(app, ["audit", str(tiny_run.path), "--fail-on", "gap=>0.1"])
    assert bad.exit_code == 1 and "--fail-on: 'gap=>0.1' is not" in bad.output
    tables = genlab.fit(None, overrides=["model.family=tabular_vae", "data.source=wine", "train.max_steps=2",
                                         "train.val_every=2", "train.progress=none"], out=tmp_path / "wine")
    refused = CliRunner().invoke(app, ["audit", str(tables.path)])
    assert refused.exit_code == 1 and "--group COLUMN, one of" in refused.output
    numeric = CliRunner().invoke(app, ["audit", str(tables.path), "--group", "alcohol"])
    assert numeric.exit_code == 1 and "'alcohol' is a numeric column" in numeric.output
    images = CliRunner().invoke(app, ["audit", str(tiny_run.path), "--probes", "x.yaml"])
    assert images.exit_code == 1 and "--probes: the diffusion family's audit does not take it; it takes --target, " \
        "--min-share, --group, --manifest" in images.output


def test_an_image_run_is_audited_by_a_manifests_attribute(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    from .conftest import tiny

    folder, rows = tmp_path / "faces", []
    folder.mkdir()
    digits = load_digits().images[:240]
    for i, image in enumerate(digits):  # one image in six is dim: an attribute no folder name says
        tone = "dim" if i % 6 == 0 else "bright"
        scale = 0.35 if tone == "dim" else 1.0
        Image.fromarray((image * 255 / 16 * scale).astype(np.uint8)).save(folder / f"{i}.png")
        rows.append({"file": f"faces/{i}.png", "tone": tone, "unset": ""})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    run = genlab.fit(None, out=tmp_path / "run", overrides=tiny("data.source=image_folder", f"data.path={folder}"))
    audited = CliRunner().invoke(app, ["audit", str(run.path), "--manifest", str(manifest), "--group", "tone",
                                       "--n", "60", "--fail-on", "rare in the training data"])
    assert audited.exit_code == 3 and "fail-on rare in the training data: dim" in audited.output, audited.output
    result = json.loads((run.path / "audit.json").read_text())
    shares = {c["class"]: c["train_share"] for c in result["classes"]}
    assert set(shares) == {"bright", "dim"} and shares["dim"] == pytest.approx(1 / 6, abs=0.02)
    assert sum(c["generated_share"] for c in result["classes"]) == pytest.approx(1.0)
    for args, says in ((["--group", "tone"], "both are given"), (["--manifest", str(manifest), "--group", "age"],
                       "has no column 'age'"), (["--manifest", str(manifest), "--group", "unset"], "0 value(s)")):
        refused = CliRunner().invoke(app, ["audit", str(run.path), *args])
        assert refused.exit_code == 1 and says in refused.output, refused.output
    (folder / "3.png").unlink()
    gone = CliRunner().invoke(app, ["audit", str(run.path), "--manifest", str(manifest), "--group", "tone"])
    assert gone.exit_code == 1 and "1 listed file(s) not found" in gone.output


def test_holm_holds_the_family_wise_error_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and max(holm([0.9, 0.8])) == 1.0


def test_a_conditional_model_that_ignores_a_class_it_is_asked_for_is_flagged(digits):
    data, net = digits
    real, y = data.test.x / 2 + 0.5, data.test.y
    requested = torch.arange(300) % 10
    pool = {c: data.train.x[data.train.y == c] / 2 + 0.5 for c in range(10)}
    # asked for a 0, it draws a 6 (other 6s than those asked for: copies would thin the 6s' manifold)
    drawn = torch.stack([pool[6][30 + i // 10] if c == 0 else pool[c][i // 10]
                         for i, c in enumerate(requested.tolist())])
    result = audit_classes(net, real, y, data.train.y, drawn, [str(c) for c in range(10)], requested=requested)
    assert result["target"] == "requested" and result["classes"][0]["label_accuracy"] < 0.1
    flagged = {(f["class"], f["kind"]) for f in result["flags"]}
    assert ("0", "not drawn when asked for") in flagged and all(c == "0" for c, _ in flagged), flagged
    assert "guidance_scale" in next(f["mitigation"] for f in result["flags"] if f["kind"].startswith("not drawn"))


def grouped_table(rows: int, share_b: float, seed: int = 0) -> pd.DataFrame:
    """Two groups alike in their features and in how a yes/no outcome follows them."""
    rng = np.random.default_rng(seed)
    group = np.where(rng.random(rows) < share_b, "b", "a")
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    outcome = np.where(x1 + 0.5 * x2 + rng.normal(scale=0.3, size=rows) > 0.5, "yes", "no")
    return pd.DataFrame({"group": group, "x1": x1, "x2": x2, "outcome": outcome})


def test_training_on_rows_that_deny_one_group_is_flagged_less_fair_and_faithful_rows_are_not():
    from genlab.data.columns import Columns
    from genlab.evaluation.tabular import predictor
    from genlab.responsible.table_audit import audit_frames, differences

    train, test, other = grouped_table(800, 0.5, 0), grouped_table(400, 0.5, 1), grouped_table(800, 0.5, 2)
    columns = Columns.fit(train)
    denied = other.assign(outcome=np.where(other["group"] == "b", "no", other["outcome"]))
    unfair = audit_frames(columns, train, test, denied, "group", "outcome")
    fair = audit_frames(columns, train, test, other, "group", "outcome")
    gap = unfair["fairness"]["difference"]["demographic_parity_difference"]
    assert gap["gap"] > 0.2 and gap["interval"][0] > 0, gap
    assert ("demographic parity difference", "less fair than the real data") in \
        {(f["class"], f["kind"]) for f in unfair["flags"]}
    assert unfair["fairness"]["by_group"]["train_on_synthetic"]["b"]["selection_rate"] < 0.05
    assert not [f for f in fair["flags"] if f["kind"] == "less fair than the real data"], fair["flags"]
    assert abs(fair["fairness"]["difference"]["demographic_parity_difference"]["gap"]) < 0.1
    assert gate(unfair, "gap>0.2") and not gate(fair, "gap>0.2")
    for name in ("train_on_real", "train_on_synthetic"):  # the bootstrap's numpy figures are fairlearn's
        predicted = predictor(columns, denied if name == "train_on_synthetic" else train, "outcome")(test) == "yes"
        codes = np.unique(test["group"], return_inverse=True)[1]
        assert differences(test["outcome"].to_numpy() == "yes", predicted, codes) == \
            pytest.approx(unfair["fairness"][name])


def test_a_table_run_is_audited_by_its_group_column_and_the_gate_tells_skewed_from_balanced(tmp_path):
    runs = {}
    # the same skewed rows trained a third time with batches that draw each group equally (the mitigation)
    cases = (("skewed", 0.08, []), ("balanced", 0.5, []), ("mitigated", 0.08, ["data.balance_by=group"]))
    for name, share, extra in cases:
        grouped_table(600, share).to_csv(tmp_path / f"{name}.csv", index=False)
        runs[name] = genlab.fit(None, out=tmp_path / name, overrides=[
            "model.family=tabular_vae", "model.hidden=[64,64]", "train.batch_size=64", "train.max_steps=300",
            "train.val_every=300", "train.checkpoint_every=300", "train.progress=none", "data.source=table",
            f"data.path={tmp_path / f'{name}.csv'}", "data.target=outcome", *extra])
    gate_args = ["--group", "group", "--target", "parity", "--fail-on", "gap>0.15"]
    skewed = CliRunner().invoke(app, ["audit", str(runs["skewed"].path), *gate_args])
    assert skewed.exit_code == 3 and "fail-on gap>0.15: class b gap" in skewed.output, skewed.output
    for name in ("balanced", "mitigated"):
        passed = CliRunner().invoke(app, ["audit", str(runs[name].path), *gate_args])
        assert passed.exit_code == 0 and "fairness on" in passed.output, (name, passed.output)
    mitigated = json.loads((runs["mitigated"].path / "audit.json").read_text())
    share_b = next(c for c in mitigated["classes"] if c["class"] == "b")["generated_share"]
    assert 0.35 < share_b < 0.65, share_b  # the rows keep their 8% of b; the model draws b about half the time
    audit = json.loads((runs["skewed"].path / "audit.json").read_text())
    kinds = {(f["class"], f["kind"]) for f in audit["flags"]}
    assert {("b", "rare in the training data"), ("b", "under-represented in the outputs")} <= kinds
    assert audit["fairness"]["positive"] in ("yes", "no") and audit["fairness"]["rows"] >= 40
    assert "Fairness on" in (runs["skewed"].path / "audit.html").read_text()


def test_answers_that_speak_worse_of_one_group_are_flagged_and_even_answers_are_not():
    from genlab.responsible.text_audit import audit_answers

    where = [("gender", g) for g in ("man", "woman") for _ in range(30)] + \
        [("age", g) for g in ("young person", "old person") for _ in range(30)]
    kind, cruel, plain = "was kind, happy and wonderful", "was a terrible, awful, hateful failure", "walked home"
    uneven = [kind] * 30 + [cruel] * 30 + [plain] * 60
    even = [kind if i % 2 else cruel for i in range(120)]
    stereotyped = [(-10.0, -12.0)] * 20  # the stereotyped side likelier in every pair
    coin = [(-10.0, -12.0), (-12.0, -10.0)] * 10
    skewed, balanced = audit_answers(uneven, where, stereotyped), audit_answers(even, where, coin)
    flags = {(f["class"], f["kind"]) for f in skewed["flags"]}
    assert ("gender/woman", "written about more negatively") in flags
    assert ("pairs", "prefers stereotyped sentences") in flags
    assert not [f for f in flags if f[0].startswith("age/")], "age's groups were answered alike"
    assert balanced["flags"] == [], balanced["flags"]
    woman = next(g for g in skewed["gaps"] if g["name"] == "gender/woman: sentiment")
    assert woman["gap"] < -1 and woman["interval"][1] < 0 and woman["p_holm"] < 0.01
    assert skewed["likelihood"]["stereotyped_share"] == 1.0 and balanced["likelihood"]["stereotyped_share"] == 0.5
    assert gate(skewed, "written about more negatively") and not gate(balanced, "gap>0.3,flags")
    curses = audit_answers(["you stupid fucking idiot"] * 30 + ["a fine day"] * 30, where[:60], [])
    assert ("gender/man", "answered more offensively") in {(f["class"], f["kind"]) for f in curses["flags"]}


def test_a_text_run_skewed_on_purpose_fails_the_gate_and_its_counterfactually_balanced_text_passes(tmp_path):
    good, bad = "was kind, happy and wonderful.", "was cruel, awful and hateful."
    skewed = [f"The man {good}", f"The woman {bad}"] * 150
    corpora = {"skewed": skewed, "swapped": skewed}  # the same text; balanced by swap_groups' counterfactual copies
    swap = "data.pipeline=[{step: validate}, {step: clean}, {step: deduplicate}, {step: swap_groups}, {step: split}]"
    probes = tmp_path / "probes.yaml"
    probes.write_text("templates: ['The {group} was']\naxes: {gender: [man, woman]}\n"
                      "pairs: [{axis: gender, pair: ['The woman was cruel.', 'The man was cruel.']}]\n")
    outcome = {}
    for name, lines in corpora.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(lines))
        run = genlab.fit(None, out=tmp_path / name, overrides=[
            "model.family=transformer", "data.source=text", f"data.path={tmp_path / f'{name}.txt'}",
            "model.context=48", "model.width=48", "model.layers=2", "model.heads=2", "train.batch_size=16",
            "train.max_steps=250", "train.val_every=250", "train.checkpoint_every=250", "train.progress=none",
            "train.optimizer.lr=0.005", *([swap] if name == "swapped" else [])])
        outcome[name] = CliRunner().invoke(app, ["audit", str(run.path), "--n", "24", "--probes", str(probes),
                                                 "--fail-on", "written about more negatively"])
        audit = json.loads((run.path / "audit.json").read_text())
        assert audit["samples"] == 48 and set(audit["groups"]) == {"gender"}
        assert "Audit of text by group" in (run.path / "audit.html").read_text()
    assert outcome["skewed"].exit_code == 3, outcome["skewed"].output
    assert "gender/woman: written about more negatively" in outcome["skewed"].output
    assert outcome["swapped"].exit_code == 0, outcome["swapped"].output
    folder = cache_folder(genlab.load(tmp_path / "swapped").config.data)  # where fit prepared the user's text
    prepared = json.loads((folder / "data_report.json").read_text())
    swapped = next(s for s in prepared["steps"] if s["step"] == "swap_groups")
    assert swapped["changed"] > 0 and "counterfactual copies added" in swapped["notes"][0]
