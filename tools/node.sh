# tools/node.sh — one Kubernetes node beside the plane: containerd + runc, CNI, kubelet,
# kube-scheduler, kube-proxy and a hostPath storage provisioner. Sourced by tools/cluster.sh
# (`up --node`, `down`, `status`); see tools/README.md ("The node").
#
# Network (machine-wide, one node per machine; `down` removes all of it):
#   NODE_LINK   a bridge without ports holding the node address, and the route of the service
#               range: a packet for a service address that kube-proxy did not rewrite ends there
#   CNI_BRIDGE  the pods' bridge (the CNI bridge plugin adds pods to it), gateway .1 of POD_CIDR
#   FW_CHAIN    iptables filter chain jumped to first from FORWARD: pods may reach other pods;
#               nothing from a pod is forwarded anywhere else, nothing else is forwarded to a pod
# Pods still reach the node (INPUT) and services (DNAT to a pod, or to the node for the
# `kubernetes` Service).

NODE_NAME="${VIRTMAIL_NODE_NAME:-virtmail-node}"
NODE_IP="${VIRTMAIL_NODE_IP:-10.250.0.1}"
POD_CIDR="${VIRTMAIL_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="10.0.0.0/24"
NODE_LINK="virtmail-node"
CNI_BRIDGE="virtmail-cni0"
CNI_NETWORK="virtmail-pods"
FW_CHAIN="VIRTMAIL-NODE"
CGROUP_NAME="virtmail-node"
STORAGE_CLASS="standard"
PROVISIONER="virtmail.dev/hostpath"
NODE_OWNER_FILE="/run/virtmail-node.owner"
CNI_BIN_DIR="${VIRTMAIL_CNI_BIN_DIR:-/usr/lib/cni}"

# The archives tools/images.sh writes (same default and override as there).
IMAGES_DIR="${VIRTMAIL_IMAGES_DIR:-$ROOT/target/images}"
NODE="$STATE/node"
NODE_SOCK="$NODE/run/containerd.sock"
NODE_STORAGE="$STATE/storage"

# first_address CIDR: the first host address of an IPv4 range.
first_address() { local net="${1%/*}"; echo "${net%.*}.$(( ${net##*.} + 1 ))"; }
# The pods' gateway (the bridge's own address); the `kubernetes` Service's address.
pod_gateway() { first_address "$POD_CIDR"; }
KUBERNETES_SERVICE_IP="$(first_address "$SERVICE_CIDR")"

node_enabled() { [[ -f "$STATE/node-enabled" ]]; }

# ---------------------------------------------------------------------------------------------
# preflight: say what is missing before touching anything

node_preflight() {
  local missing=()
  [[ "$(id -u)" == 0 ]] || die "up --node: run as root (the node creates network links, cgroups and mounts)"
  command -v runc >/dev/null || missing+=("runc (apt-get install runc)")
  local p
  for p in bridge host-local loopback portmap; do
    [[ -x "$CNI_BIN_DIR/$p" ]] || missing+=("CNI plugin $CNI_BIN_DIR/$p (apt-get install containernetworking-plugins)")
  done
  command -v iptables >/dev/null || missing+=("iptables (apt-get install iptables)")
  command -v conntrack >/dev/null || missing+=("conntrack (apt-get install conntrack)")
  command -v ip >/dev/null || missing+=("ip (apt-get install iproute2)")
  command -v python3 >/dev/null || missing+=("python3 (the storage provisioner)")
  grep -qw overlay /proc/filesystems || missing+=("overlayfs in this kernel (containerd's snapshotter)")
  local c
  for c in cpu memory pids devices freezer; do
    [[ -d "/sys/fs/cgroup/$c" || -f /sys/fs/cgroup/cgroup.controllers ]] || missing+=("the cgroup controller '$c' mounted under /sys/fs/cgroup")
  done
  [[ -d /proc/sys/net/bridge ]] || missing+=("bridge netfilter (/proc/sys/net/bridge; modprobe br_netfilter)")
  if ((${#missing[@]} == 0)) && command -v iptables >/dev/null; then
    iptables -w 5 -S FORWARD >/dev/null 2>&1 || missing+=("a working iptables (iptables -S FORWARD failed: no netfilter permission?)")
  fi
  if ((${#missing[@]} == 0)) && ! ip link show "$NODE_LINK" >/dev/null 2>&1; then
    if ip link add vmprobe0 type bridge 2>/dev/null; then ip link del vmprobe0; else missing+=("permission to create network links (ip link add ... type bridge failed)"); fi
  fi
  if ((${#missing[@]})); then
    local m msg="containers cannot run on this machine; missing:"
    for m in "${missing[@]}"; do msg+=$'\n'"  - $m"; done
    die "$msg"
  fi
  # One node per machine: its links, chain and cgroup are machine-wide.
  if [[ -f "$NODE_OWNER_FILE" ]]; then
    local owner; owner="$(cat "$NODE_OWNER_FILE")"
    if [[ "$owner" != "$STATE" && -f "$owner/node-enabled" ]]; then
      die "a node of another plane ($owner) is running on this machine; stop it first (VIRTMAIL_CLUSTER_DIR=$owner tools/cluster.sh down)"
    fi
  fi
}

node_binaries() {
  local missing=() b
  for b in kube:kubelet kube:kube-scheduler kube:kube-proxy containerd:containerd containerd:containerd-shim-runc-v2 containerd:ctr; do
    local key; key="$(module_key "${b%%:*}")"; b="${b#*:}"
    if [[ ! -x "$TOOLS_BIN/$b" || "$(cat "$TOOLS_BIN/.$b.key" 2>/dev/null)" != "$key" ]]; then missing+=("$b"); fi
  done
  if ((${#missing[@]})); then
    [[ "${VIRTMAIL_CLUSTER_NO_BUILD:-0}" == 1 ]] && die "missing or stale: ${missing[*]} in $TOOLS_BIN (run tools/cluster.sh build)"
    log "missing or stale: ${missing[*]}; building"
    cmd_build
  fi
  if [[ ! -f "$IMAGES_DIR/pause.oci.tar" ]]; then
    log "building the pod sandbox image (tools/images.sh build pause)"
    "$SCRIPT_DIR/images.sh" build pause || die "the pause image could not be built"
  fi
}

# ---------------------------------------------------------------------------------------------
# network

sysctl_set() {
  local key="$1" value="$2" file="/proc/sys/${1//.//}"
  [[ -f "$file" ]] || return 0
  local old; old="$(cat "$file")"
  if [[ "$old" != "$value" ]]; then
    grep -q "^$key " "$NODE/sysctl.orig" 2>/dev/null || echo "$key $old" >>"$NODE/sysctl.orig"
    echo "$value" >"$file" || die "cannot set $key=$value"
  fi
}

node_net_up() {
  local gw; gw="$(pod_gateway)"
  ip link show "$NODE_LINK" >/dev/null 2>&1 || ip link add "$NODE_LINK" type bridge
  ip addr replace "$NODE_IP/32" dev "$NODE_LINK"
  ip link set "$NODE_LINK" up
  ip route replace "$SERVICE_CIDR" dev "$NODE_LINK" src "$NODE_IP"
  # The pods' bridge exists before the first pod, so the pod range is routed here from the start.
  ip link show "$CNI_BRIDGE" >/dev/null 2>&1 || ip link add "$CNI_BRIDGE" type bridge
  ip addr replace "$gw/${POD_CIDR#*/}" dev "$CNI_BRIDGE"
  ip link set "$CNI_BRIDGE" up
  local link
  for link in "$NODE_LINK" "$CNI_BRIDGE"; do
    sysctl_set "net.ipv6.conf.$link.disable_ipv6" 1
  done
  sysctl_set net.ipv4.ip_forward 1
  sysctl_set net.bridge.bridge-nf-call-iptables 1
  iptables -w 5 -N "$FW_CHAIN" 2>/dev/null || iptables -w 5 -F "$FW_CHAIN"
  iptables -w 5 -A "$FW_CHAIN" -s "$POD_CIDR" -d "$POD_CIDR" -j ACCEPT -m comment --comment "virtmail node: pod to pod"
  iptables -w 5 -A "$FW_CHAIN" -s "$POD_CIDR" -j DROP -m comment --comment "virtmail node: pods reach nothing off the node"
  iptables -w 5 -A "$FW_CHAIN" -d "$POD_CIDR" -j DROP -m comment --comment "virtmail node: nothing off the node reaches a pod"
  iptables -w 5 -C FORWARD -j "$FW_CHAIN" 2>/dev/null || iptables -w 5 -I FORWARD 1 -j "$FW_CHAIN"
}

node_net_down() {
  if command -v iptables >/dev/null; then
    while iptables -w 5 -D FORWARD -j "$FW_CHAIN" 2>/dev/null; do :; done
    iptables -w 5 -F "$FW_CHAIN" 2>/dev/null || true
    iptables -w 5 -X "$FW_CHAIN" 2>/dev/null || true
  fi
  if [[ -x "$TOOLS_BIN/kube-proxy" ]]; then
    "$TOOLS_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  local link
  for link in "$CNI_BRIDGE" "$NODE_LINK"; do
    ip link del "$link" 2>/dev/null || true
  done
  if [[ -f "$NODE/sysctl.orig" ]]; then
    local key value
    while read -r key value; do
      echo "$value" >"/proc/sys/${key//.//}" 2>/dev/null || true
    done <"$NODE/sysctl.orig"
  fi
}

# ---------------------------------------------------------------------------------------------
# cgroups: every process of the node (containerd, its shims, every container) lives below
# CGROUP_NAME in each hierarchy, so `down` stops exactly what the node started.

cgroup_dirs() {
  local d
  for d in /sys/fs/cgroup/*/; do
    [[ -f "$d/cgroup.procs" ]] && echo "${d%/}"
  done
  [[ -f /sys/fs/cgroup/cgroup.procs ]] && echo /sys/fs/cgroup
}

node_cgroups_up() {
  local d
  while read -r d; do mkdir -p "$d/$CGROUP_NAME" 2>/dev/null || true; done < <(cgroup_dirs)
  # cpuset children start empty in cgroup v1: inherit the parent's cpus and memory nodes.
  if [[ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP_NAME/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP_NAME/cpuset.mems"
  fi
}

# The pids of the node's cgroup tree (pids hierarchy; every process of the node is in it).
node_cgroup_pids() {
  local root="/sys/fs/cgroup/pids/$CGROUP_NAME"
  [[ -d "$root" ]] || root="/sys/fs/cgroup/$CGROUP_NAME"
  [[ -d "$root" ]] || return 0
  find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}

# Move a process (and so its future children) into the node's cgroup in every hierarchy.
node_cgroup_join() {
  local pid="$1" d
  while read -r d; do
    [[ -d "$d/$CGROUP_NAME" ]] && echo "$pid" >"$d/$CGROUP_NAME/cgroup.procs" 2>/dev/null || true
  done < <(cgroup_dirs)
}

node_cgroups_down() {
  local pids round
  for round in $(seq 1 50); do
    pids="$(node_cgroup_pids)"
    [[ -z "$pids" ]] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  [[ -n "$(node_cgroup_pids)" ]] && log "node: processes still in cgroup $CGROUP_NAME: $(node_cgroup_pids | tr '\n' ' ')"
  local d
  while read -r d; do
    [[ -d "$d/$CGROUP_NAME" ]] && find "$d/$CGROUP_NAME" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done < <(cgroup_dirs)
}

# Unmount everything below a directory, deepest first (tmpfs of secrets and projected volumes,
# overlay roots, network namespaces).
unmount_below() {
  local dir="$1" m
  [[ -d "$dir" ]] || return 0
  dir="$(cd "$dir" && pwd -P)"
  for _ in 1 2 3; do
    local mounts
    mounts="$(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)"
    [[ -z "$mounts" ]] && return 0
    while read -r m; do
      umount "$(printf '%b' "$m")" 2>/dev/null || umount -l "$(printf '%b' "$m")" 2>/dev/null || true
    done <<<"$mounts"
  done
}

# ---------------------------------------------------------------------------------------------
# configuration files

gen_node_certs() {
  local d="$STATE/pki"
  (
    cd "$d"
    # kubelet's client identity (Node authorizer: system:node:<name> in system:nodes).
    openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr \
      -subj "/O=system:nodes/CN=system:node:$NODE_NAME" 2>/dev/null
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out kubelet-client.crt 2>/dev/null
    # kubelet's serving certificate (the apiserver verifies it for logs, exec, port-forward).
    openssl req -newkey rsa:2048 -nodes -keyout kubelet.key -out kubelet.csr -subj "/CN=$NODE_NAME" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:%s\n' \
      "$NODE_IP" "$NODE_NAME" >kubelet.ext
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile kubelet.ext -out kubelet.crt 2>/dev/null
    # The apiserver's client identity towards kubelets (bound to system:kubelet-api-admin).
    openssl req -newkey rsa:2048 -nodes -keyout apiserver-kubelet-client.key -out apiserver-kubelet-client.csr \
      -subj "/CN=kube-apiserver-kubelet-client" 2>/dev/null
    openssl x509 -req -in apiserver-kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out apiserver-kubelet-client.crt 2>/dev/null
    chmod 600 ./*.key
  ) || die "openssl failed generating the node's certificates in $d"
}

write_node_config() {
  local p_kubelet="$1" p_kubelet_health="$2" p_proxy_health="$3" p_proxy_metrics="$4"
  mkdir -p "$NODE"/{containerd/root,run,cni/net.d,cni/ipam,kubelet,pod-logs,etc}
  local gw; gw="$(pod_gateway)"
  cat >"$NODE/etc/containerd.toml" <<EOF
version = 3
root = "$NODE/containerd/root"
state = "$NODE/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$NODE_SOCK"
[ttrpc]
  address = "$NODE/run/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$("$SCRIPT_DIR/images.sh" tag pause)"

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: never ask runc to lower a process's oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = false
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$NODE/cni/net.d"
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
  cat >"$NODE/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$gw"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # No name server: a pod's lookup of any name fails on the node (127.0.0.1 in the pod's own
  # network namespace answers nothing) instead of leaving the machine.
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$NODE/etc/resolv.conf"
  cat >"$NODE/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $p_kubelet
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $p_kubelet_health
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$NODE_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_NAME
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
resolvConf: $NODE/etc/resolv.conf
clusterDNS: []
podLogsDir: $NODE/pod-logs
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
enableDebuggingHandlers: true
EOF
  cat >"$NODE/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kubeconfig/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
healthzBindAddress: 127.0.0.1:$p_proxy_health
metricsBindAddress: 127.0.0.1:$p_proxy_metrics
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {minSyncPeriod: 0s, syncPeriod: 30s}
EOF
}

# ---------------------------------------------------------------------------------------------
# start / wait / stop

# ctr's stderr without containerd's notice that cgroup v1 is deprecated (this host has v1).
quiet_ctr() { grep -v 'support for cgroup v1 is deprecated' >&2 || true; }

containerd_ready() { [[ -S "$NODE_SOCK" ]] && "$TOOLS_BIN/ctr" --address "$NODE_SOCK" version >/dev/null 2>&1; }

node_kubectl() { "$TOOLS_BIN/kubectl" --kubeconfig "$STATE/kubeconfig/admin.kubeconfig" "$@"; }

node_ready() {
  [[ "$(node_kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

health_ok() { [[ "$(curl -sk --max-time 3 "$1" 2>/dev/null)" == ok ]]; }
kubelet_healthy() { health_ok "http://127.0.0.1:$(port_of kubelet-healthz)/healthz"; }
proxy_healthy() { curl -s --max-time 3 "http://127.0.0.1:$(port_of kube-proxy-healthz)/healthz" 2>/dev/null | grep -q lastUpdated; }
scheduler_healthy() { health_ok "https://127.0.0.1:$(port_of kube-scheduler)/healthz"; }

NODE_COMPONENTS=(containerd kubelet kube-scheduler kube-proxy node-provisioner)

node_running() {
  node_enabled || return 1
  local c
  for c in "${NODE_COMPONENTS[@]}"; do alive "$c" || return 1; done
  node_ready
}

# node_up: after the plane is up (the apiserver already listens on NODE_IP).
node_up() {
  local t0=$SECONDS
  # containerd creates the image layers' directories with it: a container's / must be 0755.
  umask 022
  echo "$STATE" >"$NODE_OWNER_FILE"
  node_cgroups_up
  local p_kubelet p_kh p_ph p_pm p_sched
  p_kubelet="$(free_port)"; p_kh="$(free_port)"; p_ph="$(free_port)"; p_pm="$(free_port)"; p_sched="$(free_port)"
  printf 'kubelet %s\nkubelet-healthz %s\nkube-proxy-healthz %s\nkube-proxy-metrics %s\nkube-scheduler %s\n' \
    "$p_kubelet" "$p_kh" "$p_ph" "$p_pm" "$p_sched" >>"$STATE/ports"
  write_node_config "$p_kubelet" "$p_kh" "$p_ph" "$p_pm"
  write_kubeconfig_with "$STATE/kubeconfig/kubelet.kubeconfig" "system:node:$NODE_NAME" "$(cat "$STATE/server")" \
    "    client-certificate-data: $(base64 -w0 "$STATE/pki/kubelet-client.crt")
    client-key-data: $(base64 -w0 "$STATE/pki/kubelet-client.key")"

  # containerd finds its shim and runc on PATH; the shims it starts stay in its cgroup.
  PATH="$TOOLS_BIN:$PATH" start containerd "$TOOLS_BIN/containerd" --config "$NODE/etc/containerd.toml" --log-level warn
  node_cgroup_join "$(pid_of containerd)"
  wait_for "containerd ($NODE_SOCK)" containerd_ready containerd
  "$TOOLS_BIN/ctr" --address "$NODE_SOCK" --namespace k8s.io images import "$IMAGES_DIR/pause.oci.tar" >/dev/null 2> >(quiet_ctr) \
    || die "importing the pause image into containerd failed"
  local img
  for img in operator agent postfix; do
    if [[ -f "$IMAGES_DIR/$img.oci.tar" ]]; then
      "$TOOLS_BIN/ctr" --address "$NODE_SOCK" --namespace k8s.io images import "$IMAGES_DIR/$img.oci.tar" >/dev/null 2> >(quiet_ctr) \
        || die "importing $IMAGES_DIR/$img.oci.tar into containerd failed"
    fi
  done

  node_kubectl apply --server-side --field-manager virtmail-node -f - >/dev/null <<EOF || die "could not create the node's RBAC and StorageClass"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "virtmail-node:apiserver-kubelet-client"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver-kubelet-client}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "virtmail-node:provisioner"}
rules:
- {apiGroups: [""], resources: [persistentvolumeclaims], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [persistentvolumes], verbs: [get, list, watch, create]}
- {apiGroups: [storage.k8s.io], resources: [storageclasses], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "virtmail-node:provisioner"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "virtmail-node:provisioner"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "virtmail-node-provisioner"}]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $STORAGE_CLASS
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: $PROVISIONER
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
EOF

  start kubelet "$TOOLS_BIN/kubelet" --config "$NODE/etc/kubelet.yaml" \
    --kubeconfig "$STATE/kubeconfig/kubelet.kubeconfig" --root-dir "$NODE/kubelet" \
    --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --v 1
  start kube-scheduler "$TOOLS_BIN/kube-scheduler" \
    --kubeconfig "$STATE/kubeconfig/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/kubeconfig/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/kubeconfig/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$p_sched" --leader-elect=false --v 1
  start kube-proxy "$TOOLS_BIN/kube-proxy" --config "$NODE/etc/kube-proxy.yaml" --v 1
  mkdir -p "$NODE_STORAGE" && chmod 711 "$NODE_STORAGE"
  start node-provisioner python3 "$SCRIPT_DIR/node_provisioner.py" \
    --kubectl "$TOOLS_BIN/kubectl" --kubeconfig "$STATE/kubeconfig/node-provisioner.kubeconfig" \
    --provisioner "$PROVISIONER" --node "$NODE_NAME" --storage "$NODE_STORAGE"

  wait_for "kubelet /healthz" kubelet_healthy kubelet
  wait_for "kube-scheduler /healthz" scheduler_healthy kube-scheduler
  wait_for "kube-proxy /healthz" proxy_healthy kube-proxy
  wait_for "node $NODE_NAME Ready" node_ready kubelet
  log "node $NODE_NAME Ready at $NODE_IP in $((SECONDS - t0)) s (pods $POD_CIDR, services $SERVICE_CIDR, storage $NODE_STORAGE)"
}

# Extra identities of a node plane (static tokens, like the controller-manager's).
node_tokens() {
  local tok
  tok="$(new_token)"; echo "$tok,system:kube-scheduler,system:kube-scheduler" >>"$STATE/tokens.csv"
  write_kubeconfig "$STATE/kubeconfig/kube-scheduler.kubeconfig" system:kube-scheduler "$tok" "$1"
  tok="$(new_token)"; echo "$tok,system:kube-proxy,system:kube-proxy" >>"$STATE/tokens.csv"
  write_kubeconfig "$STATE/kubeconfig/kube-proxy.kubeconfig" system:kube-proxy "$tok" "$1"
  tok="$(new_token)"; echo "$tok,virtmail-node-provisioner,virtmail-node-provisioner" >>"$STATE/tokens.csv"
  write_kubeconfig "$STATE/kubeconfig/node-provisioner.kubeconfig" virtmail-node-provisioner "$tok" "$1"
}

node_down() {
  [[ -d "$NODE" || -f "$STATE/node-enabled" ]] || return 0
  stop node-provisioner
  stop kube-scheduler
  stop kubelet
  stop kube-proxy
  stop containerd
  node_cgroups_down
  unmount_below "$NODE"
  unmount_below "$NODE_STORAGE"
  node_net_down
  # What kubelet and the CNI library write outside the node's directory regardless.
  rm -rf "/var/lib/cni/results/$CNI_NETWORK"-* "/var/lib/cni/networks/$CNI_NETWORK" 2>/dev/null || true
  local l
  for l in /var/log/containers/*.log; do
    [[ -L "$l" && "$(readlink "$l")" == "$NODE/"* ]] && rm -f "$l"
  done
  if [[ -f "$NODE_OWNER_FILE" && "$(cat "$NODE_OWNER_FILE")" == "$STATE" ]]; then rm -f "$NODE_OWNER_FILE"; fi
  if [[ -d "$NODE" ]]; then
    rm -rf --one-file-system "$NODE" 2>/dev/null || log "node: some of $NODE could not be removed"
  fi
  log "node: stopped; links, iptables chain, cgroups and mounts removed"
}

node_status() {
  local c
  for c in "${NODE_COMPONENTS[@]}"; do
    if alive "$c"; then
      local pid; pid="$(pid_of "$c")"
      printf '%-24s running  pid %-7s rss %6s MiB\n' "$c" "$pid" "$(( $(rss_kb "$pid" || echo 0) / 1024 ))"
    else
      printf '%-24s stopped\n' "$c"
    fi
  done
  if node_ready; then echo "node $NODE_NAME Ready ($NODE_IP)"; else echo "node $NODE_NAME: not Ready"; fi
}

node_print_env() {
  export_line VIRTMAIL_NODE_NAME "$NODE_NAME"
  export_line VIRTMAIL_NODE_IP "$NODE_IP"
  export_line VIRTMAIL_NODE_STORAGE "$NODE_STORAGE"
  export_line VIRTMAIL_NODE_CONTAINERD "$NODE_SOCK"
  export_line VIRTMAIL_CTR "$TOOLS_BIN/ctr"
}
