"""The family registry: `model.family` name -> where its config, sampling options and model live.

Built-in families are listed as import paths and imported on first use, so validating a config
imports only that family's pydantic classes (`genlab.config.<family>`), never torch or Lightning.
`genlab.register_family` adds a class directly (a user's own family, or a test's), once its capabilities are
checked (`genlab/capabilities`).
"""

from __future__ import annotations

from typing import Any

from genlab.locate import locate

META_FILE = "genlab.json"  # a model folder's family, config and data spec, beside the ecosystem's own files

# name -> (config class, sampling class, model class), each "module:attribute"
BUILTIN: dict[str, tuple[str, str, str]] = {
    "diffusion": ("genlab.config.diffusion:DiffusionConfig", "genlab.config.diffusion:DiffusionSampling",
                  "genlab.models.diffusion:Diffusion"),
    "transformer": ("genlab.config.transformer:TransformerConfig", "genlab.config.transformer:TextSampling",
                    "genlab.models.transformer:Transformer"),
    "gan": ("genlab.config.gan:GANConfig", "genlab.config.gan:GANSampling", "genlab.models.gan:GAN"),
    "sr_gan": ("genlab.config.sr_gan:SRConfig", "genlab.config.sr_gan:SRSampling", "genlab.models.sr_gan:SRGAN"),
    "vae": ("genlab.config.vae:VAEConfig", "genlab.config.vae:VAESampling", "genlab.models.vae:VAE"),
    "autoencoder": ("genlab.config.autoencoder:AutoencoderConfig", "genlab.config.autoencoder:AutoencoderSampling",
                    "genlab.models.autoencoder:Autoencoder"),
    "latent_diffusion": ("genlab.config.latent_diffusion:LatentDiffusionConfig",
                         "genlab.config.latent_diffusion:LatentDiffusionSampling",
                         "genlab.models.latent_diffusion:LatentDiffusion"),
    "tabular_vae": ("genlab.config.tabular_vae:TabularVAEConfig", "genlab.config.tabular_vae:TabularSampling",
                    "genlab.models.tabular_vae:TabularVAE"),
    "seq2seq": ("genlab.config.seq2seq:Seq2SeqConfig", "genlab.config.seq2seq:Seq2SeqSampling",
                "genlab.models.seq2seq:Seq2Seq"),
    "audio_diffusion": ("genlab.config.audio_diffusion:AudioDiffusionConfig",
                        "genlab.config.audio_diffusion:AudioSampling", "genlab.models.audio_diffusion:AudioDiffusion"),
}
_registered: dict[str, Any] = {}  # name -> GenerativeModel subclass, added at run time


def family_names() -> list[str]:
    return sorted({*BUILTIN, *_registered})


def family_config(name: str) -> Any:
    """The family's `ModelConfig` subclass (imports pydantic classes only, for built-ins)."""
    return _registered[name].Config if name in _registered else locate(BUILTIN[name][0])


def family_sampling(name: str) -> Any:
    return _registered[name].Sampling if name in _registered else locate(BUILTIN[name][1])


def family_class(name: str) -> Any:
    """The family's `GenerativeModel` subclass; importing it brings in torch and the training stack."""
    return _registered[name] if name in _registered else locate(BUILTIN[name][2])


def add_family(cls: Any) -> Any:
    """Make `cls` the family named by its config's `family` default (`genlab.register_family` checks it first)."""
    name = cls.Config.model_fields["family"].default
    if name in BUILTIN or name in _registered:
        raise ValueError(f"model family {name!r} is registered twice")
    _registered[name] = cls
    return cls


def unregister_family(name: str) -> None:
    _registered.pop(name, None)


