//! The operator against the real control plane, running with its own RBAC identity.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use virtmail_crds::{compile, encoding, manifests};
use virtmail_tests::cluster::{TestNamespace, cluster, condition_status, merge_patch, run};
use virtmail_tests::fixtures::mailbox;
use virtmail_tests::postfix::free_port;
use virtmail_tests::process::{Process, http_get, wait_for};
use virtmail_tests::{operator, workspace_root};

const WAIT: Duration = Duration::from_secs(60);

/// The directory `virtmail-agent check` computes locally for `examples/<example>`.
fn local_encoding(example: &str, namespace: &str) -> encoding::Encoded {
    local_encoding_edited(example, namespace, |_| {})
}

/// [`local_encoding`] after `edit` (a full compile and encode, the reference).
fn local_encoding_edited(
    example: &str,
    namespace: &str,
    edit: impl FnOnce(&mut manifests::Resources),
) -> encoding::Encoded {
    let dir = workspace_root().join("examples").join(example);
    let mut resources = manifests::load_dir(&dir).expect("manifests");
    edit(&mut resources);
    let mut server = resources.server(None).expect("server");
    server.metadata.namespace = Some(namespace.into());
    encoding::encode(&compile(resources.inputs(&server)).directory)
}

fn status_version(ns: &TestNamespace, server: &str) -> Option<String> {
    let json = ns.get_json("mailserver", server);
    json.pointer("/status/directory/version")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn wait_version(ns: &TestNamespace, server: &str, want: &str) {
    wait_for(
        &format!("MailServer/{server} to publish version {want}"),
        WAIT,
        || (status_version(ns, server).as_deref() == Some(want)).then_some(()),
    );
}

/// Apply `examples/<example>` into `ns`, start the operator and wait until it has published the
/// directory the example compiles to; the operator and that directory.
fn publish_example(ns: &TestNamespace, example: &str) -> (Process, encoding::Encoded) {
    publish_example_on(ns, example, 0)
}

/// [`publish_example`] with the operator's /metrics on `port` of 127.0.0.1.
fn publish_example_on(
    ns: &TestNamespace,
    example: &str,
    port: u16,
) -> (Process, encoding::Encoded) {
    ns.apply_example(example);
    let operator = operator::start_with(ns.name(), &format!("lease-{}", ns.name()), port, &[]);
    let local = local_encoding(example, ns.name());
    wait_version(ns, "mail", &local.version);
    (operator, local)
}

/// Edit a Mailbox's spec (suspend it): a change that moves the directory to a new version.
fn suspend(ns: &TestNamespace, mailbox: &str) {
    merge_patch(
        ns.kubectl(),
        "mailbox",
        mailbox,
        r#"{"spec":{"suspended":true}}"#,
    )
    .expect("patch");
}

/// What changes when the operator writes an object: `metadata.generation` where the object has
/// one (a StatefulSet's status is written by kube-controller-manager at any time, changing
/// its resourceVersion but not its generation), else the resourceVersion.
fn written_version(ns: &TestNamespace, resource: &str, name: &str) -> String {
    let meta = &ns.get_json(resource, name)["metadata"];
    match meta["generation"].as_i64() {
        Some(generation) => format!("generation {generation}"),
        None => meta["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Directory ConfigMaps (head and shards) with their resourceVersions.
fn config_map_versions(ns: &TestNamespace) -> BTreeMap<String, String> {
    let out = run(ns.kubectl().args([
        "get",
        "configmaps",
        "-l",
        "virtmail.io/directory",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}{" "}{.metadata.resourceVersion}{"\n"}{end}"#,
    ]))
    .expect("list configmaps");
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn config_map_names(ns: &TestNamespace) -> Vec<String> {
    let out = run(ns.kubectl().args(["get", "configmaps", "-o", "name"])).expect("list configmaps");
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("configmap/"))
        .filter(|n| *n != "kube-root-ca.crt")
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

#[test]
fn example_becomes_the_exact_directory_and_pod_layout() {
    let ns = cluster().namespace("operator-example");
    // The StatefulSet's pods must pass the "baseline" Pod Security Standard (the agent keeps only
    // SETUID, SETGID and CHOWN): the real PodSecurity admission judges the pod the StatefulSet
    // controller creates.
    run(ns.cluster().kubectl().args([
        "label",
        "namespace",
        ns.name(),
        "pod-security.kubernetes.io/enforce=baseline",
    ]))
    .expect("label namespace");
    let (_operator, local) = publish_example(&ns, "1-virtual-for-all-mail");

    // The directory ConfigMaps are exactly the local encoding.
    let head = ns.get_json("configmap", "mail-directory");
    let head_data: BTreeMap<String, String> =
        serde_json::from_value(head["data"].clone()).expect("head data");
    assert_eq!(head_data, local.head);
    for shard in &local.shards {
        let cm = ns.get_json("configmap", &shard.name);
        let data: BTreeMap<String, String> =
            serde_json::from_value(cm["data"].clone()).expect("data");
        assert_eq!(data, *shard.data, "shard {}", shard.name);
        assert_eq!(cm["metadata"]["labels"]["virtmail.io/directory"], "shard");
    }
    let mut expected: Vec<String> = local.shards.iter().map(|s| s.name.clone()).collect();
    expected.extend(["mail-directory".to_string(), "mail-postfix".to_string()]);
    expected.sort();
    assert_eq!(config_map_names(&ns), expected);

    // The Postfix profile is the one `virtmail-operator postfix-profile` prints.
    let postfix = ns.get_json("configmap", "mail-postfix");
    let main_cf = postfix["data"]["main.cf"].as_str().expect("main.cf");
    assert!(
        main_cf.contains("virtual_transport = lmtp:unix:/run/virtmail/lmtp.sock\n"),
        "{main_cf}"
    );
    assert!(
        main_cf.contains(
            "virtual_mailbox_maps = socketmap:unix:/run/virtmail/socketmap.sock:mailbox\n"
        )
    );

    // Pod layout, service and the agent's identity, all owned by the MailServer.
    let server_uid = ns.get_json("mailserver", "mail")["metadata"]["uid"].clone();
    for (resource, name) in [
        ("statefulset", "mail"),
        ("service", "mail"),
        ("serviceaccount", "mail-agent"),
        ("role", "mail-agent"),
        ("rolebinding", "mail-agent"),
        ("configmap", "mail-postfix"),
    ] {
        let object = ns.get_json(resource, name);
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(
            owner["uid"], server_uid,
            "{resource}/{name} is owned by the MailServer"
        );
        assert_eq!(owner["controller"], true);
    }
    let sts = ns.get_json("statefulset", "mail");
    let containers = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["postfix", "agent"]);
    wait_for("pod mail-0 admitted under baseline", WAIT, || {
        run(ns.kubectl().args(["get", "pod", "mail-0", "-o", "name"])).ok()
    });
    let events = run(ns.kubectl().args(["get", "events"])).unwrap_or_default();
    assert!(!events.contains("violates PodSecurity"), "{events}");
    let role = ns.get_json("role", "mail-agent");
    assert_eq!(role["rules"].as_array().map(Vec::len), Some(2));

    // Every object reports Ready with the observed generation.
    wait_for("Mailboxes Ready", WAIT, || {
        let mbx = ns.get_json("mailbox", "test1-virtual1");
        (condition_status(&mbx, "Ready") == Some(("True".into(), "Published".into()))).then_some(())
    });
    let mbx = ns.get_json("mailbox", "test2-virtual2");
    assert_eq!(mbx["status"]["path"], "/var/mail/vhosts/test2/");
    assert_eq!(
        mbx["status"]["observedGeneration"],
        mbx["metadata"]["generation"]
    );
    let server = ns.get_json("mailserver", "mail");
    assert_eq!(
        condition_status(&server, "DirectoryPublished").map(|c| c.0),
        Some("True".into())
    );
    assert_eq!(server["status"]["mailboxes"], 2);
    assert_eq!(
        server["status"]["observedGeneration"],
        server["metadata"]["generation"]
    );
    let domain = ns.get_json("maildomain", "virtual1");
    assert_eq!(
        condition_status(&domain, "Ready"),
        Some(("True".into(), "Published".into()))
    );
    assert_eq!(domain["status"]["mailboxes"], 1);
}

#[test]
fn editing_one_mailbox_changes_only_the_directory() {
    let ns = cluster().namespace("operator-edit");
    let port = free_port();
    let example = "3-many-virtual-users";
    let (_operator, local) = publish_example_on(&ns, example, port);
    let made = |how: &str| {
        metric(
            port,
            &format!("virtmail_operator_snapshots_total{{made=\"{how}\"}}"),
        )
    };
    assert!(made("full") >= 1);
    let before: Vec<(&str, &str, String)> = [
        ("statefulset", "mail"),
        ("service", "mail"),
        ("configmap", "mail-postfix"),
        ("role", "mail-agent"),
        ("rolebinding", "mail-agent"),
        ("serviceaccount", "mail-agent"),
    ]
    .into_iter()
    .map(|(r, n)| (r, n, written_version(&ns, r, n)))
    .collect();
    let shards_before = config_map_versions(&ns);
    let mbx = ns.get_json("mailbox", "alice-virtual1");
    let ready_since = mbx["status"]["conditions"][0]["lastTransitionTime"].clone();

    suspend(&ns, "alice-virtual1");
    // The edit is applied to the kept compile in place, and gives exactly the directory a full
    // compile of the edited manifests gives.
    let edited = local_encoding_edited(example, ns.name(), |resources| {
        let mailbox = resources
            .mailboxes
            .iter_mut()
            .find(|m| m.metadata.name.as_deref() == Some("alice-virtual1"))
            .expect("the example has alice-virtual1");
        mailbox.spec.suspended = true;
    });
    assert_ne!(edited.version, local.version);
    wait_version(&ns, "mail", &edited.version);
    assert!(made("in_place") >= 1, "the edit was applied in place");
    for (resource, name, version) in &before {
        assert_eq!(
            &written_version(&ns, resource, name),
            version,
            "{resource}/{name} untouched"
        );
    }
    let shards_after = config_map_versions(&ns);
    assert_eq!(
        shards_after.keys().collect::<Vec<_>>(),
        shards_before.keys().collect::<Vec<_>>(),
        "shard names are stable slots: none created, none pruned"
    );
    let changed: Vec<&String> = shards_after
        .iter()
        .filter(|(name, version)| shards_before.get(*name) != Some(version))
        .map(|(name, _)| name)
        .collect();
    assert!(
        changed.len() == 2 && changed.contains(&&"mail-directory".to_string()),
        "the head and exactly one shard rewritten: {shards_before:?} -> {shards_after:?}"
    );
    // Still Ready (suspended is served, not an error): lastTransitionTime does not move.
    let mbx = wait_for("observedGeneration 2", WAIT, || {
        let m = ns.get_json("mailbox", "alice-virtual1");
        (m["status"]["observedGeneration"] == 2).then_some(m)
    });
    assert_eq!(
        mbx["status"]["conditions"][0]["lastTransitionTime"],
        ready_since
    );
}

/// A counter from the operator's /metrics.
fn metric(port: u16, name: &str) -> u64 {
    let (_, text) = http_get(port, "/metrics").expect("operator /metrics answers");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

/// After a start the operator knows none of its writes: it reads the shards it finds, and writes
/// none that already holds what it wants (nor the head naming them).
#[test]
fn a_restarted_operator_writes_no_shard_that_already_holds_its_content() {
    let ns = cluster().namespace("operator-restart-shards");
    let (first, local) = publish_example(&ns, "3-many-virtual-users");
    drop(first);
    let port = free_port();
    let _operator = operator::start_with(ns.name(), &format!("lease-{}", ns.name()), port, &[]);
    wait_for("the restarted operator's /metrics", WAIT, || {
        http_get(port, "/metrics")
    });
    wait_for("the restarted operator's first reconcile", WAIT, || {
        (metric(port, "virtmail_operator_reconciles_total") >= 1).then_some(())
    });
    assert_eq!(status_version(&ns, "mail"), Some(local.version.clone()));
    assert_eq!(
        metric(port, "virtmail_operator_directory_written_bytes_total"),
        0,
        "no directory bytes written again"
    );
}

#[test]
fn directory_writes_over_budget_are_paced_and_then_published() {
    let ns = cluster().namespace("operator-paced");
    let example = "3-many-virtual-users";
    ns.apply_example(example);
    let local = local_encoding(example, ns.name());
    // A rate at which the first publish overdraws the bucket (30 s of burst) by 10 s' worth,
    // and an edit (the head and one shard) is too large to go on credit (over 1/8 of a burst).
    let head = encoding::data_size(&local.head) as u64;
    let first_write = local.shard_bytes() + head;
    let smallest_edit = head
        + local
            .shards
            .iter()
            .map(|s| encoding::data_size(&s.data) as u64)
            .min()
            .expect("shards");
    let rate = (first_write / 40).max(1);
    assert!(
        smallest_edit * 8 > rate * 30,
        "example 3 no longer suits this test: {first_write} bytes, edits from {smallest_edit}"
    );
    let port = free_port();
    let _operator = operator::start_with(
        ns.name(),
        &format!("lease-{}", ns.name()),
        port,
        &[&format!("--directory-write-rate={rate}")],
    );
    wait_version(&ns, "mail", &local.version);
    assert_eq!(
        metric(port, "virtmail_operator_directory_written_bytes_total"),
        first_write,
        "every shard and the head written once"
    );
    suspend(&ns, "alice-virtual1");
    // Put off (the bucket is overdrawn), not dropped: published once the budget allows.
    wait_for("the edit to be published", WAIT, || {
        status_version(&ns, "mail").filter(|v| v != &local.version)
    });
    assert!(metric(port, "virtmail_operator_paced_reconciles_total") > 0);
    assert!(metric(port, "virtmail_operator_directory_written_bytes_total") > first_write);
}

/// Apply `crds/fixtures/<fixture>` into `ns`, which the apiserver must refuse in part; the
/// refusal names each of `reasons`.
fn apply_fixture_refused(ns: &TestNamespace, fixture: &str, reasons: &[&str]) {
    let Err(refused) = ns.apply_file(&workspace_root().join("crds/fixtures").join(fixture)) else {
        panic!("{fixture} was not refused");
    };
    for reason in reasons {
        assert!(refused.stderr.contains(reason), "{reason}: {refused}");
    }
}

#[test]
fn invalid_and_conflicting_objects_get_their_reasons_while_the_rest_works() {
    let ns = cluster().namespace("operator-invalid");
    // The schema already refuses uid 0 and gid 0; the rest of the fixture is created.
    apply_fixture_refused(
        &ns,
        "invalid-owner.yaml",
        &[
            "spec.uid in body should be greater than or equal to 1",
            "spec.gid in body should be greater than or equal to 1",
        ],
    );
    // Two conflicting mailboxes, the second newer.
    ns.apply(&mailbox(
        "ok-again",
        "address: OK@example.test, uid: 5000, gid: 5000, path: other/ok/",
    ))
    .expect("apply conflicting mailbox");
    let _operator = operator::start_in(&ns);
    let expect = [
        ("ok", "True", "Published"),
        ("low", "False", "InvalidOwner"),
        ("nobody", "False", "InvalidOwner"),
        ("ok-again", "False", "AddressConflict"),
    ];
    for (name, status, reason) in expect {
        wait_for(
            &format!("Mailbox/{name} Ready={status} {reason}"),
            WAIT,
            || {
                let mbx = ns.get_json("mailbox", name);
                (condition_status(&mbx, "Ready") == Some((status.into(), reason.into())))
                    .then_some(())
            },
        );
    }
    let events = run(ns.kubectl().args(["get", "events", "-o", "json"])).expect("events");
    let events: Value = serde_json::from_str(&events).expect("json");
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"InvalidOwner"), "{reasons:?}");
    assert!(reasons.contains(&"AddressConflict"), "{reasons:?}");
    let server = ns.get_json("mailserver", "mail");
    assert_eq!(server["status"]["invalid"], 3);
    // The deferring entries are in the directory (mail to them waits, never bounces).
    let head = ns.get_json("configmap", "mail-directory");
    assert!(
        head["data"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("mailboxes=3")
    );
}

#[test]
fn deleting_the_mail_server_garbage_collects_what_it_owns() {
    let ns = cluster().namespace("operator-gc");
    let (operator, _) = publish_example(&ns, "5-autoreply-copy");
    run(ns
        .kubectl()
        .args(["delete", "mailserver", "mail", "--wait=true"]))
    .expect("delete");
    // The real garbage collector of kube-controller-manager removes the owned objects.
    wait_for(
        "owned objects to be garbage-collected",
        Duration::from_secs(90),
        || {
            let cms = config_map_names(&ns);
            let sts = run(ns
                .kubectl()
                .args(["get", "statefulsets,services,roles", "-o", "name"]))
            .unwrap_or_default();
            (cms.is_empty() && sts.trim().is_empty()).then_some(())
        },
    );
    // Mailboxes and domains stay: they are the administrator's.
    assert!(ns.get_json("mailbox", "user")["metadata"]["name"] == "user");
    drop(operator);
}

#[test]
fn two_replicas_never_fight_and_the_standby_takes_over() {
    let ns = cluster().namespace("operator-ha");
    let example = "4-forwarding-old-address";
    ns.apply_example(example);
    let lease = format!("lease-{}", ns.name());
    let mut first = operator::start(ns.name(), &lease);
    let local = local_encoding(example, ns.name());
    wait_version(&ns, "mail", &local.version);
    let mut second = operator::start(ns.name(), &lease);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !second.log().contains("reconciled"),
        "the standby must not reconcile:\n{}",
        second.log()
    );
    // One field manager owns the objects, so nothing flips back and forth.
    let sts = ns.get_json("statefulset", "mail");
    let managers: Vec<&str> = sts["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers
            .iter()
            .all(|m| *m == "virtmail-operator" || m.starts_with("kube-controller-manager")),
        "{managers:?}"
    );
    let rv = written_version(&ns, "statefulset", "mail");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        written_version(&ns, "statefulset", "mail"),
        rv,
        "no apply loop"
    );

    // The leader stops gracefully and gives the lease up (the standby need not wait for it to
    // expire); the standby takes it and reconciles the next change.
    assert_eq!(
        first.stop(Duration::from_secs(10)),
        Some(0),
        "{}",
        first.log()
    );
    assert!(first.log().contains("released"), "{}", first.log());
    let holder = run(ns.kubectl().args([
        "-n",
        operator::OPERATOR_NAMESPACE,
        "get",
        "lease",
        &lease,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]))
    .expect("get lease");
    assert!(
        holder.is_empty() || !first.log().contains(&holder),
        "the stopped leader still holds the lease: {holder}"
    );
    suspend(&ns, "new-user");
    wait_for(
        "the standby to publish a new version",
        Duration::from_secs(60),
        || status_version(&ns, "mail").filter(|v| v != &local.version),
    );
    assert!(second.running());
    assert!(second.log().contains("leader"), "{}", second.log());
}

#[test]
fn a_steady_stream_of_new_mailboxes_is_published_while_it_lasts() {
    // A trailing-edge debounce would hold every reconcile back as long as changes keep coming.
    let ns = cluster().namespace("operator-stream");
    ns.apply_example("1-virtual-for-all-mail");
    let _operator = operator::start_in(&ns);
    wait_for("the first publish", WAIT, || status_version(&ns, "mail"));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (kubectl_ns, flag) = (ns.name().to_string(), done.clone());
    let cluster = ns.cluster();
    // One kubectl creating 1,500 Mailboxes back to back: a change every few milliseconds for
    // tens of seconds.
    let yaml: String = (0..1500)
        .map(|i| {
            let spec = format!("address: s{i}@virtual1.test, path: virtual1.test/s{i}/");
            format!("---\n{}", mailbox(&format!("s{i}"), &spec))
        })
        .collect();
    let creator = std::thread::spawn(move || {
        virtmail_tests::cluster::run_with_stdin(
            cluster
                .kubectl()
                .args(["-n", &kubectl_ns, "create", "-f", "-"]),
            &yaml,
        )
        .expect("create");
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let published = wait_for(
        "mailboxes published while they are still being created",
        WAIT,
        || {
            let head = ns.get_json("configmap", "mail-directory");
            let summary = head["data"]["summary"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let count: usize = summary
                .split_whitespace()
                .find_map(|w| w.strip_prefix("mailboxes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (count >= 2 + 50).then_some(done.load(std::sync::atomic::Ordering::SeqCst))
        },
    );
    assert!(
        !published,
        "the directory was published only after the stream of changes stopped"
    );
    creator.join().expect("creator");
}

/// Run outside a cluster with a Lease namespace that does not exist, the operator stops at once
/// and says what to create, instead of retrying (and warning) forever.
#[test]
fn a_missing_lease_namespace_is_a_clear_error_at_start() {
    let cluster = cluster();
    let missing = "virtmail-no-such-namespace";
    let mut command =
        std::process::Command::new(virtmail_tests::process::binary("virtmail-operator"));
    command
        .env("KUBECONFIG", cluster.kubeconfig("admin"))
        .env("RUST_LOG", "info,kube=warn")
        .args(["run", "--http=127.0.0.1:0", "--lease-namespace", missing]);
    let mut operator = Process::start("operator-no-lease-ns", command);
    wait_for("the operator to stop", WAIT, || {
        (!operator.running()).then_some(())
    });
    let log = operator.log();
    assert!(
        log.contains(&format!("kubectl create namespace {missing}")),
        "{log}"
    );
    assert!(log.contains("Error:"), "{log}");
}

/// The new fields through the real apiserver (schema and CEL) and the operator: a Mailbox's
/// autoreply on a MailServer without `outbound` is refused on its `Ready` condition (the mailbox
/// stays served); bad and conflicting MailAlias patterns get their reasons.
#[test]
fn autoreply_and_pattern_reasons_reach_the_objects() {
    let ns = cluster().namespace("operator-autoreply");
    // The schema refuses an interval in minutes.
    apply_fixture_refused(&ns, "autoreply.yaml", &["spec.autoreply.interval"]);
    let patterns = cluster().namespace("operator-patterns");
    // CEL refuses a pattern without @domain.
    apply_fixture_refused(
        &patterns,
        "alias-patterns.yaml",
        &["a pattern alias names its domain as address"],
    );
    let _operator = operator::start_in(&ns);
    let _patterns_operator = operator::start_in(&patterns);
    let expect = [
        (&ns, "mailbox", "away-closed", "True", "AutoreplyRefused"),
        (&ns, "mailbox", "away-open", "True", "Published"),
        (&patterns, "mailalias", "sales", "True", "Published"),
        (
            &patterns,
            "mailalias",
            "sales-again",
            "False",
            "AddressConflict",
        ),
        (&patterns, "mailalias", "broken", "False", "InvalidPattern"),
        (&patterns, "mailalias", "echo", "False", "AliasLoop"),
    ];
    for (ns, kind, name, status, reason) in expect {
        wait_for(
            &format!("{kind}/{name} Ready={status} {reason}"),
            WAIT,
            || {
                let object = ns.get_json(kind, name);
                (condition_status(&object, "Ready") == Some((status.into(), reason.into())))
                    .then_some(())
            },
        );
    }
    let away = ns.get_json("mailbox", "away-closed");
    let message = away["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("spec.outbound.relayHost"), "{message}");
}
