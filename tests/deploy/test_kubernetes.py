"""deploy/kubernetes: every kustomization renders, every manifest validates, and the pieces fit.

How this works: the base and each overlay are rendered by the small renderer in
tests/deploy/kustomize.py (and, where `kubectl` is installed, by `kubectl kustomize` too,
which must give the same resources). Built-in kinds are validated with kubernetes-validate
(strict: unknown fields are errors) against a current Kubernetes version; the Prometheus
Operator CRDs (PodMonitor, PrometheusRule) have no schema there, so their shape is checked
against the small JSON schemas below (the fields this repository uses). Then what an
operator relies on: the proxy configuration in the ConfigMap is valid for `ProxyConfig`,
its ports are the container's ports, the probes hit /healthz and /readyz on the metrics
port, every container runs non-root with a read-only root file system, no privilege
escalation and no capabilities, the Service and PodMonitor name ports that exist, the
grace period outlasts the drain deadline, and each overlay is what it says it is.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from imap_proxy.config import ProxyConfig, split_host_port
from tests.deploy.kustomize import Resource, all_containers, key_of, pod_spec, render

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = {"sidecar": KUBERNETES / "overlays" / "sidecar"}
OVERLAYS["scale-out"] = KUBERNETES / "overlays" / "scale-out"
KUSTOMIZATIONS = {"base": BASE, **OVERLAYS}
KUBERNETES_VERSION = "1.30.0"
PROXY_CONTAINER = "imap-proxy"

PODMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object"}},
                    "additionalProperties": False,
                },
                "namespaceSelector": {"type": "object"},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                            "relabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}

PROMETHEUSRULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string"},
                                        "labels": {"type": "object"},
                                        "annotations": {"type": "object"},
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS = {"PodMonitor": PODMONITOR_SCHEMA, "PrometheusRule": PROMETHEUSRULE_SCHEMA}


def rendered(name: str) -> list[Resource]:
    return render(KUSTOMIZATIONS[name])


def only(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def proxy_container(resources: list[Resource]) -> dict[str, Any]:
    [container] = [c for c in all_containers(resources) if c["name"] == PROXY_CONTAINER]
    return container


def proxy_config(resources: list[Resource]) -> ProxyConfig:
    config_map = only(resources, "ConfigMap", "imap-proxy-config")
    return ProxyConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))


def container_port(container: dict[str, Any], name_or_number: str | int) -> int:
    for port in container.get("ports", []):
        if name_or_number in (port.get("name"), port["containerPort"]):
            return int(port["containerPort"])
    raise AssertionError(f"{container['name']} has no port {name_or_number!r}")


def validate(resource: Resource) -> None:
    if resource["kind"] in CRD_SCHEMAS:
        jsonschema.validate(resource, CRD_SCHEMAS[resource["kind"]])
    else:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


# ------------------------------------------------------------------ render, validate


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_kustomization_renders_and_every_resource_validates(name: str) -> None:
    resources = rendered(name)
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    assert {"PodMonitor", "PrometheusRule"} <= kinds
    for resource in resources:
        validate(resource)


@pytest.mark.parametrize("path", sorted(BASE.glob("*.yaml")), ids=lambda p: p.name)
def test_every_base_file_validates_on_its_own(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert documents
    for document in documents:
        if document["kind"] == "Kustomization":
            continue
        validate(document)


def test_a_broken_manifest_is_caught() -> None:
    """The validation is real: an unknown field or a wrong type fails."""
    deployment = only(rendered("base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    monitor = only(rendered("base"), "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = 9143
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kubectl_kustomize_renders_the_same(name: str) -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    theirs = {key_of(doc): doc for doc in yaml.safe_load_all(result.stdout) if doc}
    ours = {key_of(doc): doc for doc in rendered(name)}
    assert ours == theirs


# --------------------------------------------------------------------- the proxy pod


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_container_is_locked_down(name: str) -> None:
    resources = rendered(name)
    containers = all_containers(resources)
    assert containers
    for container in containers:
        context = container.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, container["name"]
        assert context.get("runAsUser", 0) != 0, container["name"]
        assert context.get("allowPrivilegeEscalation") is False, container["name"]
        assert context.get("readOnlyRootFilesystem") is True, container["name"]
        assert context.get("privileged", False) is False, container["name"]
        assert context.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
        assert not context.get("capabilities", {}).get("add"), container["name"]
        assert "limits" in container.get("resources", {}), container["name"]
        assert "requests" in container.get("resources", {}), container["name"]
    for resource in resources:
        pod = pod_spec(resource)
        if pod is not None:
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod.get("hostNetwork", False) is False
            assert pod.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_probes_hit_health_endpoints_on_the_metrics_port(name: str) -> None:
    resources = rendered(name)
    config = proxy_config(resources)
    assert config.metrics_listen is not None
    metrics_port = split_host_port(config.metrics_listen)[1]
    container = proxy_container(resources)
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert readiness["path"] == "/readyz"
    assert container_port(container, liveness["port"]) == metrics_port
    assert container_port(container, readiness["port"]) == metrics_port
    monitor = only(resources, "PodMonitor")
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert container_port(container, endpoint["port"]) == metrics_port
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_config_listeners_mounts_and_service_fit_together(name: str) -> None:
    resources = rendered(name)
    config = proxy_config(resources)
    container = proxy_container(resources)
    deployment = only(resources, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    # The --config argument names the mounted ConfigMap file.
    arguments = container["args"]
    config_path = Path(arguments[arguments.index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(config_path.parent)]]["configMap"]["name"] == "imap-proxy-config"
    # The certificate and key live in the mounted TLS Secret.
    assert config.tls.cert is not None and config.tls.key is not None
    tls_volume = volumes[mounts[str(config.tls.cert.parent)]]
    assert tls_volume["secret"]["secretName"] == "imap-proxy-tls"
    assert config.tls.key.parent == config.tls.cert.parent
    assert {config.tls.cert.name, config.tls.key.name} == {"tls.crt", "tls.key"}
    # Only /tmp is writable (a volume): the root file system is read-only.
    assert "/tmp" in mounts
    # Listeners are the container's ports; the Service sends 143 and 993 to them.
    [plain] = config.listen
    [tls] = config.listen_tls
    assert split_host_port(plain) == ("0.0.0.0", container_port(container, "imap"))
    assert split_host_port(tls) == ("0.0.0.0", container_port(container, "imaps"))
    service = only(resources, "Service")
    targets = {
        p["port"]: container_port(container, p["targetPort"]) for p in service["spec"]["ports"]
    }
    assert targets == {
        143: split_host_port(plain)[1],
        993: split_host_port(tls)[1],
    }
    labels = pod_labels(deployment)
    assert service["spec"]["selector"].items() <= labels.items()
    # The kubelet waits for the drain before it kills the process.
    assert pod["terminationGracePeriodSeconds"] > config.timeouts.drain + 5


def pod_labels(deployment: Resource) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_disruption_budget_and_monitor_select_the_proxy_pods(name: str) -> None:
    resources = rendered(name)
    labels = pod_labels(only(resources, "Deployment"))
    budget = only(resources, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    monitor = only(resources, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    strategy = only(resources, "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"


# ------------------------------------------------------------------------ overlays


@pytest.mark.parametrize("name", ["base", "sidecar"])
def test_sidecar_shares_the_pod_with_the_legacy_server(name: str) -> None:
    resources = rendered(name)
    config = proxy_config(resources)
    host, port = config.upstream.host_port
    assert host == "127.0.0.1"
    [legacy] = [c for c in all_containers(resources) if c["name"] != PROXY_CONTAINER]
    assert container_port(legacy, port) == port
    # The legacy port is not published: the Service only knows the proxy's ports.
    service = only(resources, "Service")
    assert port not in {p["port"] for p in service["spec"]["ports"]}
    assert not config.proxy_protocol.trusted


def test_sidecar_overlay_sets_namespace_and_image() -> None:
    resources = rendered("sidecar")
    assert {r["metadata"].get("namespace") for r in resources} == {"mail"}
    assert proxy_container(resources)["image"] == "registry.example.com/mail/imap-proxy:0.1.0"


def test_scale_out_runs_the_proxy_alone_behind_a_proxy_protocol_balancer() -> None:
    resources = rendered("scale-out")
    deployment = only(resources, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == [PROXY_CONTAINER]
    assert deployment["spec"]["replicas"] >= 2
    assert "fsGroup" not in pod["securityContext"]
    mounted = {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounted == {v["name"] for v in pod["volumes"]}  # no dangling legacy volumes
    assert not [r for r in resources if r["metadata"]["name"] == "legacy-imap-config"]
    config = proxy_config(resources)
    host, _port = config.upstream.host_port
    assert host.endswith(".svc.cluster.local")
    assert config.proxy_protocol.trusted
    service = only(resources, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert "proxy-protocol" in " ".join(service["metadata"]["annotations"])
    autoscaler = only(resources, "HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert autoscaler["spec"]["minReplicas"] >= 2
