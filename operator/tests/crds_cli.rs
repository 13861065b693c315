//! The committed CRD manifests in `crds/` match what `virtmail-operator crds` prints.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_crds_are_not_stale() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let output = Command::new(env!("CARGO_BIN_EXE_virtmail-operator"))
        .arg("crds")
        .output()
        .expect("run virtmail-operator crds");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    let mut committed = String::new();
    for file in virtmail_crds::CRD_FILES {
        let path = root.join("crds").join(file);
        committed.push_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p virtmail-operator -- crds --out crds/`",
                path.display()
            )
        }));
    }
    assert!(
        printed == committed,
        "crds/*.yaml are stale: run `cargo run -p virtmail-operator -- crds --out crds/`"
    );
    for name in ["mailservers", "maildomains", "mailboxes", "mailaliases"] {
        assert!(
            printed.contains(&format!("name: {name}.virtmail.io")),
            "{name}"
        );
    }
    assert!(printed.contains("- mbx"), "short name of Mailbox");
    assert!(
        printed.contains("x-kubernetes-validations"),
        "CEL rules present"
    );
}

/// The chart's CRD templates and RBAC rule files are generated from code; fail when stale.
#[test]
fn chart_generated_files_are_not_stale() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let out = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let status = Command::new(env!("CARGO_BIN_EXE_virtmail-operator"))
            .args(args)
            .arg(out.path())
            .status()
            .expect("run virtmail-operator");
        assert!(status.success(), "{args:?}");
    };
    run(&["crds", "--helm", "--out"]);
    run(&["rbac", "--helm-files"]);
    let expected: Vec<(String, &str)> = virtmail_crds::CRD_FILES
        .iter()
        .map(|f| (f.to_string(), "charts/virtmail/templates/crds"))
        .chain(
            ["cluster-rules.yaml", "namespace-rules.yaml"]
                .iter()
                .map(|f| (f.to_string(), "charts/virtmail/files")),
        )
        .collect();
    for (file, dir) in expected {
        let generated = std::fs::read_to_string(out.path().join(&file)).expect("generated");
        let committed = std::fs::read_to_string(root.join(dir).join(&file)).unwrap_or_default();
        assert!(
            generated == committed,
            "{dir}/{file} is stale: run `cargo run -p virtmail-operator -- crds --helm --out \
             charts/virtmail/templates/crds` and `... rbac --helm-files charts/virtmail/files`"
        );
    }
}

/// deploy/virtmail.yaml is the chart rendered by deploy/render.sh; fail when stale.
#[test]
fn deploy_manifests_are_rendered_from_the_chart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let helm = root.join("target/tools/bin/helm");
    assert!(
        helm.is_file(),
        "{} is missing: run tools/cluster.sh build",
        helm.display()
    );
    let committed =
        std::fs::read_to_string(root.join("deploy/virtmail.yaml")).expect("deploy/virtmail.yaml");
    let out = Command::new(&helm)
        .args(["template", "virtmail"])
        .arg(root.join("charts/virtmail"))
        .args([
            "--namespace",
            "virtmail-system",
            "--set",
            "serviceAccount.name=virtmail-operator",
        ])
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        committed.ends_with(&rendered),
        "deploy/virtmail.yaml is stale: run deploy/render.sh"
    );
    assert!(committed.contains("pod-security.kubernetes.io/enforce: restricted"));
}

/// `virtmail-operator crds | head`: output commands whose reader has gone end quietly and
/// successfully, with nothing on stderr (no error, no backtrace).
#[test]
fn output_commands_exit_quietly_when_the_reader_is_gone() {
    for args in [&["crds"][..], &["postfix-profile"][..], &["rbac"][..]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        // The reader is gone before the first write: every write fails with EPIPE.
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_virtmail-operator"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdout(writer)
            .output()
            .expect("run virtmail-operator");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "",
            "{args:?}: nothing on stderr"
        );
        assert!(output.status.success(), "{args:?}: {:?}", output.status);
    }
}
