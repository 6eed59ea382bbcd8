#!/usr/bin/env bash
# `make dashboard-screenshot`: refreshes docs/dashboard-desktop.png and docs/dashboard-phone.png,
# the pictures the README shows. They come from the dashboard's browser test (operator/tests/
# security.rs, module read_api): a real API pod of the local cluster, live simulator data,
# headless Chromium through the Service. The test writes to target/dashboard/; this copies.
set -euo pipefail
export FERRY_LOG_TAG="dashboard"
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FERRY_CACHE/cargo-target}"

deps_install build stack test
bash "$FERRY_LOCAL_DIR/stack.sh" up
# shellcheck source=/dev/null
source "$FERRY_STACK_DIR/env"
with_build_lock cargo build --release -p ferry-worker --bin ferry-worker --bin ferry-api
bash "$FERRY_LOCAL_DIR/images.sh" worker "$CARGO_TARGET_DIR/release/ferry-worker" \
  "$CARGO_TARGET_DIR/release/ferry-api"
step "the dashboard's browser test"
with_build_lock cargo test -p ferry-operator --test security --no-run
cargo test -p ferry-operator --test security -- --nocapture read_api
for size in desktop phone; do
  cp "target/dashboard/dashboard-$size.png" "docs/dashboard-$size.png"
  ok "docs/dashboard-$size.png refreshed"
done
