#!/usr/bin/env bash
# shellcheck shell=bash source-path=SCRIPTDIR
#
# Builds OCI images without a registry or Docker and imports them into the local
# cluster's containerd (e2e/local/k8s.sh). An image is one uncompressed layer
# holding a binary, the shared libraries `ldd` lists for it, a minimal
# /etc/passwd (uid 65532) and CA certificates; no shell.
#
#   bash e2e/local/images.sh worker   <ferry-worker> <ferry-api>   # -> ferry/worker:dev
#   bash e2e/local/images.sh operator <path-to-binary>   # -> ferry/operator:dev
#   bash e2e/local/images.sh image NAME:TAG <path-to-binary> [args...]
#   bash e2e/local/images.sh builtin    # pause + test image (k8s_up does this)
#   bash e2e/local/images.sh list
#
# The worker and operator images take the same guard as the Dockerfiles' builder stage
# (e2e/images/build.sh guard): every library the binary loads must be one the kind images'
# runtime base (e2e/images/runtime-base.txt) gives, so both paths ship the same binary shape.
#
# Image names follow Docker's short-name rule (ferry/worker:dev is stored as the
# fully qualified name the CRI plugin looks up), so pod specs use `ferry/worker:dev`
# with imagePullPolicy IfNotPresent or Never.

# img_ref NAME: the normalized reference containerd's CRI plugin resolves NAME to.
img_ref() {
  local name="$1" first="${1%%/*}"
  [[ "$name" == *:* || "$name" == *@* ]] || name+=":latest"
  if [[ "$name" != */* ]]; then
    name="docker.io/library/$name"
  elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
    name="docker.io/$name"
  fi
  echo "$name"
}

_img_sha() { sha256sum "$1" | cut -d' ' -f1; }

# _img_blob DIR FILE: move FILE into DIR/blobs/sha256, print "digest size".
_img_blob() {
  local dir="$1" f="$2" sha size
  sha="$(_img_sha "$f")"
  size="$(stat -c %s "$f")"
  mkdir -p "$dir/blobs/sha256"
  mv "$f" "$dir/blobs/sha256/$sha"
  echo "sha256:$sha $size"
}

# _img_copy_with_libs ROOTFS BINARY DEST: copy BINARY to ROOTFS/DEST plus every
# shared library it loads (same absolute paths, symlinks resolved).
_img_copy_with_libs() {
  local root="$1" bin="$2" dest="$3" lib
  install -D -m 0755 "$bin" "$root$dest"
  if ldd "$bin" >/dev/null 2>&1; then
    # "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    while read -r lib; do
      [[ -f "$lib" ]] || continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
  fi
}

# Binaries an image holds beside its entrypoint, each in /usr/local/bin with its libraries.
IMG_EXTRA_BINS=()

# img_build NAME:TAG BINARY OUT.tar [args...]: write an OCI image layout tarball whose
# entrypoint is BINARY (and args), holding IMG_EXTRA_BINS too.
img_build() {
  local name="$1" bin="$2" out="$3"
  shift 3
  [[ -f "$bin" ]] || { echo "img_build: no such binary: $bin" >&2; return 1; }
  local work root dest ref cfg man diffid ldesc cdesc mdesc entry arg
  ref="$(img_ref "$name")"
  work="$(mktemp -d)"
  root="$work/rootfs"
  dest="/usr/local/bin/$(basename "$bin")"
  mkdir -p "$root"/{etc,tmp,usr/local/bin} "$work/oci"
  chmod 1777 "$root/tmp"
  _img_copy_with_libs "$root" "$bin" "$dest"
  local extra
  for extra in "${IMG_EXTRA_BINS[@]}"; do
    [[ -f "$extra" ]] || { echo "img_build: no such binary: $extra" >&2; return 1; }
    _img_copy_with_libs "$root" "$extra" "/usr/local/bin/$(basename "$extra")"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  mkdir -p "$root/home/nonroot" && chown 65532:65532 "$root/home/nonroot"
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi

  # Reproducible, uncompressed layer.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -C "$root" -cf "$work/layer.tar" . || return 1
  diffid="sha256:$(_img_sha "$work/layer.tar")"
  ldesc="$(_img_blob "$work/oci" "$work/layer.tar")"

  entry="\"$dest\""
  for arg in "$@"; do entry+=",\"$arg\""; done
  cfg="$work/config.json"
  printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin","HOME=/home/nonroot"],"Entrypoint":[%s],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"e2e/local/images.sh"}]}' \
    "$entry" "$diffid" >"$cfg"
  cdesc="$(_img_blob "$work/oci" "$cfg")"

  man="$work/manifest.json"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
    "${cdesc% *}" "${cdesc#* }" "${ldesc% *}" "${ldesc#* }" >"$man"
  mdesc="$(_img_blob "$work/oci" "$man")"

  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${mdesc% *}" "${mdesc#* }" "$ref" "${ref##*:}" >"$work/oci/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/oci" -cf "$out" . || return 1
  rm -rf "$work"
}

# img_import TAR: import into the cluster's containerd (k8s.io namespace).
img_import() {
  ctr --address "$K8S_CONTAINERD_SOCK" --namespace k8s.io images import \
    --platform linux/amd64 "$1" >/dev/null
}

# img_build_import NAME:TAG BINARY [args...]
img_build_import() {
  local name="$1" bin="$2" tar
  shift 2
  tar="$(mktemp --suffix=.oci.tar)"
  if ! img_build "$name" "$bin" "$tar" "$@" || ! img_import "$tar"; then
    rm -f "$tar"
    return 1
  fi
  rm -f "$tar"
  echo "imported $(img_ref "$name") from $bin"
}

# The sandbox (pause) image containerd is configured for, and the smoke-test
# image; (re)imported every time, which takes about a second.
img_ensure_builtin() {
  img_build_import "$K8S_SANDBOX_IMAGE" "$K8S_BIN_DIR/pause" || return 1
  img_build_import "$K8S_TEST_IMAGE" "$K8S_BIN_DIR/testhttp" || return 1
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  # shellcheck source=/dev/null # (k8s.sh sources this file; not followed, to avoid a cycle)
  source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/k8s.sh"
  _k8s_containerd_ready || die "the cluster's containerd is not running (bash e2e/local/stack.sh up)"
  case "${1:-}" in
    worker|operator)
      kind="$1"
      shift
      # The worker image holds the read API's binary too (Dockerfile.worker): the operator
      # names it as the API pods' command.
      if [[ "$kind" == worker ]]; then
        [[ $# -eq 2 && "$(basename "$2")" == ferry-api ]] ||
          die "usage: $0 worker <ferry-worker> <ferry-api>"
        IMG_EXTRA_BINS=("$2")
      else
        [[ $# -eq 1 ]] || die "usage: $0 operator <ferry-operator>"
      fi
      # The kind images' library rule (e2e/images/build.sh guard): a binary that would not
      # load in the runtime base image is refused here too.
      for bin in "$@"; do
        bash "$REPO_ROOT/e2e/images/build.sh" guard "$bin" >/dev/null || die "$bin: see above"
      done
      img_build_import "ferry/$kind:dev" "$1"
      ;;
    image)
      [[ $# -ge 3 ]] || die "usage: $0 image NAME:TAG <path-to-binary> [args...]"
      name="$2" bin="$3"
      shift 3
      img_build_import "$name" "$bin" "$@"
      ;;
    builtin) k8s_build && img_ensure_builtin ;;
    list) _k8s_ctr images ls ;;
    *) echo "usage: $0 worker <ferry-worker> <ferry-api> | operator <ferry-operator> | image NAME:TAG <binary> [args] | builtin | list" >&2; exit 2 ;;
  esac
fi
