//! The agent in cluster mode: the operator publishes the directory, the agent watches
//! it with exactly the RBAC the operator grants it (`<server>-agent`), provisions the volume,
//! reports `Provisioned`, answers socketmap and delivers LMTP.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use virtmail_tests::agent;
use virtmail_tests::cluster::{TestNamespace, cluster, condition_status, merge_patch, run};
use virtmail_tests::lmtp::deliver_once;
use virtmail_tests::operator;
use virtmail_tests::process::wait_for;
use virtmail_tests::socketmap::query_once;

const WAIT: Duration = Duration::from_secs(60);

fn wait_provisioned(ns: &TestNamespace, mailbox: &str, want: (&str, &str)) {
    wait_for(
        &format!("Mailbox/{mailbox} Provisioned {want:?}"),
        WAIT,
        || {
            let m = ns.get_json("mailbox", mailbox);
            (condition_status(&m, "Provisioned") == Some((want.0.into(), want.1.into())))
                .then_some(())
        },
    );
}

#[test]
fn agent_follows_the_published_directory_provisions_and_delivers() {
    let ns = cluster().namespace("agent-cluster");
    ns.apply_example("1-virtual-for-all-mail");
    let _operator = operator::start_in(&ns);
    wait_for("the directory head", WAIT, || {
        run(ns.kubectl().args(["get", "configmap", "mail-directory"])).ok()
    });

    let agent = agent::start_with_base_mode(ns.name(), "mail", 0o755);
    let (base, lmtp_socket, map_socket) = (&agent.base, &agent.lmtp, &agent.socketmap);

    // The directory arrives through the API and answers Postfix's lookups.
    wait_for("socketmap to know test1@virtual1.test", WAIT, || {
        query_once(map_socket, "mailbox Test1+x@Virtual1.test").filter(|r| r.starts_with("OK "))
    });
    assert_eq!(
        query_once(map_socket, "mailbox nobody@virtual1.test").as_deref(),
        Some("NOTFOUND ")
    );

    // Provisioned on the volume with the right owners, and reported.
    // test1 is an mbox directly in the base (VIRTUAL_README's Example 1); with the base at 0755 its
    // owner could never create the dotlock beside it, and the status says so …
    wait_provisioned(&ns, "test1-virtual1", ("False", "DotlockNotPossible"));
    wait_provisioned(&ns, "test2-virtual2", ("True", "Created"));
    // … until the administrator makes the base sticky and writable, like /var/mail.
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o1777)).expect("chmod base");
    wait_provisioned(&ns, "test1-virtual1", ("True", "Present"));
    let mbox = std::fs::metadata(base.join("test1")).expect("mbox provisioned");
    assert_eq!(
        (mbox.uid(), mbox.gid(), mbox.mode() & 0o777),
        (5001, 5001, 0o600)
    );
    for sub in ["", "tmp", "new", "cur"] {
        let m = std::fs::metadata(base.join("test2").join(sub)).expect("maildir provisioned");
        assert_eq!((m.uid(), m.mode() & 0o777), (5002, 0o700), "test2/{sub}");
    }
    // The operator's Ready and the agent's Provisioned live side by side.
    let m = ns.get_json("mailbox", "test2-virtual2");
    assert_eq!(
        condition_status(&m, "Ready"),
        Some(("True".into(), "Published".into()))
    );

    // Mail is delivered to the provisioned Maildir.
    let reply = deliver_once(lmtp_socket, "test2@virtual2.test", "hello from the cluster");
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let delivered: Vec<_> = std::fs::read_dir(base.join("test2/new"))
        .expect("new/")
        .flatten()
        .collect();
    assert_eq!(delivered.len(), 1);
    let text = std::fs::read_to_string(delivered[0].path()).expect("message");
    assert!(
        text.contains("Delivered-To: test2@virtual2.test\n")
            && text.contains("hello from the cluster")
    );

    // Changing the uid: the data is not touched, the status says why, deliveries defer.
    merge_patch(
        ns.kubectl(),
        "mailbox",
        "test2-virtual2",
        r#"{"spec":{"uid":5003}}"#,
    )
    .expect("patch uid");
    wait_provisioned(&ns, "test2-virtual2", ("False", "OwnerMismatch"));
    let reply = wait_for("delivery to defer after the uid change", WAIT, || {
        let r = deliver_once(lmtp_socket, "test2@virtual2.test", "after uid change");
        r.starts_with('4').then_some(r)
    });
    assert!(reply.contains("4.2.0"), "{reply}");
    assert_eq!(
        std::fs::metadata(base.join("test2")).expect("kept").uid(),
        5002
    );

    // Deleting a Mailbox: lookups say NOTFOUND, the data stays.
    run(ns.kubectl().args(["delete", "mailbox", "test1-virtual1"])).expect("delete mailbox");
    wait_for("socketmap to forget test1", WAIT, || {
        (query_once(map_socket, "mailbox test1@virtual1.test").as_deref() == Some("NOTFOUND "))
            .then_some(())
    });
    assert!(
        base.join("test1").is_file(),
        "a removed mailbox keeps its data"
    );
    drop(agent);
}
