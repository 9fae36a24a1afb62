"""The Kubernetes manifests of a docker export: the Deployment, its Service and PodDisruptionBudget, and two
autoscalers on the queue depth, as alternatives (KEDA's ScaledObject, or an HPA on a custom metric).

The pod drains before it stops: the preStop hook waits while the endpoint removal reaches every node, then SIGTERM
starts the server's own drain (`drain_seconds`: /ready answers 503, requests are still served), then its shutdown
(`shutdown_seconds`: in-flight requests finish); the grace period covers the three and a margin.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

PORT, OPS_PORT = 8000, 9090
PRESTOP_SECONDS = 5  # long enough for kube-proxy and ingress controllers to drop the endpoint, in most clusters
DRAIN_SECONDS = 5
SHUTDOWN_SECONDS = 30
MARGIN_SECONDS = 10
# the start the probe allows: a multiple of the measured load (a cluster node may be slower, its disk cold), at
# least the floor (the interpreter and genlab's imports: ~10 s on 2 cores, which a tiny model's load does not show)
STARTUP_FACTOR, STARTUP_FLOOR_SECONDS, STARTUP_PERIOD_SECONDS = 10, 120, 5
MIN_REPLICAS, MAX_REPLICAS = 2, 8  # two: one replica serves while a node drain moves the other
QUEUE_TARGET = 8  # requests waiting or running per replica that the autoscalers aim at
CACHE = "/cache"  # an emptyDir: the root filesystem is read-only
# where genlab and the libraries it serves with write at run time, all into the emptyDir
CACHE_ENV = {"HOME": CACHE, "XDG_CACHE_HOME": CACHE, "GENLAB_CACHE": f"{CACHE}/genlab",
             "HF_HOME": f"{CACHE}/huggingface", "TORCH_HOME": f"{CACHE}/torch", "MPLCONFIGDIR": f"{CACHE}/matplotlib",
             "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor", "NUMBA_CACHE_DIR": f"{CACHE}/numba"}


def serve_config(name: str) -> dict:
    """The image's serve.yaml: the API on PORT with a key, the operations endpoints on OPS_PORT alone."""
    return {"host": "0.0.0.0", "port": PORT, "ops_port": OPS_PORT, "names": [name], "public": [],  # noqa: S104
            "drain_seconds": DRAIN_SECONDS, "shutdown_seconds": SHUTDOWN_SECONDS}


def startup_seconds(load_seconds: float) -> int:
    """How long the startup probe lets the server take to answer, from the model's measured load time."""
    budget = max(STARTUP_FLOOR_SECONDS, STARTUP_FACTOR * load_seconds)
    return math.ceil(budget / STARTUP_PERIOD_SECONDS) * STARTUP_PERIOD_SECONDS


def grace_seconds() -> int:
    """terminationGracePeriodSeconds: preStop, the server's drain and shutdown, and a margin."""
    return PRESTOP_SECONDS + DRAIN_SECONDS + SHUTDOWN_SECONDS + MARGIN_SECONDS


def write_manifests(out: Path, slug: str, image: str, load_seconds: float) -> None:
    """k8s/: the Deployment, Service and PodDisruptionBudget; k8s/keda/ and k8s/hpa/, one to apply; a README."""
    name, keys = f"genlab-{slug}", f"genlab-{slug}-keys"
    startup = startup_seconds(load_seconds)
    files = {
        "deployment.yaml": (deployment(name, image, startup),
                            f"The server, {MIN_REPLICAS} replicas or more (an autoscaler from keda/ or hpa/ sets the "
                            f"count).\nIt needs the API-key secret, or its pods do not start:\n"
                            f"  kubectl create secret generic {keys} --from-literal=keys=KEY1,KEY2\n"
                            f"startupProbe: the model loaded in {load_seconds:.2f} s when exported (on the exporting "
                            f"machine);\nthe probe allows {startup} s ({STARTUP_FACTOR}x that, at least "
                            f"{STARTUP_FLOOR_SECONDS} s).\nProbes and Prometheus use the operations port "
                            f"{OPS_PORT} on the pod's IP; the Service does not expose it."),
        "service.yaml": (service(name), f"Port 80 to the API alone: every route but /health needs a key from {keys}."),
        "pdb.yaml": (pdb(name), "A node drain evicts one replica at a time; with two or more, one keeps serving."),
        "keda/scaledobject.yaml": (scaled_object(name),
                                   "KEDA scales the Deployment on the queue depth from Prometheus. Apply this OR "
                                   "../hpa/, not both.\nserverAddress is a placeholder: your Prometheus's address. "
                                   "Add namespace=\"...\" to the\nquery when the same name runs in several "
                                   "namespaces."),
        "hpa/hpa.yaml": (hpa(name),
                         "For clusters without KEDA: a custom metric served by prometheus-adapter (see README.md). "
                         "Apply this\nOR ../keda/, not both."),
    }
    for path, (manifest, note) in files.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        header = "".join(f"# {line}\n" if line else "#\n" for line in note.splitlines())
        (out / path).write_text(header + yaml.safe_dump(manifest, sort_keys=False))
    (out / "README.md").write_text(README.format(name=name, keys=keys, target=QUEUE_TARGET, ops=OPS_PORT))


def _labels(name: str) -> dict:
    return {"app": name}


def _meta(name: str) -> dict:
    return {"name": name, "labels": _labels(name)}


def deployment(name: str, image: str, startup: int) -> dict:
    """The Deployment: drained stops, probes on the operations port, a restricted, read-only container."""
    ops = {"port": OPS_PORT, "scheme": "HTTP"}
    container = {
        "name": "genlab", "image": image,
        "ports": [{"containerPort": PORT, "name": "http"}, {"containerPort": OPS_PORT, "name": "ops"}],
        "env": [{"name": "GENLAB_API_KEYS", "valueFrom": {"secretKeyRef": {
            "name": f"{name}-keys", "key": "keys", "optional": False}}},
            *({"name": k, "value": v} for k, v in CACHE_ENV.items())],
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
        "startupProbe": {"httpGet": {"path": "/health", **ops}, "periodSeconds": STARTUP_PERIOD_SECONDS,
                         "timeoutSeconds": 3, "failureThreshold": startup // STARTUP_PERIOD_SECONDS},
        "livenessProbe": {"httpGet": {"path": "/health", **ops}, "periodSeconds": 10, "timeoutSeconds": 5,
                          "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", **ops}, "periodSeconds": 5, "timeoutSeconds": 3,
                           "failureThreshold": 2},
        # the image has python, not sleep: the endpoint's removal reaches the nodes before SIGTERM
        "lifecycle": {"preStop": {"exec": {"command": [
            "python", "-c", f"import time; time.sleep({PRESTOP_SECONDS})"]}}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": CACHE}],
    }
    pod = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": grace_seconds(),
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        # replicas on different nodes where there are: one node's drain or loss leaves the others serving
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": _labels(name)}}],
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}}],
    }
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(OPS_PORT),
                   "prometheus.io/path": "/metrics"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name),
            "spec": {"replicas": MIN_REPLICAS, "selector": {"matchLabels": _labels(name)},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                     "template": {"metadata": {"labels": _labels(name), "annotations": annotations}, "spec": pod}}}


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name),
            "spec": {"selector": _labels(name), "ports": [{"port": 80, "targetPort": "http", "name": "http"}]}}


def pdb(name: str) -> dict:
    # maxUnavailable rather than minAvailable: a drain is never blocked, and with MIN_REPLICAS one pod stays up;
    # a pod that is not ready anyway may always go (it serves nothing, and it would block the drain)
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(name)},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def _queue_query(name: str) -> str:
    # a Deployment's pods are NAME-<replicaset hash>-<suffix>; Prometheus anchors the regex
    return f'sum(genlab_queue_depth{{pod=~"{name}-[a-z0-9]+-[a-z0-9]+"}})'


SCALE_DOWN = {"scaleDown": {"stabilizationWindowSeconds": 300}}  # a lull between bursts does not drop replicas


def scaled_object(name: str) -> dict:
    """KEDA: replicas = the queue depth summed over the pods / QUEUE_TARGET, within MIN and MAX_REPLICAS."""
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(name),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicaCount": MIN_REPLICAS, "maxReplicaCount": MAX_REPLICAS, "pollingInterval": 15,
                     "cooldownPeriod": 300,
                     "advanced": {"horizontalPodAutoscalerConfig": {"behavior": SCALE_DOWN}},
                     "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                         "serverAddress": "http://prometheus.monitoring.svc:9090",
                         "query": _queue_query(name), "threshold": str(QUEUE_TARGET)}}]}}


def hpa(name: str) -> dict:
    """autoscaling/v2 on the per-pod custom metric genlab_queue_depth (prometheus-adapter serves it)."""
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(name),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": MIN_REPLICAS, "maxReplicas": MAX_REPLICAS, "behavior": SCALE_DOWN,
                     "metrics": [{"type": "Pods", "pods": {"metric": {"name": "genlab_queue_depth"}, "target": {
                         "type": "AverageValue", "averageValue": str(QUEUE_TARGET)}}}]}}


README = """\
# Deploying {name}

1. The API keys (required: a pod without the secret does not start):

       kubectl create secret generic {keys} --from-literal=keys=KEY1,KEY2

2. The server, its Service (port 80, the API: every route but /health needs a key) and its PodDisruptionBudget:

       kubectl apply -f k8s/

3. ONE autoscaler on the queue depth (two autoscalers on one Deployment fight over its replica count):

   - with KEDA: set `serverAddress` in `k8s/keda/scaledobject.yaml` to your Prometheus, then
     `kubectl apply -f k8s/keda/`;
   - without KEDA: prometheus-adapter serves `genlab_queue_depth` per pod to the HPA in `k8s/hpa/`, with a
     rule such as

         - seriesQuery: 'genlab_queue_depth{{namespace!="",pod!=""}}'
           resources: {{overrides: {{namespace: {{resource: namespace}}, pod: {{resource: pod}}}}}}
           metricsQuery: 'sum(<<.Series>>{{<<.LabelMatchers>>}}) by (<<.GroupBy>>)'

     then `kubectl apply -f k8s/hpa/`.

   Both aim at {target} requests waiting or running per replica.

Prometheus scrapes /metrics on port {ops} of each pod (the pod's `prometheus.io/*` annotations, or a
PodMonitor); the probes use that port too. The Service does not expose it, and nothing on it needs a key.

Rate limits (`rate_limit` in serve.yaml) are per replica: N replicas allow N times the per-key limits.
"""
