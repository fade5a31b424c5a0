"""A tiny kustomize renderer: the subset deploy/kubernetes uses, for machines without one.

How this works: `render(directory)` reads `kustomization.yaml`, loads every entry of
`resources` (a YAML file, or a directory with its own kustomization, rendered first),
applies each entry of `patches` as a strategic-merge patch to the resource with the same
kind and name, then the `namespace` and `images` transformers, and returns the resources.

Strategic merge, as far as the manifests need it: mappings merge key by key, a null
value deletes the key, lists of mappings whose items carry a merge key (`name` for
containers, volumes, env and friends; `mountPath` for volumeMounts; `containerPort` for
container ports; `port` for Service ports) merge item by item, an item with
`$patch: delete` removes its match, and a top-level `$patch: delete` removes the whole
resource. Anything this renderer does not know (generators, components, replacements,
JSON 6902 patches) raises `Unsupported` rather than being silently skipped; the tests
cross-check the output against `kubectl kustomize` wherever that is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KNOWN_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "patches", "namespace", "images", "metadata"}
)
# Strategic-merge keys of the list fields used in the manifests, by field name (and, for
# `ports`, by what the items look like).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "topologySpreadConstraints": "topologyKey",
}
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})


class Unsupported(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def render(directory: Path) -> list[Resource]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise Unsupported(f"{directory}: {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(render(path))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise Unsupported(f"{directory}: only `patches: - path:` is supported")
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        resources = apply_patch(resources, patch)
    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for container in all_containers(resources):
            name, _, _tag = container["image"].partition(":")
            if name == image["name"]:
                new_name = image.get("newName", name)
                container["image"] = f"{new_name}:{image['newTag']}"
    return resources


def key_of(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def apply_patch(resources: list[Resource], patch: Resource) -> list[Resource]:
    matches = [r for r in resources if key_of(r) == key_of(patch)]
    if len(matches) != 1:
        raise Unsupported(f"patch target {key_of(patch)} matches {len(matches)} resources")
    if patch.get("$patch") == "delete":
        return [r for r in resources if key_of(r) != key_of(patch)]
    merged = merge(matches[0], patch)
    return [merged if key_of(r) == key_of(patch) else r for r in resources]


def merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, key)
            else:
                out[key] = _without_directives(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        merge_key = _merge_key(field, base + patch)
        if merge_key is None:
            return _without_directives(patch)
        out_list = copy.deepcopy(base)
        for item in patch:
            index = next(
                (i for i, old in enumerate(out_list) if old.get(merge_key) == item[merge_key]),
                None,
            )
            if item.get("$patch") == "delete":
                if index is not None:
                    del out_list[index]
            elif index is None:
                out_list.append(_without_directives(item))
            else:
                out_list[index] = merge(out_list[index], item, field)
        return out_list
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    key = MERGE_KEYS.get(field)
    if field == "ports":
        key = "containerPort" if all("containerPort" in item for item in items) else "port"
    if key is not None and all(key in item for item in items):
        return key
    return None


def _without_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_without_directives(v) for v in value]
    return value


def all_containers(resources: list[Resource]) -> list[dict[str, Any]]:
    """Every container and init container of every workload in `resources`."""
    found: list[dict[str, Any]] = []
    for resource in resources:
        pod = pod_spec(resource)
        if pod is not None:
            found.extend(pod.get("initContainers", []))
            found.extend(pod.get("containers", []))
    return found


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    if resource["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        spec: dict[str, Any] = resource["spec"]["template"]["spec"]
        return spec
    if resource["kind"] == "Pod":
        pod: dict[str, Any] = resource["spec"]
        return pod
    return None
