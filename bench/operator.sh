#!/usr/bin/env bash
# Operator benchmark (not a test): time from creating N Mailbox objects to the directory with all
# of them being published, time from one Mailbox edit to the next directory version, and the
# operator's peak RSS. Runs against a private real control plane (tools/cluster.sh).
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
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "| mailboxes | create → published (s) | one edit → new version (s) | operator peak RSS (MiB) |"
echo "|---|---|---|---|"
for n in "${SIZES[@]}"; do
  ns="bench-$n"
  "$K" create namespace "$ns" >/dev/null
  KUBECONFIG="$VIRTMAIL_KUBECONFIG_OPERATOR" RUST_LOG=warn "$OP" run --namespace "$ns" --http 127.0.0.1:0 \
    --lease-name "bench-$n" >"$W/op-$n.log" 2>&1 &
  echo $! >"$W/op.pid"
  printf 'apiVersion: virtmail.io/v1alpha1\nkind: MailServer\nmetadata: {name: mail}\nspec: {}\n---\napiVersion: virtmail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: bench}\nspec: {domain: bench.test, postmaster: u0@bench.test, defaults: {uid: 5000, gid: 5000}}\n' | "$K" -n "$ns" apply -f - >/dev/null
  python3 - "$n" >"$W/mailboxes-$n.yaml" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print("---\napiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: u%d}\nspec: {address: u%d@bench.test}" % (i, i))
PY
  start=$(now)
  "$K" -n "$ns" create -f "$W/mailboxes-$n.yaml" >/dev/null
  until [[ "$("$K" -n "$ns" get mailserver mail -o jsonpath='{.status.mailboxes}')" == "$n" ]]; do sleep 0.2; done
  published=$(python3 -c "print($(now) - $start)")
  before="$("$K" -n "$ns" get mailserver mail -o jsonpath='{.status.directory.version}')"
  start=$(now)
  "$K" -n "$ns" patch mailbox u7 --type=merge -p '{"spec":{"suspended":true}}' >/dev/null
  until [[ "$("$K" -n "$ns" get mailserver mail -o jsonpath='{.status.directory.version}')" != "$before" ]]; do sleep 0.05; done
  edit=$(python3 -c "print($(now) - $start)")
  rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$(cat "$W/op.pid")/status")
  printf '| %s | %.1f | %.2f | %s |\n' "$n" "$published" "$edit" "$rss"
  kill "$(cat "$W/op.pid")"; wait "$(cat "$W/op.pid")" 2>/dev/null || true
done
echo "command: bench/operator.sh ${SIZES[*]}"
