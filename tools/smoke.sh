#!/usr/bin/env bash
# tools/smoke.sh — check tools/cluster.sh end to end: up, apply a trivial CRD, create an object,
# RBAC denies the agent identity Secrets, the controller-manager runs, helm talks to the plane, down.
# Leaves a plane that was already running before it started (and its state) alone, unless
# VIRTMAIL_SMOKE_DOWN=1.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$SCRIPT_DIR/cluster.sh"

fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
ok() { echo "smoke: ok: $*" >&2; }

was_running=0
if "$CLUSTER" status >/dev/null 2>&1; then was_running=1; fi
cleanup() {
  if [[ $was_running == 0 || "${VIRTMAIL_SMOKE_DOWN:-0}" == 1 ]]; then "$CLUSTER" down; fi
}
trap cleanup EXIT

eval "$("$CLUSTER" up)"
[[ -f "$KUBECONFIG" && -f "$VIRTMAIL_KUBECONFIG_AGENT" && -f "$VIRTMAIL_KUBECONFIG_OPERATOR" ]] \
  || fail "up did not export the kubeconfigs"
ok "up: $KUBECONFIG"
# The kubectl built from the same pin (no version-skew warnings); fall back to the machine's.
[[ -x "${VIRTMAIL_KUBECTL:-}" ]] && PATH="$(dirname "$VIRTMAIL_KUBECTL"):$PATH"
command -v kubectl >/dev/null || fail "kubectl not found"

# A second up reuses the running plane and prints the same lines.
[[ "$("$CLUSTER" up 2>/dev/null)" == "$("$CLUSTER" env)" ]] || fail "second up did not reuse the plane"
ok "second up reuses the plane"

kubectl version -o json | grep -q '"gitVersion": "v1.37' || fail "server is not v1.37"
ok "server version v1.37"

kubectl apply -f - <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.virtmail.io
spec:
  group: smoke.virtmail.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
EOF
kubectl wait --for=condition=Established --timeout=60s crd/widgets.smoke.virtmail.io >/dev/null
ok "CRD established"

kubectl create namespace smoke-ns --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n smoke-ns apply -f - >/dev/null <<'EOF'
apiVersion: smoke.virtmail.io/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
EOF
[[ "$(kubectl -n smoke-ns get widget w1 -o jsonpath='{.spec.size}')" == 3 ]] || fail "widget did not read back"
ok "custom resource applies and reads back"
if out="$(kubectl -n smoke-ns apply -f - 2>&1 <<'EOF'
apiVersion: smoke.virtmail.io/v1
kind: Widget
metadata: {name: w2}
spec: {size: 0}
EOF
)"; then fail "invalid widget was accepted"; fi
grep -q "should be greater than or equal to 1" <<<"$out" || fail "unexpected rejection: $out"
ok "schema validation rejects a bad object"

[[ "$(kubectl auth can-i get secrets --as system:serviceaccount:virtmail-test:virtmail-agent -n virtmail-test 2>/dev/null || true)" == no ]] \
  || fail "agent identity may get secrets"
[[ "$(KUBECONFIG=$VIRTMAIL_KUBECONFIG_AGENT kubectl auth can-i get secrets -n virtmail-test 2>/dev/null || true)" == no ]] \
  || fail "agent token may get secrets"
[[ "$(KUBECONFIG=$VIRTMAIL_KUBECONFIG_AGENT kubectl auth whoami -o jsonpath='{.status.userInfo.username}')" \
   == system:serviceaccount:virtmail-test:virtmail-agent ]] || fail "agent token is not the agent identity"
ok "agent identity authenticates and is denied Secrets"

# The controller-manager is real: the namespace gets its default ServiceAccount and root CA.
for _ in $(seq 1 100); do
  kubectl -n smoke-ns get serviceaccount default >/dev/null 2>&1 \
    && kubectl -n smoke-ns get configmap kube-root-ca.crt >/dev/null 2>&1 && break
  sleep 0.2
done
kubectl -n smoke-ns get serviceaccount default >/dev/null || fail "no default ServiceAccount (controller-manager)"
kubectl -n smoke-ns get configmap kube-root-ca.crt >/dev/null || fail "no kube-root-ca.crt (controller-manager)"
ok "controller-manager created the default ServiceAccount and kube-root-ca.crt"

# Garbage collection: a ConfigMap owned by another one goes away with its owner.
kubectl -n smoke-ns create configmap owner >/dev/null
uid="$(kubectl -n smoke-ns get configmap owner -o jsonpath='{.metadata.uid}')"
kubectl -n smoke-ns apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: owned
  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: owner, uid: "$uid"}]
EOF
kubectl -n smoke-ns delete configmap owner >/dev/null
for _ in $(seq 1 150); do kubectl -n smoke-ns get configmap owned >/dev/null 2>&1 || break; sleep 0.2; done
kubectl -n smoke-ns get configmap owned >/dev/null 2>&1 && fail "garbage collector did not delete the owned ConfigMap"
ok "garbage collector works"

HELM="$VIRTMAIL_HELM"
"$HELM" version --short | grep -q '^v4\.' || fail "helm version"
"$HELM" list -A >/dev/null || fail "helm cannot list releases"
ok "helm $("$HELM" version --short) reaches the plane"

kubectl delete namespace smoke-ns --wait=false >/dev/null
kubectl delete crd widgets.smoke.virtmail.io >/dev/null
"$CLUSTER" status >&2
echo "smoke: all checks passed" >&2
