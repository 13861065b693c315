# Helpers shared by the shell benchmarks (sourced, not run): clocks, statistics, and the memory
# and disk readings of the private control plane and the operator.

now() { date +%s.%N; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(a) for a in sys.argv[1:]))' "$@"; }
percentile() { # P VALUES...: nearest-rank percentile
  python3 -c 'import math,sys; p=float(sys.argv[1]); v=sorted(float(a) for a in sys.argv[2:]); print(v[max(0, math.ceil(p/100*len(v))-1)])' "$@"
}
# Memory of a process in MiB: its peak (VmHWM) or its resident set now (VmRSS).
peak_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; } # PID
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }  # PID
cpu_seconds_of() { # PID: user + system CPU time so far
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
# The private plane's components (tools/cluster.sh records their pids and ports).
plane_pid() { awk '{print $1}' "$VIRTMAIL_CLUSTER_DIR/pids/$1"; } # kube-apiserver | etcd
apiserver_peak_rss() { peak_mib "$(plane_pid kube-apiserver)"; }
etcd_mib() { du -sm "$VIRTMAIL_CLUSTER_DIR/etcd" | cut -f1; } # data directory: database + WAL
etcd_metric() { # NAME: one gauge of etcd's /metrics
  curl -fsS "http://127.0.0.1:$(awk '$1 == "etcd" {print $2}' "$VIRTMAIL_CLUSTER_DIR/ports")/metrics" \
    | awk -v m="$1" '$1 == m {printf "%.0f", $2 / 1048576}'
}
# A gauge or counter of a process's Prometheus endpoint on loopback, found by its pid.
metric_of() { # PID NAME
  local port
  port=$(ss -Hltnp | awk -v pid="pid=$1," 'index($0, pid) {n = split($4, a, ":"); print a[n]; exit}')
  curl -fsS "http://127.0.0.1:$port/metrics" | awk -v m="$2" '$1 == m {print $2}'
}
machine_line() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
}

# A fresh private plane for the bench whose work directory is W (the plane's state in
# $W/cluster), with the release operator built (OP), the CRDs and the operator's RBAC installed,
# and kubectl in K. At exit the operator start_operator started and the plane are stopped.
bench_plane() { # W
  W="$1"
  export VIRTMAIL_CLUSTER_DIR="$W/cluster"
  mkdir -p "$W"
  cd "$ROOT"
  cargo build --quiet --release --bin virtmail-operator
  OP="$ROOT/target/release/virtmail-operator"
  tools/cluster.sh down >/dev/null 2>&1 || true
  eval "$(tools/cluster.sh up)"
  K="$VIRTMAIL_KUBECTL"
  trap 'kill "$(cat "$W/op.pid" 2>/dev/null)" 2>/dev/null || true; tools/cluster.sh down >/dev/null 2>&1 || true' EXIT
  "$K" apply --server-side -f crds/ >/dev/null
  "$K" create namespace virtmail-system >/dev/null 2>&1 || true
  "$OP" rbac | "$K" apply -f - >/dev/null
}
op_pid() { cat "$W/op.pid"; }
start_operator() { # NAMESPACE LEASE-NAME LOG-FILE
  KUBECONFIG="$VIRTMAIL_KUBECONFIG_OPERATOR" RUST_LOG="${RUST_LOG:-warn}" "$OP" run --namespace "$1" \
    --http 127.0.0.1:0 --lease-name "$2" >"$3" 2>&1 &
  echo $! >"$W/op.pid"
}
stop_operator() { kill "$(op_pid)"; wait "$(op_pid)" 2>/dev/null || true; }
