#!/usr/bin/env bash
# The one dependency step: installs what e2e/deps/deps.txt declares, before anything uses it.
#
#   e2e/deps/deps.sh install [GROUP...]   install what is missing (all groups when none named);
#                                         a fast no-op when everything is there
#   e2e/deps/deps.sh doctor  [GROUP...]   list what is missing, install nothing; exit 1 if any
#   e2e/deps/deps.sh path NAME            print the installed path of a go or pypi tool
#
# Debian packages go through apt-get (one update per run, only when something is missing);
# go tools are built with `go install` into $FERRY_CACHE/tools/NAME-VERSION; pypi packages go
# into a venv of the machine's python3, $FERRY_CACHE/venv-<python>; the Kafka jars and the
# Kubernetes binaries are built by e2e/local/kafka.sh and k8s.sh at the pinned versions.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"
FERRY_LOG_TAG="${FERRY_LOG_TAG_DEPS:-deps}"

# rows_of KIND GROUP...: "name version" for each row of KIND in any of the groups (all if none).
rows_of() {
  local kind="$1"
  shift
  awk -v kind="$kind" -v want="$*" '
    /^[[:space:]]*(#|$)/ { next }
    $1 != kind { next }
    {
      if (want == "") { print $2, $3; next }
      n = split($4, gs, ","); m = split(want, ws, " ")
      for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) if (gs[i] == ws[j]) { print $2, $3; next }
    }' "$FERRY_DEPS_FILE"
}

check_groups() {
  local g
  for g in "$@"; do
    grep -qE "^[a-z]+ +[^ ]+ +[^ ]+ +([a-z]+,)*$g(,[a-z]+)*( |$)" "$FERRY_DEPS_FILE" ||
      die "no group '$g' in $FERRY_DEPS_FILE"
  done
}

# ---- deb ------------------------------------------------------------------------------
missing_deb() {
  local pkgs=() name _
  while read -r name _; do pkgs+=("$name"); done < <(rows_of deb "$@")
  ((${#pkgs[@]})) || return 0
  # One dpkg-query for all: unknown packages print nothing on stdout.
  comm -23 <(printf '%s\n' "${pkgs[@]}" | sort -u) \
    <(dpkg-query -W -f='${Package} ${Status}\n' "${pkgs[@]}" 2>/dev/null |
      awk '$NF == "installed" && $(NF-1) == "ok" {print $1}' | sort -u)
}

# ---- go -------------------------------------------------------------------------------
go_tool_path() { # NAME MODULE@VERSION
  printf '%s/tools/%s-%s/%s\n' "$FERRY_CACHE" "$1" "${2##*@}" "$1"
}
missing_go() {
  local name spec
  while read -r name spec; do
    [[ -x "$(go_tool_path "$name" "$spec")" ]] || echo "$name $spec"
  done < <(rows_of go "$@")
}
install_go() { # NAME MODULE@VERSION
  local name="$1" spec="$2" out dir ver ld="-s -w"
  out="$(go_tool_path "$name" "$spec")"
  dir="$(dirname "$out")"
  ver="${spec##*@}"
  command -v go >/dev/null || die "go is not on PATH: it is needed to build $name ($spec)"
  case "$spec" in
  helm.sh/helm/v3/*) ld+=" -X helm.sh/helm/v3/internal/version.version=$ver -X helm.sh/helm/v3/internal/version.gitTreeState=clean" ;;
  helm.sh/helm/v4/*) ld+=" -X helm.sh/helm/v4/internal/version.version=$ver -X helm.sh/helm/v4/internal/version.gitTreeState=clean" ;;
  github.com/yannh/kubeconform/*) ld+=" -X main.version=$ver" ;;
  esac
  step "go install $spec"
  with_build_lock _go_install_locked "$name" "$spec" "$dir" "$ld"
  ok "built $name $ver"
}
# Under the build lock, so two runs sharing a cache (the host and the fresh root) never
# build one tool into one place at once; the second finds it done.
_go_install_locked() {
  local name="$1" spec="$2" dir="$3" ld="$4" built
  [[ -x "$dir/$name" ]] && return 0
  built="$(basename "${spec%@*}")"
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  env CGO_ENABLED=0 GOBIN="$dir.tmp" GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "$ld" "$spec" || die "go install $spec failed"
  [[ -x "$dir.tmp/$built" ]] || die "go install $spec built no $built"
  [[ "$built" == "$name" ]] || mv "$dir.tmp/$built" "$dir.tmp/$name"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# ---- pypi -----------------------------------------------------------------------------
# The venv is lib.sh's ferry_venv_dir, the one PATH already names.
missing_pypi() {
  local name ver venv have
  venv="$(ferry_venv_dir)" || { rows_of pypi "$@"; return 0; }
  have=""
  [[ -x "$venv/bin/python3" ]] && have="$("$venv/bin/python3" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
for d in m.distributions():
    print(f"{d.metadata['Name'].lower()}=={d.version}")
PY
)"
  while read -r name ver; do
    grep -qxF "${name,,}==$ver" <<<"$have" || echo "$name $ver"
  done < <(rows_of pypi "$@")
}
install_pypi() { # NAME VERSION...
  local venv
  command -v python3 >/dev/null || die "python3 is missing (it is in deps.txt: install the deb group first)"
  venv="$(ferry_venv_dir)"
  if [[ ! -x "$venv/bin/python3" ]]; then
    step "python venv $venv (for $(python3 -c 'import sys; print(sys.base_prefix)'))"
    python3 -m venv "$venv" || die "python3 -m venv failed"
  fi
  step "pip install $*"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "$@" || die "pip install $* failed"
  ok "installed $*"
}

# ---- maven, gomod -------------------------------------------------------------------------
missing_maven() {
  local name ver
  while read -r name ver; do
    [[ "$name" == org.apache.kafka:kafka_2.13 ]] || die "deps.sh knows no maven artifact $name"
    [[ -f "$FERRY_CACHE/kafka-$ver/.complete" ]] || echo "$name $ver"
  done < <(rows_of maven "$@")
}
missing_gomod() {
  local name mod
  while read -r name mod; do
    [[ "$name" == kubernetes ]] || die "deps.sh knows no gomod $name"
    (
      FERRY_LOG_TAG=k8s
      # shellcheck source=SCRIPTDIR/../local/k8s.sh
      source "$FERRY_LOCAL_DIR/k8s.sh"
      k8s_built || echo "$name $mod"
    )
  done < <(rows_of gomod "$@")
}

# ---- commands -----------------------------------------------------------------------------
doctor() {
  local kind n=0 line
  for kind in deb go pypi maven gomod; do
    while read -r line; do
      [[ -n "$line" ]] || continue
      printf 'missing %-6s %s\n' "$kind" "$line"
      n=$((n + 1))
    done < <("missing_$kind" "$@")
  done
  if ((n)); then
    warn "$n missing; 'make deps' installs them"
    return 1
  fi
  ok "everything in $FERRY_DEPS_FILE${*:+ (groups: $*)} is installed"
}

install() {
  local deps_t0 debs=() name spec pypi=()
  deps_t0="$(_ferry_now_ms)"
  mapfile -t debs < <(missing_deb "$@")
  if ((${#debs[@]})); then
    # policy-rc.d keeps redis-server's and containerd's own services from starting.
    apt_install_nostart "${debs[@]}"
    mapfile -t debs < <(missing_deb "$@")
    ((${#debs[@]} == 0)) || die "still missing after apt-get install: ${debs[*]}"
  fi
  while read -r name spec; do
    [[ -n "$name" ]] && install_go "$name" "$spec"
  done < <(missing_go "$@")
  while read -r name spec; do
    [[ -n "$name" ]] && pypi+=("$name==$spec")
  done < <(missing_pypi "$@")
  ((${#pypi[@]} == 0)) || install_pypi "${pypi[@]}"
  if [[ -n "$(missing_maven "$@")" ]]; then
    (
      FERRY_LOG_TAG=kafka
      # shellcheck source=SCRIPTDIR/../local/kafka.sh
      source "$FERRY_LOCAL_DIR/kafka.sh"
      _kafka_install
    )
  fi
  if [[ -n "$(missing_gomod "$@")" ]]; then
    (
      FERRY_LOG_TAG=k8s
      # shellcheck source=SCRIPTDIR/../local/k8s.sh
      source "$FERRY_LOCAL_DIR/k8s.sh"
      k8s_build
    )
  fi
  local left
  left="$(doctor "$@" 2>&1)" || { printf '%s\n' "$left" >&2; die "the dependency step left something missing"; }
  local ds=$((($(_ferry_now_ms) - deps_t0) / 100))
  ok "dependencies${*:+ ($*)} ready in $((ds / 10)).$((ds % 10))s"
}

tool_path() {
  local name="$1" spec venv
  spec="$(awk -v n="$name" '$1 == "go" && $2 == n {print $3}' "$FERRY_DEPS_FILE")"
  if [[ -n "$spec" ]]; then
    go_tool_path "$name" "$spec"
    return 0
  fi
  venv="$(ferry_venv_dir)" || die "no python3"
  [[ -x "$venv/bin/$name" ]] || die "$name is neither a go tool of deps.txt nor in $venv/bin"
  printf '%s\n' "$venv/bin/$name"
}

cmd="${1:-install}"
(($#)) && shift
case "$cmd" in
install) check_groups "$@"; install "$@" ;;
doctor) check_groups "$@"; doctor "$@" ;;
path) tool_path "$@" ;;
*) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
