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
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "| mailboxes | creates accepted (s, baseline) | create → published (s) | lag after last create (s) | one edit → new version (s) | operator peak RSS (MiB) |"
echo "|---|---|---|---|---|---|"
for n in "${SIZES[@]}"; do
  ns="bench-$n"
  "$K" create namespace "$ns" >/dev/null
  KUBECONFIG="$VIRTMAIL_KUBECONFIG_OPERATOR" RUST_LOG="${RUST_LOG:-warn}" "$OP" run --namespace "$ns" --http 127.0.0.1:0 \
    --lease-name "bench-$n" >"$W/op-$n.log" 2>&1 &
  echo $! >"$W/op.pid"
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
  before="$("$K" -n "$ns" get mailserver mail -o jsonpath='{.status.directory.version}')"
  start=$(now)
  "$K" -n "$ns" patch mailbox u7 --type=merge -p '{"spec":{"suspended":true}}' >/dev/null
  until [[ "$("$K" -n "$ns" get mailserver mail -o jsonpath='{.status.directory.version}')" != "$before" ]]; do sleep 0.05; done
  edit=$(python3 -c "print($(now) - $start)")
  rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$(cat "$W/op.pid")/status")
  lag=$(python3 -c "print(max(0.0, $published - $created))")
  printf '| %s | %.1f | %.1f | %.1f | %.2f | %s |\n' "$n" "$created" "$published" "$lag" "$edit" "$rss"
  kill "$(cat "$W/op.pid")"; wait "$(cat "$W/op.pid")" 2>/dev/null || true
done
echo "command: bench/operator.sh ${SIZES[*]}"
