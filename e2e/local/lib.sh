# shellcheck shell=bash
# Shared helpers for the local e2e stack (e2e/local/*.sh). Source it; it is
# `set -euo pipefail` friendly and safe to source more than once.
#
# Contract (other scripts code against these names):
#   REPO_ROOT FERRY_CACHE FERRY_STACK_DIR FERRY_LOG_DIR FERRY_BIN
#   FERRY_ADVERTISE_HOST
#   step ok warn die                  progress lines "[stack HH:MM:SS] ..." on stderr
#   phase_start NAME / phase_end NAME prints "phase NAME took N.Ns"
#   wait_for TIMEOUT "description" cmd args...
#   start_daemon NAME LOGFILE cmd args... / stop_daemon NAME / daemon_running NAME
#   apt_install pkg...                only the missing ones; apt-get update once per run
#                                     (only e2e/deps/deps.sh calls it: scripts use need_cmd)
#   need_cmd cmd...                   die unless each is on PATH, pointing at deps.txt
#   deps_install [group...]           the dependency step (e2e/deps/deps.sh install)
#   with_build_lock cmd...            serialises Maven/Go/Cargo builds machine-wide
# Extras: port_open HOST PORT, env_set KEY VALUE, env_unset KEY,
#   apt_install_nostart pkg..., phase_summary, local_address HOST.

# ---------------------------------------------------------------- locations
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FERRY_LOCAL_DIR="$REPO_ROOT/e2e/local"
FERRY_CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
# One cargo target dir for every script, outside the clone so a fresh clone reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FERRY_CACHE/cargo-target}"
FERRY_STACK_DIR="${FERRY_STACK_DIR:-/tmp/ferry-stack}"
FERRY_LOG_DIR="$FERRY_STACK_DIR/logs"
FERRY_BIN="$FERRY_STACK_DIR/bin"
FERRY_PID_DIR="$FERRY_STACK_DIR/pids"
FERRY_ENV_FILE="$FERRY_STACK_DIR/env"
# Address that Kafka advertises and Redis additionally binds to. The k8s
# component sets it to its bridge IP before kafka/redis start.
_FERRY_ADVERTISE_HOST_GIVEN="${_FERRY_ADVERTISE_HOST_GIVEN:-${FERRY_ADVERTISE_HOST:-}}"
FERRY_ADVERTISE_HOST="${FERRY_ADVERTISE_HOST:-127.0.0.1}"
FERRY_BUILD_LOCK="${FERRY_BUILD_LOCK:-/tmp/ferry-heavy-build.lock}"
# The declared dependencies (e2e/deps/deps.sh installs them). Its go tools and its venv come
# first on PATH, so `helm`, `python3` (with PyYAML) and `hadolint` are the pinned ones.
FERRY_DEPS_FILE="$REPO_ROOT/e2e/deps/deps.txt"
# The pypi rows' venv: one per base interpreter, so a cache shared by two machines (the
# fresh root and its host) never runs a venv whose python is not there. Fails without python3.
ferry_venv_dir() {
  local base
  command -v python3 >/dev/null 2>&1 || return 1
  base="$(python3 -c 'import sys; print(sys.base_prefix)' 2>/dev/null)" || return 1
  printf '%s/venv-%s\n' "$FERRY_CACHE" "$(printf '%s' "$base" | sha256sum | cut -c1-12)"
}
_ferry_deps_path() {
  local name spec dirs="" venv
  while read -r name spec; do
    dirs+="$FERRY_CACHE/tools/$name-${spec##*@}:"
  done < <(awk '$1 == "go" {print $2, $3}' "$FERRY_DEPS_FILE")
  if venv="$(ferry_venv_dir)"; then
    dirs+="$venv/bin:"
  fi
  printf '%s' "$dirs"
}
if [[ "${_FERRY_DEPS_PATH_SET:-}" != "$FERRY_CACHE" ]]; then
  PATH="$(_ferry_deps_path)$PATH"
  _FERRY_DEPS_PATH_SET="$FERRY_CACHE"
  export PATH _FERRY_DEPS_PATH_SET
fi
export REPO_ROOT FERRY_LOCAL_DIR FERRY_CACHE FERRY_STACK_DIR FERRY_LOG_DIR FERRY_BIN \
  FERRY_PID_DIR FERRY_ENV_FILE FERRY_ADVERTISE_HOST FERRY_BUILD_LOCK FERRY_DEPS_FILE

# Prefix of progress lines; component scripts may set FERRY_LOG_TAG=kafka etc.
FERRY_LOG_TAG="${FERRY_LOG_TAG:-stack}"

# ---------------------------------------------------------------- messages
_ferry_ts() { date +%H:%M:%S; }
step() { printf '[%s %s] ==> %s\n' "$FERRY_LOG_TAG" "$(_ferry_ts)" "$*" >&2; }
ok() { printf '[%s %s]  ok %s\n' "$FERRY_LOG_TAG" "$(_ferry_ts)" "$*" >&2; }
warn() { printf '[%s %s] WARN %s\n' "$FERRY_LOG_TAG" "$(_ferry_ts)" "$*" >&2; }
die() {
  printf '[%s %s] FAIL %s\n' "$FERRY_LOG_TAG" "$(_ferry_ts)" "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- phases
declare -gA _FERRY_PHASE_T0 2>/dev/null || true
declare -ga _FERRY_PHASES 2>/dev/null || true
_ferry_now_ms() {
  local t="${EPOCHREALTIME/[.,]/}" # microseconds
  echo $((t / 1000))
}
phase_start() {
  _FERRY_PHASE_T0[$1]="$(_ferry_now_ms)"
}
phase_end() {
  local name="$1" t0 ms secs
  t0="${_FERRY_PHASE_T0[$name]:-}"
  [[ -n "$t0" ]] || { warn "phase_end $name without phase_start"; return 0; }
  ms=$(($(_ferry_now_ms) - t0))
  secs="$((ms / 1000)).$(((ms % 1000) / 100))"
  unset '_FERRY_PHASE_T0[$name]'
  _FERRY_PHASES+=("$name=${secs}s")
  printf '[%s %s] phase %s took %ss\n' "$FERRY_LOG_TAG" "$(_ferry_ts)" "$name" "$secs" >&2
}
# One line with every phase timed so far in this process.
phase_summary() {
  ((${#_FERRY_PHASES[@]})) || return 0
  printf '[%s %s] timings: %s\n' "$FERRY_LOG_TAG" "$(_ferry_ts)" "${_FERRY_PHASES[*]}" >&2
}

# ---------------------------------------------------------------- waiting
# wait_for TIMEOUT "description" cmd args...
# Polls cmd (stdout/stderr discarded) every 0.5s. On timeout prints the
# description and the tail of FERRY_WAIT_LOG (if set, e.g.
# `FERRY_WAIT_LOG=$FERRY_LOG_DIR/kafka.log wait_for ...`), otherwise of the
# most recently written log in $FERRY_LOG_DIR, and returns 1.
wait_for() {
  local timeout="$1" desc="$2"
  shift 2
  local deadline=$(($(_ferry_now_ms) + timeout * 1000))
  while true; do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if (($(_ferry_now_ms) >= deadline)); then
      break
    fi
    sleep 0.5
  done
  local log="${FERRY_WAIT_LOG:-}"
  if [[ -z "$log" && -d "$FERRY_LOG_DIR" ]]; then
    # shellcheck disable=SC2012 # plain file names we created ourselves
    log="$(ls -t "$FERRY_LOG_DIR"/*.log 2>/dev/null | head -n1 || true)"
  fi
  warn "timed out after ${timeout}s waiting for: $desc"
  if [[ -n "$log" && -f "$log" ]]; then
    warn "last 30 lines of $log:"
    tail -n 30 "$log" | sed 's/^/    | /' >&2
  fi
  return 1
}

# port_open HOST PORT: 0 if a TCP connect succeeds within 1s.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# kraft_cluster_id: a KRaft cluster id, 16 random bytes in base64url without padding.
# One that begins with "-" reads as an option to kafka-storage (1 in 64): draw again.
kraft_cluster_id() {
  local id=-
  while [[ "$id" == -* ]]; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  done
  printf '%s\n' "$id"
}

# local_address HOST: 0 if HOST is a loopback address or assigned to a local
# interface (so we can bind to it).
local_address() {
  local host="$1"
  [[ "$host" == 127.* || "$host" == "::1" || "$host" == localhost ]] && return 0
  command -v ip >/dev/null 2>&1 || return 0 # cannot tell; let the bind decide
  ip -o addr show 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | grep -qxF "$host"
}

# ---------------------------------------------------------------- daemons
_ferry_pidfile() { echo "$FERRY_PID_DIR/$1.pid"; }
_ferry_proc_start() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# daemon_running NAME: 0 if the process recorded in the pid file is alive
# (same pid and same start time, not a zombie).
daemon_running() {
  local pf pid start state
  pf="$(_ferry_pidfile "$1")"
  [[ -f "$pf" ]] || return 1
  { read -r pid && read -r start; } <"$pf" || true
  [[ "${pid:-}" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/stat" ]] || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
  [[ "$state" != Z && "$state" != X ]] || return 1
  [[ -z "${start:-}" || "$start" == "$(_ferry_proc_start "$pid")" ]]
}

daemon_pid() { head -n1 "$(_ferry_pidfile "$1")" 2>/dev/null; }

# start_daemon NAME LOGFILE cmd args...
# Runs cmd in its own session (setsid), stdin from /dev/null, stdout+stderr
# appended to LOGFILE; pid in $FERRY_STACK_DIR/pids/NAME.pid. No-op if running.
start_daemon() {
  local name="$1" log="$2"
  shift 2
  if daemon_running "$name"; then
    ok "$name already running (pid $(daemon_pid "$name"))"
    return 0
  fi
  mkdir -p "$FERRY_PID_DIR" "$(dirname "$log")"
  local pf tmp
  pf="$(_ferry_pidfile "$name")"
  tmp="$pf.new"
  rm -f "$pf" "$tmp"
  printf '\n===== %s start %s: %s\n' "$name" "$(date -Is)" "$*" >>"$log"
  # The inner shell records its own pid, then execs cmd, so the pid is right
  # whether or not setsid had to fork.
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$tmp" "$@" </dev/null >>"$log" 2>&1 &
  local i pid
  for ((i = 0; i < 100; i++)); do
    [[ -s "$tmp" ]] && break
    sleep 0.05
  done
  pid="$(cat "$tmp" 2>/dev/null || true)"
  [[ -n "$pid" ]] || die "$name: could not start (no pid written); see $log"
  printf '%s\n%s\n' "$pid" "$(_ferry_proc_start "$pid")" >"$pf"
  rm -f "$tmp"
  ok "$name started (pid $pid, log $log)"
}

# stop_daemon NAME: TERM its process group, wait up to 20s, then KILL.
stop_daemon() {
  local name="$1" pf pid i
  pf="$(_ferry_pidfile "$name")"
  [[ -f "$pf" ]] || return 0
  pid="$(daemon_pid "$name")"
  if daemon_running "$name"; then
    step "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
      daemon_running "$name" || break
      sleep 0.5
    done
    if daemon_running "$name"; then
      warn "$name did not exit after 20s; sending KILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 20; i++)); do
        daemon_running "$name" || break
        sleep 0.25
      done
    fi
    # Reap it if it happens to be our child (same shell started it).
    wait "$pid" 2>/dev/null || true
    ok "$name stopped"
  fi
  rm -f "$pf"
}

# ---------------------------------------------------------------- packages
_FERRY_APT_UPDATED="${_FERRY_APT_UPDATED:-0}"
_ferry_sudo() {
  if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}
_ferry_pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# need_cmd cmd...: every command a script needs is installed by the dependency step
# before it runs; a missing one is a gap in e2e/deps/deps.txt, said as such.
need_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 ||
      die "$c is not installed: it belongs in e2e/deps/deps.txt (run 'make deps', or 'make doctor' to list what is missing)"
  done
}

# deps_install [group...]: the dependency step; prints only what it installs.
deps_install() {
  bash "$REPO_ROOT/e2e/deps/deps.sh" install "$@"
}

# apt_install pkg...: installs only the packages that are missing.
apt_install() {
  local p missing=()
  for p in "$@"; do
    _ferry_pkg_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  mkdir -p "$FERRY_LOG_DIR"
  local log="$FERRY_LOG_DIR/apt.log"
  if [[ "$_FERRY_APT_UPDATED" != 1 ]]; then
    step "apt-get update (log $log)"
    _ferry_sudo apt-get update -q >>"$log" 2>&1 || {
      tail -n 20 "$log" >&2
      die "apt-get update failed"
    }
    _FERRY_APT_UPDATED=1
  fi
  step "apt-get install ${missing[*]}"
  _ferry_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    --no-install-recommends "${missing[@]}" >>"$log" 2>&1 || {
    tail -n 20 "$log" >&2
    die "apt-get install ${missing[*]} failed"
  }
  ok "installed ${missing[*]}"
}

# apt_install_nostart pkg...: like apt_install, but the packages' init
# scripts are not allowed to start their services (policy-rc.d), so e.g.
# redis-server's own service never runs.
apt_install_nostart() {
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# temporary, from ferry e2e/local/lib.sh\nexit 101\n' |
      _ferry_sudo tee "$policy" >/dev/null
    _ferry_sudo chmod 755 "$policy"
    created=1
  fi
  local p any=0 rc=0
  for p in "$@"; do _ferry_pkg_installed "$p" || any=1; done
  (apt_install "$@") || rc=$?
  if ((created)); then _ferry_sudo rm -f "$policy"; fi
  ((rc == 0)) || exit "$rc"
  if ((any)); then _FERRY_APT_UPDATED=1; fi
}

# ---------------------------------------------------------------- builds
# with_build_lock cmd...: only one heavy build (Maven/Go/Cargo) at a time on
# this machine. cmd may be a shell function; it runs in a subshell.
with_build_lock() {
  (
    exec 9>"$FERRY_BUILD_LOCK"
    if ! flock -n 9; then
      local t0
      t0="$(_ferry_now_ms)"
      step "waiting for the build lock $FERRY_BUILD_LOCK (another build runs)"
      flock 9
      ok "got the build lock after $((($(_ferry_now_ms) - t0) / 1000))s"
    fi
    "$@"
  )
}

# ---------------------------------------------------------------- env file
# env_set KEY VALUE: sets `export KEY=VALUE` in $FERRY_STACK_DIR/env,
# replacing an earlier line for KEY and keeping everybody else's lines.
env_set() {
  local key="$1" val="$2" tmp
  mkdir -p "$FERRY_STACK_DIR"
  touch "$FERRY_ENV_FILE"
  tmp="$FERRY_ENV_FILE.tmp.$$"
  grep -v -E "^export ${key}=" "$FERRY_ENV_FILE" >"$tmp" || true
  printf 'export %s=%q\n' "$key" "$val" >>"$tmp"
  mv -f "$tmp" "$FERRY_ENV_FILE"
}
env_unset() {
  local key="$1" tmp
  [[ -f "$FERRY_ENV_FILE" ]] || return 0
  tmp="$FERRY_ENV_FILE.tmp.$$"
  grep -v -E "^export ${key}=" "$FERRY_ENV_FILE" >"$tmp" || true
  mv -f "$tmp" "$FERRY_ENV_FILE"
}
