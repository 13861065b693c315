//! The Helm chart against the real control plane: lint, rendering, install into a
//! namespace that enforces the `restricted` Pod Security Standard, the operator running with
//! exactly the chart's RBAC, least privilege, upgrade and uninstall keeping CRDs and resources.

use std::process::Command;
use std::time::Duration;

use virtmail_tests::cluster::{cluster, run};
use virtmail_tests::process::{Process, binary, wait_for};
use virtmail_tests::workspace_root;

const CHART_NAMESPACE: &str = "virtmail-chart";

fn helm() -> Command {
    let mut cmd = cluster().helm();
    cmd.current_dir(workspace_root());
    cmd
}

#[test]
fn chart_lints_strictly_and_its_schema_rejects_unknown_values() {
    let out =
        run(helm().args(["lint", "--strict", "charts/virtmail"])).expect("helm lint --strict");
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let err = run(helm().args([
        "template",
        "x",
        "charts/virtmail",
        "--set",
        "replicaCoutn=2",
    ]))
    .expect_err("unknown value refused");
    assert!(err.stderr.contains("replicaCoutn"), "{err}");
    let rendered = run(helm().args([
        "template",
        "virtmail",
        "charts/virtmail",
        "-n",
        CHART_NAMESPACE,
    ]))
    .expect("helm template");
    for needle in [
        "kind: CustomResourceDefinition",
        "helm.sh/resource-policy: keep",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "type: RuntimeDefault",
        "kind: ClusterRole",
        "mailboxes/status",
    ] {
        assert!(rendered.contains(needle), "rendered chart lacks {needle:?}");
    }
    assert!(
        !rendered.contains("secrets"),
        "the operator never needs Secrets"
    );
    let without_crds = run(helm().args([
        "template",
        "x",
        "charts/virtmail",
        "--set",
        "crds.install=false",
    ]))
    .expect("template");
    assert!(!without_crds.contains("kind: CustomResourceDefinition"));
    let ha = run(helm().args([
        "template",
        "x",
        "charts/virtmail",
        "--set",
        "replicaCount=2",
    ]))
    .expect("template");
    assert!(ha.contains("kind: PodDisruptionBudget"));
}

#[test]
fn chart_installs_under_restricted_and_the_operator_works_with_exactly_its_rbac() {
    let cluster = cluster();
    // A namespace that enforces "restricted": the real PodSecurity admission judges the pods the
    // Deployment's ReplicaSet creates.
    let _ = run(cluster.kubectl().args([
        "delete",
        "namespace",
        CHART_NAMESPACE,
        "--wait=true",
        "--ignore-not-found",
    ]));
    run(cluster
        .kubectl()
        .args(["create", "namespace", CHART_NAMESPACE]))
    .expect("namespace");
    run(cluster.kubectl().args([
        "label",
        "namespace",
        CHART_NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]))
    .expect("label");
    let install = run(helm().args([
        "install",
        "virtmail",
        "charts/virtmail",
        "-n",
        CHART_NAMESPACE,
        "--take-ownership",
        "--set",
        "serviceAccount.name=virtmail-operator",
    ]))
    .expect("helm install");
    assert!(!install.contains("violate PodSecurity"), "{install}");
    wait_for(
        "the operator pod to be admitted under restricted",
        Duration::from_secs(60),
        || {
            let pods =
                run(cluster
                    .kubectl()
                    .args(["-n", CHART_NAMESPACE, "get", "pods", "-o", "name"]))
                .ok()?;
            (!pods.trim().is_empty()).then_some(())
        },
    );
    let events = run(cluster
        .kubectl()
        .args(["-n", CHART_NAMESPACE, "get", "events"]))
    .unwrap_or_default();
    assert!(!events.contains("FailedCreate"), "{events}");

    // Least privilege of the chart's identity.
    let sa = format!("system:serviceaccount:{CHART_NAMESPACE}:virtmail-operator");
    let can = |args: &[&str]| -> String {
        let mut cmd = cluster.kubectl();
        cmd.args(["auth", "can-i", "--as", &sa]).args(args);
        match run(&mut cmd) {
            Ok(out) => out.trim().to_string(),
            Err(e) => e.stdout.trim().to_string(),
        }
    };
    assert_eq!(can(&["get", "secrets", "-A"]), "no");
    assert_eq!(can(&["list", "secrets", "-n", CHART_NAMESPACE]), "no");
    assert_eq!(
        can(&["create", "leases", "-n", "default"]),
        "no",
        "leases only in its own namespace"
    );
    assert_eq!(can(&["update", "leases", "-n", CHART_NAMESPACE]), "yes");
    assert_eq!(can(&["escalate", "roles", "-A"]), "no");
    assert_eq!(
        can(&[
            "patch",
            "mailboxes.virtmail.io",
            "--subresource=status",
            "-A"
        ]),
        "yes"
    );
    assert_eq!(
        can(&["patch", "mailboxes.virtmail.io", "-A"]),
        "no",
        "spec is the administrator's"
    );

    // The operator with the chart's identity (a token of that service account) reconciles an
    // example: any RBAC rule missing from the chart fails here.
    let ns = cluster.namespace("chart-operator");
    ns.apply_example("2-coexisting-with-local");
    let mut command = Command::new(binary("virtmail-operator"));
    command
        .env("KUBECONFIG", cluster.kubeconfig("chart-operator"))
        .env("RUST_LOG", "info,kube=warn")
        .args(["run", "--http", "127.0.0.1:0", "--namespace", ns.name()])
        .args(["--lease-namespace", CHART_NAMESPACE, "--lease-seconds", "6"]);
    let operator = Process::start("chart-operator", command);
    wait_for(
        "the operator (chart RBAC) to publish and report",
        Duration::from_secs(60),
        || {
            let server = ns.get_json("mailserver", "mail");
            let mbx = ns.get_json("mailbox", "test2-virtual2");
            (server["status"]["directory"]["version"].is_string()
                && mbx["status"]["conditions"][0]["reason"] == "Published")
                .then_some(())
        },
    );
    let log = operator.log();
    assert!(!log.contains("forbidden"), "RBAC denied something:\n{log}");
    drop(operator);

    // Upgrade, then uninstall: CRDs and custom resources stay.
    run(helm().args([
        "upgrade",
        "virtmail",
        "charts/virtmail",
        "-n",
        CHART_NAMESPACE,
        "--set",
        "serviceAccount.name=virtmail-operator",
        "--set",
        "logFormat=json",
    ]))
    .expect("helm upgrade");
    let deployment =
        run(cluster
            .kubectl()
            .args(["-n", CHART_NAMESPACE, "get", "deployment", "-o", "yaml"]))
        .expect("deployment");
    assert!(deployment.contains("--log-format=json"));
    run(helm().args(["uninstall", "virtmail", "-n", CHART_NAMESPACE])).expect("helm uninstall");
    for crd in [
        "mailservers.virtmail.io",
        "maildomains.virtmail.io",
        "mailboxes.virtmail.io",
        "mailaliases.virtmail.io",
    ] {
        run(cluster.kubectl().args(["get", "crd", crd]))
            .unwrap_or_else(|e| panic!("{crd} removed by uninstall: {e}"));
    }
    assert_eq!(
        ns.get_json("mailbox", "test1-virtual1")["metadata"]["name"],
        "test1-virtual1"
    );
    let left =
        run(cluster
            .kubectl()
            .args(["-n", CHART_NAMESPACE, "get", "deployments", "-o", "name"]))
        .unwrap_or_default();
    assert!(
        left.trim().is_empty(),
        "uninstall removes the operator: {left}"
    );
}

/// charts/virtmail/README.md is what helm-docs writes from values.yaml; fail when stale.
#[test]
fn chart_readme_lists_every_value_as_helm_docs_writes_it() {
    let root = workspace_root();
    let copy = tempfile::tempdir().expect("tempdir");
    let chart = copy.path().join("virtmail");
    let status = Command::new("cp")
        .args(["-r"])
        .arg(root.join("charts/virtmail"))
        .arg(&chart)
        .status()
        .expect("cp");
    assert!(status.success());
    run(Command::new(root.join("tools/chart-docs.sh")).arg(&chart))
        .unwrap_or_else(|e| panic!("tools/chart-docs.sh: {e}"));
    let generated = std::fs::read_to_string(chart.join("README.md")).expect("generated README");
    let committed =
        std::fs::read_to_string(root.join("charts/virtmail/README.md")).unwrap_or_default();
    assert!(
        generated == committed,
        "charts/virtmail/README.md is stale: run tools/chart-docs.sh"
    );
    let values = std::fs::read_to_string(root.join("charts/virtmail/values.yaml")).unwrap();
    for key in [
        "metrics.prometheusRule.enabled",
        "fullnameOverride",
        "mailServerImages.agent.tag",
    ] {
        assert!(
            committed.contains(&format!("| {key} |")),
            "{key} is not documented"
        );
    }
    assert!(
        values.contains("# -- "),
        "values.yaml documents its keys for helm-docs"
    );
}

/// Names, labels and image tags as users override them.
#[test]
fn chart_names_labels_and_image_tags_follow_overrides_and_app_version() {
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(workspace_root().join("charts/virtmail/Chart.yaml")).unwrap(),
    )
    .unwrap();
    let app_version = chart["appVersion"]
        .as_str()
        .expect("appVersion")
        .to_string();
    let render = |args: &[&str]| {
        run(helm()
            .args([
                "template",
                "rel",
                "charts/virtmail",
                "--set",
                "crds.install=false",
            ])
            .args(args))
        .unwrap_or_else(|e| panic!("helm template {args:?}: {e}"))
    };
    let plain = render(&[]);
    assert!(plain.contains("name: rel-virtmail\n"), "{plain}");
    for image in ["operator", "agent", "postfix"] {
        assert!(
            plain.contains(&format!("virtmail/{image}:{app_version}\"")),
            "{image} follows appVersion {app_version}"
        );
    }
    for label in [
        "app.kubernetes.io/managed-by: Helm",
        "app.kubernetes.io/component: operator",
        "app.kubernetes.io/part-of: virtmail",
    ] {
        assert!(plain.contains(label), "{label} missing");
    }
    let full = render(&["--set", "fullnameOverride=mx-operator"]);
    assert!(
        full.contains("name: mx-operator\n") && !full.contains("rel-virtmail"),
        "{full}"
    );
    let named = render(&["--set", "nameOverride=post"]);
    assert!(named.contains("name: rel-post\n"), "{named}");
    let tagged = render(&["--set", "mailServerImages.agent.tag=9.9.9"]);
    assert!(tagged.contains("virtmail/agent:9.9.9\""), "{tagged}");
}
