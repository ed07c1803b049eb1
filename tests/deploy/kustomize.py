"""The part of kustomize that deploy/kubernetes uses, in Python, so CI renders the manifests
where no kubectl is installed (tests/deploy/test_manifests.py compares it with `kubectl
kustomize` where one is).

Supported: ``resources`` (files and directories with their own kustomization), ``namespace``,
``configMapGenerator`` (files and literals, with ``generatorOptions.disableNameSuffixHash``),
``patches`` (strategic-merge patches of maps, by kind and name) and ``replacements`` (plain
field paths, with the ``delimiter``/``index`` option). Anything else is refused by name, so a
manifest that starts using more of kustomize fails here instead of rendering differently.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "generatorOptions", "configMapGenerator", "patches",
              "replacements"}
# kinds the namespace transformer leaves alone (cluster-scoped among those a farm could use)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass", "ClusterTriggerAuthentication"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot (or kustomize would not) render."""


def build(directory: Path) -> list[dict]:
    """The resources ``kubectl kustomize DIRECTORY`` would print, in the order they were read."""
    directory = Path(directory)
    path = directory / "kustomization.yaml"
    if not path.exists():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{path}: unsupported kustomization fields {sorted(unknown)}")
    resources: list[dict] = []
    for entry in spec.get("resources") or []:
        target = directory / entry
        if target.is_dir():
            resources += build(target)
        else:
            resources += [doc for doc in yaml.safe_load_all(target.read_text()) if doc]
    resources += [_config_map(directory, generator, spec.get("generatorOptions") or {})
                  for generator in spec.get("configMapGenerator") or []]
    _check_unique(resources, path)
    for patch in spec.get("patches") or []:
        _patch(resources, directory, patch)
    if spec.get("namespace"):
        for resource in resources:
            if resource.get("kind") not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for replacement in spec.get("replacements") or []:
        _replace(resources, replacement)
    return resources


def key(resource: dict) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def _check_unique(resources: list[dict], path: Path) -> None:
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        if key(resource) in seen:
            raise KustomizeError(f"{path}: {key(resource)} is defined twice")
        seen.add(key(resource))


def _config_map(directory: Path, generator: dict, options: dict) -> dict:
    if not options.get("disableNameSuffixHash"):
        raise KustomizeError("configMapGenerator with a name hash suffix is not supported")
    unknown = set(generator) - {"name", "files", "literals"}
    if unknown:
        raise KustomizeError(f"configMapGenerator {generator.get('name')}: unsupported fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator.get("files") or []:
        name, _, source = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[name] = (directory / source).read_text()
    for literal in generator.get("literals") or []:
        name, _, value = literal.partition("=")
        data[name] = value
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def _patch(resources: list[dict], directory: Path, patch: dict) -> None:
    if set(patch) != {"path"}:
        raise KustomizeError(f"only patches given by path are supported, not {sorted(patch)}")
    for change in yaml.safe_load_all((directory / patch["path"]).read_text()):
        targets = [r for r in resources if key(r) == key(change)]
        if not targets:
            raise KustomizeError(f"patch {patch['path']}: no {key(change)} to patch")
        _merge(targets[0], change, patch["path"])


def _merge(into: dict, change: dict, where: str) -> None:
    for name, value in change.items():
        if isinstance(value, dict) and isinstance(into.get(name), dict):
            _merge(into[name], value, where)
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            # strategic merge matches list items by merge keys (containers by name...): not here
            raise KustomizeError(f"patch {where}: merging the list {name!r} of maps is not supported")
        else:
            into[name] = copy.deepcopy(value)


def _path(field_path: str) -> list[str]:
    """``metadata.annotations.a\\.b/c`` -> ["metadata", "annotations", "a.b/c"]."""
    if "[" in field_path:
        raise KustomizeError(f"field path {field_path!r}: list selectors are not supported")
    return [part.replace("\0", ".") for part in field_path.replace("\\.", "\0").split(".")]


def _get(resource: dict, field_path: str) -> Any:
    node: Any = resource
    for part in _path(field_path):
        node = node[int(part)] if isinstance(node, list) else node.get(part)
        if node is None:
            raise KustomizeError(f"{key(resource)} has no {field_path}")
    return node


def _set(resource: dict, field_path: str, value: Any) -> None:
    parts = _path(field_path)
    node: Any = resource
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        if parts[-1] not in node:
            raise KustomizeError(f"{key(resource)} has no {field_path} to replace")
        node[parts[-1]] = value


def _selected(resource: dict, select: dict) -> bool:
    unknown = set(select) - {"kind", "name"}
    if unknown:
        raise KustomizeError(f"replacement selectors by {sorted(unknown)} are not supported")
    return all(resource.get("kind") == select[k] if k == "kind" else resource["metadata"]["name"] == select[k]
               for k in select)


def _replace(resources: list[dict], replacement: dict) -> None:
    source = replacement["source"]
    origins = [r for r in resources if _selected(r, {k: source[k] for k in ("kind", "name") if k in source})]
    if len(origins) != 1:
        raise KustomizeError(f"replacement source {source} matches {len(origins)} resources, not one")
    value = _get(origins[0], source["fieldPath"])
    for target in replacement["targets"]:
        options = target.get("options") or {}
        if set(options) - {"delimiter", "index"}:
            raise KustomizeError(f"replacement options {sorted(options)} are not supported")
        for resource in (r for r in resources if _selected(r, target["select"])):
            for field_path in target["fieldPaths"]:
                new = value
                if "delimiter" in options:
                    parts = str(_get(resource, field_path)).split(options["delimiter"])
                    parts[int(options.get("index", 0))] = str(value)
                    new = options["delimiter"].join(parts)
                _set(resource, field_path, new)


def parse(text: str) -> list[dict]:
    """The documents of a rendered stream (``kubectl kustomize``'s output)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]

