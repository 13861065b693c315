#!/usr/bin/env bash
# tools/cluster.sh — a real Kubernetes control plane on loopback for tests and the demo.
#
#   tools/cluster.sh build    build kube-apiserver, kube-controller-manager, kubectl and helm
#                             (cached by pin)
#   tools/cluster.sh up       start etcd + kube-apiserver + kube-controller-manager (or reuse a
#                             running plane) and print `export ...` lines for `eval`
#   tools/cluster.sh env      print the export lines of the running plane (fails if none)
#   tools/cluster.sh status   report each component (exit 0 running, 3 not running, 1 degraded)
#   tools/cluster.sh down     stop the plane by pid and remove its state
#   tools/cluster.sh stop-apiserver | start-apiserver
#                             fault injection: stop kube-apiserver alone, start it again
#   tools/cluster.sh restart-etcd [SECONDS]
#                             fault injection: stop etcd, wait (default 3 s), start it again
#
#   --node (with up, env, status, down): the plane with one node (containerd, kubelet,
#   kube-scheduler, kube-proxy, a default StorageClass), in target/cluster-node; pods run.
#
# Only the export lines go to stdout; all progress goes to stderr, so
#   eval "$(tools/cluster.sh up)"
# is the contract used by tests, the demo and CI. See tools/README.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

# `--node` anywhere after the command: the node plane (its own directory, so suites without a
# node keep their loopback-only plane beside it).
WANT_NODE=0
ARGS=()
for arg in "$@"; do
  if [[ "$arg" == --node ]]; then WANT_NODE=1; else ARGS+=("$arg"); fi
done
set -- "${ARGS[@]+"${ARGS[@]}"}"

TOOLS_BIN="${VIRTMAIL_TOOLS_BIN:-$ROOT/target/tools/bin}"
if ((WANT_NODE)); then
  CLUSTER_DIR="${VIRTMAIL_CLUSTER_DIR:-$ROOT/target/cluster-node}"
else
  CLUSTER_DIR="${VIRTMAIL_CLUSTER_DIR:-$ROOT/target/cluster}"
fi
SHARED_CACHE="${VIRTMAIL_TOOLS_SHARED_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/virtmail-tools}"
START_TIMEOUT="${VIRTMAIL_CLUSTER_START_TIMEOUT:-180}"
LOCK_TIMEOUT="${VIRTMAIL_CLUSTER_LOCK_TIMEOUT:-1800}"
IDENTITIES_FILE="${VIRTMAIL_CLUSTER_IDENTITIES_FILE:-$SCRIPT_DIR/identities.conf}"

# Versions, for -X version stamping (must match tools/kube/go.mod and tools/helm/go.mod).
KUBE_VERSION="v1.37.2"
HELM_VERSION="v4.3.1"
CONTAINERD_VERSION="v2.4.2"
# Bump when the way binaries are built changes, so cached binaries are rebuilt.
RECIPE="2"

STATE="$CLUSTER_DIR"
LOCK_FILE="$CLUSTER_DIR.lock"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# build

find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return; fi
  if command -v go >/dev/null 2>&1; then command -v go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  return 1
}

hash_files() { cat "$@" | sha256sum | cut -c1-16; }

# key <module dir>: the cache key of the binaries built from that module.
module_key() {
  local dir="$SCRIPT_DIR/$1"
  { hash_files "$dir/go.mod" "$dir/go.sum"; echo "recipe=$RECIPE"; echo "$1"; } | sha256sum | cut -c1-16
}

# progress <name> <total>: `go build -v` names each package as it is compiled (cached ones are
# not named); turn that into a progress line every 100 packages or 15 seconds. Compiler errors
# pass through.
progress() {
  local name="$1" total="$2" n=0 t0=$SECONDS last=$SECONDS line
  while IFS= read -r line; do
    if [[ "$line" == "#"* || "$line" == "go: "* || "$line" == *".go:"[0-9]* || "$line" == $'\t'* ]]; then
      printf '%s\n' "$line" >&2
      continue
    fi
    n=$((n + 1))
    if (( n % 100 == 0 || SECONDS - last >= 15 )); then
      log "$name: compiled $n packages (of $total deps), $((SECONDS - t0))s"
      last=$SECONDS
    fi
  done
  log "$name: compiled $n packages, linked, $((SECONDS - t0))s"
}

# build_one <module> <package> <binary> <ldflags>
build_one() {
  local module="$1" pkg="$2" name="$3" ldflags="$4"
  local key; key="$(module_key "$module")"
  local out="$TOOLS_BIN/$name" stamp="$TOOLS_BIN/.$name.key"
  if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
    log "$name: up to date (pin $key)"
    return 0
  fi
  mkdir -p "$TOOLS_BIN"
  local shared=""
  if [[ "$SHARED_CACHE" != "off" ]]; then
    shared="$SHARED_CACHE/$key/$name"
    if [[ -x "$shared" ]]; then
      log "$name: copying from shared cache $shared"
      touch "$(dirname "$shared")" 2>/dev/null || true
      cp -f "$shared" "$out.tmp.$$" && mv -f "$out.tmp.$$" "$out"
      echo "$key" >"$stamp"
      return 0
    fi
  fi
  local go; go="$(find_go)" || die "Go toolchain not found: building $name needs Go >= 1.26 (set GO=/path/to/go or put go on PATH; /usr/local/go/bin/go is also tried)"
  local started=$SECONDS total
  log "$name: building $pkg (pin $key); this takes minutes from a cold Go cache"
  total="$(cd "$SCRIPT_DIR/$module" && CGO_ENABLED=0 "$go" list -mod=readonly -tags "${BUILD_TAGS:-}" -deps "$pkg" | wc -l)" \
    || die "$name: 'go list' failed in tools/$module (module download needs the Go module proxy)"
  # `go build -v` names each package as it is compiled; turn that into periodic progress lines.
  local rc=0
  (cd "$SCRIPT_DIR/$module" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
      "$go" build -v -trimpath -tags "${BUILD_TAGS:-}" -ldflags="-s -w $ldflags" -o "$out.tmp.$$" "$pkg" 2>&1) \
    | progress "$name" "$total" || rc=$?
  if [[ $rc -ne 0 || ! -x "$out.tmp.$$" ]]; then
    rm -f "$out.tmp.$$"
    die "$name: go build failed (see output above)"
  fi
  mv -f "$out.tmp.$$" "$out"
  echo "$key" >"$stamp"
  if [[ -n "$shared" ]]; then
    mkdir -p "$(dirname "$shared")" && cp -f "$out" "$shared.tmp.$$" && mv -f "$shared.tmp.$$" "$shared" || true
  fi
  log "$name: built in $((SECONDS - started))s, $(du -h "$out" | cut -f1)"
}

# The monitoring.coreos.com CRDs of the pinned Prometheus Operator release, from its Go module
# (the module proxy is the only source of it here), into $TOOLS_BIN/../crds/.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
fetch_monitoring_crds() {
  local out="$TOOLS_BIN/../crds" stamp
  stamp="$out/.prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
  [[ -f "$stamp" ]] && { log "monitoring CRDs: up to date ($PROMETHEUS_OPERATOR_VERSION)"; return 0; }
  local go dir; go="$(find_go)" || die "Go toolchain not found: fetching the Prometheus Operator CRDs needs Go"
  dir="$(cd "$SCRIPT_DIR/chart" && "$go" mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" \
    || die "cannot download github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
  mkdir -p "$out"
  local kind
  for kind in podmonitors servicemonitors prometheusrules; do
    cp -f "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out/" \
      || die "the Prometheus Operator module has no CRD for $kind"
  done
  touch "$stamp"
  log "monitoring CRDs: copied from prometheus-operator $PROMETHEUS_OPERATOR_VERSION into $out"
}

cmd_build() {
  local kv="k8s.io/component-base/version"
  local kmaj kmin
  kmaj="$(echo "$KUBE_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')"
  kmin="$(echo "$KUBE_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
  local kflags="-X $kv.gitVersion=$KUBE_VERSION -X $kv.gitMajor=$kmaj -X $kv.gitMinor=$kmin -X $kv.gitTreeState=clean -X $kv.buildDate=1970-01-01T00:00:00Z"
  # client-go carries its own copy of the version variables.
  kflags="$kflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$kmaj -X k8s.io/client-go/pkg/version.gitMinor=$kmin"
  local hflags="-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  local t0=$SECONDS
  build_one kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$kflags"
  build_one kube k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$kflags"
  build_one kube k8s.io/kubernetes/cmd/kubectl kubectl "$kflags"
  build_one kube k8s.io/kubernetes/cmd/kubelet kubelet "$kflags"
  build_one kube k8s.io/kubernetes/cmd/kube-scheduler kube-scheduler "$kflags"
  build_one kube k8s.io/kubernetes/cmd/kube-proxy kube-proxy "$kflags"
  build_one helm helm.sh/helm/v4/cmd/helm helm "$hflags"
  # etcd: a release kube-apiserver supports (its watch-progress requests let it serve consistent
  # lists from its cache, as in a real cluster).
  build_one etcd go.etcd.io/etcd/server/v3 etcd ""
  # containerd 2.x for the node (pure Go; the snapshotters that need C libraries left out).
  local cflags="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
  BUILD_TAGS="no_btrfs no_devmapper no_zfs" build_one containerd github.com/containerd/containerd/v2/cmd/containerd containerd "$cflags"
  BUILD_TAGS="no_btrfs no_devmapper no_zfs" build_one containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 containerd-shim-runc-v2 "$cflags"
  BUILD_TAGS="no_btrfs no_devmapper no_zfs" build_one containerd github.com/containerd/containerd/v2/cmd/ctr ctr "$cflags"
  # The chart's tooling: helm-docs (charts/virtmail/README.md), and the Prometheus Operator's
  # CRDs the chart's PodMonitor, ServiceMonitor and PrometheusRule are tested against.
  build_one chart github.com/norwoodj/helm-docs/cmd/helm-docs helm-docs ""
  fetch_monitoring_crds
  # Forget shared-cache entries of old pins not used for two weeks.
  if [[ "$SHARED_CACHE" != "off" && -d "$SHARED_CACHE" ]]; then
    find "$SHARED_CACHE" -mindepth 1 -maxdepth 1 -type d -mtime +14 -exec rm -rf {} + 2>/dev/null || true
  fi
  log "build: done in $((SECONDS - t0))s; binaries in $TOOLS_BIN"
}

# ---------------------------------------------------------------------------------------------
# binaries

find_etcd() {
  if [[ -n "${VIRTMAIL_ETCD:-}" ]]; then [[ -x "$VIRTMAIL_ETCD" ]] && echo "$VIRTMAIL_ETCD"; return; fi
  if [[ -x "$TOOLS_BIN/etcd" ]]; then echo "$TOOLS_BIN/etcd"; return; fi
  if command -v etcd >/dev/null 2>&1; then command -v etcd; return; fi
  return 1
}

need_binaries() {
  local missing=() b key
  for b in etcd:etcd kube:kube-apiserver kube:kube-controller-manager kube:kubectl helm:helm chart:helm-docs; do
    key="$(module_key "${b%%:*}")"; b="${b#*:}"
    if [[ ! -x "$TOOLS_BIN/$b" || "$(cat "$TOOLS_BIN/.$b.key" 2>/dev/null)" != "$key" ]]; then missing+=("$b"); fi
  done
  [[ -f "$TOOLS_BIN/../crds/.prometheus-operator-$PROMETHEUS_OPERATOR_VERSION" ]] || missing+=("monitoring CRDs")
  if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ "${VIRTMAIL_CLUSTER_NO_BUILD:-0}" == 1 ]]; then
      die "missing or stale: ${missing[*]} in $TOOLS_BIN (run tools/cluster.sh build; VIRTMAIL_CLUSTER_NO_BUILD=1 forbids building here)"
    fi
    log "missing or stale: ${missing[*]}; building"
    cmd_build
  fi
  find_etcd >/dev/null || die "etcd not found${VIRTMAIL_ETCD:+ at VIRTMAIL_ETCD=$VIRTMAIL_ETCD}: run tools/cluster.sh build (it builds etcd into $TOOLS_BIN) or set VIRTMAIL_ETCD=/path/to/etcd"
  command -v openssl >/dev/null || die "openssl not found (apt-get install -y openssl)"
  command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
}

# ---------------------------------------------------------------------------------------------
# processes (tracked by pid + kernel start time, so a recycled pid is never signalled)

# Kernel start time of a live process (empty for a missing or zombie one: PID 1 on some machines
# never reaps, so a killed component can linger as a zombie).
proc_start() { awk '{ sub(/^.*\) /, ""); if ($1 != "Z" && $1 != "X") print $20 }' "/proc/$1/stat" 2>/dev/null; }

# alive <name>: is the recorded process still the one we started?
alive() {
  local f="$STATE/pids/$1"
  [[ -f "$f" ]] || return 1
  local pid st
  read -r pid st <"$f" || return 1
  [[ -n "$pid" && -d "/proc/$pid" && "$(proc_start "$pid")" == "$st" ]]
}

pid_of() { awk '{print $1}' "$STATE/pids/$1" 2>/dev/null; }

# start <name> <binary> args...: detached, all fds redirected (a caller reading our stdout must
# not wait for the plane), the lock fd closed (the plane must not hold the lock).
start() {
  local name="$1"; shift
  mkdir -p "$STATE/pids" "$STATE/logs"
  setsid "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 9>&- &
  local pid=$!
  local st=""
  for _ in 1 2 3 4 5 6 7 8 9 10; do st="$(proc_start "$pid")"; [[ -n "$st" ]] && break; sleep 0.05; done
  echo "$pid $st" >"$STATE/pids/$name"
  log "$name: started pid $pid (log $STATE/logs/$name.log)"
}

stop() {
  local name="$1"
  if alive "$name"; then
    local pid; pid="$(pid_of "$name")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do alive "$name" || break; sleep 0.1; done
    if alive "$name"; then
      log "$name: pid $pid did not stop on TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$name" || break; sleep 0.1; done
    fi
    log "$name: stopped pid $pid"
  fi
  rm -f "$STATE/pids/$name"
}

# ---------------------------------------------------------------------------------------------
# ports, certificates, identities

used_ports() {
  # Local ports of every TCP socket (listening or connected), IPv4 and IPv6, from the kernel
  # tables: a port some outgoing connection holds cannot be bound either.
  local _sl local_addr _rest
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | while read -r _sl local_addr _rest; do
    [[ "$local_addr" == *:* ]] && echo $((16#${local_addr##*:}))
  done | sort -un
}

# A port for the plane, below the kernel's ephemeral range (where outgoing connections take
# their local ports at any moment: etcd once failed to bind a port picked there) and not in use.
free_port() {
  local low _high
  read -r low _high </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
  (( low > 21000 )) || die "the ephemeral port range starts at $low; the plane needs ports 20000-$((low - 1)) free of it"
  local used; used=" $(used_ports | tr '\n' ' ') ${TAKEN_PORTS:-} "
  for _ in $(seq 1 200); do
    local p=$(( 20000 + (RANDOM * 32768 + RANDOM) % (low - 20000) ))
    if [[ "$used" != *" $p "* ]]; then TAKEN_PORTS="${TAKEN_PORTS:-} $p"; echo "$p"; return; fi
  done
  die "no free loopback port found"
}

gen_certs() {
  local d="$STATE/pki"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=virtmail-test-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    cat >apiserver.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EOF
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # Front proxy (request-header authentication): not used by the project, but without it the
    # controller-manager's delegated authentication logs an error about a missing CA forever.
    openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt \
      -days 3650 -subj "/CN=virtmail-front-proxy-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr \
      -subj "/CN=front-proxy-client" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
      -CAcreateserial -days 3650 -extfile client.ext -out front-proxy-client.crt 2>/dev/null
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 600 ./*.key
  ) || die "openssl failed generating certificates in $d"
}

# Identities: "name user [group,group...]" lines from tools/identities.conf, plus
# VIRTMAIL_CLUSTER_IDENTITIES ("name=user[;name=user...]", service accounts get their groups).
read_identities() {
  {
    [[ -f "$IDENTITIES_FILE" ]] && grep -vE '^\s*(#|$)' "$IDENTITIES_FILE" | awk '{print $1, $2}'
    if [[ -n "${VIRTMAIL_CLUSTER_IDENTITIES:-}" ]]; then
      echo "$VIRTMAIL_CLUSTER_IDENTITIES" | tr ';, ' '\n\n\n' | grep -v '^$' | sed 's/=/ /'
    fi
  } | awk '!seen[$1]++'
}

groups_for() {
  local user="$1"
  if [[ "$user" == system:serviceaccount:*:* ]]; then
    local ns="${user#system:serviceaccount:}"; ns="${ns%%:*}"
    echo "system:serviceaccounts,system:serviceaccounts:$ns"
  fi
}

new_token() { openssl rand -hex 24; }

# write_kubeconfig FILE USER TOKEN SERVER: a kubeconfig with a bearer token.
write_kubeconfig() {
  write_kubeconfig_with "$1" "$2" "$4" "    token: $3"
}

# write_kubeconfig_with FILE USER SERVER CREDENTIALS: CREDENTIALS are the `user:` lines (a
# token, or a client certificate and key), indented four spaces.
write_kubeconfig_with() {
  local file="$1" user="$2" server="$3" credentials="$4"
  local ca; ca="$(base64 -w0 "$STATE/pki/ca.crt")"
  # Private from the start, without changing the umask the plane's processes inherit.
  install -m 600 /dev/null "$file"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: virtmail
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: $user
  user:
$credentials
contexts:
- name: virtmail
  context:
    cluster: virtmail
    user: $user
    namespace: default
current-context: virtmail
EOF
}

env_name() { echo "VIRTMAIL_KUBECONFIG_$(echo "$1" | tr 'a-z-' 'A-Z_')"; }

# One `export NAME=value` line each; values are shell-quoted with printf %q (plain paths print
# unchanged).
export_line() { printf 'export %s=%q\n' "$1" "$2"; }

print_env() {
  local kc="$STATE/kubeconfig"
  export_line KUBECONFIG "$kc/admin.kubeconfig"
  export_line VIRTMAIL_KUBECONFIG_ADMIN "$kc/admin.kubeconfig"
  while read -r name _user; do
    export_line "$(env_name "$name")" "$kc/$name.kubeconfig"
  done <"$STATE/identities"
  export_line VIRTMAIL_CLUSTER_SERVER "$(cat "$STATE/server")"
  export_line VIRTMAIL_KUBECTL "$TOOLS_BIN/kubectl"
  export_line VIRTMAIL_HELM "$TOOLS_BIN/helm"
  if node_enabled; then node_print_env; fi
}

# ---------------------------------------------------------------------------------------------
# health

curl_api() {
  curl -sS --max-time 5 --cacert "$STATE/pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$STATE/admin.token")" "$(cat "$STATE/server")$1"
}

api_ready() { [[ -f "$STATE/server" ]] && [[ "$(curl_api /readyz 2>/dev/null)" == "ok" ]]; }

kcm_healthy() {
  [[ -f "$STATE/ports" ]] || return 1
  local p; p="$(awk '$1 == "kcm" {print $2}' "$STATE/ports")"
  [[ "$(curl -sk --max-time 5 "https://127.0.0.1:$p/healthz" 2>/dev/null)" == "ok" ]]
}

running() {
  alive etcd && alive kube-apiserver && alive kube-controller-manager && api_ready \
    && { ! node_enabled || node_running; }
}

# Identities requested now must all exist in the running plane's token file.
identities_match() {
  local want; want="$(read_identities)"
  while read -r name user; do
    [[ -z "$name" ]] && continue
    grep -qx "$name $user" "$STATE/identities" || { log "identity $name ($user) is not in the running plane"; return 1; }
  done <<<"$want"
}

wait_for() {
  local what="$1" check="$2" comp="$3" deadline=$((SECONDS + START_TIMEOUT))
  until $check; do
    if ! alive "$comp"; then
      log "$comp exited; last lines of $STATE/logs/$comp.log:"
      tail -n 30 "$STATE/logs/$comp.log" >&2 || true
      die "$comp failed to start"
    fi
    if (( SECONDS > deadline )); then
      tail -n 30 "$STATE/logs/$comp.log" >&2 || true
      die "timed out after ${START_TIMEOUT}s waiting for $what"
    fi
    sleep 0.2
  done
}

etcd_healthy() {
  local p; p="$(awk '$1 == "etcd" {print $2}' "$STATE/ports")"
  curl -s --max-time 2 "http://127.0.0.1:$p/health" 2>/dev/null | grep -q '"health":"true"'
}

# The object itself (a 404's body also names "default", in its details).
default_sa_exists() { curl_api /api/v1/namespaces/default/serviceaccounts/default 2>/dev/null | grep -q '"kind": *"ServiceAccount"'; }

# ---------------------------------------------------------------------------------------------
# up / down / status

stop_all() {
  node_down
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
}

do_up() {
  if running; then
    if ((WANT_NODE)) && ! node_enabled; then
      die "the plane in $STATE has no node; run 'tools/cluster.sh down' first or choose another VIRTMAIL_CLUSTER_DIR"
    fi
    if identities_match; then
      log "reusing running plane at $(cat "$STATE/server")"
      print_env
      return 0
    fi
    die "a plane is running with a different identity set; run 'tools/cluster.sh down' first (or list every identity in tools/identities.conf)"
  fi
  if [[ -d "$STATE" ]]; then
    log "stale or partial state in $STATE; cleaning up (its logs go to $CLUSTER_DIR.last-logs)"
    stop_all
    keep_logs
    rm -rf "$STATE"
  fi
  need_binaries
  if ((WANT_NODE)); then node_preflight; node_binaries; fi
  local etcd_bin; etcd_bin="$(find_etcd)"
  local t0; t0="$(date +%s.%N)"
  mkdir -p "$STATE"/{pids,logs,kubeconfig,etcd,kcm}
  chmod 700 "$STATE" "$STATE/etcd"
  # A node plane serves on the node's address: pods reach it through the `kubernetes` Service.
  local api_host=127.0.0.1
  if ((WANT_NODE)); then
    # Traversable (not readable): the volumes below are read on the host as mailbox uids.
    chmod 711 "$STATE"
    touch "$STATE/node-enabled"
    mkdir -p "$STATE/node"
    node_net_up
    api_host="$NODE_IP"
  fi

  TAKEN_PORTS=""
  local p_etcd p_peer p_api p_kcm
  p_etcd="$(free_port)"; p_peer="$(free_port)"; p_api="$(free_port)"; p_kcm="$(free_port)"
  printf 'etcd %s\netcd-peer %s\napiserver %s\nkcm %s\n' "$p_etcd" "$p_peer" "$p_api" "$p_kcm" >"$STATE/ports"
  echo "https://$api_host:$p_api" >"$STATE/server"

  gen_certs
  if node_enabled; then gen_node_certs; fi

  # Static tokens: admin (system:masters), the controller-manager, one per identity.
  local admin_token kcm_token
  admin_token="$(new_token)"; kcm_token="$(new_token)"
  echo "$admin_token" >"$STATE/admin.token"
  {
    echo "$admin_token,virtmail-admin,virtmail-admin,\"system:masters\""
    echo "$kcm_token,system:kube-controller-manager,system:kube-controller-manager"
  } >"$STATE/tokens.csv"
  read_identities >"$STATE/identities"
  write_kubeconfig "$STATE/kubeconfig/admin.kubeconfig" virtmail-admin "$admin_token" "https://$api_host:$p_api"
  write_kubeconfig "$STATE/kubeconfig/kube-controller-manager.kubeconfig" system:kube-controller-manager "$kcm_token" "https://$api_host:$p_api"
  if node_enabled; then node_tokens "https://$api_host:$p_api"; fi
  while read -r name user; do
    local tok groups; tok="$(new_token)"; groups="$(groups_for "$user")"
    if [[ -n "$groups" ]]; then
      echo "$tok,$user,$user,\"$groups\"" >>"$STATE/tokens.csv"
    else
      echo "$tok,$user,$user" >>"$STATE/tokens.csv"
    fi
    write_kubeconfig "$STATE/kubeconfig/$name.kubeconfig" "$user" "$tok" "https://$api_host:$p_api"
  done <"$STATE/identities"
  chmod 600 "$STATE/tokens.csv" "$STATE/admin.token"

  start_etcd "$etcd_bin" "$p_etcd" "$p_peer"
  wait_for "etcd /health" etcd_healthy etcd

  start_apiserver "$p_etcd" "$p_api"
  local pki="$STATE/pki"
  wait_for "kube-apiserver /readyz" api_ready kube-apiserver
  local t_ready; t_ready="$(date +%s.%N)"
  echo "$t0 $t_ready" >"$STATE/startup-times"

  start kube-controller-manager "$TOOLS_BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kubeconfig/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/kubeconfig/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/kubeconfig/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$p_kcm" --cert-dir "$STATE/kcm" \
    --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --controllers "${VIRTMAIL_KCM_CONTROLLERS:-*,bootstrap-signer-controller,token-cleaner-controller}" \
    --leader-elect=false \
    --profiling=false \
    --v 1
  wait_for "kube-controller-manager /healthz" kcm_healthy kube-controller-manager
  wait_for "the default ServiceAccount (controller-manager working)" default_sa_exists kube-controller-manager
  if node_enabled; then node_up; fi
  log "plane up at https://$api_host:$p_api: apiserver ready $(awk '{printf "%.1f", $2 - $1}' "$STATE/startup-times")s after start, all up $(awk -v t="$(date +%s.%N)" '{printf "%.1f", t - $1}' "$STATE/startup-times")s"
  print_env
}

# etcd on the plane's recorded ports and data directory (also used by restart-etcd: a member
# restarted on its data directory ignores the --initial-* flags).
start_etcd() {
  local etcd_bin="$1" p_etcd="$2" p_peer="$3"
  start etcd "$etcd_bin" \
    --name virtmail --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$p_etcd" --advertise-client-urls "http://127.0.0.1:$p_etcd" \
    --listen-peer-urls "http://127.0.0.1:$p_peer" --initial-advertise-peer-urls "http://127.0.0.1:$p_peer" \
    --initial-cluster "virtmail=http://127.0.0.1:$p_peer" --initial-cluster-state new \
    --auto-compaction-mode periodic --auto-compaction-retention 1h \
    --quota-backend-bytes "${VIRTMAIL_ETCD_QUOTA_BYTES:-$((2 * 1024 * 1024 * 1024))}" --log-level warn --logger zap
}

# kube-apiserver on the plane's recorded ports (also used by start-apiserver).
start_apiserver() {
  local p_etcd="$1" p_api="$2" pki="$STATE/pki"
  # Without a node nothing runs in the cluster network: loopback only, and the `kubernetes`
  # Service has no endpoints. With one, the apiserver serves on the node's address, which the
  # lease reconciler publishes as that Service's endpoint, and talks to the kubelet as itself.
  local node_flags=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none)
  if node_enabled; then
    node_flags=(--bind-address "$NODE_IP" --advertise-address "$NODE_IP" --endpoint-reconciler-type lease
      --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key"
      --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP)
  fi
  start kube-apiserver "$TOOLS_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$p_etcd" \
    "${node_flags[@]}" --secure-port "$p_api" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --service-account-issuer "$(cat "$STATE/server")" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --token-auth-file "$STATE/tokens.csv" \
    --profiling=false \
    --v 1
}

port_of() { awk -v n="$1" '$1 == n {print $2}' "$STATE/ports"; }

# Stop only kube-apiserver (fault injection: etcd and the controller-manager keep running).
cmd_stop_apiserver() {
  running_component kube-apiserver
  stop kube-apiserver
}

# Start kube-apiserver again on the same port, with the same state.
cmd_start_apiserver() {
  [[ -f "$STATE/ports" ]] || die "no plane in $STATE"
  alive kube-apiserver && { log "kube-apiserver already running"; return 0; }
  start_apiserver "$(port_of etcd)" "$(port_of apiserver)"
  wait_for "kube-apiserver /readyz" api_ready kube-apiserver
}

# Stop etcd (the apiserver keeps running and answers errors), wait SECONDS, start it again on
# the same data directory, and wait until the apiserver is ready again.
cmd_restart_etcd() {
  local down="${1:-3}"
  running_component etcd
  stop etcd
  sleep "$down"
  start_etcd "$(find_etcd)" "$(port_of etcd)" "$(port_of etcd-peer)"
  wait_for "etcd /health" etcd_healthy etcd
  wait_for "kube-apiserver /readyz" api_ready kube-apiserver
}

running_component() { alive "$1" || die "$1 is not running in $STATE"; }

with_lock() {
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 9>>"$LOCK_FILE"
  if ! flock -n 9; then
    log "waiting for the lock $LOCK_FILE (another cluster.sh is running)"
    flock -w "$LOCK_TIMEOUT" 9 || die "timed out waiting for $LOCK_FILE"
  fi
  "$@"
}

# The logs of the last plane outlive it in target/cluster.last-logs/, for post-mortems.
keep_logs() {
  if [[ -d "$STATE/logs" ]]; then
    rm -rf "$CLUSTER_DIR.last-logs" && mv "$STATE/logs" "$CLUSTER_DIR.last-logs" || true
  fi
}

cmd_down() {
  node_down
  if [[ -d "$STATE/pids" ]]; then stop_all; fi
  keep_logs
  if [[ -d "$STATE" ]]; then rm -rf --one-file-system "$STATE"; log "removed $STATE"; else log "no plane in $STATE"; fi
}

cmd_env() {
  running || die "no running plane in $STATE (run tools/cluster.sh up)"
  print_env
}

rss_kb() { awk '/^VmRSS:/ {print $2; found = 1} END {if (!found) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }

cmd_status() {
  if [[ ! -d "$STATE" ]]; then echo "not running (no state in $STATE)"; return 3; fi
  local n=0
  for c in etcd kube-apiserver kube-controller-manager; do
    if alive "$c"; then
      local pid; pid="$(pid_of "$c")"; n=$((n + 1))
      printf '%-24s running  pid %-7s rss %6s MiB\n' "$c" "$pid" "$(( $(rss_kb "$pid" || echo 0) / 1024 ))"
    else
      printf '%-24s stopped\n' "$c"
    fi
  done
  [[ -f "$STATE/ports" ]] && sed 's/^/port /' "$STATE/ports"
  if api_ready; then echo "apiserver $(cat "$STATE/server") readyz ok"; else echo "apiserver readyz: not ready"; fi
  if kcm_healthy; then echo "controller-manager healthz ok"; else echo "controller-manager healthz: not ok"; fi
  [[ -f "$STATE/identities" ]] && sed 's/^/identity /' "$STATE/identities"
  if node_enabled; then node_status; node_running || return 1; fi
  if (( n == 3 )) && api_ready; then return 0; fi
  if (( n == 0 )); then return 3; fi
  return 1
}

source "$SCRIPT_DIR/node.sh"

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  build)  with_lock cmd_build ;;
  up)     with_lock do_up ;;
  down)   with_lock cmd_down ;;
  env)    cmd_env ;;
  status) cmd_status ;;
  stop-apiserver)  with_lock cmd_stop_apiserver ;;
  start-apiserver) with_lock cmd_start_apiserver ;;
  restart-etcd)    with_lock cmd_restart_etcd "${2:-3}" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
