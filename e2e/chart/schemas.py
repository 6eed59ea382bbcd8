#!/usr/bin/env python3
"""Writes kubeconform JSON schemas, offline, in kubeconform's own file layout.

kubeconform normally downloads its schemas; this machine can't. So:

  schemas.py builtin SWAGGER_JSON OUT_DIR   every kind of a Kubernetes OpenAPI v2 spec
                                            (api/openapi-spec/swagger.json of k8s.io/kubernetes)
  schemas.py crd OUT_DIR CRD_YAML...        every served version of each CustomResourceDefinition

Files are named `{kind}-{group's first label}-{version}.json` (lower case), e.g.
`deployment-apps-v1.json`, `service-v1.json`, `pipeline-ferry-v1alpha1.json`, which is
kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json`. Schemas are standalone (every
$ref inlined) and strict: an object that lists its properties rejects any other key, as
the API server's own pruning would drop it silently.
"""

import json
import os
import sys

import yaml

INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
SPECIAL_DEFS = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": INT_OR_STRING,
    "io.k8s.apimachinery.pkg.api.resource.Quantity": QUANTITY,
}
# Object keys that kubeconform's validator should not see (unknown or asserting formats).
DROP_KEYS = {"format", "x-kubernetes-validations", "x-kubernetes-list-type",
             "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-patch-strategy",
             "x-kubernetes-patch-merge-key", "x-kubernetes-group-version-kind",
             "x-kubernetes-unions", "x-kubernetes-selectable-fields"}


def file_name(kind, api_version):
    parts = api_version.split("/")
    suffix = "-" + parts[0].split(".")[0].lower()
    if len(parts) > 1:
        suffix += "-" + parts[1].lower()
    return f"{kind.lower()}{suffix}.json"


def allow_null(schema):
    """Optional fields may be written as null (helm renders `key:` as null)."""
    t = schema.get("type")
    if isinstance(t, str):
        schema["type"] = [t, "null"]
    return schema


def strictify(node):
    """Recursively: drop unneeded keys, map int-or-string, close objects with properties."""
    if isinstance(node, list):
        return [strictify(n) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        return dict(INT_OR_STRING)
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    out = {}
    for key, value in node.items():
        if key in DROP_KEYS or key == "x-kubernetes-preserve-unknown-fields" \
                or key == "x-kubernetes-embedded-resource":
            continue
        if key == "nullable":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {k: strictify(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strictify(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [strictify(v) for v in value]
        else:
            out[key] = value
    if node.get("nullable"):
        allow_null(out)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def inline_refs(node, definitions, stack=()):
    """Replaces every $ref by the definition it names; recursion becomes {} (anything)."""
    if isinstance(node, list):
        return [inline_refs(n, definitions, stack) for n in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in SPECIAL_DEFS:
            return dict(SPECIAL_DEFS[name])
        if name in stack or name not in definitions:
            return {}
        resolved = inline_refs(definitions[name], definitions, stack + (name,))
        # Properties that refer to an object may be null in manifests.
        return allow_null(dict(resolved))
    return {k: inline_refs(v, definitions, stack) for k, v in node.items()}


def builtin(swagger_path, out_dir):
    with open(swagger_path, encoding="utf-8") as f:
        spec = json.load(f)
    definitions = spec["definitions"]
    written = 0
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            group, version, kind = gvk.get("group", ""), gvk["version"], gvk["kind"]
            api_version = f"{group}/{version}" if group else version
            schema = strictify(inline_refs(definition, definitions, (name,)))
            # apiVersion and kind must be exactly this resource's.
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string", "enum": [api_version]}
            props["kind"] = {"type": "string", "enum": [kind]}
            schema["$schema"] = "http://json-schema.org/schema#"
            write(out_dir, file_name(kind, api_version), schema)
            written += 1
    return written


def crd(out_dir, paths):
    written = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                group, kind = spec["group"], spec["names"]["kind"]
                for version in spec["versions"]:
                    if not version.get("served", True):
                        continue
                    api_version = f"{group}/{version['name']}"
                    raw = version.get("schema", {}).get("openAPIV3Schema", {"type": "object"})
                    schema = strictify(raw)
                    props = schema.setdefault("properties", {})
                    props["apiVersion"] = {"type": "string", "enum": [api_version]}
                    props["kind"] = {"type": "string", "enum": [kind]}
                    # The API server validates metadata itself; keep it open here.
                    props["metadata"] = {"type": "object"}
                    if "additionalProperties" not in schema and not raw.get(
                            "x-kubernetes-preserve-unknown-fields"):
                        schema["additionalProperties"] = False
                    schema["$schema"] = "http://json-schema.org/schema#"
                    write(out_dir, file_name(kind, api_version), schema)
                    written += 1
    return written


def write(out_dir, name, schema):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
        json.dump(schema, f, indent=1, sort_keys=True)
        f.write("\n")


def main(argv):
    if len(argv) >= 4 and argv[1] == "builtin":
        count = builtin(argv[2], argv[3])
    elif len(argv) >= 4 and argv[1] == "crd":
        count = crd(argv[2], argv[3:])
    else:
        sys.stderr.write(__doc__)
        return 2
    if count == 0:
        sys.stderr.write(f"{argv[1]}: no schema written from {argv[2:]}\n")
        return 1
    print(f"{argv[1]}: wrote {count} schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
