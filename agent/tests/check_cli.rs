//! `virtmail-agent check` against the examples, the broken fixtures and unusable manifests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn check(resources: &Path, extra: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_virtmail-agent"))
        .arg("check")
        .arg("--resources")
        .arg(resources)
        .args(extra)
        .output()
        .expect("run virtmail-agent");
    (
        status.code().expect("exit code"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn every_example_is_valid() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if !path.is_dir() {
            continue;
        }
        seen += 1;
        let (code, stdout, stderr) = check(&path, &[]);
        assert_eq!(code, 0, "{}: {stdout}{stderr}", path.display());
        assert!(stdout.contains("directory version"), "{stdout}");
        assert!(stdout.contains("objects valid"), "{stdout}");
    }
    assert_eq!(
        seen, 6,
        "VIRTUAL_README's five examples and the internet-facing one"
    );
}

#[test]
fn broken_fixtures_name_their_reason() {
    let cases = [
        (
            "address-conflict.yaml",
            "Mailbox/alice-again AddressConflict",
        ),
        ("path-conflict.yaml", "Mailbox/bob PathConflict"),
        ("invalid-path.yaml", "Mailbox/absolute InvalidPath"),
        (
            "invalid-owner.yaml",
            "Mailbox/root InvalidOwner: uid 0 is never accepted",
        ),
        ("unknown-domain.yaml", "Mailbox/stray UnknownDomain"),
        ("alias-loop.yaml", "MailAlias/a AliasLoop"),
        ("postmaster.yaml", "MailDomain/three InvalidPostmaster"),
        ("catch-all.yaml", "MailDomain/broken UnknownCatchAll"),
        (
            "alias-patterns.yaml",
            "MailAlias/broken InvalidPattern: pattern \"support-(\": invalid regular expression",
        ),
    ];
    for (fixture, expected) in cases {
        let path = root().join("crds/fixtures").join(fixture);
        let (code, stdout, _) = check(&path, &[]);
        assert_eq!(code, 1, "{fixture}: {stdout}");
        assert!(
            stdout.contains(expected),
            "{fixture}: want {expected:?} in\n{stdout}"
        );
        assert!(
            stdout.contains(fixture),
            "{fixture}: the file is named:\n{stdout}"
        );
    }
}

#[test]
fn unusable_manifests_exit_2_naming_file_object_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let sub = dir.path().join(name.trim_end_matches(".yaml"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join(name), text).expect("write");
        sub
    };
    let bad_yaml = write("bad.yaml", "kind: Mailbox\nspec: [\n");
    let (code, _, stderr) = check(&bad_yaml, &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("invalid YAML"),
        "{stderr}"
    );

    let unknown = write(
        "unknown.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
    );
    let (code, _, stderr) = check(&unknown, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown kind \"Secret\""), "{stderr}");

    let wrong_type = write(
        "wrong.yaml",
        "apiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: bob}\nspec: {address: bob@x.test, suspended: maybe}\n",
    );
    let (code, _, stderr) = check(&wrong_type, &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("wrong.yaml") && stderr.contains("Mailbox/bob"),
        "{stderr}"
    );
    assert!(stderr.contains("spec.suspended"), "{stderr}");

    let (code, _, stderr) = check(&root().join("crds/fixtures/domain-selector.yaml"), &[]);
    assert_eq!(code, 2, "two servers and no --server");
    assert!(stderr.contains("--server"), "{stderr}");
    let (code, stdout, _) = check(
        &root().join("crds/fixtures/domain-selector.yaml"),
        &["--server", "gold"],
    );
    assert_eq!(code, 0, "{stdout}");

    let (code, _, stderr) = check(&dir.path().join("does-not-exist"), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("does-not-exist"), "{stderr}");
}

/// `virtmail-agent check ... | head`: a reader that went away ends the command quietly, with the
/// exit status of the check.
#[test]
fn check_exits_quietly_when_the_reader_is_gone() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_virtmail-agent"))
        .arg("check")
        .arg("--resources")
        .arg(root().join("examples/1-virtual-for-all-mail"))
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .output()
        .expect("run virtmail-agent");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(output.status.code(), Some(0));
}
