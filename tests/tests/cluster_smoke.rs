//! Smoke tests of the CRDs against a real kube-apiserver (tools/cluster.sh): they become
//! Established, every example applies and reads back, the schema and CEL rules reject bad
//! Mailboxes with the expected messages, `kubectl get mbx` shows the printer columns, and the
//! agent identity is denied Secrets.

use std::path::PathBuf;

use serde_json::Value;
use virtmail_tests::cluster::{TestNamespace, cluster, run};
use virtmail_tests::fixtures::resource;
use virtmail_tests::workspace_root;

const CRDS: [&str; 4] = [
    "mailservers.virtmail.io",
    "maildomains.virtmail.io",
    "mailboxes.virtmail.io",
    "mailaliases.virtmail.io",
];

#[test]
fn the_four_crds_are_established() {
    let cluster = cluster();
    for name in CRDS {
        assert!(
            cluster.crds.iter().any(|c| c == name),
            "{name} was not installed from crds/ (installed: {:?})",
            cluster.crds
        );
        let out = run(cluster.kubectl().args(["get", "crd", name, "-o", "json"]))
            .unwrap_or_else(|e| panic!("{e}"));
        let crd: Value = serde_json::from_str(&out).expect("CRD JSON");
        let conditions = crd["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c["type"] == wanted && c["status"] == "True"),
                "{name} is not {wanted}: {conditions:#?}"
            );
        }
    }
}

/// Every field given in `expected` is in `actual` with the same value (the server may add
/// defaults, but must not drop or change anything: a pruned field shows up here).
fn assert_subset(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let Some(av) = a.get(k) else {
                    panic!("{path}.{k} was dropped by the server (sent {v})");
                };
                assert_subset(v, av, &format!("{path}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(
                e.len(),
                a.len(),
                "{path}: sent {expected}, read back {actual}"
            );
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                assert_subset(ev, av, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            assert_eq!(e.as_f64(), a.as_f64(), "{path}: sent {e}, read back {a}");
        }
        _ => assert_eq!(
            expected, actual,
            "{path}: sent {expected}, read back {actual}"
        ),
    }
}

/// The objects of manifest files as kubectl parses them (client-side dry run, nothing sent).
fn manifest_objects(ns: &TestNamespace, files: &[PathBuf]) -> Vec<Value> {
    let mut cmd = ns.kubectl();
    cmd.args(["create", "--dry-run=client", "-o", "json"]);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let out = run(&mut cmd).unwrap_or_else(|e| panic!("{e}"));
    // One JSON object per manifest object, one after the other (or a List).
    let mut objects = Vec::new();
    for parsed in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
        let parsed = parsed.unwrap_or_else(|e| panic!("kubectl printed invalid JSON: {e}\n{out}"));
        match parsed["kind"].as_str() {
            Some("List") => objects.extend(parsed["items"].as_array().cloned().unwrap_or_default()),
            _ => objects.push(parsed),
        }
    }
    objects
}

fn example_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_example_applies_and_reads_back() {
    let cluster = cluster();
    let dirs = example_dirs();
    assert!(!dirs.is_empty(), "no examples under examples/");
    for dir in dirs {
        let example = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ns = cluster.namespace(&format!("example-{example}"));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{example} has no YAML");
        // All files of an example in one apply: their order within the example does not matter.
        let mut apply = ns.kubectl();
        apply.arg("apply");
        for f in &files {
            apply.arg("-f").arg(f);
        }
        run(&mut apply).unwrap_or_else(|e| panic!("example {example} does not apply: {e}"));
        let objects = manifest_objects(&ns, &files);
        let count = objects.len();
        for doc in objects {
            let kind = doc["kind"].as_str().expect("kind");
            let api_version = doc["apiVersion"].as_str().expect("apiVersion");
            let name = doc["metadata"]["name"].as_str().expect("metadata.name");
            let group = api_version.split('/').next().unwrap();
            let back = ns.get_json(&format!("{kind}.{group}"), name);
            assert_eq!(back["apiVersion"], api_version);
            assert_subset(
                &doc["spec"],
                &back["spec"],
                &format!("{example}/{kind}/{name}.spec"),
            );
        }
        assert!(count > 0, "{example} has no resources");
    }
}

#[test]
fn bad_mailboxes_are_rejected_with_the_expected_message() {
    let ns = cluster().namespace("bad-mailbox");
    ns.apply(&resource(
        "Mailbox",
        "good",
        "{address: good@example.test, format: Mbox, path: example.test/good}",
    ))
    .unwrap_or_else(|e| panic!("a valid Mailbox is rejected: {e}"));

    let cases = [
        ("no-at", "{address: nobody}", "spec.address"),
        ("no-at", "{address: nobody}", "should match"),
        (
            "mbox-dir",
            "{address: a@example.test, format: Mbox, path: \"x/\"}",
            "an mbox path must not end in '/'",
        ),
        (
            "maildir-file",
            "{address: b@example.test, format: Maildir, path: x}",
            "make format and path agree",
        ),
        (
            "dotdot",
            "{address: c@example.test, path: \"a/../b/\"}",
            "path must not contain '.' or '..' components",
        ),
        ("root-uid", "{address: d@example.test, uid: 0}", "spec.uid"),
    ];
    for (name, spec, message) in cases {
        match ns.apply(&resource("Mailbox", name, spec)) {
            Ok(out) => panic!("Mailbox {name} {spec} was accepted: {out}"),
            Err(e) => assert!(
                e.stderr.contains(message),
                "Mailbox {name} {spec}: expected {message:?} in the rejection, got: {}",
                e.stderr
            ),
        }
        assert!(
            run(ns.kubectl().args(["get", "mailbox", name])).is_err(),
            "rejected Mailbox {name} exists"
        );
    }
}

/// Several pods need one volume they all share: a claim template would give each its own copy
/// of the mailboxes behind one Service.
#[test]
fn replicas_above_one_need_a_shared_claim() {
    let ns = cluster().namespace("replicas-claim");
    let server = |name: &str, spec: &str| resource("MailServer", name, spec);
    let err = ns
        .apply(&server("split", "{replicas: 2}"))
        .expect_err("two replicas with a claim template");
    assert!(
        err.stderr
            .contains("replicas > 1 needs storage.existingClaim"),
        "{err}"
    );
    ns.apply(&server(
        "shared",
        "{replicas: 2, storage: {existingClaim: mail}}",
    ))
    .unwrap_or_else(|e| panic!("two replicas on a shared claim are refused: {e}"));
    ns.apply(&server("single", "{replicas: 1}"))
        .unwrap_or_else(|e| panic!("one replica is refused: {e}"));
}

#[test]
fn kubectl_get_mbx_shows_the_printer_columns() {
    let ns = cluster().namespace("printer-columns");
    ns.apply(&resource(
        "Mailbox",
        "alice",
        "{address: alice@example.test, format: Maildir, uid: 5000}",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let out = run(ns.kubectl().args(["get", "mbx"])).unwrap_or_else(|e| panic!("{e}"));
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ADDRESS",
            "FORMAT",
            "UID",
            "READY",
            "PROVISIONED",
            "AGE"
        ],
        "{out}"
    );
    // FORMAT and UID are the effective values the operator writes into the status (a Mailbox
    // may inherit them from its domain); no operator runs here.
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row[..2], ["alice", "alice@example.test"], "{out}");
    let wide =
        run(ns.kubectl().args(["get", "mbx", "-o", "wide"])).unwrap_or_else(|e| panic!("{e}"));
    let header: Vec<&str> = wide
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    for column in ["GID", "QUOTA", "PATH"] {
        assert!(header.contains(&column), "-o wide shows {column}: {wide}");
    }
}

#[test]
fn the_agent_identity_is_denied_secrets() {
    let cluster = cluster();
    let ns = cluster.namespace("agent-secrets");
    let can_i = |cmd: &mut std::process::Command| {
        // `kubectl auth can-i` prints yes/no and exits 1 for no.
        match run(cmd) {
            Ok(out) => out.trim().to_owned(),
            Err(e) => e.stdout.trim().to_owned(),
        }
    };
    for verb in ["get", "list", "watch", "create"] {
        assert_eq!(
            can_i(
                ns.kubectl_as("agent")
                    .args(["auth", "can-i", verb, "secrets"])
            ),
            "no",
            "the agent token may {verb} secrets"
        );
        assert_eq!(
            can_i(ns.kubectl().args([
                "auth",
                "can-i",
                verb,
                "secrets",
                "--as",
                "system:serviceaccount:virtmail-test:virtmail-agent",
            ])),
            "no",
            "impersonated agent may {verb} secrets"
        );
    }
    // The token really is the agent's, and the admin is not restricted (the denial is RBAC's).
    let who = run(ns.kubectl_as("agent").args([
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(who, "system:serviceaccount:virtmail-test:virtmail-agent");
    assert_eq!(
        can_i(ns.kubectl().args(["auth", "can-i", "get", "secrets"])),
        "yes"
    );
    let err =
        run(ns.kubectl_as("agent").args(["get", "secrets"])).expect_err("the agent listed secrets");
    assert!(err.stderr.contains("Forbidden"), "{err}");
}

#[test]
fn a_failing_test_namespace_dump_shows_its_objects() {
    let ns = cluster().namespace("dump");
    ns.apply(&resource(
        "Mailbox",
        "dumped",
        "{address: dumped@example.test}",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let labels = ns.get_json("namespace", ns.name());
    assert_eq!(
        labels["metadata"]["labels"]["virtmail.io/test"], "dump",
        "namespace label"
    );
    let dump = ns.dump();
    assert!(dump.contains("dumped@example.test"), "{dump}");
    assert!(dump.contains("---- events"), "{dump}");
}
