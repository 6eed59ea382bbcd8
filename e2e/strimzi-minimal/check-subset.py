#!/usr/bin/env python3
"""Checks that the minimal Strimzi CRDs stay a faithful subset of Strimzi's real ones.

  check-subset.py MINIMAL_DIR REAL_DIR

For each 0*-Crd-*.yaml in MINIMAL_DIR, the file of the same name in REAL_DIR must have the
same CRD name, group, names, scope and versions (name, served, storage), and every field of
the minimal schema must exist in the real one with the same type, bounds, pattern, enum and
required list. Every minimal field but `metadata` must carry a description. Prints one line
per problem; exits 1 when there is any.
"""

import glob
import os
import sys

import yaml

COMPARED = ("type", "enum", "minimum", "maximum", "pattern", "minItems", "required",
            "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")


def compare(minimal, real, path, problems):
    for key in COMPARED:
        if key in minimal and minimal[key] != real.get(key):
            problems.append(f"{path}: {key} is {minimal[key]!r}, Strimzi's is {real.get(key)!r}")
    if "description" not in minimal and not path.endswith((".metadata", "[]", "{}")):
        problems.append(f"{path}: no description")
    for name, field in minimal.get("properties", {}).items():
        if name not in real.get("properties", {}):
            problems.append(f"{path}.{name}: not in Strimzi's schema")
        else:
            compare(field, real["properties"][name], f"{path}.{name}", problems)
    if isinstance(minimal.get("items"), dict):
        compare(minimal["items"], real.get("items", {}), f"{path}[]", problems)
    if isinstance(minimal.get("additionalProperties"), dict):
        compare(minimal["additionalProperties"], real.get("additionalProperties", {}),
                f"{path}{{}}", problems)


def check(minimal_file, real_file):
    problems = []
    if not os.path.isfile(real_file):
        return [f"no {os.path.basename(real_file)} among Strimzi's CRDs"]
    with open(minimal_file) as f:
        minimal = yaml.safe_load(f)
    with open(real_file) as f:
        real = yaml.safe_load(f)
    if minimal["metadata"]["name"] != real["metadata"]["name"]:
        problems.append("metadata.name differs")
    for key in ("group", "names", "scope"):
        if minimal["spec"][key] != real["spec"][key]:
            problems.append(f"spec.{key} differs")
    real_versions = {v["name"]: v for v in real["spec"]["versions"]}
    if sorted(real_versions) != sorted(v["name"] for v in minimal["spec"]["versions"]):
        problems.append(f"versions differ: Strimzi serves {sorted(real_versions)}")
    for version in minimal["spec"]["versions"]:
        real_version = real_versions.get(version["name"])
        if real_version is None:
            continue
        for key in ("served", "storage"):
            if version[key] != real_version[key]:
                problems.append(f"{version['name']}: {key} differs")
        compare(version["schema"]["openAPIV3Schema"], real_version["schema"]["openAPIV3Schema"],
                version["name"], problems)
    return problems


def main():
    minimal_dir, real_dir = sys.argv[1], sys.argv[2]
    files = sorted(glob.glob(os.path.join(minimal_dir, "0*-Crd-*.yaml")))
    if not files:
        print(f"no 0*-Crd-*.yaml in {minimal_dir}")
        return 1
    failed = False
    for path in files:
        name = os.path.basename(path)
        for problem in check(path, os.path.join(real_dir, name)):
            print(f"{name}: {problem}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
