#!/usr/bin/env bash
# `make images-check`: proves the images' build steps without Docker (it cannot run here).
#
#   1. a bookworm root (Debian 12, the release of both base images), copied from the
#      debootstrap minbase at $FERRY_BOOKWORM_BASE, which is made first when it is absent
#      (mirror read from the host's apt sources);
#   2. in it, as the Dockerfiles' builder stage does: `e2e/images/build.sh packages`, then
#      `build.sh binary` for ferry-worker, ferry-api and ferry-operator with the host's Rust toolchain
#      (bind-mounted read-only) and a target dir of its own, then `build.sh guard` on each;
#   3. the runtime base's file set rebuilt from the pinned Debian packages of
#      e2e/images/runtime-base.txt (dpkg-deb -x, as distroless assembles cc-debian12), each
#      binary's libraries resolved there by its loader (library -> file -> package), and each
#      binary started there as uid 65532 (--help).
# Ends with one "images-check: N passed, N failed" line; exits 1 when any step failed.
#
#   FERRY_BOOKWORM_BASE   the pristine minbase root (default $FERRY_CACHE/fresh/bookworm-base;
#                         only read, never changed)
#   FERRY_IMAGES_KEEP=1   keep the build root ($FERRY_CACHE/images/root) after the run
#   FERRY_IMAGES_BINS     the binaries to build (default "ferry-worker ferry-api ferry-operator")
set -euo pipefail
IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$IMAGES_DIR/../.." && pwd)"
FERRY_CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
BASE="${FERRY_BOOKWORM_BASE:-$FERRY_CACHE/fresh/bookworm-base}"
WORK="$FERRY_CACHE/images"
ROOT="$WORK/root"
SUITE=bookworm

say() { printf '[images-check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }
passed=0
failed=0
pass() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*" >&2; }

((EUID == 0)) || die "needs root (debootstrap, chroot, mounts)"
for tool in chroot unshare mount umount findmnt flock; do
  command -v "$tool" >/dev/null || die "$tool is missing (util-linux, coreutils)"
done

# Every mount below lives in a mount namespace of this script's own: the kernel drops them when
# the script ends, however it ends; the EXIT trap unmounts them in order before that. (exec,
# env and unshare keep the process id, so the re-executed script sees its own $$ here.)
if [[ "${FERRY_IMAGES_NS:-}" != "$$" ]]; then
  exec env FERRY_IMAGES_NS="$$" unshare --mount --propagation private bash "${BASH_SOURCE[0]}" "$@"
fi

# ---- the host's apt sources ---------------------------------------------------------------
# host_mirror SUITE: the first URI of a host apt source (deb822 .sources or one-line .list)
# that serves SUITE; nothing when none does.
host_mirror() {
  local suite="$1" f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk -v suite="$suite" '
      function flush() { if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") { split(uris, u, " "); print u[1]; found = 1; exit } types = suites = uris = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "types:" { $1 = ""; types = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "uris:" { $1 = ""; uris = $0 }
      END { if (!found) flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    awk -v suite="$suite" '
      $1 != "deb" { next }
      { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i + 1) == suite) { print $i; exit } }' "$f"
  done
}
MIRROR="$(host_mirror "$SUITE" | head -n1)"
SECURITY="$(host_mirror "$SUITE-security" | head -n1)"
UPDATES="$(host_mirror "$SUITE-updates" | head -n1)"
[[ -n "$MIRROR" ]] || die "no apt source of the host serves $SUITE (looked in /etc/apt/sources.list.d/ and sources.list)"

# ---- 1. the bookworm root -------------------------------------------------------------------
if [[ ! -x "$BASE/usr/bin/apt-get" ]]; then
  command -v debootstrap >/dev/null || die "debootstrap is missing: bash e2e/deps/deps.sh install images"
  say "no minbase root at $BASE: debootstrap --variant=minbase $SUITE from $MIRROR"
  tmp="$BASE.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$BASE")"
  debootstrap --variant=minbase "$SUITE" "$tmp" "$MIRROR" >"$WORK.debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK.debootstrap.log" >&2; die "debootstrap failed (log: $WORK.debootstrap.log)"; }
  # Another run may have made it meanwhile: keep the first one.
  mv -T "$tmp" "$BASE" 2>/dev/null || rm -rf "$tmp"
fi
mkdir -p "$WORK"
if findmnt -rn -o TARGET | grep -q "^$ROOT\(/\|$\)"; then
  die "something is mounted under $ROOT: unmount it first (umount -R $ROOT)"
fi
rm -rf "$ROOT"
cp -a "$BASE" "$ROOT"
say "build root $ROOT: a copy of $BASE ($(cat "$ROOT/etc/debian_version"))"

{
  echo "deb $MIRROR $SUITE main"
  [[ -z "$UPDATES" ]] || echo "deb $UPDATES $SUITE-updates main"
  [[ -z "$SECURITY" ]] || echo "deb $SECURITY $SUITE-security main"
} >"$ROOT/etc/apt/sources.list"
rm -f "$ROOT"/etc/apt/sources.list.d/*
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

mounted=()
cleanup() {
  local rc=$? i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -l "${mounted[i]}" 2>/dev/null || true
  done
  if [[ "${FERRY_IMAGES_KEEP:-0}" != 1 ]] && ! findmnt -rn -o TARGET | grep -q "^$ROOT\(/\|$\)"; then
    rm -rf "$ROOT"
  fi
  exit "$rc"
}
trap cleanup EXIT
# mnt SRC DEST [ro]: bind SRC at ROOT/DEST.
mnt() {
  mkdir -p "$ROOT$2"
  mount --bind "$1" "$ROOT$2"
  mounted+=("$ROOT$2")
  [[ "${3:-}" != ro ]] || mount -o remount,bind,ro "$ROOT$2"
}
mount -t proc proc "$ROOT/proc" && mounted+=("$ROOT/proc")
mount -t sysfs -o ro sysfs "$ROOT/sys" && mounted+=("$ROOT/sys")
mnt /dev /dev
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$ROOT/dev/pts" && mounted+=("$ROOT/dev/pts")

# The host's Rust toolchain, read-only; the registry read-write (downloads only).
RUST_VERSION="$(awk -F'"' '/^channel/ {print $2}' "$REPO_ROOT/rust-toolchain.toml")"
[[ -d "$HOME/.rustup/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu" ]] ||
  die "the host has no Rust $RUST_VERSION toolchain (rust-toolchain.toml) in $HOME/.rustup"
mkdir -p "$HOME/.cargo/registry"
mnt "$HOME/.rustup" /root/.rustup ro
mnt "$HOME/.cargo/bin" /root/.cargo/bin ro
mnt "$HOME/.cargo/registry" /root/.cargo/registry
# The repository, read-only, at the Dockerfiles' WORKDIR; the builder's own target dir, named
# after the builder package list and the toolchain, so a changed list rebuilds from scratch
# and the host's build outputs never leak in.
mnt "$REPO_ROOT" /src ro
key="$(cat "$IMAGES_DIR/builder-packages.txt" <(echo "$RUST_VERSION") | sha256sum | cut -c1-12)"
TARGET="$WORK/target-$key"
find "$WORK" -maxdepth 1 -name 'target-*' ! -name "target-$key" -exec rm -rf {} +
mkdir -p "$TARGET" "$WORK/apt-archives/partial"
mnt "$TARGET" /target
mnt "$WORK/apt-archives" /var/cache/apt/archives

# in_root CMD...: CMD in the root, in /src, with the Dockerfiles' environment.
in_root() {
  chroot "$ROOT" /usr/bin/env -i -C /src HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_TOOLCHAIN="$RUST_VERSION" RUSTUP_AUTO_INSTALL=0 CARGO_TARGET_DIR=/target \
    CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0 DEBIAN_FRONTEND=noninteractive "$@"
}

# ---- 2. the builder stage ------------------------------------------------------------------------
if in_root bash e2e/images/build.sh packages >"$WORK/packages.log" 2>&1; then
  pass "builder packages installed in the root: $(sed -e 's/#.*//' "$IMAGES_DIR/builder-packages.txt" | awk 'NF {printf "%s ", $1}')"
else
  tail -n 30 "$WORK/packages.log" >&2
  die "build.sh packages failed in the root (log: $WORK/packages.log)"
fi

read -ra BINS <<<"${FERRY_IMAGES_BINS-ferry-worker ferry-api ferry-operator}"
if out="$(in_root cargo --version 2>&1)"; then
  say "the host's toolchain in the root: $out (RUSTUP_TOOLCHAIN=$RUST_VERSION)"
else
  printf '%s\n' "$out" >&2
  die "the bind-mounted toolchain does not run in the root"
fi
declare -A built_s
# One heavy build at a time on this machine (the lock e2e/local/lib.sh's with_build_lock takes).
exec 9>"${FERRY_BUILD_LOCK:-/tmp/ferry-heavy-build.lock}"
if ((${#BINS[@]})) && ! flock -n 9; then
  say "waiting for the build lock ${FERRY_BUILD_LOCK:-/tmp/ferry-heavy-build.lock} (another build runs)"
  flock 9
fi
for bin in "${BINS[@]}"; do
  t0=$SECONDS
  if in_root bash e2e/images/build.sh binary "$bin" /out >"$WORK/build-$bin.log" 2>&1; then
    built_s[$bin]=$((SECONDS - t0))
    pass "$bin built in the root in ${built_s[$bin]}s: $(tail -n1 "$WORK/build-$bin.log" | sed 's/^\[[^]]*\] //')"
  else
    tail -n 40 "$WORK/build-$bin.log" >&2
    fail "$bin: build.sh binary failed in the root (log: $WORK/build-$bin.log)"
    continue
  fi
  if out="$(in_root bash e2e/images/build.sh guard "/out/usr/local/bin/$bin" 2>&1)"; then
    pass "guard: $(tail -n1 <<<"$out" | sed 's/^\[[^]]*\] //')"
  else
    printf '%s\n' "$out" >&2
    fail "$bin: build.sh guard"
  fi
done

flock -u 9

# ---- 3. the runtime base, rebuilt from its packages --------------------------------------------------
mapfile -t pins < <(sed -e 's/#.*//' "$IMAGES_DIR/runtime-base.txt" | awk 'NF {print $1}')
RT=/runtime
rm -rf "${ROOT:?}$RT"
mkdir -p "$ROOT$RT/debs" "$ROOT$RT/rootfs"
if ! in_root apt-get update -q >"$WORK/runtime-apt.log" 2>&1; then
  tail -n 20 "$WORK/runtime-apt.log" >&2
  die "apt-get update failed in the root"
fi
stale=()
for pin in "${pins[@]}"; do
  if ! chroot "$ROOT" /usr/bin/env -C "$RT/debs" apt-get download -q "$pin" >>"$WORK/runtime-apt.log" 2>&1; then
    stale+=("$pin (now $(in_root apt-cache policy "${pin%%=*}" | awk '/Candidate:/ {print $2}'))")
  fi
done
if ((${#stale[@]})); then
  fail "runtime-base.txt pins no longer on the mirror: ${stale[*]}: update e2e/images/runtime-base.txt"
else
  pass "runtime base: ${#pins[@]} pinned packages downloaded (${pins[*]})"
fi
# Unpack them as distroless does (data only, no maintainer scripts), with its users and /tmp,
# and record which package each file comes from.
# shellcheck disable=SC2016 # expanded by the bash in the root
in_root bash -euo pipefail -c '
  cd "$1"
  : >files.txt
  for deb in debs/*.deb; do
    pkg="$(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version)"
    dpkg-deb -x "$deb" rootfs
    dpkg-deb -c "$deb" | awk -v pkg="$pkg" "{p = \$6; sub(/^\\./, \"\", p); print p, pkg}" >>files.txt
  done
  mkdir -p rootfs/tmp rootfs/home/nonroot rootfs/etc/ssl/certs rootfs/usr/local/bin
  chmod 1777 rootfs/tmp
  chown 65532:65532 rootfs/home/nonroot
  printf "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" >rootfs/etc/passwd
  printf "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n" >rootfs/etc/group
  cat rootfs/usr/share/ca-certificates/mozilla/*.crt >rootfs/etc/ssl/certs/ca-certificates.crt
' _ "$RT" || die "unpacking the runtime base failed"
say "runtime base rebuilt at $ROOT$RT/rootfs: $(du -sh "$ROOT$RT/rootfs" | cut -f1), $(wc -l <"$ROOT$RT/files.txt") files"

# Every soname runtime-base.txt promises must be a file of the package it is listed under.
lies=()
while read -r pin sonames; do
  for so in $sonames; do
    awk -v pin="$pin" -v so="$so" '$2 == pin && substr($1, length($1) - length(so)) == "/" so {found = 1} END {exit !found}' "$ROOT$RT/files.txt" ||
      lies+=("$so (not in $pin)")
  done
done < <(sed -e 's/#.*//' "$IMAGES_DIR/runtime-base.txt" | awk 'NF > 1 {pin = $1; $1 = ""; print pin, $0}')
if ((${#lies[@]})); then
  fail "runtime-base.txt names libraries its packages do not have: ${lies[*]}"
else
  pass "every soname runtime-base.txt names is in its package"
fi

# A container has /proc; so does this one.
mkdir -p "$ROOT$RT/rootfs/proc"
mount -t proc proc "$ROOT$RT/rootfs/proc"
mounted+=("$ROOT$RT/rootfs/proc")
for bin in "${BINS[@]}"; do
  [[ -x "$ROOT/out/usr/local/bin/$bin" ]] || continue
  install -m 0755 "$ROOT/out/usr/local/bin/$bin" "$ROOT$RT/rootfs/usr/local/bin/$bin"
  size="$(stat -c %s "$ROOT$RT/rootfs/usr/local/bin/$bin")"
  say "$bin: $size bytes ($((size / 1024 / 1024)) MiB), built in ${built_s[$bin]:-?}s"
  # The builder's view (ldd in the root) against the runtime base's (its own loader, in it).
  builder="$(in_root ldd "/out/usr/local/bin/$bin")"
  if ! runtime="$(chroot "$ROOT$RT/rootfs" /lib64/ld-linux-x86-64.so.2 --list "/usr/local/bin/$bin" 2>&1)"; then
    printf '%s\n' "$runtime" >&2
    fail "$bin: the runtime base's loader cannot list it"
    continue
  fi
  missing=0
  printf '  %-24s %-42s %-42s %s\n' library "builder (bookworm root)" "runtime base" "provided by"
  while read -r so; do
    b="$(awk -v so="$so" '$1 == so || substr($1, length($1) - length(so)) == "/" so {print ($2 == "=>" ? $3 : $1); exit}' <<<"$builder")"
    r="$(awk -v so="$so" '$1 == so || substr($1, length($1) - length(so)) == "/" so {print ($2 == "=>" ? $3 : $1); exit}' <<<"$runtime")"
    if [[ -z "$r" || "$r" == not ]]; then
      r="NOT FOUND"
      p="-"
      missing=$((missing + 1))
    else
      p="$(awk -v f="$r" '$1 == f {print $2; exit}' "$ROOT$RT/files.txt")"
      [[ -n "$p" ]] || { p="NOT FROM A PINNED PACKAGE"; missing=$((missing + 1)); }
    fi
    printf '  %-24s %-42s %-42s %s\n' "$so" "${b:-?}" "$r" "$p"
  done < <(awk '$1 !~ /^linux-vdso/ {n = split($1, p, "/"); print p[n]}' <<<"$builder")
  if ((missing)); then
    fail "$bin: $missing libraries are not in the runtime base"
  else
    pass "$bin: every library it loads resolves in the runtime base to a file of a pinned package"
  fi
  if out="$(chroot --userspec=65532:65532 "$ROOT$RT/rootfs" "/usr/local/bin/$bin" --help 2>&1)"; then
    pass "$bin --help runs in the runtime base as uid 65532: $(head -n1 <<<"$out")"
  else
    printf '%s\n' "$out" | tail -n 5 >&2
    fail "$bin --help failed in the runtime base"
  fi
done

echo "images-check: $passed passed, $failed failed"
((failed == 0))
