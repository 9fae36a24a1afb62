"""genlab export: the container build context (parsed, and its exact command run) and ONNX graphs
that onnxruntime runs to PyTorch's numbers."""

from __future__ import annotations

import json
import os
import re
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


@pytest.fixture(scope="module")
def context(tiny_run, tmp_path_factory) -> Path:
    """One docker export of the tiny run, read by the tests below (the first changes serve.yaml's ports alone)."""
    out = tmp_path_factory.mktemp("docker") / "ctx"
    result = CliRunner().invoke(app, ["export", str(tiny_run.path), "--to", "docker", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_the_docker_context_parses_and_its_exact_command_serves(context, tiny_run, tmp_path):
    from dockerfile_parse import DockerfileParser

    out = context
    again = CliRunner().invoke(app, ["export", str(tiny_run.path), "--to", "docker", "--out", str(out)])
    assert again.exit_code != 0 and "exists and is not empty" in again.output, "an export never overwrites"

    docker = DockerfileParser(str(out / "Dockerfile"))
    steps = [(i["instruction"], i["value"]) for i in docker.structure if i["instruction"] != "COMMENT"]
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and kinds[-1] == "CMD"
    assert any(k == "RUN" and "torch==2.13.0" in v and "whl/cpu" in v for k, v in steps)
    assert ("USER", "genlab") in steps and kinds.index("USER") < kinds.index("CMD")
    assert any(k == "COPY" and v.endswith("model /app/model") for k, v in steps)
    assert any(k == "HEALTHCHECK" and "127.0.0.1:9090/health" in v for k, v in steps), "on the operations port"
    assert (out / "model/genlab.json").is_file() and (out / "genlab-src/pyproject.toml").is_file()
    assert "__pycache__" in (out / ".dockerignore").read_text()

    # the image's exact command, from its working directory, with the pod's environment: the key from its secret,
    # each cache in its emptyDir (here folders of the test's); only the ports in serve.yaml are changed
    serve = yaml.safe_load((out / "serve.yaml").read_text())
    assert serve["ops_port"] == 9090 and serve["public"] == [], "nothing but generation with a key on the main port"
    port, ops = free_port(), free_port()
    (out / "serve.yaml").write_text(yaml.safe_dump({**serve, "port": port, "ops_port": ops}))
    pod = yaml.safe_load((out / "k8s/deployment.yaml").read_text())["spec"]["template"]["spec"]
    mounts = {"/tmp": tmp_path / "tmp", "/cache": tmp_path / "cache"}
    env = {e["name"]: _mapped(e["value"], mounts) for e in pod["containers"][0]["env"] if "value" in e}
    written = {p for p in out.rglob("*")}
    command = json.loads(docker.cmd) if docker.cmd.startswith("[") else docker.cmd.split()
    binary = Path(sys.executable).parent / command[0]
    main, key = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k1"}
    began = time.monotonic()
    proc = subprocess.Popen([str(binary), *command[1:]], cwd=out, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env, "TMPDIR": str(mounts["/tmp"]), "GENLAB_API_KEYS": "k1"})
    try:
        assert wait_for(f"http://127.0.0.1:{ops}/health").json()["status"] == "ok"
        started = time.monotonic() - began
        assert httpx.get(f"http://127.0.0.1:{ops}/ready").json()["models"] == [tiny_run.config.name]
        assert "genlab_queue_depth{" in httpx.get(f"http://127.0.0.1:{ops}/metrics").text
        assert [httpx.get(f"{main}/{path}").status_code for path in ("ready", "metrics")] == [401, 401]
        assert httpx.get(f"http://127.0.0.1:{ops}/v1/models", headers=key).status_code == 404, "the API is not there"
        images = httpx.post(f"{main}/v1/images/generations", json={"model": tiny_run.config.name, "n": 1, "steps": 3},
                            headers=key, timeout=60)
        assert images.status_code == 200 and images.json()["data"][0]["b64_json"]
        # stopped: draining, the API still answers (each connection closed after); a second signal stops at once
        proc.send_signal(signal.SIGTERM)
        ready = _until(lambda: httpx.get(f"http://127.0.0.1:{ops}/ready"), lambda r: r.status_code == 503)
        assert ready.json() == {"status": "draining"}
        during = httpx.get(f"{main}/v1/models", headers=key)
        assert during.status_code == 200 and during.headers["connection"] == "close"
        second = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - second < serve["drain_seconds"], "the second signal did not wait for the drain"
    finally:
        if proc.poll() is None:
            proc.kill()
        _, log = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, log  # uvicorn re-raises the signal once it has stopped
    assert any(json.loads(line).get("route") == "/v1/images/generations" for line in log.splitlines()
               if line.startswith("{")), "one JSON log line per request"
    assert {p for p in out.rglob("*")} == written, "nothing written beside the model (a read-only root in the pod)"
    startup = pod["containers"][0]["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 3 * started, (started, startup)


def _mapped(value: str, mounts: dict[str, Path]) -> str:
    for mount, folder in mounts.items():
        if value == mount or value.startswith(mount + "/"):
            return str(folder) + value[len(mount):]
    return value


def _until(get, done, seconds: float = 10):
    end = time.monotonic() + seconds
    while not done(answer := get()) and time.monotonic() < end:
        time.sleep(0.05)
    return answer


def test_a_stopped_server_drains_then_lets_a_running_stream_finish(tmp_path_factory):
    root = tmp_path_factory.mktemp("shutdown")
    run = genlab.fit(None, overrides=[*LM, *FEW], out=root / "lm")
    drain, shutdown = 2.0, 10.0
    # the engine in the server's thread: the drain is the server's, and a child process would only add its start
    (root / "serve.yaml").write_text(yaml.safe_dump({"drain_seconds": drain, "shutdown_seconds": shutdown,
                                                     "engine": "thread"}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", str(run.path), "--port", str(port),
                             "--config", str(root / "serve.yaml")],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(f"{url}/health")
        body = {"model": run.config.name, "prompt": "x", "max_tokens": 90, "min_tokens": 90, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            proc.send_signal(signal.SIGTERM)  # mid-stream
            stopped = time.monotonic()
            ready = _until(lambda: httpx.get(f"{url}/ready"), lambda r: r.status_code == 503)
            sent = time.monotonic() - stopped
            during = httpx.post(f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 4,
                                                               "min_tokens": 0}, timeout=60)
            rest = [line for line in lines if line]
        proc.wait(timeout=drain + shutdown + 10)
        stopped = time.monotonic() - stopped
    finally:
        _, log = proc.communicate(timeout=60)  # reads stderr to its end and closes the pipe
    assert ready.json() == {"status": "draining"}
    assert sent < drain and during.status_code == 200, "a request sent during the drain is served"
    assert first.startswith("data: {") and rest[-1] == "data: [DONE]", "the stream ran to its end"
    assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
    assert drain <= stopped < drain + shutdown, (stopped, log)
    assert "draining for 2 s" in log


def test_serve_names_a_port_it_cannot_listen_on_before_loading_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "serve.yaml"
        for values, problem in [({"port": port}, f"port: cannot listen on 127.0.0.1:{port}: Address already in use"),
                                ({"port": port + 1, "ops_port": port + 1}, f"ops_port: {port + 1} is also `port`")]:
            config.write_text(yaml.safe_dump(values))
            # no such run: the ports are checked first (a model may take minutes to load), so the error is theirs
            result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-run"), "--config", str(config)])
            assert result.exit_code != 0 and "Traceback" not in result.output, result.output
            assert problem in result.output, result.output


K8S_VERSIONS = ("1.30", "latest")  # the oldest minor still served by the managed clusters, and the newest


def _validate(manifest: dict) -> None:
    """Against Kubernetes' schema (unknown fields rejected) or, for KEDA's ScaledObject, against its CRD's."""
    import jsonschema
    import kubernetes_validate

    if manifest.get("apiVersion", "").startswith("keda.sh/"):
        jsonschema.validate(manifest, _keda_schema())
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version() if version == "latest"
                                     else version, strict=True)


def _keda_schema() -> dict:
    """ScaledObject's JSON schema from cloudcoil's models (generated from KEDA's CRDs), with unknown fields
    rejected as kubectl's strict field validation does (pydantic's models ignore them)."""
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    def strict(node):
        if isinstance(node, dict):
            if "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    schema = ScaledObject.model_json_schema(by_alias=True)
    strict(schema)
    return schema


def test_the_manifests_pass_the_kubernetes_and_keda_schemas_and_say_what_the_server_needs(context):
    import jsonschema
    import kubernetes_validate

    from genlab.serving.metrics import Metrics

    k8s = context / "k8s"
    manifests = {p.relative_to(k8s).as_posix(): yaml.safe_load(p.read_text()) for p in k8s.rglob("*.yaml")}
    assert set(manifests) == {"deployment.yaml", "service.yaml", "pdb.yaml", "keda/scaledobject.yaml", "hpa/hpa.yaml"}
    for manifest in manifests.values():
        _validate(manifest)

    # each validator rejects a broken copy: a misspelt field, a wrong type, a missing required field
    deployment, hpa = manifests["deployment.yaml"], manifests["hpa/hpa.yaml"]
    scaled = manifests["keda/scaledobject.yaml"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    broken = [_changed(deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
                  livenesProbe=container["livenessProbe"])),
              _changed(deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
                  containerPort="8000")),
              _changed(hpa, lambda h: h["spec"].pop("scaleTargetRef")),
              _changed(manifests["pdb.yaml"], lambda p: p["spec"].update(maxUnavailable=[1])),
              _changed(scaled, lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=8)),
              _changed(scaled, lambda s: s["spec"].update(minReplicas=2)),
              _changed(scaled, lambda s: s["spec"].pop("triggers"))]
    for manifest in broken:
        with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
            _validate(manifest)

    serve = yaml.safe_load((context / "serve.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "ops": 9090}
    assert manifests["service.yaml"]["spec"]["ports"] == [{"port": 80, "targetPort": "http", "name": "http"}]
    assert {container[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {9090}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 120
    assert "the model loaded in" in (k8s / "deployment.yaml").read_text()
    wait = container["lifecycle"]["preStop"]["exec"]["command"]
    assert wait[:2] == ["python", "-c"]
    pre_stop = float(wait[2].split("sleep(")[1].rstrip(")"))
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + serve["drain_seconds"] + serve["shutdown_seconds"] + 5
    secret = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert container["env"][0]["name"] == "GENLAB_API_KEYS" and secret["optional"] is False
    # restricted: a read-only root, whose writable places are emptyDirs that every cache variable points into
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty]
    assert "/tmp" in mounts
    for variable in ("HOME", "GENLAB_CACHE", "HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        value = next(e["value"] for e in container["env"] if e["name"] == variable)
        assert any(value == m or value.startswith(m + "/") for m in mounts), variable
    # two replicas at least, one evicted at a time; each autoscaler on the queue depth the server exports
    assert manifests["pdb.yaml"]["spec"]["maxUnavailable"] == 1
    assert hpa["spec"]["minReplicas"] >= 2 and scaled["spec"]["minReplicaCount"] >= 2
    name = deployment["metadata"]["name"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == scaled["spec"]["scaleTargetRef"]["name"] == name
    assert "# TYPE genlab_queue_depth gauge" in Metrics().render().decode()
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "genlab_queue_depth"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0
    query = trigger["metadata"]["query"]
    assert query.startswith("sum(genlab_queue_depth{")
    pods = re.search(r'pod=~"([^"]+)"', query).group(1)
    assert re.fullmatch(pods, f"{name}-5d8f9c7b6-x2k4q") and not re.fullmatch(pods, f"{name}-v2-5d8f9c7b6-x2k4q")


def _changed(manifest: dict, change) -> dict:
    copy = json.loads(json.dumps(manifest))
    change(copy)
    return copy


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
