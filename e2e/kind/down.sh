#!/usr/bin/env bash
# Deletes the kind cluster that e2e/kind/up.sh made (and everything in it). The images
# ferry/worker and ferry/operator stay in the local Docker, and their archives in
# $FERRY_CACHE/kind-images; FERRY_KIND_RMI=1 removes both.
set -euo pipefail
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step down "deleting kind cluster $CLUSTER_NAME"
KIND="$(kind_tool kind)"
[[ -n "$KIND" ]] || die "kind is missing: bash e2e/deps/deps.sh install kind"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  "$KIND" delete cluster --name "$CLUSTER_NAME"
  say "deleted"
else
  say "no cluster named $CLUSTER_NAME: nothing to do"
fi
if [[ "${FERRY_KIND_RMI:-0}" == 1 ]] && command -v docker >/dev/null; then
  docker image rm "$WORKER_IMAGE" "$OPERATOR_IMAGE" 2>/dev/null || true
  rm -rf "$FERRY_CACHE/kind-images"
  say "removed images $WORKER_IMAGE and $OPERATOR_IMAGE and their archives"
fi
