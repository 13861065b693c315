//! The operator as a real process, running with its own RBAC identity
//! (`system:serviceaccount:virtmail-system:virtmail-operator`) against the real control plane.

use std::process::Command;
use std::sync::OnceLock;

use crate::cluster::{Cluster, TestNamespace, cluster, run, run_with_stdin};
use crate::process::{Process, binary};

/// Namespace of the operator's identity and leases.
pub const OPERATOR_NAMESPACE: &str = "virtmail-system";

static RBAC: OnceLock<()> = OnceLock::new();

/// Install the operator's RBAC exactly as `virtmail-operator rbac` prints it (once per process).
pub fn install_rbac(cluster: &Cluster) {
    RBAC.get_or_init(|| {
        let _ = run(cluster
            .kubectl()
            .args(["create", "namespace", OPERATOR_NAMESPACE]));
        let yaml = run(Command::new(binary("virtmail-operator")).args([
            "rbac",
            "--namespace",
            OPERATOR_NAMESPACE,
            "--service-account",
            "virtmail-operator",
        ]))
        .expect("virtmail-operator rbac");
        run_with_stdin(cluster.kubectl().args(["apply", "-f", "-"]), &yaml)
            .expect("apply the operator's RBAC");
    });
}

/// Start the operator watching `namespace`, as the operator identity, with its own Lease name
/// (so parallel tests do not wait on each other's leader).
pub fn start(namespace: &str, lease: &str) -> Process {
    start_with(namespace, lease, 0, &[])
}

/// [`start`] watching `ns`, with a lease of its own (`lease-<namespace>`).
pub fn start_in(ns: &TestNamespace) -> Process {
    start(ns.name(), &format!("lease-{}", ns.name()))
}

/// [`start`] with /metrics on `http_port` of 127.0.0.1 (0: any) and extra `run` flags.
pub fn start_with(namespace: &str, lease: &str, http_port: u16, extra: &[&str]) -> Process {
    let cluster = cluster();
    install_rbac(cluster);
    let mut command = Command::new(binary("virtmail-operator"));
    command
        .env("KUBECONFIG", cluster.kubeconfig("operator"))
        .env("RUST_LOG", "info,kube=warn")
        .args(["run", "--namespace", namespace])
        .arg(format!("--http=127.0.0.1:{http_port}"))
        .args(extra)
        .args([
            "--lease-namespace",
            OPERATOR_NAMESPACE,
            "--lease-name",
            lease,
        ])
        .args(["--lease-seconds", "6"]);
    Process::start(&format!("operator-{lease}"), command)
}

/// Stand in for the kubelet after a control-plane outage: an operator that could not renew its
/// lease for a whole lease duration stops (as controller-runtime's do) and must have said why;
/// start it again. A running operator is left alone.
pub fn restart_if_lease_lost(operator: &mut Process, namespace: &str, lease: &str) {
    if operator.running() {
        return;
    }
    let log = operator.log();
    assert!(log.contains("lost the leader lease"), "{log}");
    *operator = start(namespace, lease);
}
