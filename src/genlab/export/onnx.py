"""ONNX export of the networks a runtime without PyTorch would run, as each family declares them
(`GenerativeModel.onnx_graphs`): a GAN or SR generator, a VAE decoder, a diffusion UNet, an LM's logits.

Each graph takes and returns what the family's own code feeds its network, with a dynamic batch axis
(and whatever else the family makes dynamic); `onnx.json` beside the files says, for each, its
inputs, outputs and what the output is.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from genlab.errors import GenlabError
from genlab.models.protocol import Graph


def _export(graph: Graph, path: Path) -> None:
    names = list(graph.inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if graph.traced is not None:
            torch.onnx.export(graph.module.eval(), tuple(graph.inputs.values()), str(path), input_names=names,
                              output_names=[graph.output], dynamic_shapes=graph.traced, dynamo=True,
                              opset_version=18, verbose=False)
            return
        torch.onnx.export(graph.module.eval(), tuple(graph.inputs.values()), str(path), input_names=names,
                          output_names=[graph.output], dynamic_axes={**graph.axes, graph.output: graph.output_axes},
                          opset_version=17, dynamo=False)


def export_onnx(model, out: str | Path) -> list[Path]:
    """Write one .onnx file per network `model` declares into `out`, with onnx.json describing them."""
    graphs = model.onnx_graphs()
    if not graphs:
        raise GenlabError(f"export --to onnx: a {model.config.family} model declares no ONNX graph")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, described = [], {}
    for name, graph in graphs.items():
        path = out / f"{name}.onnx"
        try:
            _export(graph, path)
        except Exception as err:  # the exporter's own words, on one line, naming the graph
            raise GenlabError(f"export --to onnx: {name}: the exporter failed: {type(err).__name__}: "
                              f"{str(err).splitlines()[0]}") from None
        written.append(path)
        described[name] = {"file": path.name, "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                                          for k, v in graph.inputs.items()},
                           "output": graph.meaning}
    meta = {"family": model.config.family, "sampling": model.sampling, "graphs": described}  # the run's options
    (out / "onnx.json").write_text(json.dumps(meta, indent=2))
    return written
