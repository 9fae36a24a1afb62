"""Training works: a briefly trained demo model beats an untrained one by a wide margin on FID."""

import genlab

DEMO = "configs/digits-diffusion.yaml"
# 12 sampler steps: the comparison is of two models drawn alike, and sampling is most of this test's time
SHORT = ["train.progress=none", "eval.num_samples=128", "eval.feature_steps=300", "eval.sampling.steps=12",
         "train.val_every=100", "train.checkpoint_every=100"]


def test_fid_of_the_trained_demo_model_is_far_below_the_untrained_one(tmp_path):
    # measured: FID 5.7 against 16.3, precision 0.22 against 0.01, recall 0.55 against 0.01
    trained = genlab.fit(DEMO, overrides=[*SHORT, "train.max_steps=60", "train.batch_size=32",
                                          "train.schedule.warmup_steps=10"], out=tmp_path / "trained")
    untrained = genlab.fit(DEMO, overrides=[*SHORT, "train.max_steps=1"], out=tmp_path / "untrained")
    good, bad = genlab.evaluate(trained), genlab.evaluate(untrained)
    print(f"FID trained {good['fid']:.3f}, untrained {bad['fid']:.3f}, real-vs-real {good['fid_real_baseline']:.3f}")
    print(f"precision / recall: trained {good['precision']:.2f} / {good['recall']:.2f}, "
          f"untrained {bad['precision']:.2f} / {bad['recall']:.2f}")
    assert good["fid"] <= 0.5 * bad["fid"]
    assert good["fid_real_baseline"] < good["fid"]
    assert good["kid_mean"] < bad["kid_mean"]
    assert good["precision"] > 2 * bad["precision"] + 0.1 and good["recall"] > 2 * bad["recall"] + 0.2
    assert good["class_distribution_tv"] < bad["class_distribution_tv"]
    assert good["classifier_accuracy"] > 0.9, "the feature extractor itself must be meaningful"
    # each run trained its own extractor; on the same data they must be the same one, or FIDs do not compare
    assert good["fid_real_baseline"] == bad["fid_real_baseline"]
    assert good["memorized_share"] <= 0.1 and good["memorized_radius"] == bad["memorized_radius"] > 0
    assert "samples nearest a training image" in trained.paths.report.read_text()


def test_unlabelled_image_folder_trains_and_evaluates_with_random_features(tmp_path):
    import numpy as np
    from PIL import Image

    from .conftest import tiny

    rng = np.random.default_rng(0)
    folder = tmp_path / "discs"
    folder.mkdir()
    for i in range(40):  # bright discs of random size on black: a data set with no labels
        yy, xx = np.mgrid[:12, :12]
        r = rng.uniform(2, 5)
        Image.fromarray(((yy - 6) ** 2 + (xx - 6) ** 2 < r * r).astype(np.uint8) * 255).save(folder / f"{i}.png")
    run = genlab.fit(None, overrides=tiny("data.source=image_folder", f"data.path={folder}",
                                          "train.max_steps=10", "data.test_fraction=0.2"), out=tmp_path / "run")
    assert run.model.spec.shape == (1, 8, 8) and run.model.spec.num_classes == 0
    metrics = genlab.evaluate(run)
    # ten steps make a poor model: even random features tell its samples from real discs
    assert "random init" in metrics["feature_extractor"] and metrics["fid"] > 2 * metrics["fid_real_baseline"] > 0
    assert "classifier_accuracy" not in metrics


def test_density_coverage_inception_score_and_memorization_tell_real_images_from_copies_and_noise(tmp_path):
    import torch

    from genlab.config import load_config
    from genlab.data import load_dataset
    from genlab.evaluation.features import feature_net
    from genlab.evaluation.metrics import density_coverage, image_features, inception_score
    from genlab.responsible.memorization import ImageCopies

    data = load_dataset(load_config(None, ["data.image_size=8"]).data)
    net, _ = feature_net(data.train, 10, 300, tmp_path)
    real, other = data.test.x / 2 + 0.5, data.val.x / 2 + 0.5
    one = other[:1].expand(180, -1, -1, -1)  # a "model" that draws one image
    faithful, copies = density_coverage(net, real, other), density_coverage(net, real, one)
    noise = density_coverage(net, real, torch.rand(180, *real.shape[1:], generator=torch.Generator().manual_seed(0)))
    assert 0.6 < faithful["density"] < 1.5 and faithful["coverage"] > 0.8  # measured: 0.99 and 0.97
    assert copies["coverage"] < 0.05 and noise["coverage"] < 0.25 and noise["density"] < 0.3  # 0.01; 0.09, 0.12
    assert inception_score(net, real)[0] > 5 and inception_score(net, one)[0] < 1.1

    # memorization: a "model" that returns training images (even with a little noise) is flagged; one that
    # returns real images it never saw is not
    train = data.train.x / 2 + 0.5
    noise = 0.02 * torch.randn(train[:180].shape, generator=torch.Generator().manual_seed(1))
    check = ImageCopies.calibrate(image_features(net, train), image_features(net, real))
    copied, noisy, unseen = (check.figures(image_features(net, x))["memorized_share"]
                             for x in (train[:180], (train[:180] + noise).clamp(0, 1), other))
    print(f"memorized share: training images {copied:.2f}, with noise {noisy:.2f}, held-out images {unseen:.2f}")
    assert copied == 1.0 and noisy > 0.9 and unseen <= 0.05
