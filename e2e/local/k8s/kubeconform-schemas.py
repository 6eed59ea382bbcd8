#!/usr/bin/env python3
"""Write kubeconform JSON schemas from a live API server's OpenAPI v2 document.

kubeconform downloads its schemas from the internet by default, which this
machine cannot reach. The local cluster's API server knows every schema it
serves (built-in kinds and installed CRDs), so k8s.sh dumps /openapi/v2 and this
script turns each kind into a standalone schema, named the way kubeconform's
`{{ .ResourceKind }}{{ .KindSuffix }}.json` template expects:
deployment-apps-v1.json, service-v1.json, pipeline-ferry-v1alpha1.json, ...

usage: kubeconform-schemas.py OPENAPI_V2_JSON OUT_DIR
Writes OUT_DIR/standalone/ and OUT_DIR/standalone-strict/ (no unknown fields).
"""
import copy
import json
import os
import sys

# Accept what YAML authors write for these string-typed definitions.
LOOSE = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"oneOf": [{"type": "string"}, {"type": "number"}]},
}


def expand(node, defs, stack, strict):
    """Inline every $ref (a ref already being expanded becomes {}), allow nulls."""
    if isinstance(node, list):
        return [expand(n, defs, stack, strict) for n in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        if name in LOOSE:
            return copy.deepcopy(LOOSE[name])
        if name in stack or name not in defs:
            return {}
        return expand(defs[name], defs, stack | {name}, strict)
    out = {}
    for key, val in node.items():
        if key == "properties" and isinstance(val, dict):
            out[key] = {p: expand(s, defs, stack, strict) for p, s in val.items()}
        elif key in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not"):
            out[key] = expand(val, defs, stack, strict)
        else:
            out[key] = val
    t = out.get("type")
    if isinstance(t, str):
        out["type"] = [t, "null"]
    if strict and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        defs = json.load(f)["definitions"]
    count = 0
    for strict, sub in ((False, "standalone"), (True, "standalone-strict")):
        outdir = os.path.join(sys.argv[2], sub)
        os.makedirs(outdir, exist_ok=True)
        for name, schema in defs.items():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                group = gvk.get("group", "").split(".")[0]
                suffix = ("-" + group if group else "") + "-" + gvk["version"]
                fname = (gvk["kind"] + suffix).lower() + ".json"
                full = expand(schema, defs, {name}, strict)
                full["$schema"] = "http://json-schema.org/schema#"
                # apiVersion/kind must be accepted even where a schema omits them.
                full.setdefault("properties", {})
                with open(os.path.join(outdir, fname), "w") as f:
                    json.dump(full, f)
                count += 1
    print(f"wrote {count} schemas to {sys.argv[2]}")


if __name__ == "__main__":
    main()
