"""ONNX export of the networks a runtime without PyTorch would run: the GAN generator, the VAE decoder,
the diffusion UNet, the super-resolution generator, and the language model's logits.

Each graph takes and returns what the family's own code feeds its network, with a dynamic batch
axis (and dynamic height and width for upscaling, dynamic length for text); `onnx.json` beside
the files says, for each, its inputs, outputs and the output range.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from genlab.errors import GenlabError


class _ToUnit(nn.Module):
    """A network whose output is in [-1, 1], read out in [0, 1] as the family's `sample` returns it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return (self.net(*inputs) / 2 + 0.5).clamp(0, 1)


class _VAEDecoder(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.net, self.bernoulli = model.net, model.config.likelihood == "bernoulli"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return torch.sigmoid(out) if self.bernoulli else out.clamp(0, 1)


class _UNet(nn.Module):
    def __init__(self, unet: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.unet, self.conditional = unet, conditional

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None):
        return self.unet(sample, timestep, class_labels=class_labels if self.conditional else None).sample


class _Logits(nn.Module):
    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


OUTPUT_AXES = {"sr_gan": {0: "batch", 2: "out_height", 3: "out_width"}, "transformer": {0: "batch", 1: "length"}}


def graphs(model) -> dict[str, tuple[nn.Module, dict[str, torch.Tensor], dict[str, dict[int, str]], str]]:
    """name -> (module, example inputs, dynamic axes, what the output is) for a loaded genlab model."""
    family, batch = model.config.family, {0: "batch"}
    if family == "gan":
        inputs = {"z": torch.randn(2, model.config.latent_dim)}
        if model.config.class_conditional:
            inputs["labels"] = torch.tensor([0, 1]) % model.spec.num_classes
        return {"generator": (_ToUnit(model.generator), inputs, dict.fromkeys(inputs, batch),
                              "images (N, C, H, W) in [0, 1]")}
    if family == "vae":
        return {"decoder": (_VAEDecoder(model), {"z": torch.randn(2, model.config.latent_dim)}, {"z": batch},
                            "images (N, C, H, W) in [0, 1]")}
    if family == "diffusion":
        inputs = {"sample": torch.randn(2, *model.spec.shape), "timestep": torch.tensor([10, 500])}
        if model.config.class_conditional:
            inputs["class_labels"] = torch.tensor([0, 1])
        return {"unet": (_UNet(model.unet, model.config.class_conditional), inputs, dict.fromkeys(inputs, batch),
                         "the predicted noise (N, C, H, W), for the scheduler in model/scheduler")}
    if family == "sr_gan":
        image = {"images": torch.rand(1, model.spec.shape[0], 24, 32) * 2 - 1}
        return {"generator": (_ToUnit(model.generator), image, {"images": {0: "batch", 2: "height", 3: "width"}},
                              f"images x{model.config.scale} in [0, 1] (inputs in [-1, 1])")}
    if family == "transformer":
        ids = {"input_ids": torch.randint(0, len(model.tokenizer), (2, min(16, model.context)))}
        return {"lm": (_Logits(model.lm), ids, {"input_ids": {0: "batch", 1: "length"}},
                       "next-token logits (N, length, vocab); no KV cache")}
    raise GenlabError(f"export --to onnx: covers gan, vae, diffusion, sr_gan and transformer models, not {family}")


def _export(module: nn.Module, inputs: dict, axes: dict, outputs: list[str], path: Path, model) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if model.config.family == "transformer":  # transformers' masks trace only through torch.export
            from torch.export import Dim

            shapes = {"input_ids": {0: Dim("batch"), 1: Dim("length", max=model.context)}}
            torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs),
                              output_names=outputs, dynamic_shapes=shapes, dynamo=True, opset_version=18,
                              verbose=False)
            return
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs), output_names=outputs,
                          dynamic_axes={**axes, outputs[0]: OUTPUT_AXES.get(model.config.family, {0: "batch"})},
                          opset_version=17, dynamo=False)


def export_onnx(model, out: str | Path) -> list[Path]:
    """Write one .onnx file per network of `model` into `out`, with onnx.json describing them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, described = [], {}
    for name, (module, inputs, axes, meaning) in graphs(model).items():
        path = out / f"{name}.onnx"
        outputs = ["logits" if name == "lm" else "output"]
        try:
            _export(module.eval(), inputs, axes, outputs, path, model)
        except Exception as err:  # the exporter's own words, on one line, naming the graph
            raise GenlabError(f"export --to onnx: {name}: the exporter failed: {type(err).__name__}: "
                              f"{str(err).splitlines()[0]}") from None
        written.append(path)
        described[name] = {"file": path.name, "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                                          for k, v in inputs.items()},
                           "output": meaning}
    (out / "onnx.json").write_text(json.dumps({"family": model.config.family, "graphs": described}, indent=2))
    return written
