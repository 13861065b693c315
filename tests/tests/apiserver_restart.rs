//! Control-plane faults: with kube-apiserver stopped (and later etcd), the agent keeps answering
//! and delivering with the last directory it verified; when the apiserver comes back, the
//! operator and the agent both resume, and a change made afterwards reaches Postfix's lookups.
//!
//! This suite stops the apiserver, so it runs on a private plane of its own
//! (`target/cluster-restart`), never the one other suites share.

use std::time::Duration;

use virtmail_tests::agent;
use virtmail_tests::cluster::{self, cluster, run};
use virtmail_tests::fixtures::mailbox;
use virtmail_tests::lmtp::deliver_once;
use virtmail_tests::process::wait_for;
use virtmail_tests::socketmap::query_once;
use virtmail_tests::{operator, workspace_root};

const WAIT: Duration = Duration::from_secs(90);

fn cluster_script(command: &str) {
    let status = cluster::cluster_script(command)
        .status()
        .expect("run tools/cluster.sh");
    assert!(status.success(), "tools/cluster.sh {command} failed");
}

/// Stops the private plane when the test ends, passing or failing.
struct PrivatePlane;

impl Drop for PrivatePlane {
    fn drop(&mut self) {
        let _ = cluster::cluster_script("down").status();
    }
}

#[test]
fn apiserver_restart_is_survived_by_operator_and_agent() {
    // Before the plane starts: every tools/cluster.sh of this process uses the private plane.
    cluster::use_cluster_dir(&workspace_root().join("target/cluster-restart"));
    let _plane = PrivatePlane;
    let ns = cluster().namespace("apiserver-restart");
    ns.apply_example("2-coexisting-with-local");
    let lease = format!("lease-{}", ns.name());
    let mut operator = operator::start(ns.name(), &lease);
    let agent = agent::start(ns.name(), "mail");
    wait_for("the agent to serve the directory", WAIT, || {
        query_once(&agent.socketmap, "mailbox test2@virtual2.test").filter(|r| r.starts_with("OK "))
    });

    cluster_script("stop-apiserver");
    assert!(
        run(ns
            .kubectl()
            .args(["get", "mailboxes", "--request-timeout=3s"]))
        .is_err(),
        "apiserver is down"
    );
    // Fail static: lookups and deliveries go on with the last verified directory.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        query_once(&agent.socketmap, "mailbox test2@virtual2.test")
            .is_some_and(|r| r.starts_with("OK "))
    );
    let reply = deliver_once(
        &agent.lmtp,
        "test2@virtual2.test",
        "delivered while the apiserver is down",
    );
    assert!(reply.starts_with("250 2.0.0"), "{reply}");

    cluster_script("start-apiserver");
    // An operator that could not renew its lease for a whole lease duration stops, as
    // controller-runtime's do, and its pod is restarted by the kubelet; stand in for the kubelet.
    operator::restart_if_lease_lost(&mut operator, ns.name(), &lease);
    // A change after the restart flows through operator and agent again.
    ns.apply(&mailbox("late", "address: late@virtual2.test"))
        .expect("apply a new Mailbox");
    wait_for(
        "the new mailbox to reach the agent after the restart",
        WAIT,
        || {
            query_once(&agent.socketmap, "mailbox late@virtual2.test")
                .filter(|r| r.starts_with("OK "))
        },
    );
    let reply = deliver_once(&agent.lmtp, "late@virtual2.test", "after the restart");
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let delivered = std::fs::read_dir(agent.base.join("virtual2.test/late/new"))
        .expect("new/")
        .count();
    assert_eq!(delivered, 1);

    // etcd restarted: the apiserver answers errors meanwhile; the agent keeps serving,
    // and afterwards changes flow again.
    let restart = std::thread::spawn(|| {
        let status = cluster::cluster_script("restart-etcd")
            .arg("5")
            .status()
            .expect("run tools/cluster.sh");
        assert!(status.success(), "tools/cluster.sh restart-etcd 5 failed");
    });
    std::thread::sleep(Duration::from_secs(2));
    let reply = deliver_once(&agent.lmtp, "late@virtual2.test", "while etcd is down");
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    restart.join().expect("restart-etcd");
    operator::restart_if_lease_lost(&mut operator, ns.name(), &lease);
    ns.apply(&mailbox("after-etcd", "address: after-etcd@virtual2.test"))
        .expect("apply a Mailbox after the etcd restart");
    wait_for("the new mailbox after the etcd restart", WAIT, || {
        query_once(&agent.socketmap, "mailbox after-etcd@virtual2.test")
            .filter(|r| r.starts_with("OK "))
    });
    assert_eq!(
        std::fs::read_dir(agent.base.join("virtual2.test/late/new"))
            .expect("new/")
            .count(),
        2,
        "the message delivered while etcd was down is there"
    );
    drop(operator);
}
