"""Checks of Kubernetes manifests without a Kubernetes cluster.

Custom resources (DaskCluster, DaskJob) are validated with ``jsonschema``
against the ``openAPIV3Schema`` of the CRDs the dask-kubernetes package ships
(the operator's own definitions). Kubernetes prunes unknown fields silently;
like ``kubectl --validate=strict`` these checks reject them instead (every
object schema with ``properties`` is closed), so a misspelt key fails.

Built-in kinds (CronJob, Secret) are built into the Kubernetes Python client's
models (``kubernetes.client``): every key must be a field of that model, every
value of the field's type, and the models themselves refuse a missing required
field. Neither check is what an API server does (no defaulting, no admission,
no cross-field rules such as a valid cron expression).
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

import jsonschema
import kubernetes.client.models as models
import yaml

CRD_FOLDER = "operator/deployment/helm/dask-kubernetes-operator/crds"
PRIMITIVES: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str, "bytes": str,
}
#: The client's container type names: ``List[T]``/``Dict[str, T]`` (older releases: ``list[T]``/``dict(str, T)``).
LIST_TYPE = re.compile(r"^[Ll]ist\[(.*)\]$")
DICT_TYPE = re.compile(r"^(?:Dict\[|dict\()str, (.*)[\])]$")


class ManifestError(ValueError):
    """A manifest that does not fit its schema: the message names the field."""


@functools.cache
def operator_crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of ``kind`` (e.g. ``DaskCluster``) shipped in dask-kubernetes."""
    text = (resources.files("dask_kubernetes") / CRD_FOLDER / f"{kind.lower()}.yaml").read_text()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # the C loader: the CRDs are large


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists its properties closed to others (strict validation)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if ("properties" in result and "additionalProperties" not in result
            and not result.get("x-kubernetes-preserve-unknown-fields")):
        result["additionalProperties"] = False
    return result


def without_nulls(value: Any) -> Any:
    """``value`` without null fields: the API server drops them from non-nullable fields before validating."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


@functools.cache
def strict_validator(kind: str, api_version: str) -> jsonschema.Draft7Validator:
    """A validator of the closed ``openAPIV3Schema`` of ``kind`` at ``api_version`` (built once: the schemas are large)."""
    version = api_version.rpartition("/")[2]
    [schema] = [v["schema"]["openAPIV3Schema"] for v in operator_crd(kind)["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(closed(schema))


def validate_custom_resource(manifest: dict[str, Any]) -> None:
    """Check a DaskCluster/DaskJob/… manifest against its operator CRD; raise ManifestError if it does not fit."""
    crd = operator_crd(manifest.get("kind", ""))
    group, names = crd["spec"]["group"], crd["spec"]["names"]
    versions = {f"{group}/{v['name']}": v for v in crd["spec"]["versions"] if v.get("served", True)}
    if manifest.get("apiVersion") not in versions:
        raise ManifestError(f"apiVersion {manifest.get('apiVersion')!r} is not one of {sorted(versions)}")
    if manifest["kind"] != names["kind"]:
        raise ManifestError(f"kind {manifest['kind']!r} is not {names['kind']!r}")
    build(manifest.get("metadata") or {}, "V1ObjectMeta", "metadata")
    if not manifest.get("metadata", {}).get("name"):
        raise ManifestError("metadata.name is missing")
    body = without_nulls({key: value for key, value in manifest.items()
                          if key not in ("apiVersion", "kind", "metadata")})
    error = jsonschema.exceptions.best_match(strict_validator(names["kind"], manifest["apiVersion"]).iter_errors(body))
    if error is not None:
        raise ManifestError(f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}")


def validate_builtin(manifest: dict[str, Any]) -> Any:
    """Build a built-in kind's manifest (``apiVersion``, ``kind``) into the Kubernetes client's model."""
    version = manifest.get("apiVersion", "").rpartition("/")[2]  # batch/v1 → v1, v1 → v1
    type_name = f"{version.capitalize()}{manifest.get('kind', '')}"
    if not hasattr(models, type_name):
        raise ManifestError(f"no Kubernetes model for apiVersion {manifest.get('apiVersion')!r} "
                            f"kind {manifest.get('kind')!r}")
    return build(manifest, type_name, manifest["kind"])


def build(value: Any, type_name: str, path: str) -> Any:
    """``value`` as the Kubernetes client type ``type_name`` (``V1Container``, ``List[…]``, ``Dict[str, …]``)."""
    if match := LIST_TYPE.match(type_name):
        if not isinstance(value, list):
            raise ManifestError(f"{path}: expected a list, got {type(value).__name__}")
        return [build(item, match[1], f"{path}[{i}]") for i, item in enumerate(value)]
    if match := DICT_TYPE.match(type_name):
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {key: build(item, match[1], f"{path}.{key}") for key, item in value.items()}
    model = getattr(models, type_name, None)
    if model is None:
        expected = PRIMITIVES[type_name]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ManifestError(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a {type_name} mapping, got {type(value).__name__}")
    attribute = {json_name: name for name, json_name in model.attribute_map.items()}
    unknown = sorted(set(value) - set(attribute))
    if unknown:
        raise ManifestError(f"{path}: unknown field(s) {unknown} for {type_name}")
    arguments = {attribute[key]: build(item, model.openapi_types[attribute[key]], f"{path}.{key}")
                 for key, item in value.items()}
    try:
        return model(**arguments)
    except ValueError as error:  # the model's own check of required fields and enumerations
        raise ManifestError(f"{path}: {' '.join(str(error).split())}") from error
