#!/usr/bin/env bash
# `make test-fresh`: the README's commands on a fresh Debian bookworm root, so that a tool the
# scripts use but the dependency step does not install fails here, not on a user's machine.
#
# For each variant (FRESH_VARIANTS, default "shared noshared"):
#   1. a new copy of a debootstrap'ed bookworm minbase root (the base is cached in
#      $FERRY_CACHE/fresh; it holds nothing of this project's)
#   2. a clean clone of this repo's HEAD in it at /work/ferry, with ../shared beside it
#      (variant "shared") or without it ("noshared")
#   3. its own mount, PID, UTS, IPC and network namespaces (a veth with NAT to reach the
#      package registries), its own cgroup parent for the kubelet: it never clashes with the
#      host's stack (ferry0, the Kafka and Redis ports, kubepods)
#   4. the host's Rust, Go and Java toolchains bind-mounted read-only (no toolchain can be
#      downloaded here, and Debian's rustc is too old for this workspace)
#   5. inside: the dependency step, then `make demo`, then `make test`
#
# Every bash in the root reports a command it could not find (command_not_found_handle), and
# the run fails on any: the commands checked come from running the scripts, not from deps.txt.
#
# Knobs:
#   FRESH_VARIANTS="shared noshared"   which runs
#   FRESH_STEPS="demo test"            what runs after the dependency step
#   FRESH_DROP_DEP="NAME..."           remove these rows from the clone's deps.txt, to see the
#                                      guard fail: "iptables containernetworking-plugins" (the
#                                      CNI plugins depend on iptables, so one alone still has it)
#   FRESH_COLD=1                       the root gets empty caches (builds everything from
#                                      nothing); by default it shares the host's download and
#                                      build caches ($FERRY_CACHE, Go's, cargo's registry)
#   FRESH_KEEP=1                       keep the root afterwards
set -euo pipefail
export FERRY_LOG_TAG=fresh
# shellcheck source=SCRIPTDIR/../local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"

FRESH_VARIANTS="${FRESH_VARIANTS:-shared noshared}"
FRESH_STEPS="${FRESH_STEPS-demo test}"
FRESH_HOME="$FERRY_CACHE/fresh"
FRESH_BASE="$FRESH_HOME/bookworm-base"
# FRESH_SLOT (0-9) lets two guards run at once: each gets its own namespace, veth, subnet,
# work dir and cgroup parent.
FRESH_SLOT="${FRESH_SLOT:-0}"
[[ "$FRESH_SLOT" =~ ^[0-9]$ ]] || die "FRESH_SLOT must be 0-9"
FRESH_WORK="/tmp/ferry-fresh$FRESH_SLOT"
FRESH_NS="ferry-fresh$FRESH_SLOT"
FRESH_VETH_HOST="ffresh${FRESH_SLOT}h"
FRESH_VETH_NS="ffresh${FRESH_SLOT}n"
FRESH_NET="10.250.$((77 + FRESH_SLOT))"
FRESH_CGROUP="/ferry-fresh$FRESH_SLOT"
FRESH_CHAIN="FERRY-FRESH$FRESH_SLOT"
SHARED_DIR="${FRESH_SHARED_DIR:-$(cd "$REPO_ROOT/.." && pwd)/shared}"
mkdir -p "$FRESH_HOME/logs"

# ---- the base root ------------------------------------------------------------------------
# The Debian mirror this machine's apt uses: read at run time, never written down here.
debian_mirror() {
  local uri
  uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [[ -n "$uri" ]] || uri="$(awk '$1 == "deb" && $3 ~ /^bookworm/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  [[ -n "$uri" ]] || die "cannot find the Debian mirror in /etc/apt/sources.list(.d)"
  printf '%s\n' "$uri"
}

ensure_base() {
  [[ -f "$FRESH_BASE/.complete" ]] && return 0
  need_cmd debootstrap
  local mirror
  mirror="$(debian_mirror)"
  step "debootstrap --variant=minbase bookworm into $FRESH_BASE (once; cached)"
  rm -rf "$FRESH_BASE.tmp"
  debootstrap --variant=minbase bookworm "$FRESH_BASE.tmp" "$mirror" >"$FRESH_HOME/logs/debootstrap.log" 2>&1 ||
    { tail -n 20 "$FRESH_HOME/logs/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$FRESH_BASE"
  mv "$FRESH_BASE.tmp" "$FRESH_BASE"
  date -u +%FT%TZ >"$FRESH_BASE/.complete"
  ok "base root ready ($(du -sh "$FRESH_BASE" | cut -f1))"
}

# ---- the network ----------------------------------------------------------------------------
uplink() { ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i+1); exit}}'; }

net_up() {
  local up
  up="$(uplink)"
  [[ -n "$up" ]] || die "no default route on the host"
  net_down
  ip netns add "$FRESH_NS"
  ip link add "$FRESH_VETH_HOST" type veth peer name "$FRESH_VETH_NS"
  ip link set "$FRESH_VETH_NS" netns "$FRESH_NS"
  ip addr add "$FRESH_NET.1/30" dev "$FRESH_VETH_HOST"
  ip link set "$FRESH_VETH_HOST" up
  ip -n "$FRESH_NS" addr add "$FRESH_NET.2/30" dev "$FRESH_VETH_NS"
  ip -n "$FRESH_NS" link set "$FRESH_VETH_NS" up
  ip -n "$FRESH_NS" link set lo up
  ip -n "$FRESH_NS" route add default via "$FRESH_NET.1"
  # Forward only between the veth and the uplink, and NAT what leaves: the root reaches
  # the package registries as the host does, and nothing else of the host's networks.
  sysctl -qw "net.ipv4.conf.$FRESH_VETH_HOST.forwarding=1" "net.ipv4.conf.$up.forwarding=1"
  iptables -w -N "$FRESH_CHAIN" 2>/dev/null || iptables -w -F "$FRESH_CHAIN"
  iptables -w -A "$FRESH_CHAIN" -i "$FRESH_VETH_HOST" -o "$up" -j ACCEPT
  iptables -w -A "$FRESH_CHAIN" -i "$up" -o "$FRESH_VETH_HOST" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  iptables -w -A "$FRESH_CHAIN" -i "$FRESH_VETH_HOST" -j DROP
  iptables -w -A "$FRESH_CHAIN" -o "$FRESH_VETH_HOST" -j DROP
  iptables -w -I FORWARD 1 -j "$FRESH_CHAIN"
  iptables -w -t nat -A POSTROUTING -s "$FRESH_NET.0/30" -o "$up" -j MASQUERADE
  FRESH_UPLINK="$up"
}

net_down() {
  local up
  up="$(uplink)"
  iptables -w -t nat -D POSTROUTING -s "$FRESH_NET.0/30" -o "$up" -j MASQUERADE 2>/dev/null || true
  while iptables -w -D FORWARD -j "$FRESH_CHAIN" 2>/dev/null; do :; done
  iptables -w -F "$FRESH_CHAIN" 2>/dev/null && iptables -w -X "$FRESH_CHAIN" 2>/dev/null
  ip link delete "$FRESH_VETH_HOST" 2>/dev/null || true
  ip netns delete "$FRESH_NS" 2>/dev/null || true
  return 0
}

# ---- cgroups ------------------------------------------------------------------------------------
# The root's kubelet parents its pods under $FRESH_CGROUP in each v1 hierarchy (or v2's).
cgroup_up() {
  local d
  for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -f "$d/cgroup.procs" ]] || continue
    mkdir -p "$d${FRESH_CGROUP#/}"
    if [[ -f "$d/cpuset.cpus" && -f "$d${FRESH_CGROUP#/}/cpuset.cpus" ]]; then
      cat "$d/cpuset.cpus" >"$d${FRESH_CGROUP#/}/cpuset.cpus"
      cat "$d/cpuset.mems" >"$d${FRESH_CGROUP#/}/cpuset.mems"
    fi
  done
}

cgroup_down() {
  local d pid
  for d in /sys/fs/cgroup/*"$FRESH_CGROUP" /sys/fs/cgroup"$FRESH_CGROUP"; do
    [[ -d "$d" ]] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do kill -9 "$pid" 2>/dev/null; done
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  return 0
}

# ---- one run --------------------------------------------------------------------------------------
# The script that runs inside the root, as PID 1 of its namespace.
inner_script() {
  cat <<'INNER'
set -euo pipefail
root="$1"
shift
mount --make-rslave /
# The root a mount point of its own first (shared inside, for the kubelet's volume mounts).
mount --bind "$root" "$root"
mount --make-rshared "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mkdir -p "$root/run/lock"
while read -r src dst mode; do
  [[ -e "$src" ]] || continue
  if [[ -d "$src" ]]; then mkdir -p "$root$dst"; else mkdir -p "$(dirname "$root$dst")"; touch "$root$dst"; fi
  mount --bind "$src" "$root$dst"
  [[ "$mode" == ro ]] && mount -o remount,bind,ro "$root$dst"
done <"$root/.fresh-binds"
# The machine's environment for TLS clients, as a login on it has (names only; values as set).
pass=()
for v in SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE PIP_CERT GIT_SSL_CAINFO \
  NODE_EXTRA_CA_CERTS PIP_DEFAULT_TIMEOUT GOTOOLCHAIN; do
  [[ -n "${!v:-}" ]] && pass+=("$v=${!v}")
done
exec chroot "$root" /usr/bin/env -i "${pass[@]}" HOME=/root TERM=dumb LANG=C.UTF-8 \
  PATH=/root/.cargo/bin:/usr/local/go/bin:/opt/host-jdk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  JAVA_HOME=/opt/host-jdk RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo \
  RUSTUP_AUTO_INSTALL=0 BASH_ENV=/etc/fresh-cnf.bash CI="${CI:-}" FERRY_K8S_CGROUP_ROOT="$FRESH_CGROUP" \
  "$@"
INNER
}

run_variant() {
  local variant="$1" root="$FRESH_WORK/root" log t0 rc=0
  log="$FRESH_HOME/logs/$(date -u +%Y%m%d-%H%M%S)-$variant.log"
  step "variant $variant: fresh copy of the base root (log $log)"
  cleanup_root
  cgroup_up
  mkdir -p "$FRESH_WORK"
  cp -a "$FRESH_BASE" "$root"
  # A machine has an id (the kubelet reads it); debootstrap leaves none.
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$root/etc/machine-id"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  # The machine's own trust anchors (a fresh machine of this kind boots with them): Debian's
  # ca-certificates, installed by the dependency step, adds them to the root's bundle.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  echo "ferry-fresh" >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 ferry-fresh\n' >"$root/etc/hosts"
  # A clean clone of what is committed, as a user would get it.
  mkdir -p "$root/work"
  git clone -q "$REPO_ROOT" "$root/work/ferry"
  git -C "$root/work/ferry" checkout -q "$(git -C "$REPO_ROOT" rev-parse HEAD)"
  if [[ -n "${FRESH_DROP_DEP:-}" ]]; then
    awk -v drop=" $FRESH_DROP_DEP " 'index(drop, " " $2 " ") == 0' "$root/work/ferry/e2e/deps/deps.txt" >"$root/work/ferry/e2e/deps/deps.txt.new"
    mv "$root/work/ferry/e2e/deps/deps.txt.new" "$root/work/ferry/e2e/deps/deps.txt"
    warn "variant $variant: dropped '$FRESH_DROP_DEP' from the clone's deps.txt"
  fi
  # Every command a bash script cannot find is written down, whatever the script does next.
  cat >"$root/etc/fresh-cnf.bash" <<'CNF'
command_not_found_handle() {
  printf '%s\t%s\n' "$1" "${BASH_SOURCE[1]:-?}:${BASH_LINENO[0]:-?}" >>/var/log/fresh-command-not-found.log
  printf 'bash: %s: command not found\n' "$1" >&2
  return 127
}
CNF
  : >"$root/var/log/fresh-command-not-found.log"
  # What the root borrows from the host: toolchains read-only; caches read-write unless cold.
  {
    echo "/root/.rustup /root/.rustup ro"
    echo "/root/.cargo/bin /root/.cargo/bin ro"
    echo "/usr/local/go /usr/local/go ro"
    # Not under /usr/lib/jvm: Debian's maven pulls in an openjdk package that unpacks there.
    echo "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")") /opt/host-jdk ro"
    [[ "$variant" == shared ]] && echo "$SHARED_DIR /work/shared ro"
    if [[ "${FRESH_COLD:-0}" != 1 ]]; then
      mkdir -p "$FERRY_CACHE" /root/.cargo/registry /root/.cargo/git /root/go/pkg/mod /root/.cache/go-build
      echo "$FERRY_CACHE /root/.cache/ferry rw"
      echo "/root/.cargo/registry /root/.cargo/registry rw"
      echo "/root/.cargo/git /root/.cargo/git rw"
      echo "/root/go/pkg/mod /root/go/pkg/mod rw"
      echo "/root/.cache/go-build /root/.cache/go-build rw"
      # One heavy build at a time across the host and the root.
      touch "$FERRY_BUILD_LOCK"
      echo "$FERRY_BUILD_LOCK $FERRY_BUILD_LOCK rw"
      # Per slot: apt locks its archive dir, and two roots would wait on each other.
      mkdir -p "$FRESH_HOME/apt-archives$FRESH_SLOT"
      echo "$FRESH_HOME/apt-archives$FRESH_SLOT /var/cache/apt/archives rw"
    fi
  } >"$root/.fresh-binds"
  [[ "$variant" != shared || -d "$SHARED_DIR" ]] || die "variant shared: no $SHARED_DIR beside the repo"

  local steps="cd /work/ferry && bash e2e/deps/deps.sh install"
  local s
  for s in $FRESH_STEPS; do steps+=" && echo '[fresh] ==> make $s' && make $s"; done
  step "variant $variant: in the root: $steps"
  t0="$(_ferry_now_ms)"
  # nsenter, not `ip netns exec`: that remounts /sys, which hides the cgroup mounts.
  FRESH_CGROUP="$FRESH_CGROUP" nsenter --net="/run/netns/$FRESH_NS" unshare --mount --pid --fork --uts --ipc \
    bash -c "$(inner_script)" _ "$root" /bin/bash -c "echo ferry-fresh >/proc/sys/kernel/hostname; $steps" \
    > >(tee "$log" | sed -u "s/^/  [$variant] /" >&2) 2>&1 || rc=$?
  local secs=$((($(_ferry_now_ms) - t0) / 1000))
  local cnf
  cnf="$(sort -u "$root/var/log/fresh-command-not-found.log")"
  if [[ -n "$cnf" ]]; then
    warn "variant $variant: commands not found while the scripts ran (tool, where):"
    printf '%s\n' "$cnf" | sed 's/^/    /' >&2
    ((rc != 0)) || rc=3
  fi
  if ((rc == 0)); then
    ok "variant $variant: deps + ${FRESH_STEPS// / + } passed in ${secs}s"
    RESULTS+=("$variant=passed(${secs}s)")
  else
    warn "variant $variant: FAILED (exit $rc) after ${secs}s; log $log"
    RESULTS+=("$variant=FAILED(exit $rc)")
  fi
  [[ "${FRESH_KEEP:-0}" == 1 ]] || cleanup_root
  return "$rc"
}

# Every process whose filesystem root is this slot's root: killing the namespace's PID 1
# ends them all, but the guard itself may be the one interrupted.
kill_root_procs() {
  local p r
  for p in /proc/[0-9]*; do
    r="$(readlink "$p/root" 2>/dev/null)" || continue
    [[ "$r" == "$FRESH_WORK/root" ]] && kill -9 "${p#/proc/}" 2>/dev/null
  done
  return 0
}

# Kill what the root left running, unmount, remove.
cleanup_root() {
  local root="$FRESH_WORK/root" m
  kill_root_procs
  sleep 1
  cgroup_down
  if [[ -d "$root" ]]; then
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v s="$root" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r)
    if awk -v s="$root" 'index($2, s) == 1 {f=1} END {exit !f}' /proc/self/mounts; then
      die "mounts remain under $root"
    fi
    rm -rf --one-file-system "$root"
  fi
}

main() {
  [[ "$(id -u)" == 0 ]] || die "the fresh-root guard needs root (namespaces, chroot, debootstrap)"
  deps_install fresh
  need_cmd unshare nsenter chroot ip iptables git debootstrap
  ensure_base
  RESULTS=()
  trap 'kill_root_procs; net_down; cgroup_down' EXIT
  trap 'exit 130' INT TERM
  net_up
  step "root network $FRESH_NET.2/30 in netns $FRESH_NS, NAT via $FRESH_UPLINK; kubelet cgroup parent $FRESH_CGROUP"
  local v rc=0
  for v in $FRESH_VARIANTS; do
    case "$v" in shared | noshared) ;; *) die "unknown variant $v (shared, noshared)" ;; esac
    run_variant "$v" || rc=1
  done
  step "fresh-root: ${RESULTS[*]}"
  if ((rc == 0)); then ok "fresh-root guard passed"; else warn "fresh-root guard FAILED"; fi
  return "$rc"
}

main "$@"
