#!/usr/bin/env bash
# Run every virtmail test: installs what is missing, then the whole workspace's tests, including
# the suites against real kube-apiserver/etcd, Postfix and Dovecot. Run as root (the delivery
# tests switch to real uids).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$PATH:/usr/local/go/bin"
# CI leaves nothing running behind: stop the planes (and the node) the suites started.
if [ "${CI:-}" = true ]; then
  trap 'tools/cluster.sh down >/dev/null 2>&1 || true; tools/cluster.sh down --node >/dev/null 2>&1 || true' EXIT
fi
echo "==> cargo test --workspace" >&2
cargo test --workspace --no-fail-fast -- --test-threads "${VIRTMAIL_TEST_THREADS:-2}"
