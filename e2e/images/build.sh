#!/usr/bin/env bash
# The one recipe of Ferry's images. The builder stage of Dockerfile.operator and
# Dockerfile.worker runs it, and so does `make images-check` (e2e/images/check.sh) in a plain
# bookworm root, so what is proven there is what the Dockerfiles do:
#
#   build.sh packages             apt-get install builder-packages.txt (then drops apt's lists)
#   build.sh binary NAME DESTDIR  cargo build --release --locked -p PACKAGE --bin NAME (PACKAGE:
#                                 NAME's package, package_of), installed as DESTDIR/usr/local/bin/NAME
#   build.sh guard BINARY         fail unless every shared library BINARY loads is one the
#                                 runtime base gives (runtime-base.txt), and unless librdkafka
#                                 in it was built with zlib and OpenSSL
#   build.sh sonames              print the sonames runtime-base.txt names, one a line
#
# cargo uses $CARGO_TARGET_DIR when set, else ./target (the Dockerfiles' cache mount).
set -euo pipefail
IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

say() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

# list FILE: the first word of each line, comments and blank lines left out.
list() { sed -e 's/#.*//' "$1" | awk 'NF {print $1}'; }

packages() {
  local pkgs
  mapfile -t pkgs < <(list "$IMAGES_DIR/builder-packages.txt")
  ((${#pkgs[@]})) || die "no packages in $IMAGES_DIR/builder-packages.txt"
  say "apt-get install ${pkgs[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
  rm -rf /var/lib/apt/lists/*
}

# package_of NAME: the package whose binary NAME is; -p keeps the features that package's own.
package_of() { case "$1" in ferry-api) echo ferry-worker ;; *) echo "$1" ;; esac; }

binary() {
  local name="$1" dest="$2" package target="${CARGO_TARGET_DIR:-$PWD/target}"
  package="$(package_of "$name")"
  say "cargo build --release --locked -p $package --bin $name ($(rustc --version))"
  cargo build --release --locked -p "$package" --bin "$name"
  install -D -m 0755 "$target/release/$name" "$dest/usr/local/bin/$name"
  say "$name: $(stat -c %s "$dest/usr/local/bin/$name") bytes"
}

sonames() { sed -e 's/#.*//' "$IMAGES_DIR/runtime-base.txt" | awk 'NF > 1 {for (i = 2; i <= NF; i++) print $i}'; }

# needed BINARY: the sonames `ldd` lists for BINARY ("not found" ones too), without the vDSO.
needed() {
  ldd "$1" | awk '$1 ~ /^linux-vdso/ {next} {n = split($1, p, "/"); print p[n]}'
}

guard() {
  local bin="$1" lib bad=() allowed
  [[ -x "$bin" ]] || die "no such binary: $bin"
  ldd "$bin"
  if ldd "$bin" | grep -q 'not found'; then
    die "$(basename "$bin") needs libraries this builder does not have"
  fi
  allowed="$(sonames)"
  while read -r lib; do
    grep -qxF "$lib" <<<"$allowed" || bad+=("$lib")
  done < <(needed "$bin")
  ((${#bad[@]} == 0)) ||
    die "$(basename "$bin") needs ${bad[*]}, which the runtime base (e2e/images/runtime-base.txt) does not give"
  # librdkafka's configure turns zlib and OpenSSL off without failing when it cannot find them:
  # its config table then carries these messages instead of the codecs.
  for lib in "zlib not available at build time" "OpenSSL not available at build time"; do
    if grep -qaF "$lib" "$bin"; then die "$(basename "$bin"): librdkafka was built without it: $lib"; fi
  done
  say "$(basename "$bin"): loads $(needed "$bin" | tr '\n' ' ')- all in the runtime base; librdkafka has zlib and OpenSSL"
}

cmd="${1:-}"
(($#)) && shift
case "$cmd" in
packages) packages ;;
binary) [[ $# -eq 2 ]] || die "usage: build.sh binary NAME DESTDIR"; binary "$@" ;;
guard) [[ $# -eq 1 ]] || die "usage: build.sh guard BINARY"; guard "$1" ;;
sonames) sonames ;;
*) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
