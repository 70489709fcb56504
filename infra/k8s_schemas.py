"""JSON schemas kubeconform validates infra/k8s against, built from pinned upstream sources.

kubeconform downloads its schemas from GitHub by default, which this project's machines
cannot reach, so they are generated here from what the package registries serve:

* Kubernetes: ``api/openapi-spec/swagger.json`` of the Go module ``k8s.io/kubernetes``
  (``go mod download``), every ``$ref`` inlined (kubeconform's "standalone" form);
* KEDA: the CRDs in ``config/crd/bases`` of the Go module ``github.com/kedacore/keda/v2``;
* Strimzi: its CRDs, produced by Strimzi's own ``CrdGenerator`` (``io.strimzi:crd-generator``)
  from ``io.strimzi:api`` (Maven), with the arguments Strimzi's build uses.

Every object that lists its properties gets ``additionalProperties: false`` (kubeconform's
"-strict" schemas), unless it says it keeps unknown fields: a misspelt field fails.
Files are named ``{kind}-{group's first label}-{version}.json`` in lower case, kubeconform's
``{{ .ResourceKind }}{{ .KindSuffix }}.json``.

    python -m infra.k8s_schemas OUT_DIR      (run by infra/setup.sh; needs go, mvn, java)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from infra.cache import cache_root

KUBECONFORM_VERSION = "0.8.0"
"""The kubeconform release infra/setup.sh installs (its ``KUBECONFORM_VERSION`` is the same)."""
KUBERNETES_VERSION = "v1.34.4"
KEDA_VERSION = "v2.18.0"
STRIMZI_VERSION = "0.45.0"

# Every kind infra/k8s uses (a test checks that none is missing), as (apiVersion, kind).
KUBERNETES_KINDS = [
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"),
]
KEDA_CRDS = ["keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"]
# Strimzi's CrdGenerator arguments per CRD file, as in the io.strimzi:api POM of the release.
STRIMZI_CRDS = {
    "v1beta2": {
        "io.strimzi.api.kafka.model.kafka.Kafka": "kafka.yaml",
        "io.strimzi.api.kafka.model.nodepool.KafkaNodePool": "kafkanodepool.yaml",
    },
    "v1alpha1,v1beta1,v1beta2": {
        "io.strimzi.api.kafka.model.topic.KafkaTopic": "kafkatopic.yaml",
        "io.strimzi.api.kafka.model.user.KafkaUser": "kafkauser.yaml",
    },
}
STRIMZI_POM = Path(__file__).resolve().parent / "k8s" / "strimzi-crds.pom.xml"
STAMP_FILE = "SOURCES.json"


SETUP_HINT = "run `make setup` (infra/setup.sh installs kubeconform and generates its schemas)"


def kubeconform_path() -> Path:
    """Where infra/setup.sh installs kubeconform (it may not be there yet)."""
    return cache_root() / "kubeconform" / KUBECONFORM_VERSION / "kubeconform"


def schemas_dir() -> Path:
    """Where infra/setup.sh generates the schemas (it may not be there yet)."""
    return cache_root() / "k8s-schemas"


def schema_location(directory: Path) -> str:
    """kubeconform's -schema-location for the schemas in ``directory``."""
    return f"{directory}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json"


class SchemaSourceError(Exception):
    """An upstream source could not be fetched or read."""


def schema_file_name(api_version: str, kind: str) -> str:
    """kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}.json`` for this kind."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0].lower()}-{version.lower()}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def stamp() -> dict[str, str]:
    """What a generated directory was made from: the pins and this generator's own text."""
    import hashlib

    return {
        "kubernetes": KUBERNETES_VERSION,
        "keda": KEDA_VERSION,
        "strimzi": STRIMZI_VERSION,
        "generator_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "strimzi_pom_sha256": hashlib.sha256(STRIMZI_POM.read_bytes()).hexdigest(),
    }


# --- conversion ------------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """Deny unknown fields wherever an object lists its properties (kubeconform's -strict)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields") is True
        if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _int_or_string(node: Any) -> Any:
    """OpenAPI's int-or-string (a CRD's x-kubernetes-int-or-string) as JSON Schema."""
    if isinstance(node, dict):
        out = {k: _int_or_string(v) for k, v in node.items()}
        if out.get("x-kubernetes-int-or-string") is True or out.get("format") == "int-or-string":
            out.pop("type", None)
            out.pop("format", None)
            out.pop("anyOf", None)
            out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
        return out
    if isinstance(node, list):
        return [_int_or_string(v) for v in node]
    return node


def _inline(node: Any, definitions: dict[str, Any], path: tuple[str, ...] = ()) -> Any:
    """Replace every ``#/definitions/X`` reference by X itself (a recursive one stays open)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            name = ref.removeprefix("#/definitions/")
            if name in path:  # JSONSchemaProps refers to itself: accept anything there
                return {}
            target = copy.deepcopy(definitions[name])
            if "description" in node:
                target["description"] = node["description"]
            return _inline(target, definitions, (*path, name))
        return {k: _inline(v, definitions, path) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, definitions, path) for v in node]
    return node


def _special_types(definitions: dict[str, Any]) -> dict[str, Any]:
    """Types whose OpenAPI form says less than the API server accepts."""
    out = dict(definitions)
    # A quantity is written 500m, "1Gi" or a plain number: 2 (the server's own parser).
    out["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {
        "oneOf": [{"type": "string"}, {"type": "number"}]
    }
    return out


def kubernetes_schema(definitions: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """The standalone strict schema of one built-in kind, from swagger.json's definitions."""
    group, _, version = api_version.rpartition("/")
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            if (gvk["group"], gvk["version"], gvk["kind"]) == (group, version, kind):
                schema = _inline(copy.deepcopy(definition), _special_types(definitions), (name,))
                schema["properties"]["apiVersion"] = {"type": "string", "enum": [api_version]}
                schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
                return _strict(_int_or_string(schema))  # type: ignore[no-any-return]
    raise SchemaSourceError(f"no {api_version} {kind} in Kubernetes {KUBERNETES_VERSION}")


def crd_schemas(crd: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every served version of a CustomResourceDefinition as a strict JSON schema."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    out = {}
    for version in crd["spec"]["versions"]:
        if not version.get("served", True):
            continue
        api_version = f"{group}/{version['name']}"
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        properties = schema.setdefault("properties", {})
        properties["apiVersion"] = {"type": "string", "enum": [api_version]}
        properties["kind"] = {"type": "string", "enum": [kind]}
        # The API server validates metadata itself; a CRD leaves it as "type: object".
        properties["metadata"] = {"type": "object"}
        out[(api_version, kind)] = _strict(_int_or_string(schema))
    return out


# --- sources ---------------------------------------------------------------------------------


def _run(args: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            args, cwd=cwd, check=True, capture_output=True, text=True, timeout=900
        )
    except FileNotFoundError as exc:
        raise SchemaSourceError(f"{what}: {args[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or exc.stdout or "").splitlines()[-15:])
        raise SchemaSourceError(f"{what} failed:\n{tail}") from exc
    return done.stdout


def go_module_dir(go: str, module: str, version: str) -> Path:
    """Where ``go mod download`` put a module's source (the Go module cache)."""
    env_out = _run([go, "mod", "download", "-json", f"{module}@{version}"], f"download {module}")
    return Path(json.loads(env_out)["Dir"])


def strimzi_crds(mvn: str, java: str, work: Path) -> list[dict[str, Any]]:
    """Strimzi's CRDs, generated by its CrdGenerator from the released API classes."""
    classpath_file = work / "classpath.txt"
    _run(
        [mvn, "-q", "-B", "-f", str(STRIMZI_POM), f"-Dstrimzi.version={STRIMZI_VERSION}",
         "dependency:build-classpath", f"-Dmdep.outputFile={classpath_file}"],
        "resolve io.strimzi:api and io.strimzi:crd-generator",
    )  # fmt: skip
    classpath = classpath_file.read_text().strip()
    crds: list[dict[str, Any]] = []
    for api_versions, classes in STRIMZI_CRDS.items():
        _run(
            [java, "-cp", classpath, "io.strimzi.crdgenerator.CrdGenerator",
             "--label", "app:strimzi", "--label", "strimzi.io/crd-install:true",
             "--target-kube", "1.16+", "--crd-api-version", "v1",
             "--api-versions", api_versions, "--storage-version", "v1beta2", "--yaml",
             *(f"{cls}={work / name}" for cls, name in classes.items())],
            "Strimzi's CrdGenerator",
        )  # fmt: skip
        crds.extend(yaml.safe_load((work / name).read_text()) for name in classes.values())
    return crds


def generate(out: Path, go: str = "go", mvn: str = "mvn", java: str = "java") -> list[Path]:
    """Write the schema of every kind infra/k8s uses into ``out`` (replaced whole)."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    k8s_dir = go_module_dir(go, "k8s.io/kubernetes", KUBERNETES_VERSION)
    swagger = json.loads((k8s_dir / "api" / "openapi-spec" / "swagger.json").read_text())
    for api_version, kind in KUBERNETES_KINDS:
        schemas[(api_version, kind)] = kubernetes_schema(swagger["definitions"], api_version, kind)
    keda_dir = go_module_dir(go, "github.com/kedacore/keda/v2", KEDA_VERSION)
    crds = [yaml.safe_load((keda_dir / "config/crd/bases" / n).read_text()) for n in KEDA_CRDS]
    with tempfile.TemporaryDirectory(prefix="strimzi-crds-") as work:
        crds.extend(strimzi_crds(mvn, java, Path(work)))
    for crd in crds:
        schemas.update(crd_schemas(crd))
    return write_schemas(out, schemas)


def write_schemas(out: Path, schemas: dict[tuple[str, str], dict[str, Any]]) -> list[Path]:
    """Write the schemas and the stamp into a fresh ``out`` (atomically renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    written = []
    for (api_version, kind), schema in sorted(schemas.items()):
        path = staging / schema_file_name(api_version, kind)
        path.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")))
        written.append(out / path.name)
    (staging / STAMP_FILE).write_text(json.dumps(stamp(), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return written


def is_current(out: Path) -> bool:
    """True if ``out`` was generated from the current pins by the current generator."""
    try:
        return bool(json.loads((out / STAMP_FILE).read_text()) == stamp())
    except (OSError, ValueError):
        return False


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m infra.k8s_schemas OUT_DIR``: generate unless already current."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m infra.k8s_schemas OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    if is_current(out):
        print(f"Kubernetes schemas already current: {out}")
        return 0
    try:
        written = generate(
            out,
            go=os.environ.get("GO", "go"),
            mvn=os.environ.get("MVN", "mvn"),
            java=os.environ.get("JAVA", "java"),
        )
    except SchemaSourceError as exc:
        print(f"cannot generate the Kubernetes schemas: {exc}", file=sys.stderr)
        return 1
    print(f"{len(written)} Kubernetes schemas in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
