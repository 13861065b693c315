#!/usr/bin/env bash
# Fuzz virtmail's parsers with cargo-fuzz (libFuzzer): scripts/fuzz.sh [TARGET|all] [SECONDS]
# Reproduce one input (a crash artifact): scripts/fuzz.sh TARGET FILE
#
# Targets (fuzz/fuzz_targets/, logic in fuzz/src/lib.rs): lmtp_command, lmtp_data,
# socketmap_netstring, resources_yaml, directory_decode, mbox_quoting, mbox_journal. Each runs for SECONDS
# (default 60) and ends with one summary line. Installs what is missing: the nightly toolchain
# (rustup) and cargo-fuzz (built once under target/tools/cargo-fuzz). Builds go to target/fuzz.
#
# The committed seeds in fuzz/corpus/<target> are read, never written: new inputs go to
# target/fuzz/corpus/<target>, which later runs continue from. A crash is saved under
# fuzz/artifacts/<target>/ (not committed); turn it into a regression test, fix it, then copy the
# input into fuzz/corpus/<target>/ (see docs/FUZZING.md).
#
# Environment: FUZZ_SANITIZER (default none: the code is safe Rust, panics and overflow checks
# are what is hunted; `address` also works), FUZZ_JOBS (parallel workers per target, default 1),
# FUZZ_NICE (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(lmtp_command lmtp_data socketmap_netstring resources_yaml directory_decode mbox_quoting mbox_journal)
which=${1:-all}
seconds=${2:-60}
sanitizer=${FUZZ_SANITIZER:-none}
jobs=${FUZZ_JOBS:-1}
niceness=${FUZZ_NICE:-10}

case "$which" in
  all) targets=("${ALL[@]}") ;;
  *)
    if [[ " ${ALL[*]} " != *" $which "* ]]; then
      echo "unknown target $which; one of: all ${ALL[*]}" >&2
      exit 2
    fi
    targets=("$which")
    ;;
esac
replay=
if [ -f "$seconds" ]; then
  # scripts/fuzz.sh TARGET FILE: run the target once on FILE (e.g. a crash artifact).
  replay=$(realpath "$seconds")
  [ "$which" != all ] || { echo "name the target of $replay" >&2; exit 2; }
elif ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "SECONDS must be a positive number, not $seconds" >&2
  exit 2
fi

if ! command -v rustup >/dev/null; then
  echo "rustup is missing: install it with 'curl https://sh.rustup.rs -sSf | sh' (cargo-fuzz needs nightly)" >&2
  exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (rustup toolchain install nightly)" >&2
  rustup toolchain install nightly --profile minimal
fi
tools=target/tools/cargo-fuzz
if ! [ -x "$tools/bin/cargo-fuzz" ]; then
  echo "==> building cargo-fuzz into $tools (once)" >&2
  cargo install --locked --root "$tools" cargo-fuzz
fi
if ! command -v c++ >/dev/null; then
  echo "a C++ compiler is missing (libFuzzer is built from source): apt-get install -y g++" >&2
  exit 1
fi
export PATH="$PWD/$tools/bin:$PATH"

fuzz=(cargo +nightly fuzz)
common=(--fuzz-dir fuzz --target-dir target/fuzz --sanitizer "$sanitizer" --debug-assertions)
echo "==> building ${targets[*]} (sanitizer $sanitizer, debug assertions on)" >&2
for target in "${targets[@]}"; do
  nice -n "$niceness" "${fuzz[@]}" build "${common[@]}" "$target" >&2
done

if [ -n "$replay" ]; then
  exec nice -n "$niceness" "${fuzz[@]}" run "${common[@]}" "$which" "$replay"
fi

mkdir -p target/fuzz/logs
summaries=()
failed=0
for target in "${targets[@]}"; do
  work=target/fuzz/corpus/$target
  log=target/fuzz/logs/$target.log
  mkdir -p "$work" "fuzz/artifacts/$target"
  echo "==> fuzzing $target for ${seconds}s (log $log)" >&2
  start=$(date +%s)
  parallel=()
  if [ "$jobs" -gt 1 ]; then
    parallel=(-jobs="$jobs" -workers="$jobs")
  fi
  status=0
  nice -n "$niceness" "${fuzz[@]}" run "${common[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=16384 \
    -print_final_stats=1 "${parallel[@]}" >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  logs=("$log")
  if [ "$jobs" -gt 1 ]; then
    logs+=(fuzz-*.log)
  fi
  # (grep finds nothing in a log cut short: `|| true` keeps set -e and pipefail quiet.)
  runs=$( (grep -h '^stat::number_of_executed_units' "${logs[@]}" 2>/dev/null || true) | awk '{s+=$2} END {print s+0}')
  speed=$( (grep -h '^stat::average_exec_per_sec' "${logs[@]}" 2>/dev/null || true) | awk '{s+=$2} END {print s+0}')
  last=$(grep -h -E '^#[0-9]+.*cov: ' "${logs[@]}" 2>/dev/null | tail -1 || true)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corpus=$(find "$work" -type f | wc -l)
  crashes=$( (grep -h -c 'Test unit written to' "${logs[@]}" 2>/dev/null || true) | awk '{s+=$1} END {print s+0}')
  if [ "$jobs" -gt 1 ]; then
    rm -f fuzz-*.log
  fi
  line="fuzz: $target ${elapsed}s runs=$runs exec/s=$speed cov=${cov:-?} ft=${ft:-?} corpus=$corpus crashes=$crashes"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    artifact=$( (grep -h -o 'Test unit written to [^ ]*' "$log" || true) | tail -1 | sed 's/Test unit written to //')
    line="$line FAILED (exit $status${artifact:+, input $artifact}; see $log)"
  fi
  echo "$line"
  summaries+=("$line")
done

if [ "${#targets[@]}" -gt 1 ]; then
  echo "==> summary" >&2
  printf '%s\n' "${summaries[@]}"
fi
exit "$failed"
