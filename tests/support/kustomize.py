"""A small kustomize, enough to render `deploy/kubernetes/` in the tests without the kustomize binary.

`render(directory)` builds a kustomization the way `kubectl kustomize` does for the features the
manifests use, and refuses any other kustomization field rather than silently ignoring it:

- `resources`: YAML files (multi-document) and directories holding a kustomization, recursively;
- `configMapGenerator`: `files` (`key=path` or `path`) and `literals`, `behavior` create / replace /
  merge, `options.disableNameSuffixHash`; generated names get a content-hash suffix once, at the
  end of the outermost build, and the references to them in pod templates follow;
- `patches`: strategic-merge patches (`path` or inline `patch`, optional `target` by kind / name /
  namespace); lists of objects merge by `name` (`volumeMounts` by `mountPath`), others replace;
- `namespace`: set on every namespaced resource.

The hash differs from kustomize's own; only its effect (a new name when the data changes) matters.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "render"]

Resource = dict[str, Any]

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "configMapGenerator", "patches", "namespace", "generatorOptions"}
)
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "IngressClass",
        "GatewayClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    }
)
LIST_MERGE_KEYS = {"volumeMounts": "mountPath"}
NEEDS_HASH = "internal.tests.kustomize/needs-hash"


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


def render(directory: str | Path) -> list[Resource]:
    """Every resource the kustomization in `directory` produces, in order."""
    resources = _build(Path(directory).resolve())
    _apply_name_hashes(resources)
    return resources


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization file")


def _load_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _build(directory: Path) -> list[Resource]:
    spec = yaml.safe_load(_kustomization_file(directory).read_text(encoding="utf-8")) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: fields this renderer does not implement: {sorted(unknown)}")
    if spec.get("generatorOptions"):
        raise KustomizeError(f"{directory}: generatorOptions is not implemented")
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        resources.extend(_build(path) if path.is_dir() else _load_documents(path))
    for generator in spec.get("configMapGenerator", []):
        _generate_config_map(directory, generator, resources)
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, resources)
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED_KINDS:
                resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return resources


def _find(resources: list[Resource], kind: str, name: str, namespace: str | None) -> Iterator[Resource]:
    for resource in resources:
        meta = resource.get("metadata", {})
        if resource["kind"] == kind and meta.get("name") == name:
            if namespace is None or meta.get("namespace") == namespace:
                yield resource


def _generate_config_map(directory: Path, generator: dict[str, Any], resources: list[Resource]) -> None:
    unknown = set(generator) - {"name", "namespace", "files", "literals", "behavior", "options"}
    if unknown or set(generator.get("options", {})) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"{directory}: configMapGenerator fields not implemented: {generator}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, file = entry.rpartition("=")
        path = (directory / file).resolve()
        if directory not in path.parents:
            raise KustomizeError(f"{directory}: {file} is outside the kustomization (kustomize refuses it)")
        data[key or path.name] = path.read_text(encoding="utf-8")
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    name, namespace = generator["name"], generator.get("namespace")
    behavior = generator.get("behavior", "create")
    existing = list(_find(resources, "ConfigMap", name, namespace))
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{directory}: ConfigMap {name} already exists; use behavior replace or merge")
        metadata: dict[str, Any] = {"name": name}
        if namespace is not None:
            metadata["namespace"] = namespace
        if not generator.get("options", {}).get("disableNameSuffixHash"):
            metadata["annotations"] = {NEEDS_HASH: "true"}
        resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
        return
    if len(existing) != 1:
        raise KustomizeError(f"{directory}: behavior {behavior} needs exactly one ConfigMap {name}, found {existing}")
    if behavior == "replace":
        existing[0]["data"] = data
    elif behavior == "merge":
        existing[0].setdefault("data", {}).update(data)
    else:
        raise KustomizeError(f"{directory}: unknown behavior {behavior!r}")


def _apply_patch(directory: Path, entry: dict[str, Any], resources: list[Resource]) -> None:
    if set(entry) - {"path", "patch", "target"} or ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{directory}: a patch needs exactly one of path or patch: {entry}")
    text = (directory / entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
    patch = yaml.safe_load(text)
    if not isinstance(patch, dict):
        raise KustomizeError(f"{directory}: only strategic-merge patches (one object) are implemented: {entry}")
    target = entry.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    if set(target) - {"kind", "name", "namespace"}:
        raise KustomizeError(f"{directory}: target selectors beyond kind/name/namespace: {target}")
    matches = list(_find(resources, target["kind"], target["name"], target.get("namespace")))
    if not matches:
        raise KustomizeError(f"{directory}: patch target {target} matches nothing")
    body = {key: value for key, value in patch.items() if key not in ("apiVersion", "kind")}
    body.get("metadata", {}).pop("name", None)
    for resource in matches:
        merged = _merge(resource, body)
        resource.clear()
        resource.update(merged)


def _merge(base: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        result = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                result.pop(key, None)
            elif key in result:
                result[key] = _merge(result[key], value, key)
            else:
                result[key] = copy.deepcopy(value)
        return result
    if isinstance(base, list) and isinstance(patch, list):
        key = LIST_MERGE_KEYS.get(field or "", "name")
        items = base + patch
        if not all(isinstance(item, dict) and key in item for item in items):
            return copy.deepcopy(patch)
        merged = copy.deepcopy(base)
        for item in patch:
            same = [i for i, old in enumerate(merged) if old[key] == item[key]]
            if same:
                merged[same[0]] = _merge(merged[same[0]], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _pod_specs(resource: Resource) -> Iterator[dict[str, Any]]:
    spec = resource.get("spec", {})
    if resource["kind"] == "Pod":
        yield spec
    elif resource["kind"] == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif "template" in spec and "spec" in spec["template"]:
        yield spec["template"]["spec"]


def _apply_name_hashes(resources: list[Resource]) -> None:
    renamed: dict[tuple[str | None, str], str] = {}
    for resource in resources:
        annotations = resource["metadata"].get("annotations", {})
        if annotations.pop(NEEDS_HASH, None) is None:
            continue
        if not annotations:
            del resource["metadata"]["annotations"]
        content = json.dumps({"kind": resource["kind"], "data": resource.get("data", {})}, sort_keys=True)
        old = resource["metadata"]["name"]
        new = f"{old}-{hashlib.sha256(content.encode()).hexdigest()[:10]}"
        resource["metadata"]["name"] = new
        renamed[(resource["metadata"].get("namespace"), old)] = new
    for resource in resources:
        namespace = resource.get("metadata", {}).get("namespace")
        for pod in _pod_specs(resource):
            for volume in pod.get("volumes", []):
                refs = [volume.get("configMap")]
                refs += [source.get("configMap") for source in volume.get("projected", {}).get("sources", [])]
                for ref in refs:
                    if ref is not None and (namespace, ref.get("name")) in renamed:
                        ref["name"] = renamed[(namespace, ref["name"])]
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                refs = [env.get("valueFrom", {}).get("configMapKeyRef") for env in container.get("env", [])]
                refs += [source.get("configMapRef") for source in container.get("envFrom", [])]
                for ref in refs:
                    if ref is not None and (namespace, ref.get("name")) in renamed:
                        ref["name"] = renamed[(namespace, ref["name"])]
