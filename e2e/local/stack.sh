#!/usr/bin/env bash
# Local e2e stack for Ferry: Redis, Apache Kafka (KRaft) and a Kubernetes
# control plane + kubelet, installed from package registries only and run as
# plain processes (no Docker).
#
#   e2e/local/stack.sh up     [component...]   start (idempotent; fast no-op when up)
#   e2e/local/stack.sh down   [component...]   stop, remove all state (keeps $FERRY_CACHE)
#   e2e/local/stack.sh status [component...]   one line each; exit 1 if any is unhealthy
#   e2e/local/stack.sh env                     print $FERRY_STACK_DIR/env (source it)
#   e2e/local/stack.sh selftest                Kafka produce/consume/group-describe check
#   e2e/local/stack.sh logs                    list the log files
#
# Components, in start order: redis kafka k8s. Each is e2e/local/<c>.sh, which
# defines <c>_up, <c>_down, <c>_status (and optionally <c>_pre_up or
# <c>_network_up, run for every selected component before any <c>_up, e.g. to
# bring up a bridge and export FERRY_ADVERTISE_HOST). k8s is skipped when k8s.sh is absent or
# FERRY_STACK_K8S=0.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_COMPONENTS=(redis kafka k8s)

usage() {
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

component_enabled() {
  local c="$1"
  [[ -f "$FERRY_LOCAL_DIR/$c.sh" ]] || return 1
  if [[ "$c" == k8s && "${FERRY_STACK_K8S:-1}" == 0 ]]; then
    return 1
  fi
  return 0
}

# Selected components in canonical order (whatever order they were named in).
select_components() {
  local want=("$@") c w found
  SELECTED=()
  for w in "${want[@]}"; do
    found=0
    for c in "${ALL_COMPONENTS[@]}"; do [[ "$c" == "$w" ]] && found=1; done
    ((found)) || die "unknown component '$w' (known: ${ALL_COMPONENTS[*]})"
  done
  for c in "${ALL_COMPONENTS[@]}"; do
    if ((${#want[@]})); then
      found=0
      for w in "${want[@]}"; do [[ "$c" == "$w" ]] && found=1; done
      ((found)) || continue
      if ! component_enabled "$c"; then
        warn "skipping $c (e2e/local/$c.sh absent or FERRY_STACK_K8S=0)"
        continue
      fi
    else
      component_enabled "$c" || continue
    fi
    SELECTED+=("$c")
  done
}

load_components() {
  local c
  for c in "${SELECTED[@]}"; do
    # shellcheck source=/dev/null
    source "$FERRY_LOCAL_DIR/$c.sh"
  done
}

cmd_up() {
  phase_start up
  mkdir -p "$FERRY_STACK_DIR" "$FERRY_LOG_DIR" "$FERRY_BIN" "$FERRY_PID_DIR"
  local c
  # Keep the address an earlier 'up' advertised (e.g. the k8s bridge) when
  # only some components are brought up again, unless set explicitly.
  if [[ -z "${_FERRY_ADVERTISE_HOST_GIVEN:-}" && -f "$FERRY_ENV_FILE" ]]; then
    local prev
    prev="$(sed -n "s/^export FERRY_ADVERTISE_HOST=//p" "$FERRY_ENV_FILE" | tail -n1)"
    if [[ -n "$prev" && "$prev" != "$FERRY_ADVERTISE_HOST" ]] && local_address "$prev"; then
      FERRY_ADVERTISE_HOST="$prev"
      export FERRY_ADVERTISE_HOST
    fi
  fi
  # Every tool a component uses is installed before the first hook runs (fast when present).
  deps_install stack
  # Pre-up hooks (bridge etc.) run before any component starts, so that
  # FERRY_ADVERTISE_HOST is final when redis and kafka start.
  for c in "${SELECTED[@]}"; do
    if declare -F "${c}_pre_up" >/dev/null; then
      FERRY_LOG_TAG="$c" "${c}_pre_up"
    elif declare -F "${c}_network_up" >/dev/null; then
      FERRY_LOG_TAG="$c" "${c}_network_up"
    fi
  done
  env_set FERRY_STACK_DIR "$FERRY_STACK_DIR"
  env_set FERRY_BIN "$FERRY_BIN"
  env_set FERRY_ADVERTISE_HOST "$FERRY_ADVERTISE_HOST"
  step "stack up: ${SELECTED[*]} (state $FERRY_STACK_DIR, cache $FERRY_CACHE, advertise $FERRY_ADVERTISE_HOST)"
  for c in "${SELECTED[@]}"; do
    phase_start "$c"
    FERRY_LOG_TAG="$c" "${c}_up"
    phase_end "$c"
  done
  phase_end up
  phase_summary
  ok "stack is up; env: source $FERRY_ENV_FILE"
}

cmd_down() {
  phase_start down
  local i c
  for ((i = ${#SELECTED[@]} - 1; i >= 0; i--)); do
    c="${SELECTED[$i]}"
    FERRY_LOG_TAG="$c" "${c}_down"
  done
  # A full down (no components named) leaves nothing behind but the cache;
  # so does any down after which no daemon of the stack is left.
  if ((!FULL)) && ! compgen -G "$FERRY_PID_DIR/*.pid" >/dev/null && only_common_state_left; then
    FULL=1
  fi
  if ((FULL)); then
    local left=()
    if [[ -d "$FERRY_PID_DIR" ]]; then
      local pf name
      for pf in "$FERRY_PID_DIR"/*.pid; do
        [[ -e "$pf" ]] || continue
        name="$(basename "$pf" .pid)"
        stop_daemon "$name"
        left+=("$name")
      done
    fi
    ((${#left[@]} == 0)) || warn "stopped leftover daemons: ${left[*]}"
    if [[ "${FERRY_KEEP_LOGS:-0}" == 1 && -d "$FERRY_LOG_DIR" ]]; then
      local keep
      keep="/tmp/ferry-stack-logs-$(date +%Y%m%d-%H%M%S)"
      mv "$FERRY_LOG_DIR" "$keep"
      ok "logs kept in $keep"
    fi
    rm -rf "$FERRY_STACK_DIR"
    ok "removed $FERRY_STACK_DIR (cache $FERRY_CACHE kept)"
  fi
  phase_end down
}

# True if $FERRY_STACK_DIR holds nothing but the shared bits (logs, pids,
# bin, env), i.e. no component keeps state there any more.
only_common_state_left() {
  local f
  [[ -d "$FERRY_STACK_DIR" ]] || return 0
  for f in "$FERRY_STACK_DIR"/* "$FERRY_STACK_DIR"/.[!.]*; do
    [[ -e "$f" ]] || continue
    case "$(basename "$f")" in
    logs | pids | bin | env) ;;
    *) return 1 ;;
    esac
  done
  return 0
}

cmd_status() {
  local c rc=0
  for c in "${SELECTED[@]}"; do
    "${c}_status" || rc=1
  done
  return "$rc"
}

main() {
  local cmd="${1:-}"
  [[ -n "$cmd" ]] || usage
  shift
  FULL=0
  (($#)) || FULL=1
  case "$cmd" in
  up | down | status)
    select_components "$@"
    load_components
    "cmd_$cmd"
    ;;
  env)
    [[ -f "$FERRY_ENV_FILE" ]] || die "no $FERRY_ENV_FILE: run 'e2e/local/stack.sh up' first"
    cat "$FERRY_ENV_FILE"
    ;;
  selftest)
    SELECTED=(kafka)
    load_components
    kafka_selftest
    ;;
  logs)
    ls -la "$FERRY_LOG_DIR"
    ;;
  -h | --help | help) usage ;;
  *) usage ;;
  esac
}

main "$@"
