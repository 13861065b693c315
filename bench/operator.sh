#!/usr/bin/env bash
# Operator benchmark (not a test): time from creating N Mailbox objects to the directory with all
# of them being published (the head ConfigMap's summary says mailboxes=N), time from one Mailbox
# edit to the next directory version, and the operator's peak RSS. Runs against a private real
# control plane (tools/cluster.sh). Baseline in the same run: how long the apiserver takes to
# accept the N creates (4 kubectl processes in parallel); "lag" is published minus that.
#   bench/operator.sh [N ...]          default: 1000 10000
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SIZES=("${@:-1000 10000}")
# shellcheck disable=SC2206
SIZES=(${SIZES[*]})
export VIRTMAIL_CLUSTER_DIR="$ROOT/target/bench-operator/cluster"
W="$ROOT/target/bench-operator"
mkdir -p "$W"
cd "$ROOT"
cargo build --quiet --release --bin virtmail-operator
OP="$ROOT/target/release/virtmail-operator"
eval "$(tools/cluster.sh up)"
K="$VIRTMAIL_KUBECTL"
trap 'kill "$(cat "$W/op.pid" 2>/dev/null)" 2>/dev/null || true; tools/cluster.sh down >/dev/null 2>&1 || true' EXIT
"$K" apply --server-side -f crds/ >/dev/null
"$K" create namespace virtmail-system >/dev/null 2>&1 || true
"$OP" rbac | "$K" apply -f - >/dev/null

now() { date +%s.%N; }
start_operator() { # N NAMESPACE LOG-SUFFIX
  KUBECONFIG="$VIRTMAIL_KUBECONFIG_OPERATOR" RUST_LOG="${RUST_LOG:-warn}" "$OP" run --namespace "$2" --http 127.0.0.1:0 \
    --lease-name "bench-$1" >"$W/op-$1-$3.log" 2>&1 &
  echo $! >"$W/op.pid"
}
stop_operator() {
  kill "$(cat "$W/op.pid")"; wait "$(cat "$W/op.pid")" 2>/dev/null || true
}
peak_rss() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$(cat "$W/op.pid")/status"; }
version() { "$K" -n "$1" get mailserver mail -o jsonpath='{.status.directory.version}'; } # NAMESPACE
wait_new_version() { # NAMESPACE VERSION-BEFORE
  until [[ "$(version "$1")" != "$2" ]]; do sleep 0.05; done
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "| mailboxes | creates accepted (s, baseline) | create → published (s) | lag after last create (s) | one edit → new version (s) | operator peak RSS (MiB) | cold start → published (s) | cold start peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|---|"
for n in "${SIZES[@]}"; do
  ns="bench-$n"
  "$K" create namespace "$ns" >/dev/null
  start_operator "$n" "$ns" warm
  printf 'apiVersion: virtmail.io/v1alpha1\nkind: MailServer\nmetadata: {name: mail}\nspec: {}\n---\napiVersion: virtmail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: bench}\nspec: {domain: bench.test, postmaster: u0@bench.test, defaults: {uid: 5000, gid: 5000}}\n' | "$K" -n "$ns" apply -f - >/dev/null
  rm -f "$W/part-$n."*
  python3 - "$n" "$W/part-$n" <<'PY'
import sys
n, prefix = int(sys.argv[1]), sys.argv[2]
parts = [open("%s.%d.yaml" % (prefix, p), "w") for p in range(4)]
for i in range(n):
    parts[i % 4].write("---\napiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: u%d}\nspec: {address: u%d@bench.test}\n" % (i, i))
PY
  start=$(now)
  (
    for part in "$W/part-$n."*; do "$K" -n "$ns" create -f "$part" >/dev/null & done
    wait
    python3 -c "print($(now) - $start)" >"$W/created-$n"
  ) &
  waiter=$!
  until "$K" -n "$ns" get configmap mail-directory -o jsonpath='{.data.summary}' 2>/dev/null | grep -q "mailboxes=$n "; do
    sleep 0.5
  done
  published=$(python3 -c "print($(now) - $start)")
  wait "$waiter"
  created=$(cat "$W/created-$n")
  before="$(version "$ns")"
  start=$(now)
  "$K" -n "$ns" patch mailbox u7 --type=merge -p '{"spec":{"suspended":true}}' >/dev/null
  wait_new_version "$ns" "$before"
  edit=$(python3 -c "print($(now) - $start)")
  rss=$(peak_rss)
  stop_operator
  # Cold start: an operator started against N existing Mailboxes, one of them edited while no
  # operator ran, until the directory with that edit is published (list, compile, apply).
  before="$(version "$ns")"
  "$K" -n "$ns" patch mailbox u8 --type=merge -p '{"spec":{"suspended":true}}' >/dev/null
  start=$(now)
  start_operator "$n" "$ns" cold
  wait_new_version "$ns" "$before"
  cold=$(python3 -c "print($(now) - $start)")
  cold_rss=$(peak_rss)
  stop_operator
  lag=$(python3 -c "print(max(0.0, $published - $created))")
  printf '| %s | %.1f | %.1f | %.1f | %.2f | %s | %.1f | %s |\n' "$n" "$created" "$published" "$lag" "$edit" "$rss" "$cold" "$cold_rss"
done
echo "command: bench/operator.sh ${SIZES[*]}"
