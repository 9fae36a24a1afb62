"""Training works: a briefly trained demo model beats an untrained one by a wide margin on FID."""

import genlab

DEMO = "configs/digits-diffusion.yaml"
SHORT = ["train.progress=none", "eval.num_samples=300", "eval.feature_steps=400", "train.val_every=100",
         "train.checkpoint_every=100"]


def test_fid_of_the_trained_demo_model_is_far_below_the_untrained_one(tmp_path):
    trained = genlab.fit(DEMO, overrides=[*SHORT, "train.max_steps=300", "train.schedule.warmup_steps=30"],
                         out=tmp_path / "trained")
    untrained = genlab.fit(DEMO, overrides=[*SHORT, "train.max_steps=1"], out=tmp_path / "untrained")
    good, bad = genlab.evaluate(trained), genlab.evaluate(untrained)
    print(f"FID trained {good['fid']:.3f}, untrained {bad['fid']:.3f}, real-vs-real {good['fid_real_baseline']:.3f}")
    assert good["fid"] <= 0.5 * bad["fid"]
    assert good["fid_real_baseline"] < good["fid"]
    assert good["kid_mean"] < bad["kid_mean"]
    assert good["class_distribution_tv"] < bad["class_distribution_tv"]
    assert good["classifier_accuracy"] > 0.9, "the feature extractor itself must be meaningful"
