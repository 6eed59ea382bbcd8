#!/usr/bin/env bash
# Fails when charts/ferry/crds/pipeline.yaml differs from the generated crds/pipeline.yaml.
# Fix with: cp crds/pipeline.yaml charts/ferry/crds/pipeline.yaml
set -euo pipefail
CHECK_NAME=crd-copy
# shellcheck source=e2e/chart/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

generated="$REPO_ROOT/crds/pipeline.yaml"
copy="$CHART_DIR/crds/pipeline.yaml"
[[ -f "$generated" ]] || die "$generated is missing (cargo run -p ferry-operator --bin crdgen > crds/pipeline.yaml)"
[[ -f "$copy" ]] || die "$copy is missing: cp crds/pipeline.yaml charts/ferry/crds/pipeline.yaml"
if ! diff -u "$generated" "$copy" >&2; then
  die "the chart's CRD copy is stale: cp crds/pipeline.yaml charts/ferry/crds/pipeline.yaml"
fi
say "ok: charts/ferry/crds/pipeline.yaml matches crds/pipeline.yaml"
