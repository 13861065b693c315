//! The agent's mounted-files mode (for clusters that forbid API access from pods): the
//! operator publishes the directory and declares the projected volume in the StatefulSet; the
//! volume is written from the real apiserver as the kubelet writes it (`..data` swaps, see
//! `virtmail_tests::kubelet`); the agent runs with no API credentials at all, follows the swaps,
//! and never serves a set whose shards do not match the head. Also the control-plane fault of
//! A shard edited or deleted by hand is restored by the operator.

use std::time::Duration;

use virtmail_crds::encoding;
use virtmail_tests::agent;
use virtmail_tests::cluster::{TestNamespace, cluster, merge_patch, run};
use virtmail_tests::fixtures::mailbox;
use virtmail_tests::kubelet::{self, ProjectedVolume};
use virtmail_tests::lmtp::deliver_once;
use virtmail_tests::operator;
use virtmail_tests::process::{http_get, wait_for};
use virtmail_tests::socketmap::query_once;

const WAIT: Duration = Duration::from_secs(60);

fn shard_names(ns: &TestNamespace) -> Vec<String> {
    run(ns.kubectl().args([
        "get",
        "configmaps",
        "-l",
        "virtmail.io/directory=shard",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]))
    .expect("list shards")
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

fn data_hash_of(ns: &TestNamespace, name: &str) -> String {
    let cm = ns.get_json("configmap", name);
    let data: encoding::Data = serde_json::from_value(cm["data"].clone()).unwrap_or_default();
    encoding::data_hash(&data)
}

#[test]
fn mounted_agent_without_api_access_follows_kubelet_swaps_and_hand_edits_are_undone() {
    let ns = cluster().namespace("agent-mounted");
    ns.apply_example("1-virtual-for-all-mail");
    merge_patch(
        ns.kubectl(),
        "mailserver",
        "mail",
        r#"{"spec":{"agent":{"directorySource":"MountedFiles"}}}"#,
    )
    .expect("MountedFiles");
    let _operator = operator::start_in(&ns);
    let sts = wait_for("the StatefulSet with the directory volume", WAIT, || {
        let text = run(ns
            .kubectl()
            .args(["get", "statefulset", "mail", "-o", "json"]))
        .ok()?;
        let sts: serde_json::Value = serde_json::from_str(&text).ok()?;
        let volumes = sts["spec"]["template"]["spec"]["volumes"]
            .as_array()?
            .clone();
        volumes
            .iter()
            .any(|v| v["name"] == "directory")
            .then_some(sts)
    });
    assert_eq!(
        sts["spec"]["template"]["spec"]["automountServiceAccountToken"], false,
        "no API token in the pod"
    );
    wait_for("the directory head", WAIT, || {
        run(ns.kubectl().args(["get", "configmap", "mail-directory"])).ok()
    });

    let work = tempfile::tempdir().expect("tempdir");
    let sources = kubelet::projected_sources(&ns, "mail", "directory");
    let volume = ProjectedVolume::start(
        &ns,
        sources,
        &work.path().join("directory"),
        Duration::from_millis(300),
    );
    let agent = agent::start_mounted(&volume.dir, "mail");
    let (lmtp_socket, map_socket, port) = (&agent.lmtp, &agent.socketmap, agent.http_port);

    // Served from the volume: lookups, provisioning and delivery.
    wait_for("test1 in the mounted directory", WAIT, || {
        query_once(map_socket, "mailbox test1@virtual1.test").filter(|r| r.starts_with("OK "))
    });
    assert_eq!(
        query_once(map_socket, "mailbox nobody@virtual1.test").as_deref(),
        Some("NOTFOUND ")
    );
    let reply = wait_for("a delivery to test1", WAIT, || {
        let reply = deliver_once(
            lmtp_socket,
            "test1@virtual1.test",
            "Subject: mounted\r\n\r\nhi\r\n",
        );
        reply.contains("250 2.0.0").then_some(reply)
    });
    assert!(reply.contains("250 2.0.0"), "{reply}");
    let (code, ready) = http_get(port, "/readyz").expect("/readyz answers");
    assert_eq!(code, 200, "{ready}");
    let version_before = ns.get_json("mailserver", "mail")["status"]["directory"]["version"]
        .as_str()
        .expect("published version")
        .to_string();
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics answers");
    assert!(metrics.contains(&version_before), "{metrics}");

    // A new Mailbox reaches the agent through the next payload.
    ns.apply(&mailbox(
        "fresh",
        "address: fresh@virtual1.test, path: virtual1.test/fresh/, uid: 5005, gid: 5005",
    ))
    .expect("new mailbox");
    wait_for("fresh@ after a kubelet swap", WAIT, || {
        query_once(map_socket, "mailbox fresh@virtual1.test").filter(|r| r.starts_with("OK "))
    });
    assert!(
        volume.writes.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "a new payload was swapped in"
    );

    // Control-plane faults: a shard edited by hand, then deleted by hand. The operator restores
    // it; the agent never serves the edited content (its hash does not match the head).
    let shard = shard_names(&ns).into_iter().next().expect("a shard");
    let want = data_hash_of(&ns, &shard);
    merge_patch(
        ns.kubectl(),
        "configmap",
        &shard,
        r#"{"data":{"mailboxes.jsonl":"{\"address\":\"evil@virtual1.test\"}\n"}}"#,
    )
    .expect("hand edit");
    wait_for("the operator to restore the edited shard", WAIT, || {
        assert_eq!(
            query_once(map_socket, "mailbox evil@virtual1.test").as_deref(),
            Some("NOTFOUND "),
            "the edited shard is never served"
        );
        (data_hash_of(&ns, &shard) == want).then_some(())
    });
    run(ns.kubectl().args(["delete", "configmap", &shard])).expect("hand delete");
    wait_for("the operator to recreate the deleted shard", WAIT, || {
        run(ns.kubectl().args(["get", "configmap", &shard]))
            .ok()
            .filter(|_| data_hash_of(&ns, &shard) == want)
    });
    // Throughout, the agent kept answering from a verified version.
    assert_eq!(
        query_once(map_socket, "mailbox evil@virtual1.test").as_deref(),
        Some("NOTFOUND ")
    );
    wait_for("fresh@ still served after the faults", WAIT, || {
        query_once(map_socket, "mailbox fresh@virtual1.test").filter(|r| r.starts_with("OK "))
    });
    let log = agent.process.log();
    assert!(
        !log.contains("evil@"),
        "the edited shard never reached the served directory"
    );
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics answers");
    assert!(metrics.contains("virtmail_directory_pending "), "{metrics}");
    assert!(
        metrics.contains("virtmail_directory_source_error 0"),
        "{metrics}"
    );
}
