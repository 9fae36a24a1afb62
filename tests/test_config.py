import subprocess
import sys
from pathlib import Path

import pytest

from genlab import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = load_config(None)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path).model_dump(exclude={"name"}) == cfg.model_dump(exclude={"name"})


def test_every_shipped_config_is_valid():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs, "configs/ ships at least the demo config"
    for path in configs:
        assert isinstance(load_config(path), RunConfig)


def test_unknown_family_names_the_key_and_the_choices():
    with pytest.raises(ConfigError) as err:
        load_config({"model": {"family": "difusion"}})
    assert str(err.value) == ("model.family: 'difusion' is not one of: audio_diffusion, autoencoder, diffusion, gan, "
                              "latent_diffusion, seq2seq, "
                              "sr_gan, tabular_vae, transformer, vae")


def test_unknown_source_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"data.source: .mnist. is not one of: audio_folder, breast_cancer, "
                                          r"captioned_shapes, dates"):
        load_config({"data": {"source": "mnist"}})


def test_wrong_type_names_the_key_path():
    with pytest.raises(ConfigError, match=r"^train.max_steps: input should be a valid integer.*'many'"):
        load_config(None, ["train.max_steps=many"])


def test_unknown_key_suggests_the_near_one_including_family_fields():
    with pytest.raises(ConfigError, match=r"model.block_out_chanels: unknown key; did you mean 'block_out_channels'"):
        load_config({"model": {"block_out_chanels": [8, 16]}})
    with pytest.raises(ConfigError, match=r"train.max_step: unknown key; did you mean 'max_steps'"):
        load_config(None, ["train.max_step=3"])


def test_overrides_are_typed_by_yaml_then_checked_by_the_schema():
    cfg = load_config(None, ["train.max_steps=200", "model.block_out_channels=[8,16]", "train.ema.enabled=false",
                             "train.optimizer.lr=3e-4", "train.max_time=60"])
    assert cfg.train.max_steps == 200 and cfg.model.block_out_channels == [8, 16]
    assert cfg.train.ema.enabled is False and cfg.train.optimizer.lr == 3e-4 and cfg.train.max_time == 60


def test_malformed_overrides_are_clear():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ConfigError, match="train.max_steps is a value, not a section"):
        load_config({"train": {"max_steps": 5}}, ["train.max_steps.x=1"])


def test_family_fields_are_checked_together():
    with pytest.raises(ConfigError, match="give one per resolution"):
        load_config(None, ["model.block_out_channels=[8,16,32]"])


def test_several_errors_are_all_reported():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.batch_size=0", "eval.num_samples=-3"])
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("train.batch_size") and lines[1].startswith("eval.num_samples")


def test_sampling_options_are_the_familys_and_checked_with_it():
    assert load_config(None, ["eval.sampling.sampler=ddim"]).eval.sampling == {"sampler": "ddim"}
    with pytest.raises(ConfigError, match=r"eval.sampling.sampler: input should be 'ddpm', 'ddim' or 'dpm-solver'"):
        load_config(None, ["eval.sampling.sampler=euler"])
    with pytest.raises(ConfigError, match=r"eval.sampling.step: unknown key; did you mean 'steps'.*guidance_scale"):
        load_config(None, ["eval.sampling.step=5"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_config_error_is_one_line_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  family: difusion\n")
    proc = subprocess.run([sys.executable, "-m", "genlab", "fit", str(bad), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "model.family: 'difusion' is not one of: audio_diffusion, autoencoder, diffusion, gan, latent" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists(), "a rejected config leaves no run directory behind"
