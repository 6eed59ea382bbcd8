#!/usr/bin/env bash
# shellcheck shell=bash source-path=SCRIPTDIR
#
# A real single-node Kubernetes cluster made of local processes, for Ferry's e2e
# tests on a machine without Docker or any container registry.
#
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#   kube-proxy built with `go build` from the pinned module in e2e/local/k8s/go.mod
#   containerd + runc + CNI plugins from Debian, with our own config/state/socket
#   pod network: Linux bridge ferry0 (10.244.0.1/24), CNI bridge + host-local + portmap
#   images: OCI layouts written by e2e/local/images.sh and imported with ctr
#
# Sourced by stack.sh (which calls k8s_network_up, k8s_up, k8s_down, k8s_status),
# or run directly: bash e2e/local/k8s.sh up|down|status|network-up|smoke|build|kubeconform-schemas
#
# Everything runtime lives in $FERRY_STACK_DIR/k8s; built binaries are cached in
# $FERRY_CACHE/k8s-$K8S_VERSION/bin.

_k8s_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! declare -F start_daemon >/dev/null; then
  # shellcheck source=lib.sh
  source "$_k8s_dir/lib.sh"
fi
if ! declare -F img_build >/dev/null; then
  # shellcheck source=images.sh
  source "$_k8s_dir/images.sh"
fi

# ---- pinned versions (bump together with k8s/go.mod) --------------------------
K8S_VERSION=v1.34.4               # k8s.io/kubernetes, staging modules at v0.34.4
K8S_ETCD_VERSION=v3.6.4           # go.etcd.io/etcd/server/v3, as required by k8s v1.34.4
# helm and kubeconform: the go rows of e2e/deps/deps.txt, built by the dependency step.

# ---- layout -----------------------------------------------------------------
K8S_MOD_DIR="$_k8s_dir/k8s"
K8S_BIN_DIR="$FERRY_CACHE/k8s-$K8S_VERSION/bin"
K8S_STATE="$FERRY_STACK_DIR/k8s"
K8S_PKI="$K8S_STATE/pki"
K8S_KUBECONFIG="$K8S_STATE/admin.kubeconfig"
K8S_CONTAINERD_SOCK="$K8S_STATE/containerd/containerd.sock"

# ---- network ----------------------------------------------------------------
K8S_BRIDGE=ferry0
K8S_BRIDGE_IP=10.244.0.1
K8S_POD_CIDR=10.244.0.0/24
K8S_SERVICE_CIDR=10.96.0.0/24
K8S_API_SERVICE_IP=10.96.0.1
K8S_API_PORT=6443
K8S_ETCD_PORT=23790
K8S_ETCD_PEER_PORT=23800
K8S_NODE_NAME=ferry-node
K8S_SANDBOX_IMAGE=ferry.local/pause:3.10
K8S_TEST_IMAGE=ferry/testhttp:dev
K8S_RUNC=/usr/sbin/runc
K8S_CNI_BIN=/usr/lib/cni
# The kubelet's cgroup parent: "/" on a machine of its own; the fresh-root guard gives its
# cluster another, so that two clusters on one kernel never share (or clean up) kubepods.
K8S_CGROUP_ROOT="${FERRY_K8S_CGROUP_ROOT:-/}"

K8S_DAEMONS=(k8s-etcd k8s-apiserver k8s-containerd k8s-controller-manager k8s-scheduler k8s-kubelet k8s-proxy)

_k8s_kubectl() { "$K8S_BIN_DIR/kubectl" --kubeconfig "$K8S_KUBECONFIG" "$@"; }
_k8s_ctr() { ctr --address "$K8S_CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# ---- build ------------------------------------------------------------------

# _k8s_go_build OUT PKG [LDFLAGS]: go build PKG from our pinned module into OUT,
# unless OUT already exists (for our own ./pkg: and is newer than its sources);
# prints how long it took.
_k8s_go_build() {
  local out="$1" pkg="$2" ldflags="${3:--s -w}" t0
  if [[ -x "$out" ]]; then
    [[ "$pkg" != ./* ]] && return 0
    [[ -z "$(find "$K8S_MOD_DIR/${pkg#./}" "$K8S_MOD_DIR/go.mod" -newer "$out" -print -quit)" ]] && return 0
  fi
  mkdir -p "$(dirname "$out")"
  step "go build $(basename "$out") ($pkg)"
  t0=$(date +%s)
  (cd "$K8S_MOD_DIR" && with_build_lock _k8s_timed _k8s_go_build_locked "$out" "$pkg" "$ldflags") ||
    die "go build $pkg failed"
  ok "built $(basename "$out") in $(<"$out.time")s (+$(( $(date +%s) - t0 - $(<"$out.time") ))s waiting for the build lock)"
  rm -f "$out.time"
}

# Under the build lock: a run sharing the cache (the fresh root, another clone) may have built
# OUT while this one waited, and then it is not built twice.
_k8s_go_build_locked() {
  local out="$1" pkg="$2" ldflags="$3"
  if [[ -x "$out" && "$pkg" != ./* ]]; then
    return 0
  fi
  env CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "$ldflags" -o "$out.tmp.$$" "$pkg" &&
    mv "$out.tmp.$$" "$out"
}

# _k8s_timed cmd...: run cmd (under the build lock), write its seconds to $out.time.
_k8s_timed() {
  local s0=$SECONDS rc=0
  "$@" || rc=$?
  echo $((SECONDS - s0)) >"$out.time"
  return $rc
}

# k8s_built: 0 when every binary k8s_build makes is in the cache.
k8s_built() {
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy etcd pause testhttp cricleanup; do
    [[ -x "$K8S_BIN_DIR/$b" ]] || return 1
  done
}

k8s_build() {
  need_cmd go
  local ld="-s -w" p b
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=34"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy; do
    _k8s_go_build "$K8S_BIN_DIR/$b" "k8s.io/kubernetes/cmd/$b" "$ld"
  done
  # etcd: built from the same module graph, so it is exactly the etcd release
  # this Kubernetes version pins (Debian bookworm only has etcd 3.4.23).
  _k8s_go_build "$K8S_BIN_DIR/etcd" go.etcd.io/etcd/server/v3
  # Small programs of ours: sandbox (pause) image, smoke-test image, CRI cleanup.
  _k8s_go_build "$K8S_BIN_DIR/pause" ./pause
  _k8s_go_build "$K8S_BIN_DIR/testhttp" ./testhttp
  _k8s_go_build "$K8S_BIN_DIR/cricleanup" ./cricleanup
}

# The stack's bin dir links the pinned helm and kubeconform (built by the dependency step)
# and this cluster's kubectl, so every script and test finds the same ones.
k8s_link_tools() {
  local t p
  mkdir -p "$FERRY_BIN"
  for t in helm kubeconform; do
    p="$(bash "$REPO_ROOT/e2e/deps/deps.sh" path "$t")"
    [[ -x "$p" ]] || die "$t is not built ($p): run 'make deps'"
    ln -sfn "$p" "$FERRY_BIN/$t"
  done
  ln -sfn "$K8S_BIN_DIR/kubectl" "$FERRY_BIN/kubectl"
}

# ---- network ----------------------------------------------------------------

# Creates the pod bridge and our iptables chains. Idempotent. Pods get no default
# route (CNI routes only the service CIDR via the bridge), and nothing from the
# bridge is forwarded to another interface, so nothing reaches outside addresses.
k8s_network_up() {
  need_cmd ip iptables sysctl
  if ! ip link show "$K8S_BRIDGE" >/dev/null 2>&1; then
    ip link add "$K8S_BRIDGE" type bridge || die "cannot create bridge $K8S_BRIDGE"
  fi
  if ! ip -4 addr show dev "$K8S_BRIDGE" | grep -q "inet $K8S_BRIDGE_IP/"; then
    ip addr add "$K8S_BRIDGE_IP/24" dev "$K8S_BRIDGE" || die "cannot address $K8S_BRIDGE"
  fi
  ip link set "$K8S_BRIDGE" up
  # Service IPs are on-link on the bridge, so host traffic to one that kube-proxy
  # does not DNAT stays on the bridge instead of following the default route.
  ip route replace "$K8S_SERVICE_CIDR" dev "$K8S_BRIDGE" src "$K8S_BRIDGE_IP"
  # Pods may talk to the host (INPUT) and, for Services, be forwarded back onto
  # the bridge (kube-proxy DNATs a service IP to a pod IP on the same bridge).
  # Forwarding is enabled on ferry0 only, and FERRY-FORWARD drops anything
  # arriving from the bridge that would leave through another interface.
  sysctl -qw "net.ipv4.conf.$K8S_BRIDGE.forwarding=1"
  iptables -w -N FERRY-FILTER 2>/dev/null || true
  iptables -w -F FERRY-FILTER
  iptables -w -A FERRY-FILTER -i "$K8S_BRIDGE" -j ACCEPT
  iptables -w -C INPUT -j FERRY-FILTER 2>/dev/null || iptables -w -I INPUT 1 -j FERRY-FILTER
  iptables -w -N FERRY-FORWARD 2>/dev/null || true
  iptables -w -F FERRY-FORWARD
  iptables -w -A FERRY-FORWARD -i "$K8S_BRIDGE" -o "$K8S_BRIDGE" -j ACCEPT
  iptables -w -A FERRY-FORWARD -i "$K8S_BRIDGE" -j DROP
  iptables -w -C FORWARD -j FERRY-FORWARD 2>/dev/null || iptables -w -I FORWARD 1 -j FERRY-FORWARD
  # kube-proxy serves Services; this rule keeps the one service in-cluster
  # clients need (kubernetes.default -> apiserver) working even without it.
  iptables -w -t nat -N FERRY-PREROUTING 2>/dev/null || true
  iptables -w -t nat -F FERRY-PREROUTING
  iptables -w -t nat -A FERRY-PREROUTING -s "$K8S_POD_CIDR" -d "$K8S_API_SERVICE_IP/32" -p tcp --dport 443 \
    -j DNAT --to-destination "$K8S_BRIDGE_IP:$K8S_API_PORT"
  iptables -w -t nat -C PREROUTING -i "$K8S_BRIDGE" -j FERRY-PREROUTING 2>/dev/null \
    || iptables -w -t nat -I PREROUTING 1 -i "$K8S_BRIDGE" -j FERRY-PREROUTING
  export FERRY_ADVERTISE_HOST="$K8S_BRIDGE_IP"
}

k8s_network_down() {
  iptables -w -D INPUT -j FERRY-FILTER 2>/dev/null || true
  iptables -w -D FORWARD -j FERRY-FILTER 2>/dev/null || true # (older versions)
  iptables -w -F FERRY-FILTER 2>/dev/null && iptables -w -X FERRY-FILTER 2>/dev/null
  iptables -w -D FORWARD -j FERRY-FORWARD 2>/dev/null || true
  iptables -w -F FERRY-FORWARD 2>/dev/null && iptables -w -X FERRY-FORWARD 2>/dev/null
  iptables -w -t nat -D PREROUTING -i "$K8S_BRIDGE" -j FERRY-PREROUTING 2>/dev/null || true
  iptables -w -t nat -F FERRY-PREROUTING 2>/dev/null && iptables -w -t nat -X FERRY-PREROUTING 2>/dev/null
  if ip link show "$K8S_BRIDGE" >/dev/null 2>&1; then
    ip link delete "$K8S_BRIDGE" || warn "could not delete bridge $K8S_BRIDGE"
  fi
  return 0
}

# ---- PKI and kubeconfigs ----------------------------------------------------

_k8s_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# _k8s_cert NAME SUBJECT EXTKEYUSAGE [SANS]
_k8s_cert() {
  local name="$1" subj="$2" eku="$3" sans="${4:-}" d="$K8S_PKI"
  _k8s_key "$d/$name.key"
  openssl req -new -key "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$d/$name.ext"
  openssl x509 -req -sha256 -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$d/$name.ext" \
    -out "$d/$name.crt" 2>/dev/null || die "openssl: signing $name failed"
  rm -f "$d/$name.csr" "$d/$name.ext"
}

# _k8s_kubeconfig FILE CERTNAME
_k8s_kubeconfig() {
  local file="$1" cert="$2"
  umask 077
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ferry
  cluster:
    server: https://127.0.0.1:$K8S_API_PORT
    certificate-authority-data: $(base64 -w0 <"$K8S_PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 <"$K8S_PKI/$cert.crt")
    client-key-data: $(base64 -w0 <"$K8S_PKI/$cert.key")
contexts:
- name: ferry
  context:
    cluster: ferry
    user: $cert
current-context: ferry
EOF
  umask 022
}

_k8s_pki() {
  [[ -s "$K8S_STATE/kube-proxy.kubeconfig" ]] && return 0
  step "generating certificates and kubeconfigs in $K8S_PKI"
  mkdir -p "$K8S_PKI" && chmod 700 "$K8S_PKI"
  local d="$K8S_PKI"
  _k8s_key "$d/ca.key"
  openssl req -x509 -new -sha256 -key "$d/ca.key" -subj "/CN=ferry-local-ca" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$d/ca.crt" 2>/dev/null || die "openssl: CA failed"
  _k8s_cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$K8S_BRIDGE_IP,IP:$K8S_API_SERVICE_IP"
  _k8s_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  _k8s_cert admin "/O=system:masters/CN=ferry-admin" clientAuth
  _k8s_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  _k8s_cert scheduler "/CN=system:kube-scheduler" clientAuth
  _k8s_cert kube-proxy "/CN=system:kube-proxy" clientAuth
  _k8s_cert kubelet "/O=system:nodes/CN=system:node:$K8S_NODE_NAME" clientAuth
  _k8s_cert kubelet-serving "/CN=$K8S_NODE_NAME" serverAuth \
    "DNS:$K8S_NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$K8S_BRIDGE_IP"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/sa.key" 2>/dev/null
  openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  _k8s_kubeconfig "$K8S_STATE/controller-manager.kubeconfig" controller-manager
  _k8s_kubeconfig "$K8S_STATE/scheduler.kubeconfig" scheduler
  _k8s_kubeconfig "$K8S_STATE/kube-proxy.kubeconfig" kube-proxy
  _k8s_kubeconfig "$K8S_KUBECONFIG" admin
  _k8s_kubeconfig "$K8S_STATE/kubelet.kubeconfig" kubelet
}

# _k8s_render TEMPLATE OUT: substitute @VARS@ of our templates.
_k8s_render() {
  sed -e "s|@STATE@|$K8S_STATE|g" -e "s|@PKI@|$K8S_PKI|g" \
      -e "s|@BRIDGE@|$K8S_BRIDGE|g" -e "s|@BRIDGE_IP@|$K8S_BRIDGE_IP|g" \
      -e "s|@POD_CIDR@|$K8S_POD_CIDR|g" -e "s|@SERVICE_CIDR@|$K8S_SERVICE_CIDR|g" \
      -e "s|@SANDBOX_IMAGE@|$K8S_SANDBOX_IMAGE|g" -e "s|@RUNC@|$K8S_RUNC|g" \
      -e "s|@CNI_BIN@|$K8S_CNI_BIN|g" -e "s|@CGROUP_ROOT@|$K8S_CGROUP_ROOT|g" "$1" >"$2"
}

# ---- health checks ----------------------------------------------------------

_k8s_etcd_healthy() { curl -fsS -m 2 "http://127.0.0.1:$K8S_ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }
_k8s_api_ready() { _k8s_kubectl get --raw /readyz >/dev/null 2>&1; }
_k8s_containerd_ready() { _k8s_ctr version >/dev/null 2>&1; }
_k8s_healthz() { curl -fsSk -m 2 "https://127.0.0.1:$1/healthz" >/dev/null 2>&1; }
_k8s_kubelet_healthy() { curl -fsS -m 2 http://127.0.0.1:10248/healthz >/dev/null 2>&1; }
_k8s_node_ready() {
  [[ "$(_k8s_kubectl get node "$K8S_NODE_NAME" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
_k8s_sa_ready() { _k8s_kubectl -n default get serviceaccount default >/dev/null 2>&1; }

# _k8s_wait TIMEOUT DESC LOGNAME cmd...: wait_for (which shows the log's tail on timeout), or die.
_k8s_wait() {
  local timeout="$1" desc="$2" log="$3"
  shift 3
  FERRY_WAIT_LOG="$FERRY_LOG_DIR/$log.log" wait_for "$timeout" "$desc" "$@" \
    || die "$desc: not ready after ${timeout}s (log: $FERRY_LOG_DIR/$log.log)"
}

# ---- daemons ----------------------------------------------------------------

_k8s_start_etcd() {
  daemon_running k8s-etcd && return 0
  mkdir -p "$K8S_STATE/etcd" && chmod 700 "$K8S_STATE/etcd"
  start_daemon k8s-etcd "$FERRY_LOG_DIR/k8s-etcd.log" "$K8S_BIN_DIR/etcd" \
    --name ferry --data-dir "$K8S_STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$K8S_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --initial-cluster "ferry=http://127.0.0.1:$K8S_ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
}

_k8s_start_apiserver() {
  daemon_running k8s-apiserver && return 0
  start_daemon k8s-apiserver "$FERRY_LOG_DIR/k8s-apiserver.log" "$K8S_BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$K8S_ETCD_PORT" \
    --bind-address 0.0.0.0 --secure-port "$K8S_API_PORT" --advertise-address "$K8S_BRIDGE_IP" \
    --service-cluster-ip-range "$K8S_SERVICE_CIDR" \
    --client-ca-file "$K8S_PKI/ca.crt" \
    --tls-cert-file "$K8S_PKI/apiserver.crt" --tls-private-key-file "$K8S_PKI/apiserver.key" \
    --kubelet-client-certificate "$K8S_PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$K8S_PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$K8S_PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$K8S_PKI/sa.pub" \
    --service-account-signing-key-file "$K8S_PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
}

_k8s_start_containerd() {
  daemon_running k8s-containerd && return 0
  mkdir -p "$K8S_STATE/containerd" "$K8S_STATE/cni/net.d" "$K8S_STATE/cni/ipam"
  _k8s_render "$K8S_MOD_DIR/containerd.toml.in" "$K8S_STATE/containerd/config.toml"
  _k8s_render "$K8S_MOD_DIR/cni.conflist.in" "$K8S_STATE/cni/net.d/10-ferry.conflist"
  start_daemon k8s-containerd "$FERRY_LOG_DIR/k8s-containerd.log" \
    containerd --config "$K8S_STATE/containerd/config.toml" --log-level warn
}

_k8s_start_controller_manager() {
  daemon_running k8s-controller-manager && return 0
  local kc="$K8S_STATE/controller-manager.kubeconfig"
  # Default controllers ('*') include garbage collection, deployment, replicaset,
  # serviceaccount(-token), namespace and node lifecycle.
  start_daemon k8s-controller-manager "$FERRY_LOG_DIR/k8s-controller-manager.log" \
    "$K8S_BIN_DIR/kube-controller-manager" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
    --controllers '*' --use-service-account-credentials=true \
    --service-account-private-key-file "$K8S_PKI/sa.key" --root-ca-file "$K8S_PKI/ca.crt" \
    --cluster-signing-cert-file "$K8S_PKI/ca.crt" --cluster-signing-key-file "$K8S_PKI/ca.key" \
    --service-cluster-ip-range "$K8S_SERVICE_CIDR" --profiling=false --v=1
}

_k8s_start_scheduler() {
  daemon_running k8s-scheduler && return 0
  local kc="$K8S_STATE/scheduler.kubeconfig"
  start_daemon k8s-scheduler "$FERRY_LOG_DIR/k8s-scheduler.log" "$K8S_BIN_DIR/kube-scheduler" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --profiling=false --v=1
}

_k8s_start_kubelet() {
  daemon_running k8s-kubelet && return 0
  mkdir -p "$K8S_STATE/kubelet"
  _k8s_render "$K8S_MOD_DIR/kubelet.yaml.in" "$K8S_STATE/kubelet.yaml"
  start_daemon k8s-kubelet "$FERRY_LOG_DIR/k8s-kubelet.log" "$K8S_BIN_DIR/kubelet" \
    --config "$K8S_STATE/kubelet.yaml" --kubeconfig "$K8S_STATE/kubelet.kubeconfig" \
    --root-dir "$K8S_STATE/kubelet" --cert-dir "$K8S_PKI" \
    --hostname-override "$K8S_NODE_NAME" --node-ip "$K8S_BRIDGE_IP" --v=1
}

# iptables-mode kube-proxy for ClusterIP/NodePort Services. NodePorts only on the
# bridge IP; it leaves conntrack sysctls alone (0 = don't change).
_k8s_start_proxy() {
  daemon_running k8s-proxy && return 0
  start_daemon k8s-proxy "$FERRY_LOG_DIR/k8s-proxy.log" "$K8S_BIN_DIR/kube-proxy" \
    --kubeconfig "$K8S_STATE/kube-proxy.kubeconfig" --hostname-override "$K8S_NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$K8S_POD_CIDR" \
    --nodeport-addresses "$K8S_BRIDGE_IP/32" --iptables-localhost-nodeports=false \
    --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --v=1
}
_k8s_proxy_healthy() { curl -fsS -m 2 http://127.0.0.1:10256/healthz >/dev/null 2>&1; }

# ---- up / down / status -----------------------------------------------------

_k8s_write_env() {
  env_set KUBECONFIG "$K8S_KUBECONFIG"
  env_set FERRY_KUBECONFORM_SCHEMAS "$K8S_STATE/kubeconform/standalone-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json"
}

# kubeconform cannot download schemas here: write them from this cluster's
# OpenAPI (built-in kinds + CRDs installed so far; rerun after installing CRDs).
# Use: kubeconform -strict -schema-location "$FERRY_KUBECONFORM_SCHEMAS" file.yaml
k8s_kubeconform_schemas() {
  local dir="$K8S_STATE/kubeconform"
  mkdir -p "$dir"
  _k8s_kubectl get --raw /openapi/v2 >"$dir/openapi-v2.json" || die "cannot read /openapi/v2"
  python3 "$K8S_MOD_DIR/kubeconform-schemas.py" "$dir/openapi-v2.json" "$dir" >/dev/null \
    || die "writing kubeconform schemas failed"
  rm -f "$dir/openapi-v2.json"
}

k8s_up() {
  mkdir -p "$K8S_STATE" "$FERRY_LOG_DIR" "$FERRY_BIN"
  if k8s_status >/dev/null 2>&1; then
    _k8s_write_env
    ok "k8s already up: $(k8s_status)"
    return 0
  fi
  local t0
  phase_start k8s-build
  need_cmd containerd ctr "$K8S_RUNC" "$K8S_CNI_BIN/bridge" openssl iptables ip curl flock conntrack python3
  k8s_built || k8s_build
  k8s_link_tools
  phase_end k8s-build
  phase_start k8s-start
  t0=$(date +%s)
  k8s_network_up
  _k8s_pki

  step "starting etcd $K8S_ETCD_VERSION and containerd"
  _k8s_start_etcd
  _k8s_start_containerd
  _k8s_wait 60 "etcd healthy" k8s-etcd _k8s_etcd_healthy
  step "starting kube-apiserver $K8S_VERSION"
  _k8s_start_apiserver
  _k8s_wait 60 "containerd ready" k8s-containerd _k8s_containerd_ready
  img_ensure_builtin || die "importing the pause/test images failed"
  _k8s_wait 120 "kube-apiserver /readyz" k8s-apiserver _k8s_api_ready
  ok "kube-apiserver ready after $(( $(date +%s) - t0 ))s"

  step "starting controller-manager, scheduler, kubelet, kube-proxy"
  _k8s_start_controller_manager
  _k8s_start_scheduler
  _k8s_start_kubelet
  _k8s_start_proxy
  _k8s_wait 60 "kube-controller-manager healthz" k8s-controller-manager _k8s_healthz 10257
  _k8s_wait 60 "kube-scheduler healthz" k8s-scheduler _k8s_healthz 10259
  _k8s_wait 60 "kubelet healthz" k8s-kubelet _k8s_kubelet_healthy
  _k8s_wait 120 "node $K8S_NODE_NAME Ready" k8s-kubelet _k8s_node_ready
  _k8s_wait 60 "kube-proxy healthz" k8s-proxy _k8s_proxy_healthy
  _k8s_wait 60 "default service account" k8s-controller-manager _k8s_sa_ready
  k8s_kubeconform_schemas
  _k8s_write_env
  ok "k8s up in $(( $(date +%s) - t0 ))s (excluding builds); KUBECONFIG=$K8S_KUBECONFIG"
  phase_end k8s-start
}

# Kill every process whose command line mentions our containerd socket (the
# runc shims), then every process left in the kubelet's pod cgroups.
_k8s_kill_leftovers() {
  local pid cmd f
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}"; pid="${pid%/cmdline}"
    cmd="$(tr '\0' ' ' 2>/dev/null <"$f")" || continue
    # Only shims of this filesystem root: a fresh-root guard's cluster uses the same paths.
    [[ "$cmd" == *containerd-shim*"$K8S_CONTAINERD_SOCK"* && "$(readlink "/proc/$pid/root")" == "$(readlink /proc/self/root)" ]] &&
      kill -9 "$pid" 2>/dev/null
  done
  for f in /sys/fs/cgroup/*"${K8S_CGROUP_ROOT%/}"/kubepods; do
    [[ -d "$f" ]] || continue
    find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
      kill -9 "$pid" 2>/dev/null
    done
  done
  return 0
}

# Remove the kubelet's cgroup trees (deepest first).
_k8s_remove_cgroups() {
  local f
  for f in /sys/fs/cgroup/*"${K8S_CGROUP_ROOT%/}"/kubepods; do
    [[ -d "$f" ]] || continue
    find "$f" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}

_k8s_unmount_state() {
  local m
  # Deepest first; lazily, so a busy mount can't block the teardown.
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "could not unmount $m"
  done < <(awk -v s="$K8S_STATE" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r)
  # Network namespaces the CRI plugin created for pods (CNI DEL normally removes them).
  while read -r m; do
    [[ "$m" == cni-* ]] && ip netns delete "$m" 2>/dev/null
  done < <(ip netns list 2>/dev/null | awk '{print $1}')
  return 0
}

# iptables chains that kubelet (KUBE-*, IPv4 and IPv6) and the portmap plugin
# (CNI-*) create.
_k8s_iptables_cleanup() {
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt" -w -t "$table" -S 2>/dev/null \
        | awk '/^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*-j (KUBE|CNI)-/' \
        | while read -r _ rest; do
            # eval: the rule spec may hold a quoted --comment "..." from -S.
            eval "\"\$ipt\" -w -t \"\$table\" -D $rest" 2>/dev/null || true
          done
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ {print $2}'); do
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  return 0
}

k8s_down() {
  phase_start k8s-down
  step "stopping kubelet and kube-proxy"
  stop_daemon k8s-kubelet
  stop_daemon k8s-proxy
  if daemon_running k8s-containerd && [[ -x "$K8S_BIN_DIR/cricleanup" ]]; then
    step "removing pod sandboxes (CNI DEL)"
    "$K8S_BIN_DIR/cricleanup" -endpoint "unix://$K8S_CONTAINERD_SOCK" -timeout 60s rm-all \
      || warn "CRI cleanup reported errors; forcing"
  fi
  step "stopping containerd and control plane"
  stop_daemon k8s-containerd
  _k8s_kill_leftovers
  stop_daemon k8s-scheduler
  stop_daemon k8s-controller-manager
  stop_daemon k8s-apiserver
  stop_daemon k8s-etcd
  sleep 1
  _k8s_remove_cgroups
  _k8s_unmount_state
  _k8s_iptables_cleanup
  # containerd 1.6 keeps shim sockets and ctr fifos under /run/containerd whatever
  # its config says; remove the empty dirs unless a system containerd uses them.
  if [[ -d /run/containerd && ! -S /run/containerd/containerd.sock ]]; then
    find /run/containerd -depth -type d -empty -delete 2>/dev/null
  fi
  k8s_network_down
  if [[ -d "$K8S_STATE" ]]; then
    if awk -v s="$K8S_STATE" 'index($2, s) == 1 {f=1} END {exit !f}' /proc/self/mounts; then
      warn "mounts remain under $K8S_STATE; not deleting it"
    else
      rm -rf --one-file-system "$K8S_STATE"
    fi
  fi
  env_unset KUBECONFIG
  env_unset FERRY_KUBECONFORM_SCHEMAS
  ok "k8s down"
  phase_end k8s-down
}

# One line; 0 if every daemon runs, the apiserver is ready and the node is Ready.
k8s_status() {
  local d missing=()
  for d in "${K8S_DAEMONS[@]}"; do
    daemon_running "$d" || missing+=("$d")
  done
  if ((${#missing[@]})); then
    echo "k8s $K8S_VERSION: down (not running: ${missing[*]})"
    return 1
  fi
  if ! _k8s_api_ready; then
    echo "k8s $K8S_VERSION: apiserver not ready"
    return 1
  fi
  if ! _k8s_node_ready; then
    echo "k8s $K8S_VERSION: node $K8S_NODE_NAME not Ready"
    return 1
  fi
  echo "k8s $K8S_VERSION: ready, node $K8S_NODE_NAME Ready, KUBECONFIG=$K8S_KUBECONFIG"
}

# Deploy the test image, wait until Ready, and check a pod reaches the host
# through the bridge (apiserver on 10.244.0.1) and via the kubernetes service IP.
k8s_smoke() {
  local ns=ferry-smoke ip out svc
  _k8s_kubectl create namespace "$ns" --dry-run=client -o yaml | _k8s_kubectl apply -f - >/dev/null
  _k8s_kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: testhttp
spec:
  replicas: 2
  selector:
    matchLabels: {app: testhttp}
  template:
    metadata:
      labels: {app: testhttp}
    spec:
      containers:
      - name: testhttp
        image: $K8S_TEST_IMAGE
        imagePullPolicy: IfNotPresent
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 2
        securityContext:
          runAsNonRoot: true
          allowPrivilegeEscalation: false
EOF
  _k8s_kubectl -n "$ns" rollout status deployment/testhttp --timeout=120s || {
    _k8s_kubectl -n "$ns" describe pods | tail -n 30 >&2
    die "smoke deployment did not become Ready"
  }
  ip="$(_k8s_kubectl -n "$ns" get pods -l app=testhttp -o 'jsonpath={.items[0].status.podIP}')"
  curl -fsS -m 10 "http://$ip:8080/probe?addr=$K8S_BRIDGE_IP:$K8S_API_PORT" || die "pod $ip cannot reach $K8S_BRIDGE_IP"
  curl -fsS -m 10 "http://$ip:8080/probe?addr=$K8S_API_SERVICE_IP:443" || die "pod $ip cannot reach the kubernetes service"
  # A ClusterIP Service (kube-proxy) in front of both replicas, called from a pod.
  _k8s_kubectl -n "$ns" expose deployment testhttp --port 80 --target-port 8080 >/dev/null
  svc="$(_k8s_kubectl -n "$ns" get service testhttp -o 'jsonpath={.spec.clusterIP}')"
  FERRY_WAIT_LOG="$FERRY_LOG_DIR/k8s-proxy.log" wait_for 30 "service $svc:80 reachable from pod $ip" \
    curl -fsS -m 5 "http://$ip:8080/probe?addr=$svc:80" || die "pod $ip cannot reach service $svc:80"
  curl -fsS -m 10 "http://$ip:8080/probe?addr=$svc:80"
  # In-cluster client path: service IP + SA token + CA. The default SA may not
  # list pods, so a 403 naming the SA proves TLS and token authentication work.
  out="$(curl -sS -m 10 "http://$ip:8080/k8sapi")"
  [[ "$out" == 403*system:serviceaccount:$ns:default* ]] || die "in-cluster API call from pod $ip failed: $out"
  echo "in-cluster API: ${out:0:120}"
  _k8s_kubectl delete namespace "$ns" --wait=true --timeout=120s >/dev/null
  ok "smoke test passed (pod $ip Ready; reached $K8S_BRIDGE_IP, $K8S_API_SERVICE_IP with its SA token, service $svc)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    up) k8s_network_up; k8s_up ;;
    down) k8s_down ;;
    status) k8s_status ;;
    network-up) k8s_network_up ;;
    build) k8s_build ;;
    smoke) k8s_smoke ;;
    kubeconform-schemas) k8s_kubeconform_schemas && _k8s_write_env ;;
    *) echo "usage: $0 up|down|status|network-up|build|smoke|kubeconform-schemas" >&2; exit 2 ;;
  esac
fi
