#!/usr/bin/env python3
"""Fails when a value of charts/ferry/values.yaml is missing from README.md's "Helm values"
table, or from values.schema.json (which would then reject it as an unknown key).

A value is a leaf of values.yaml, except that objects the schema leaves free-form
(resources, securityContext, ...) count as one value. In the README table a cell such as
"`livenessProbe.periodSeconds` / `.failureThreshold`" documents both keys.
"""
import json
import re
import sys

import yaml

chart = sys.argv[1] if len(sys.argv) > 1 else "charts/ferry"
values = yaml.safe_load(open(f"{chart}/values.yaml"))
schema = json.load(open(f"{chart}/values.schema.json"))
readme = open(f"{chart}/README.md").read()


def leaves(node, schema_node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        sub = (schema_node or {}).get("properties", {}).get(key)
        if sub is None:
            yield path, False
        elif isinstance(value, dict) and "properties" in sub:
            yield from leaves(value, sub, path + ".")
        else:
            yield path, True


documented = set()
section = readme.split("## Helm values", 1)[-1].split("\n## ", 1)[0]
for line in section.splitlines():
    if not line.startswith("| `"):
        continue
    first_cell = line.split("|")[1]
    last = None
    for token in re.findall(r"`([^`]+)`", first_cell):
        if token.startswith(".") and last:
            token = last.rsplit(".", 1)[0] + token
        documented.add(token)
        last = token

problems = []
for path, in_schema in leaves(values, schema):
    if not in_schema:
        problems.append(f"{path}: not in values.schema.json (it would be rejected)")
    if path not in documented:
        problems.append(f"{path}: not in README.md's Helm values table")
for p in problems:
    print(p, file=sys.stderr)
print(f"docs check: {'ok' if not problems else str(len(problems)) + ' problem(s)'}")
sys.exit(1 if problems else 0)
