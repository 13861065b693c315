#!/usr/bin/env bash
# Operator benchmark (not a test): time from creating N Mailbox objects to the directory with all
# of them being published (the head ConfigMap's summary says mailboxes=N), time from a Mailbox
# edit to the next directory version (median and p99 of VIRTMAIL_BENCH_EDITS back-to-back edits,
# default 100), the operator's CPU time and reconciles per edit, and its peak RSS; then Mailboxes created and
# deleted one at a time (VIRTMAIL_BENCH_CHANGES of each, default 20), from the stored change to
# the head ConfigMap, with the operator's CPU time per change. Runs against a private real
# control plane (tools/cluster.sh). Baseline in the same run: how long the apiserver takes to
# accept the N creates (4 kubectl processes in parallel); "lag" is published minus that. After
# each N, the size of etcd's data directory and the apiserver's peak RSS (the plane grows with
# every N: both are totals so far), what a larger installation scales from.
#   bench/operator.sh [N ...]          default: 1000 10000
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
SIZES=("${@:-1000 10000}")
# shellcheck disable=SC2206
SIZES=(${SIZES[*]})
bench_plane "$ROOT/target/bench-operator"

peak_rss() { peak_mib "$(op_pid)"; }
cpu_seconds() { cpu_seconds_of "$(op_pid)"; } # the operator's
version() { "$K" -n "$1" get mailserver mail -o jsonpath='{.status.directory.version}'; } # NAMESPACE
wait_new_version() { # NAMESPACE VERSION-BEFORE
  until [[ "$(version "$1")" != "$2" ]]; do sleep 0.05; done
}
# One timed change: watches on the head ConfigMap and the MailServer are opened first (so that
# seeing the new version costs no kubectl start-up), then kubectl runs the change (its stdin is
# the function's); prints "change→MailServer-status kubectl-call change→head" seconds. The head is
# the publication agents read; the MailServer's status reports it after one more write.
timed_change() { # NAMESPACE KUBECTL-ARGS...
  local ns="$1" before v start called fd hfd watcher hwatcher at_head
  shift
  before="$(version "$ns")"
  exec {fd}< <("$K" -n "$ns" get mailserver mail -w -o jsonpath='{.status.directory.version}{"\n"}' </dev/null)
  watcher=$!
  exec {hfd}< <("$K" -n "$ns" get configmap mail-directory -w -o jsonpath='{.data.version}{"\n"}' </dev/null)
  hwatcher=$!
  read -r -u "$fd" v # the watches are up: their first line is the current state
  read -r -u "$hfd" v
  start=$(now)
  "$K" -n "$ns" "$@" >/dev/null
  called=$(now)
  while read -r -u "$hfd" v; do [[ -n "$v" && "$v" != "$before" ]] && break; done
  at_head=$(now)
  while read -r -u "$fd" v; do [[ -n "$v" && "$v" != "$before" ]] && break; done
  python3 -c "print($(now) - $start, $called - $start, $at_head - $start)"
  kill "$watcher" "$hwatcher" 2>/dev/null || true
  exec {fd}<&- {hfd}<&-
}
timed_edit() { # NAMESPACE MAILBOX: suspend it
  timed_change "$1" patch mailbox "$2" --type=merge -p '{"spec":{"suspended":true}}' </dev/null
}
# CHANGES creations of new Mailboxes, then CHANGES deletions, one at a time (0.2 s apart); one
# row per kind: from the stored change (kubectl's answer) to the head ConfigMap, median and p99,
# and the operator's CPU time per change.
change_rows() { # N NAMESPACE
  local kind e t c h cpu_before cpu stored
  for kind in create delete; do
    stored=()
    cpu_before=$(cpu_seconds)
    for ((e = 0; e < CHANGES; e++)); do
      if [[ $kind == create ]]; then
        read -r t c h < <(printf 'apiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: new%d}\nspec: {address: new%d@bench.test}\n' "$e" "$e" \
          | timed_change "$2" create -f -)
      else
        read -r t c h < <(timed_change "$2" delete mailbox "u$((10 + 2 * e))" </dev/null)
      fi
      stored+=("$(python3 -c "print($h - $c)")")
      sleep 0.2
    done
    sleep 1 # the last change's member status
    cpu=$(python3 -c "print(($(cpu_seconds) - $cpu_before) * 1000 / $CHANGES)")
    printf '| %s | %s | %.3f | %.3f | %.1f |\n' "$1" "$kind" "$(median "${stored[@]}")" "$(percentile 99 "${stored[@]}")" "$cpu" >>"$W/changes"
    echo "  $1 ${kind}s, stored → head (s): ${stored[*]}" >&2
  done
}
ready() { # NAMESPACE MAILBOX
  [[ "$("$K" -n "$1" get mailbox "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
machine_line
EDITS="${VIRTMAIL_BENCH_EDITS:-100}"
CHANGES="${VIRTMAIL_BENCH_CHANGES:-20}"
: >"$W/changes"
echo "| mailboxes | creates accepted (s, baseline) | create → published (s) | lag after last create (s) | create → every member Ready (s) | first edit → new version (s) | edit → new version, median of $EDITS (s) | p99 (s) | kubectl patch call, median (s, baseline) | edit stored → new version, median (s) | p99 (s) | edit stored → head ConfigMap, median (s) | p99 (s) | operator CPU per edit (ms) | reconciles per edit | operator peak RSS (MiB) | cold start → published (s) | cold start peak RSS (MiB) | etcd data (MiB) | apiserver peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for n in "${SIZES[@]}"; do
  ns="bench-$n"
  "$K" create namespace "$ns" >/dev/null
  start_operator "$ns" "bench-$n" "$W/op-$n-warm.log"
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
  # The first edit lands while the members' Ready statuses are still being written.
  read -r first _ < <(timed_edit "$ns" u7)
  # Members' statuses are written oldest first: the last created being Ready means all are.
  for i in 1 2 3 4; do until ready "$ns" "u$((n - i))"; do sleep 0.5; done; done
  all_ready=$(python3 -c "print($(now) - $start)")
  # Back-to-back self-service edits, each of another Mailbox; the operator's CPU time over the
  # whole series (the edited Mailboxes' status writes included) divided by the edits.
  edits=() calls=() heads=()
  cpu_before=$(cpu_seconds)
  reconciles_before=$(metric_of "$(op_pid)" virtmail_operator_reconciles_total)
  for ((e = 0; e < EDITS; e++)); do
    read -r t c h < <(timed_edit "$ns" "u$((9 + 2 * e))")
    edits+=("$t") calls+=("$c") heads+=("$h")
    sleep 0.2
  done
  sleep 1 # the last edit's member status
  cpu_per_edit=$(python3 -c "print(($(cpu_seconds) - $cpu_before) * 1000 / $EDITS)")
  reconciles=$(python3 -c "print(($(metric_of "$(op_pid)" virtmail_operator_reconciles_total) - $reconciles_before) / $EDITS)")
  edit=$(median "${edits[@]}") p99=$(percentile 99 "${edits[@]}") call=$(median "${calls[@]}")
  # From the apiserver's answer to the patch (the edit is stored) to the new version.
  accepted=() to_head=()
  for ((e = 0; e < EDITS; e++)); do
    accepted+=("$(python3 -c "print(${edits[e]} - ${calls[e]})")")
    to_head+=("$(python3 -c "print(${heads[e]} - ${calls[e]})")")
  done
  acc_median=$(median "${accepted[@]}") acc_p99=$(percentile 99 "${accepted[@]}")
  head_median=$(median "${to_head[@]}") head_p99=$(percentile 99 "${to_head[@]}")
  echo "  $n edits (s): ${edits[*]}; patch calls (s): ${calls[*]}; to the head (s): ${heads[*]}" >&2
  change_rows "$n" "$ns"
  rss=$(peak_rss)
  stop_operator
  # Cold start: an operator started against N existing Mailboxes, one of them edited while no
  # operator ran, until the directory with that edit is published (list, compile, apply).
  before="$(version "$ns")"
  "$K" -n "$ns" patch mailbox u8 --type=merge -p '{"spec":{"suspended":true}}' >/dev/null
  start=$(now)
  start_operator "$ns" "bench-$n" "$W/op-$n-cold.log"
  wait_new_version "$ns" "$before"
  cold=$(python3 -c "print($(now) - $start)")
  cold_rss=$(peak_rss)
  stop_operator
  lag=$(python3 -c "print(max(0.0, $published - $created))")
  printf '| %s | %.1f | %.1f | %.1f | %.1f | %.2f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f | %.2f | %s | %.1f | %s | %s | %s |\n' "$n" "$created" "$published" "$lag" "$all_ready" "$first" "$edit" "$p99" "$call" "$acc_median" "$acc_p99" "$head_median" "$head_p99" "$cpu_per_edit" "$reconciles" "$rss" "$cold" "$cold_rss" "$(etcd_mib)" "$(apiserver_peak_rss)"
done
echo
echo "Mailboxes created and deleted one at a time ($CHANGES of each):"
echo
echo "| mailboxes | change | stored → head ConfigMap, median (s) | p99 (s) | operator CPU per change (ms) |"
echo "|---|---|---|---|---|"
cat "$W/changes"
echo "command: bench/operator.sh ${SIZES[*]}"
