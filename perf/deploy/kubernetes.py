"""Kubernetes manifests for a tuned model repository, sized by the cost campaign.

Plain manifests rendered from Python dicts (not a Helm chart): the sizing already comes from our
cost model, so a second templating layer would only add a place for the numbers to drift; the
output is kubectl-apply-able, kustomize-friendly, and validated offline against the Kubernetes
schemas (kubernetes-validate, strict) before anything is written.

Rendered: Namespace (Pod Security "restricted"), Deployment (NGC Triton, one GPU per pod, probes
on Triton's health endpoints), Service (HTTP/gRPC/metrics), NetworkPolicy, PodDisruptionBudget,
HorizontalPodAutoscaler (autoscaling/v2) on Triton's pending-request gauge per pod through the
Prometheus adapter, and the adapter rule as a ConfigMap. HPA bounds and windows come from the
campaign's autoscaling simulation, sized on the throughput without response-cache hits (a cold
cache, per pod or shared, must not under-provision). With a shared Redis cache (``CacheTarget``) the
serving clients get a ConfigMap of the env they add (the password from a Secret) and a NetworkPolicy
that admits them to Redis's port.

The pod is what a cluster's security review (checkov) accepts: non-root with a high UID, no
privilege escalation, every capability dropped, read-only root filesystem (emptyDirs for /tmp and
/dev/shm), RuntimeDefault seccomp, no service-account token, CPU and memory limits, the image by
digest when given. Triton's administrative APIs (shared memory, model repository, logging, trace)
answer only requests carrying the key from a Secret the user creates, and so does inference over
HTTP (its own key in the same Secret: one malformed JSON body kills Triton 2.51's HTTP frontend;
gRPC inference needs no key, the probes' health endpoints none either); the NetworkPolicy admits
the service ports from the namespaces the user names and the metrics port from Prometheus's.
Each remaining scanner finding is skipped in an annotation that states why.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from clients.server import ADMIN_APIS, ADMIN_HEADER, INFER_HEADER, METRICS_ENV
from perf.cost import autoscale
from perf.cost import pricing as cost
from perf.errors import CostError, DeployError

K8S_VERSION = "1.31.0"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"
UID = 10001                                               # >= 10000: no clash with host users
DEFAULT_NAMESPACE = "triton-inference"
METRIC = "triton_pending_requests"
ADAPTER_RULE = {
    "seriesQuery": 'nv_inference_pending_request_count{namespace!="",pod!=""}',
    "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
    "name": {"matches": "^nv_inference_pending_request_count$", "as": METRIC},
    "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
}


@dataclass(frozen=True)
class Sizing:
    instance: cost.Instance
    per_instance_rps: float
    min_replicas: int
    max_replicas: int
    target_pending_per_pod: int
    scale_up_window_s: int
    scale_down_window_s: int
    cold_start_s: int
    source: str


def sizing_from_campaign(campaign_path: Path, instance: str | None = None, throughput_from: Path | None = None,
                         catalog: cost.Catalog | None = None) -> Sizing:
    """Replica bounds and HPA policy from the campaign file (or re-sized for a GPU tune file)."""
    from perf.cost.campaign import CampaignRecord
    from perf.tuning.tuner import TuneRecord
    doc = CampaignRecord.read(campaign_path)
    catalog = catalog or cost.load_catalog()
    gpus = catalog.gpu_instances()
    if not gpus:
        raise CostError("the instance catalog has no GPU instance; add one (with gpus = N) to perf/cost/catalog.toml")
    gpu = catalog.get(instance) if instance else min(gpus, key=lambda i: i.usd_per_hour)
    if gpu.gpus < 1:
        raise CostError(f"instance {gpu.name!r} has no GPU; choose one of {', '.join(i.name for i in gpus)}")
    traffic = doc.traffic
    if traffic.requests_per_day <= 0:
        raise CostError("the campaign's traffic is zero requests/day: there is nothing to size a fleet for")
    a, pol = doc.autoscaling, doc.autoscaling.policy
    rps, source = a.per_instance_rps, f"{Path(campaign_path).name}: measured on {doc.local_priced_as}"
    lo, hi = a.warm_pool, a.peak_fleet
    if a.uncached_rps != rps and a.uncached_rps > 0:
        # the campaign counted response-cache hits: size for a cold cache
        lo, hi = _bounds(catalog.get(doc.local_priced_as), a.uncached_rps, traffic, doc.headroom)
        rps, source = a.uncached_rps, source + f", without cache hits ({a.per_instance_rps:.0f} req/s with them)"
    if throughput_from:
        tune = TuneRecord.read(throughput_from)
        if tune.instance != gpu.name:
            raise CostError(f"{throughput_from}: need a tune results file measured on {gpu.name} (its 'instance' field "
                            f"says {tune.instance!r})")
        rps = tune.winner.throughput
        if rps <= 0:
            raise CostError(f"{throughput_from}: no configuration met the SLA on {gpu.name}")
        lo, hi = _bounds(gpu, rps, traffic, doc.headroom)
        source = f"{Path(throughput_from).name}: measured on {gpu.name}"
    if rps <= 0:
        raise CostError("no configuration met the SLA: the campaign has no throughput to size from")
    # Little's law: requests in flight per pod at the target load = rate x time in system.
    latency_s = (doc.winner.latency_ms or doc.sla_ms) / 1000.0
    target = max(1, math.ceil(rps * pol.target_utilization * latency_s))
    return Sizing(gpu, rps, lo, max(lo, hi), target, int(pol.scale_up_delay_s), int(pol.scale_down_delay_s),
                  int(pol.cold_start_s), source)


@dataclass(frozen=True)
class PackedGroup:
    """One machine group of a fleet's chosen packing: one Deployment loading each of its models."""

    name: str                   # the group's models joined: the Deployment's name
    models: list[str]           # the Triton models it loads (explicit model control), ensembles with their parts
    sizing: Sizing


def sizing_from_fleet(fleet_path: Path, catalog: cost.Catalog | None = None) -> list[PackedGroup]:
    """The chosen packing of a fleet results file: per group, replicas from its bill (the warm pool to
    the peak fleet), the HPA target by Little's law over the mix (each model's share of the group's
    capacity times its SLA percentile measured there), on the CPU kind it was priced as."""
    from perf.cost.fleet import FleetRecord
    rec = FleetRecord.read(fleet_path)
    catalog = catalog or cost.load_catalog()
    served = {s.name: s for s in rec.served}
    groups = {tuple(g.names): g for g in rec.groups}
    pol = rec.policy
    out = []
    for bill in rec.bills:
        names = list(bill.names)
        inst = catalog.instances.get(bill.instance) or cost.Instance(bill.instance, bill.usd_per_hour)
        total = sum(served[n].requests_per_day for n in names)
        g = groups[tuple(names)]
        in_flight = sum(served[n].requests_per_day / total * bill.capacity_rps * pol.target_utilization
                        * (g.latency_at_capacity(n) or served[n].sla_ms) / 1000.0 for n in names)
        models = [m for n in names for m in loaded_models(served[n].name, served[n].model, served[n].variant)]
        sizing = Sizing(inst, bill.capacity_rps, bill.warm_pool, max(bill.warm_pool, bill.peak_instances),
                        max(1, math.ceil(in_flight)), int(pol.scale_up_delay_s), int(pol.scale_down_delay_s),
                        int(pol.cold_start_s), f"{Path(fleet_path).name}: {' + '.join(names)} measured together "
                        f"on {bill.instance}, served as " + "; ".join(
                            f"{n} {served[n].variant} {g.configs[n].instances} instance(s)"
                            + (f" batching mbs {g.configs[n].max_batch_size}" if g.configs[n].dynamic_batching else "")
                            for n in names if n in g.configs) + " (the repository must hold these configs)")
        out.append(PackedGroup("-".join(names), models, sizing))
    return out


def loaded_models(name: str, model: str, variant: str) -> list[str]:
    """What a served model needs loaded: a text ensemble its tokenizer and encoder first."""
    return [f"{name}_tokenizer", f"{name}_{variant}", model] if model != f"{name}_{variant}" else [model]


def _bounds(inst: cost.Instance, rps: float, traffic: cost.Traffic, headroom: float) -> tuple[int, int]:
    """Warm pool (the day's quietest hour) and peak fleet for one pod's throughput."""
    fleet = cost.size_fleet(inst, rps, traffic, headroom, 1)
    day = autoscale.diurnal_profile(traffic.average_rps, traffic.peak_to_average)
    return max(1, math.ceil(day.min() / fleet.usable_rps)), fleet.peak_instances


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": name}


@dataclass(frozen=True)
class CacheTarget:
    """The fleet's shared Redis cache the serving clients use (clients/redis_cache.py): its URL without
    the password (the password lives in a Secret the user creates: ``secret``, key ``password``) and the
    labels of its pods, which the NetworkPolicy opens to the serving clients' namespaces."""

    url: str                                   # redis://host:port/db
    pod_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "redis"),)
    namespace: str | None = None               # the Redis pods' namespace (default: from host NAME.NS.svc, else the model's)
    secret: str = ""                           # default: <name>-cache

    def parsed(self) -> tuple[str, int, int]:
        from urllib.parse import urlparse
        u = urlparse(self.url)
        if u.scheme not in ("redis", "rediss") or not u.hostname:
            raise DeployError(f"--redis-url {self.url!r}: give redis://HOST:PORT/DB (rediss:// for TLS)")
        if u.password or u.username:
            raise DeployError("--redis-url carries a password: it would land in a manifest; put it in the Secret "
                              "(kubectl create secret generic <name>-cache --from-literal=password=...) and give the "
                              "URL without it")
        db = u.path.strip("/") or "0"
        if not db.isdigit():
            raise DeployError(f"--redis-url {self.url!r}: the path is the database number, got {u.path!r}")
        return u.hostname, u.port or 6379, int(db)


def _cache_manifests(name: str, labels: dict, namespace: str, peers: list[str], cache: CacheTarget) -> dict[str, dict]:
    host, port, db = cache.parsed()
    secret = cache.secret or f"{name}-cache"
    parts = host.split(".")
    redis_ns = cache.namespace or (parts[1] if len(parts) >= 3 and parts[2] == "svc" else namespace)
    scheme = cache.url.split(":", 1)[0]
    env = [{"name": "TCK_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}},
           {"name": "TCK_REDIS_URL", "value": f"{scheme}://:$(TCK_REDIS_PASSWORD)@{host}:{port}/{db}"}]
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"{name}-cache-client", "namespace": namespace, "labels": labels},
              "data": {"host": host, "port": str(port), "db": str(db), "secret": secret,
                       # what a serving client's container adds to its env (the kubelet expands $(VAR))
                       "client-env.yaml": yaml.safe_dump(env, sort_keys=False)}}
    netpol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": f"{name}-cache", "namespace": redis_ns, "labels": labels},
              "spec": {"podSelector": {"matchLabels": dict(cache.pod_labels)}, "policyTypes": ["Ingress"], "ingress": [
                  {"from": [{"namespaceSelector": {"matchExpressions": [
                      {"key": "kubernetes.io/metadata.name", "operator": "In", "values": peers}]}}],
                   "ports": [{"protocol": "TCP", "port": port}]}]}}
    return {"cache-client.yaml": config, "networkpolicy-cache.yaml": netpol}


def render(model: str, sizing: Sizing, repository_url: str, image: str = TRITON_IMAGE,
           namespace: str = DEFAULT_NAMESPACE, models: list[str] | None = None, image_digest: str | None = None,
           allow_from: tuple[str, ...] = (), prometheus_namespace: str = "monitoring",
           cache: CacheTarget | None = None) -> dict[str, dict]:
    """The manifests, as dicts. `allow_from`: namespaces whose pods may call the service ports (the
    model's own namespace always may); `image_digest`: sha256:... to pin the image."""
    if namespace == "default":
        raise DeployError("--namespace default: give the model a namespace of its own (e.g. triton-inference)")
    if image_digest is not None and not (image_digest.startswith("sha256:") and len(image_digest) == 71):
        raise DeployError(f"--image-digest {image_digest!r}: give the image's sha256:<64 hex> digest "
                        "(docker buildx imagetools inspect IMAGE)")
    name = f"triton-{model}".replace("_", "-").lower()
    labels = _labels(name)
    uncached = "cache hits not counted"
    ann = {"tck/sizing-source": sizing.source, "tck/per-instance-rps": f"{sizing.per_instance_rps:.1f} ({uncached})",
           "tck/instance-type": sizing.instance.name}
    inst = sizing.instance
    cpu = max(1, inst.vcpus - 1)
    gpu = {"nvidia.com/gpu": str(inst.gpus)} if inst.gpus else {}     # a CPU kind (a fleet measured here) asks for none
    mem = max(2, int(inst.memory_gib * 0.75))
    key = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}=$(TRITON_ADMIN_KEY)"   # the kubelet expands $(VAR) in args
    args = ["tritonserver", f"--model-repository={repository_url}", "--strict-readiness=true",
            "--exit-on-error=false", "--metrics-port=8002", f"--http-restricted-api={key}",
            f"--http-restricted-api=inference:{INFER_HEADER}=$(TRITON_INFER_KEY)", f"--grpc-restricted-protocol={key}"]
    if models:
        args += ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in models]
    volumes = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
               {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]   # Python backend IPC
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    if not repository_url.startswith(("s3://", "gs://", "as://")):
        volumes.append({"name": "model-repository", "persistentVolumeClaim": {"claimName": f"{name}-models", "readOnly": True}})
        mounts.append({"name": "model-repository", "mountPath": repository_url, "readOnly": True})
    skips = {"CKV_K8S_35": "Triton takes the restricted-API key only on its command line: a file would end up in argv too"}
    if image_digest:
        image = f"{image.split('@')[0]}@{image_digest}"
    else:
        ann["tck/image-tag-mutable"] = f"{image} is a tag: it can change under you; pin it with --image-digest sha256:..."
        skips["CKV_K8S_43"] = "no --image-digest given: the tag is mutable (see tck/image-tag-mutable); pulled Always"
    probe = lambda path, period, fail: {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,  # noqa: E731
                                        "failureThreshold": fail, "timeoutSeconds": 2}
    container = {
        "name": "tritonserver", "image": image, "imagePullPolicy": "IfNotPresent" if image_digest else "Always",
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"},
                {"name": METRICS_ENV, "value": "http://127.0.0.1:8002/metrics"},   # CPU models' backlog bound
                {"name": "TRITON_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": f"{name}-admin", "key": "key"}}},
                {"name": "TRITON_INFER_KEY", "valueFrom": {"secretKeyRef": {"name": f"{name}-admin", "key": "infer-key"}}}],
        "ports": [{"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 8001},
                  {"name": "metrics", "containerPort": 8002}],
        "resources": {"requests": {"cpu": str(cpu), "memory": f"{mem}Gi", **gpu},
                      "limits": {"cpu": str(cpu), "memory": f"{mem}Gi", **gpu}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "privileged": False,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "startupProbe": probe("/v2/health/ready", 5, max(1, math.ceil(sizing.cold_start_s / 5))),
        "readinessProbe": probe("/v2/health/ready", 5, 3),
        "livenessProbe": probe("/v2/health/live", 10, 3),
        "volumeMounts": mounts,
    }
    checkov = {f"checkov.io/skip{i}": f"{check}={why}" for i, (check, why) in enumerate(sorted(skips.items()), 1)}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": {**ann, **checkov}},
        "spec": {
            "replicas": sizing.min_replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8002"}},
                "spec": {"containers": [container], "volumes": volumes,
                         "automountServiceAccountToken": False,
                         "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                             "seccompProfile": {"type": "RuntimeDefault"}},
                         "nodeSelector": {"node.kubernetes.io/instance-type": inst.name},
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                         if inst.gpus else [],
                         "terminationGracePeriodSeconds": 30},
            },
        },
    }
    peers = sorted({namespace, *allow_from})
    netpol = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"], "ingress": [
            {"from": [{"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": peers}]}}],
             "ports": [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 8001}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": prometheus_namespace}}}],
             "ports": [{"protocol": "TCP", "port": 8002}]}]},
    }
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                                     "pod-security.kubernetes.io/warn": "restricted"}}}
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [
            {"name": "http", "port": 8000, "targetPort": "http"}, {"name": "grpc", "port": 8001, "targetPort": "grpc"},
            {"name": "metrics", "port": 8002, "targetPort": "metrics"}]},
    }
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
           "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}}
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": ann},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": sizing.min_replicas, "maxReplicas": sizing.max_replicas,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": METRIC},
                                                  "target": {"type": "AverageValue",
                                                             "averageValue": str(sizing.target_pending_per_pod)}}}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": sizing.scale_up_window_s,
                            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": sizing.scale_down_window_s,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            },
        },
    }
    adapter = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": f"{name}-prometheus-adapter-rules", "namespace": namespace, "labels": labels},
               "data": {"config.yaml": yaml.safe_dump({"rules": [ADAPTER_RULE]}, sort_keys=False)}}
    out = {"namespace.yaml": ns, "deployment.yaml": deployment, "service.yaml": service, "networkpolicy.yaml": netpol,
           "pdb.yaml": pdb, "hpa.yaml": hpa, "prometheus-adapter-rules.yaml": adapter}
    if cache is not None:                    # the serving clients (the same peers as the Service) reach the cache
        out |= _cache_manifests(name, labels, namespace, peers, cache)
    if any("persistentVolumeClaim" in v for v in volumes):
        out["pvc.yaml"] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": f"{name}-models", "namespace": namespace, "labels": labels},
                           "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "10Gi"}}}}
    return out


def validate(manifests: dict[str, dict], version: str = K8S_VERSION) -> None:
    import kubernetes_validate
    for fname, m in manifests.items():
        try:
            kubernetes_validate.validate(m, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise DeployError(f"{fname} does not validate against Kubernetes {version}: {e.message}") from e


class _PlainDumper(yaml.SafeDumper):
    """Plain YAML: a dict used twice (the labels) is written out twice, never as &anchor / *alias."""

    def ignore_aliases(self, data) -> bool:
        return True


def write(manifests: dict[str, dict], out_dir: Path, version: str = K8S_VERSION) -> Path:
    """Validate everything first, then write into a temporary folder and swap it in: all or nothing."""
    validate(manifests, version)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for fname, m in manifests.items():
            (tmp / fname).write_text(yaml.dump(m, Dumper=_PlainDumper, sort_keys=False))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
