"""genlab export: the container build context (parsed, and its exact command run) and ONNX graphs
that onnxruntime runs to PyTorch's numbers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.serving.folders import load_model

from .conftest import GAN_TINY, LM, SR_TINY, VAE_TINY

FEW = ["train.max_steps=4", "train.val_every=4", "train.checkpoint_every=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> httpx.Response:
    end = time.monotonic() + seconds
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_the_docker_context_parses_and_its_exact_command_serves(tiny_run, tmp_path):
    from dockerfile_parse import DockerfileParser

    out = tmp_path / "ctx"
    result = CliRunner().invoke(app, ["export", str(tiny_run.path), "--to", "docker", "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(app, ["export", str(tiny_run.path), "--to", "docker", "--out", str(out)])
    assert again.exit_code != 0 and "exists and is not empty" in again.output, "an export never overwrites"

    docker = DockerfileParser(str(out / "Dockerfile"))
    steps = [(i["instruction"], i["value"]) for i in docker.structure if i["instruction"] != "COMMENT"]
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and "HEALTHCHECK" in kinds and kinds[-1] == "CMD"
    assert any(k == "RUN" and "torch==2.13.0" in v and "whl/cpu" in v for k, v in steps)
    assert ("USER", "genlab") in steps and kinds.index("USER") < kinds.index("CMD")
    assert any(k == "COPY" and v.endswith("model /app/model") for k, v in steps)
    assert (out / "model/genlab.json").is_file() and (out / "genlab-src/pyproject.toml").is_file()
    assert "__pycache__" in (out / ".dockerignore").read_text()

    manifests = {p.stem: yaml.safe_load(p.read_text()) for p in (out / "k8s").glob("*.yaml")}
    assert {m["kind"] for m in manifests.values()} == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    container = manifests["deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["resources"]["limits"]["cpu"] and container["resources"]["requests"]["memory"]
    assert manifests["hpa"]["spec"]["scaleTargetRef"]["name"] == manifests["deployment"]["metadata"]["name"]

    # the image's exact command, from its working directory; only the port in serve.yaml is changed
    serve = yaml.safe_load((out / "serve.yaml").read_text())
    port = free_port()
    (out / "serve.yaml").write_text(yaml.safe_dump({**serve, "port": port}))
    command = json.loads(docker.cmd) if docker.cmd.startswith("[") else docker.cmd.split()
    binary = Path(sys.executable).parent / command[0]
    proc = subprocess.Popen([str(binary), *command[1:]], cwd=out, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/ready").json()["models"] == [tiny_run.config.name]
        images = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations",
                            json={"model": tiny_run.config.name, "n": 1, "steps": 3}, timeout=60)
        assert images.status_code == 200 and images.json()["data"][0]["b64_json"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, log = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal once it has shut down
    assert any(json.loads(line).get("route") == "/v1/images/generations" for line in log.splitlines()
               if line.startswith("{")), "one JSON log line per request"


def test_graceful_shutdown_lets_a_running_stream_finish(tmp_path_factory):
    run = genlab.fit(None, overrides=[*LM, *FEW], out=tmp_path_factory.mktemp("shutdown") / "lm")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", str(run.path), "--port", str(port)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        body = {"model": run.config.name, "prompt": "x", "max_tokens": 90, "min_tokens": 90, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            proc.send_signal(signal.SIGTERM)  # mid-stream
            rest = [line for line in lines if line]
    finally:
        proc.communicate(timeout=60)  # reads stderr to its end and closes the pipe
    assert first.startswith("data: {") and rest[-1] == "data: [DONE]", "the stream ran to its end"
    assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("onnx")
    runs = {"diffusion": tiny_run,
            "gan": genlab.fit(None, overrides=[*GAN_TINY, *FEW, "model.class_conditional=true"], out=root / "gan"),
            "vae": genlab.fit(None, overrides=[*VAE_TINY, *FEW], out=root / "vae"),
            "sr_gan": genlab.fit(None, overrides=[*SR_TINY, *FEW], out=root / "sr"),
            "transformer": genlab.fit(None, overrides=[*LM, *FEW], out=root / "lm")}
    for name, run in runs.items():
        result = CliRunner().invoke(app, ["export", str(run.path), "--to", "onnx", "--out", str(root / f"{name}-onnx")])
        assert result.exit_code == 0, result.output
    return root, runs


@pytest.mark.parametrize("family", ["diffusion", "gan", "vae", "sr_gan", "transformer"])
def test_onnx_graphs_match_pytorch_in_onnxruntime(exported, family):
    import onnxruntime as ort

    root, runs = exported
    model = load_model(runs[family].path)[0]
    described = json.loads((root / f"{family}-onnx/onnx.json").read_text())
    assert described["family"] == family
    for name, graph in model.onnx_graphs().items():
        # a batch size and (for images and text) a size other than the export's, through the dynamic axes
        module, inputs = graph.module, {k: torch.cat([v, v[:1]]) for k, v in graph.inputs.items()}
        if family == "sr_gan":
            inputs = {"images": torch.rand(3, 3, 20, 28) * 2 - 1}
        session = ort.InferenceSession(str(root / f"{family}-onnx" / described["graphs"][name]["file"]))
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        with torch.no_grad():
            want = module.eval()(*inputs.values()).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
