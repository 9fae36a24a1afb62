"""The audio family: spoken digits synthesised offline, a user's broken audio folder read and prepared without
losing a valid clip, log-mels and Griffin-Lim, and a tiny run through sample, evaluate, export (ONNX and
diffusers) and the OpenAI speech route."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile
import torch
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.config import DataConfig
from genlab.data.clips import audio_folder, spoken_digits
from genlab.media.audio import MelSpectrogram
from genlab.prepare import prepare

RATE = 16_000
# 16x16 log-mels of 500 clips, a UNet of ~0.4M parameters: 150 steps take about half a minute on one core
AUDIO_TINY = ["model.family=audio_diffusion", "data.source=spoken_digits", "data.limit=500", "model.n_mels=16",
              "model.frames=16", "model.block_out_channels=[32,64]", "model.attention=[false,true]",
              "train.batch_size=32", "train.max_steps=150", "train.val_every=75", "train.checkpoint_every=75",
              "train.optimizer.lr=0.002", "train.ema.decay=0.99", "train.schedule.warmup_steps=20",
              "train.grid_size=2", "train.progress=none", "eval.num_samples=60", "eval.feature_steps=150",
              "eval.sampling.steps=15", "eval.sampling.guidance_scale=3", "eval.sampling.griffin_lim_iters=8"]


def test_spoken_digits_are_balanced_deterministic_and_seeded():
    cfg = DataConfig(source="spoken_digits", limit=40)
    a, b = spoken_digits(cfg), spoken_digits(cfg)
    other = spoken_digits(cfg.model_copy(update={"split_seed": 1}))
    assert a.x.shape == (40, 1, RATE) and a.modality == "audio" and a.sample_rate == RATE
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, other.x)
    assert torch.bincount(a.y).tolist() == [4] * 10 and a.class_names[7] == "seven"
    assert 0.05 < a.x.abs().amax(-1).min() and a.x.abs().max() <= 0.9 + 1e-6
    words = (a.x.abs() > 1e-3).flatten(1).float().sum(1) / RATE  # seconds of sound in each clip
    assert 0.1 < words.min() and words.max() < 1.0


def test_griffin_lim_rebuilds_a_real_clip_far_better_than_noise():
    mel = MelSpectrogram(RATE, RATE, 32, 32, 1024, max_db=45, top_db=80)
    clips = spoken_digits(DataConfig(source="spoken_digits", limit=10)).x
    images = mel.encode(clips)
    assert images.shape == (10, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    rebuilt = mel.decode(images, iterations=16)
    assert rebuilt.shape == (10, RATE)
    noise = torch.randn(10, RATE) * 0.1
    assert (mel.encode(rebuilt) - images).abs().mean() < 0.2 * (mel.encode(noise) - images).abs().mean()
    assert mel.spectral_convergence(clips, rebuilt) < 0.8 * mel.spectral_convergence(clips, noise)


def _broken_folder(root) -> dict[str, str]:
    """Two classes of valid clips (one stereo, one at 44.1 kHz, one FLAC) beside the broken files a user's folder
    holds; returns each broken file's name and the words its reason should use."""
    rng = np.random.default_rng(0)

    def burst(seconds: float, rate: int) -> np.ndarray:  # a chirp between random pitches at a random time
        wave, start = np.zeros(int(seconds * rate)), int(rng.uniform(0, 0.5) * seconds * rate)
        t = np.arange(int(rate * rng.uniform(0.1, 0.4))) / rate
        low, high = rng.uniform(100, 4000, 2)
        tone = 0.4 * np.sin(2 * np.pi * (low * t + (high - low) * t**2 / (2 * t[-1]))) * np.hanning(len(t))
        wave[start : start + len(t)] = tone[: len(wave) - start]
        return wave

    for name in ("seven", "two"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            soundfile.write(root / name / f"ok{i}.wav", burst(1.0, RATE), RATE)
    soundfile.write(root / "seven" / "stereo.wav", np.stack([burst(1.0, RATE)] * 2, 1), RATE)
    soundfile.write(root / "two" / "cd.wav", burst(1.3, 44_100), 44_100)
    soundfile.write(root / "two" / "flac.flac", burst(0.8, RATE), RATE)
    soundfile.write(root / "two" / "short.wav", burst(0.1, RATE), RATE)
    (root / "seven" / "empty.wav").write_bytes(b"")
    (root / "seven" / "notes.wav").write_text("not audio at all\n")
    whole = (root / "seven" / "ok0.wav").read_bytes()
    (root / "two" / "truncated.wav").write_bytes(whole[: len(whole) // 3])
    return {"seven/empty.wav": "empty", "seven/notes.wav": "not readable", "two/short.wav": "too short",
            "two/truncated.wav": "truncated"}


def test_a_broken_audio_folder_keeps_every_valid_clip_and_names_every_broken_one(tmp_path):
    broken = _broken_folder(tmp_path / "clips")
    loaded = audio_folder(DataConfig(source="audio_folder", path=tmp_path / "clips"))
    assert loaded.x.shape == (11, 1, RATE) and loaded.class_names == ["seven", "two"]  # 8 + stereo, 44.1k, flac
    assert torch.bincount(loaded.y).tolist() == [5, 6]
    for where, reason in broken.items():
        assert any(note.startswith(f"skipped {where}: {reason}") for note in loaded.notes), (where, loaded.notes)
    assert any("seven/stereo.wav: 2 channels mixed to mono" in n for n in loaded.notes)
    assert any("two/cd.wav: resampled from 44100 Hz; cut from 1.30 s" in n for n in loaded.notes)

    folder = prepare({"name": "clips", "data": {"source": "audio_folder", "path": str(tmp_path / "clips")},
                             "model": {"family": "audio_diffusion"}}, tmp_path / "prepared")
    removed = [json.loads(line) for line in (folder / "removed.jsonl").read_text().splitlines()]
    assert {r["where"] for r in removed} == set(broken)
    manifest = json.loads((folder / "prepared.json").read_text())
    assert manifest["items"] == 11 and manifest["modality"] == "audio"
    assert "<audio controls" in (folder / "data_report.html").read_text()
    from genlab.prepare.store import load_prepared

    again = load_prepared(folder)
    assert again.x.shape == (11, 1, RATE) and again.sample_rate == RATE
    assert sorted(again.x.abs().amax(-1).flatten().round(decimals=3).tolist()) == \
        sorted(loaded.x.abs().amax(-1).flatten().round(decimals=3).tolist())  # the same clips, in 16-bit PCM


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory) -> genlab.Run:
    return genlab.fit(None, overrides=AUDIO_TINY, out=tmp_path_factory.mktemp("audio") / "digits")


def test_sample_writes_wav_files_at_the_rate_and_length_and_the_api_returns_waveforms(audio_run, tmp_path):
    result = CliRunner().invoke(app, ["sample", str(audio_run.path), "--n", "3", "--label", "7", "--out",
                                      str(tmp_path / "sevens"), "--steps", "3", "--griffin-lim-iters", "2"])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "sevens").glob("*.wav"))
    assert len(files) == 3
    for f in files:
        wave, rate = soundfile.read(f)
        assert rate == RATE and wave.shape == (RATE,) and np.abs(wave).max() > 0
    waves = audio_run.sample(2, seed=0, labels="seven", steps=3, griffin_lim_iters=2)
    assert waves.shape == (2, RATE) and waves.abs().max() <= 1
    assert torch.equal(waves, audio_run.sample(2, seed=0, labels=7, steps=3, griffin_lim_iters=2))
    bad = CliRunner().invoke(app, ["sample", str(audio_run.path), "--label", "eleven", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "eleven" in bad.output and "Traceback" not in bad.output


def test_a_trained_model_beats_an_untrained_one_and_the_report_plays_the_clips(audio_run, tmp_path):
    untrained = genlab.fit(None, overrides=[*AUDIO_TINY, "train.max_steps=1"], out=tmp_path / "untrained")
    good, bad = genlab.evaluate(audio_run), genlab.evaluate(untrained)
    print(f"FID {good['fid']:.3f} vs untrained {bad['fid']:.3f}; label accuracy {good['label_accuracy']:.3f} vs "
          f"{bad['label_accuracy']:.3f}; IS {good['inception_score']:.2f} vs {bad['inception_score']:.2f}")
    for key in ("fid_real_baseline", "fid_vocoded_real", "classifier_accuracy", "classifier_accuracy_vocoded",
                "inception_score_real", "vocoder_spectral_convergence"):
        assert np.isfinite(good[key]) and good[key] == bad[key], key  # one classifier, one vocoder: the same anchors
    assert good["fid"] <= 0.5 * bad["fid"] and good["fid_real_baseline"] < good["fid"]
    from genlab.prepare.store import cache_root

    kept = [json.loads(f.read_text()) for f in (cache_root() / "features").glob("*/feature_net.json")]
    assert json.loads((untrained.paths.eval_cache / "feature_net.json").read_text()) in kept, \
        "the second evaluation on the same data read the extractor the first one trained"
    assert good["label_accuracy"] >= 0.15 and bad["label_accuracy"] <= 0.12  # chance is 0.1
    assert good["inception_score"] > bad["inception_score"] + 0.2 and good["classifier_accuracy"] > 0.6
    chosen = audio_run.model.sampling
    assert {k: good["sampling"][k] for k in chosen} == chosen and chosen["guidance_scale"] == 3, \
        "evaluate scores with the options the model folder keeps (the recipe's eval.sampling)"
    page = (audio_run.path / "report.html").read_text()
    assert page.count("<audio controls") >= 30 and "data:audio/wav;base64," in page and "src='http" not in page


def test_an_audio_run_is_audited_by_class_through_the_digit_classifier(audio_run):
    result = CliRunner().invoke(app, ["audit", str(audio_run.path), "--n", "40", "--fail-on", "flags>40"])
    assert result.exit_code == 0, result.output
    audit = json.loads((audio_run.path / "audit.json").read_text())
    assert audit["target"] == "requested" and [c["class"] for c in audit["classes"]][:2] == ["zero", "one"]
    assert all("label_accuracy" in c for c in audit["classes"]) and audit["samples"] == 40


def test_the_model_folder_loads_in_diffusers_and_exports_to_onnx(audio_run, tmp_path):
    from diffusers import DDPMPipeline, UNet2DModel

    folder = audio_run.path / "model"
    pipeline = DDPMPipeline.from_pretrained(folder)
    assert isinstance(pipeline.unet, UNet2DModel) and pipeline.unet.config.in_channels == 1
    mel = json.loads((folder / "mel" / "mel_config.json").read_text())
    assert (mel["sample_rate"], mel["n_mels"], mel["frames"], mel["hop_length"]) == (RATE, 16, 16, 1000)
    result = CliRunner().invoke(app, ["export", str(audio_run.path), "--to", "onnx", "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    import onnxruntime as ort

    described = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    session = ort.InferenceSession(str(tmp_path / "onnx" / described["graphs"]["unet"]["file"]))
    graph = audio_run.model.onnx_graphs()["unet"]
    got = session.run(None, {k: v.numpy() for k, v in graph.inputs.items()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, graph.module.eval()(*graph.inputs.values()).numpy(), atol=1e-4, rtol=1e-3)


def test_the_openai_client_gets_a_playable_wav_of_the_digit(audio_run, tmp_path):
    from openai import BadRequestError, OpenAI

    from genlab.media.audio import wav_bytes
    from genlab.serving import serve_app
    from tests.conftest import running

    folder = tmp_path / "cli"
    with running(serve_app([audio_run.path])) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        name = client.models.list().data[0].id
        reply = client.audio.speech.create(model=name, input="seven", voice="alloy", response_format="wav",
                                           extra_body={"seed": 1, "steps": 3, "griffin_lim_iters": 2})
        wave, rate = soundfile.read(io.BytesIO(reply.content))
        assert rate == RATE and wave.shape == (RATE,)
        flac = client.audio.speech.create(model=name, input="7", voice="alloy", response_format="flac",
                                          extra_body={"seed": 1, "steps": 3, "griffin_lim_iters": 2})
        again, _ = soundfile.read(io.BytesIO(flac.content))
        np.testing.assert_allclose(again, wave, atol=1 / 16_000)  # the same seed and class, the same clip
        # no options: the server, the API and the CLI draw with the run's own (guidance 3, 15 steps), and so does the
        # evaluation, whose first clip of a batch seeded 0 this is
        plain, _ = soundfile.read(io.BytesIO(client.audio.speech.create(model=name, input="seven", voice="alloy",
                                                                        extra_body={"seed": 0}).content))
        CliRunner().invoke(app, ["sample", str(audio_run.path), "--n", "1", "--label", "seven", "--out", str(folder)])
        cli, _ = soundfile.read(next(folder.glob("*.wav")))
        api, _ = soundfile.read(io.BytesIO(wav_bytes(audio_run.sample(1, seed=0, labels="seven")[0], RATE)))
        from genlab.config import sampling_options
        from genlab.evaluation.metrics import generate_images

        ev = audio_run.config.eval.model_copy(update={"num_samples": 1, "seed": 0})
        options = sampling_options("audio_diffusion", audio_run.model.sampling)  # as genlab.evaluate merges them
        scored = generate_images(audio_run.model, ev, options, torch.tensor([7]))[0]
        scored, _ = soundfile.read(io.BytesIO(wav_bytes(scored, RATE)))
        assert np.array_equal(plain, cli) and np.array_equal(plain, api) and np.array_equal(plain, scored)
        guided_less, _ = soundfile.read(io.BytesIO(client.audio.speech.create(
            model=name, input="seven", voice="alloy", extra_body={"seed": 0, "guidance_scale": 1}).content))
        assert not np.array_equal(plain, guided_less), "the run's guidance is in use"
        refused = ((dict(input="eleven"), "input"), (dict(input="²"), "input"),
                   (dict(input="7", response_format="mp3"), "response_format"),
                   (dict(input="7", extra_body={"griffin_lim_iters": 10**6}), "griffin_lim_iters"))
        for body, field in refused:
            with pytest.raises(BadRequestError) as err:
                client.audio.speech.create(model=name, voice="alloy", **body)
            assert err.value.body["message"].startswith(f"{field}:"), err.value.body
