#!/usr/bin/env bash
# Write charts/virtmail/README.md from charts/virtmail/values.yaml's `# --` comments with the
# pinned helm-docs (tools/chart/go.mod; built by tools/cluster.sh build).
#   tools/chart-docs.sh [CHART_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHART="${1:-$ROOT/charts/virtmail}"
HELM_DOCS="${VIRTMAIL_HELM_DOCS:-$ROOT/target/tools/bin/helm-docs}"
[[ -x "$HELM_DOCS" ]] || { echo "chart-docs: $HELM_DOCS is missing: run tools/cluster.sh build" >&2; exit 1; }
"$HELM_DOCS" --log-level warning --chart-search-root "$CHART" --template-files README.md.gotmpl \
  --sort-values-order file
echo "wrote $CHART/README.md" >&2
