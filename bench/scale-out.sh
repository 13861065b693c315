#!/usr/bin/env bash
# Scale-out benchmark (not a test): TOTAL Mailboxes over SERVERS MailServers in one namespace (each
# server selects one MailDomain by label), created in rounds of STEP by 4 kubectl processes in
# parallel, against a private real control plane and the release operator. After every round: the
# round's create rate, how long the operator then took to publish every server's directory, etcd's
# database size (and the part in use) and data directory, and the apiserver's and the operator's
# memory. The run stops at TOTAL or at the first thing that breaks, and says which:
#   - a create refused (its error, e.g. etcd's "database space exceeded"),
#   - etcd, the apiserver or the operator gone,
#   - the machine's available memory under VIRTMAIL_BENCH_MIN_FREE_MIB (default 3072; the run
#     stops before the kernel kills something),
#   - the operator not publishing a round within VIRTMAIL_BENCH_PUBLISH_TIMEOUT s (default 600).
# VIRTMAIL_BENCH_MAX_MINUTES (default: none) ends the creating after the round that passes it,
# for a run that must fit a session; that is said, and is not a break.
# Unless etcd refused a write or a component is gone, then: once the last round's members are
# Ready (the operator's status writes done, at most 10 minutes), VIRTMAIL_BENCH_EDITS (default 5)
# Mailbox edits, each timed from the stored edit to its server's head ConfigMap (seen by a watch
# opened before it), and a cold start (the operator restarted against everything, timed to an
# edited server's new version, with its peak RSS).
#   bench/scale-out.sh [TOTAL [SERVERS [STEP]]]      default: 1000000 10 50000
# etcd's quota is tools/cluster.sh's (2 GiB; VIRTMAIL_ETCD_QUOTA_BYTES moves it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
TOTAL="${1:-1000000}" SERVERS="${2:-10}" STEP="${3:-50000}"
MIN_FREE_MIB="${VIRTMAIL_BENCH_MIN_FREE_MIB:-3072}"
PUBLISH_TIMEOUT="${VIRTMAIL_BENCH_PUBLISH_TIMEOUT:-600}"
MAX_MINUTES="${VIRTMAIL_BENCH_MAX_MINUTES:-}"
EDITS="${VIRTMAIL_BENCH_EDITS:-5}"
NS=scale
bench_plane "$ROOT/target/bench-scale"
"$K" create namespace "$NS" >/dev/null

alive() { kill -0 "$1" 2>/dev/null; } # PID
free_mib() { awk '/MemAvailable/ {printf "%.0f", $2/1024}' /proc/meminfo; }
# Mailboxes in the published directories of all servers (the heads' summaries).
published() {
  { "$K" -n "$NS" get configmap $(for ((s = 0; s < SERVERS; s++)); do echo "mail-$s-directory"; done) \
    -o jsonpath='{range .items[*]}{.data.summary}{"\n"}{end}' 2>/dev/null || true; } \
    | sed -n 's/.*mailboxes=\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}'
}
head_version() { "$K" -n "$NS" get configmap "$1-directory" -o jsonpath='{.data.version}'; } # SERVER
# What broke, if anything did; empty while everything runs.
broken() {
  alive "$(plane_pid etcd)" || { echo "etcd exited"; return; }
  alive "$(plane_pid kube-apiserver)" || { echo "kube-apiserver exited"; return; }
  alive "$(op_pid)" || { echo "the operator exited: $(tail -3 "$W/op-warm.log")"; return; }
  (($(free_mib) >= MIN_FREE_MIB)) || echo "machine memory: $(free_mib) MiB available, under the $MIN_FREE_MIB MiB floor"
}

for ((s = 0; s < SERVERS; s++)); do
  printf -- '---\napiVersion: virtmail.io/v1alpha1\nkind: MailServer\nmetadata: {name: mail-%d}\nspec: {domainSelector: {matchLabels: {bench/server: "%d"}}}\n' "$s" "$s"
  printf -- '---\napiVersion: virtmail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: d%d, labels: {bench/server: "%d"}}\nspec: {domain: d%d.test, postmaster: u0@d%d.test, defaults: {uid: 5000, gid: 5000}}\n' "$s" "$s" "$s" "$s"
done | "$K" -n "$NS" apply -f - >/dev/null
start_operator "$NS" bench-scale "$W/op-warm.log"

machine_line
echo "bench/scale-out.sh $TOTAL $SERVERS $STEP   (etcd quota $(( ${VIRTMAIL_ETCD_QUOTA_BYTES:-2147483648} / 1048576 )) MiB)"
echo
echo "| mailboxes | round: creates/s | round published after (s) | etcd database (MiB) | in use (MiB) | etcd data dir (MiB) | apiserver RSS / peak (MiB) | operator RSS / peak (MiB) | operator CPU so far (s) | machine available (MiB) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
created=0 broke="" hard="" stopped="" run_start=$(now)
while ((created < TOTAL)); do
  round=$((TOTAL - created < STEP ? TOTAL - created : STEP))
  python3 - "$created" "$round" "$SERVERS" "$W/part" <<'PY'
import sys
first, count, servers, prefix = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
parts = [open("%s.%d.yaml" % (prefix, p), "w") for p in range(4)]
for i in range(first, first + count):
    parts[i % 4].write("---\napiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: u%d}\nspec: {address: u%d@d%d.test}\n" % (i, i, i % servers))
PY
  start=$(now)
  pids=()
  for p in 0 1 2 3; do
    "$K" -n "$NS" create -f "$W/part.$p.yaml" >/dev/null 2>"$W/create.$p.err" &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  rate=$(python3 -c "print(round($round / ($(now) - $start)))")
  if ((failed)); then
    # (Counting what this round created would mean listing every Mailbox: at 450,000 kubectl
    # printed nothing within 200 s.)
    broke="a create refused in the round after $created Mailboxes: $(cat "$W"/create.*.err | grep -m1 -i error || true)"
    hard=1
    break
  fi
  created=$((created + round))
  round_end=$(now)
  published_after=""
  until (($(published) >= created)); do
    broke="$(broken)"
    [[ -n "$broke" ]] && break 2
    if (($(python3 -c "print(int($(now) - $round_end > $PUBLISH_TIMEOUT))"))); then
      broke="the operator did not publish $created Mailboxes within $PUBLISH_TIMEOUT s (published: $(published))"
      break 2
    fi
    sleep 1
  done
  published_after=$(python3 -c "print(round($(now) - $round_end, 1))")
  api=$(plane_pid kube-apiserver)
  printf '| %d | %s | %s | %s | %s | %s | %s / %s | %s / %s | %.0f | %s |\n' "$created" "$rate" "$published_after" \
    "$(etcd_metric etcd_mvcc_db_total_size_in_bytes)" "$(etcd_metric etcd_mvcc_db_total_size_in_use_in_bytes)" "$(etcd_mib)" \
    "$(rss_mib "$api")" "$(peak_mib "$api")" "$(rss_mib "$(op_pid)")" "$(peak_mib "$(op_pid)")" \
    "$(cpu_seconds_of "$(op_pid)")" "$(free_mib)"
  broke="$(broken)"
  [[ -n "$broke" ]] && break
  if [[ -n "$MAX_MINUTES" ]] && (($(python3 -c "print(int($(now) - $run_start > $MAX_MINUTES * 60))"))); then
    stopped="the time budget (VIRTMAIL_BENCH_MAX_MINUTES=$MAX_MINUTES) ended the creating at $created Mailboxes"
    break
  fi
done
echo
components_alive() { alive "$(plane_pid etcd)" && alive "$(plane_pid kube-apiserver)" && alive "$(op_pid)"; }
if [[ -n "$broke" ]]; then
  echo "broke first: $broke"
  if alive "$(plane_pid kube-apiserver)"; then
    echo "apiserver RSS $(rss_mib "$(plane_pid kube-apiserver)") MiB (peak $(peak_mib "$(plane_pid kube-apiserver)")), etcd database $(etcd_metric etcd_mvcc_db_total_size_in_bytes) MiB"
  fi
  if [[ -n "$hard" ]] || ! components_alive; then exit 0; fi
  echo "writes still work: the edits and the cold start at $created Mailboxes follow"
elif [[ -n "$stopped" ]]; then
  echo "$stopped (nothing broke)"
else
  echo "all $created Mailboxes published over $SERVERS servers"
fi

# The last round's members Ready (each server writes its members' statuses oldest first).
settle_start=$(now) settled="last round's members Ready"
for ((s = 0; s < SERVERS; s++)); do
  last=$((created - 1 - (created - 1 - s + SERVERS) % SERVERS)) # the newest Mailbox of server s
  until [[ "$("$K" -n "$NS" get mailbox "u$last" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]; do
    if (($(python3 -c "print(int($(now) - $settle_start > 600))"))); then
      settled="members not all Ready"
      break 2
    fi
    sleep 2
  done
done
echo "$settled $(python3 -c "print(round($(now) - $settle_start))") s after the last round was published (the edits follow; they run beside status writes while members are not all Ready)"

# Edits: from the stored edit (kubectl's answer) to the new version in its server's head ConfigMap,
# seen by a watch opened before the edit.
times=()
for ((e = 1; e <= EDITS; e++)); do
  server="mail-$((e % SERVERS))"
  before=$(head_version "$server")
  exec {hfd}< <("$K" -n "$NS" get configmap "$server-directory" -w -o jsonpath='{.data.version}{"\n"}' </dev/null)
  hwatcher=$!
  read -r -u "$hfd" v
  "$K" -n "$NS" patch mailbox "u$e" --type=merge -p '{"spec":{"suspended":true}}' >/dev/null
  stored=$(now)
  while read -r -u "$hfd" v; do [[ -n "$v" && "$v" != "$before" ]] && break; done
  times+=("$(python3 -c "print(round($(now) - $stored, 3))")")
  kill "$hwatcher" 2>/dev/null || true
  exec {hfd}<&-
  sleep 0.5
done
echo "edits, stored → head ConfigMap (s): ${times[*]}; median $(median "${times[@]}")"
echo "operator peak RSS while creating: $(peak_mib "$(op_pid)") MiB"
stop_operator

# Cold start: one Mailbox edited while no operator runs, then a new operator against all of them.
cold_box=$((EDITS + 1)) # not among the edited ones
cold_server="mail-$((cold_box % SERVERS))"
before=$(head_version "$cold_server")
"$K" -n "$NS" patch mailbox "u$cold_box" --type=merge -p '{"spec":{"suspended":true}}' >/dev/null
start=$(now)
start_operator "$NS" bench-scale "$W/op-cold.log"
until [[ "$(head_version "$cold_server")" != "$before" ]]; do
  alive "$(op_pid)" || { echo "broke first: the cold-started operator exited: $(tail -3 "$W/op-cold.log")"; exit 0; }
  sleep 0.2
done
cold=$(python3 -c "print(round($(now) - $start, 1))")
# Settle: the other servers' reconciles and the member statuses finish.
sleep 30
echo "cold start → the edited server's new version: $cold s; operator peak RSS $(peak_mib "$(op_pid)") MiB"
echo "apiserver peak RSS $(apiserver_peak_rss) MiB, etcd database $(etcd_metric etcd_mvcc_db_total_size_in_bytes) MiB"
stop_operator
