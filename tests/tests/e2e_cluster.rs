//! The whole product end to end with every real component: kube-apiserver,
//! etcd and kube-controller-manager; the operator and the agent running out of cluster, each with
//! its own RBAC identity and a real bearer token (the operator as
//! `system:serviceaccount:virtmail-system:virtmail-operator`, the agent as the ServiceAccount the
//! operator creates for the server, `mail-agent`); an unmodified Postfix configured by the
//! operator's profile; Dovecot reading the mailboxes over IMAP. Mail goes in through Postfix's
//! SMTP port only.
//!
//! The suite stops kube-apiserver, so it runs on a private plane (`target/cluster-e2e`) that it
//! starts afresh and stops when it ends, passing or failing. The steps share that plane and build
//! on each other, so they are one test.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use virtmail_crds::resources::MailboxFormat;
use virtmail_tests::cluster::{self, cluster, condition, merge_patch, run, run_with_stdin};
use virtmail_tests::e2e::{ClusterMail, MailboxOnDisk, Options, WAIT};
use virtmail_tests::fixtures::mailbox;
use virtmail_tests::mail;
use virtmail_tests::mailstack::wait_for_copy;
use virtmail_tests::process::wait_for;
use virtmail_tests::{operator, workspace_root};

/// The namespace is fixed so that the agent's ServiceAccount gets a static token when the plane
/// starts (`tools/cluster.sh`'s `VIRTMAIL_CLUSTER_IDENTITIES`).
const NS: &str = "virtmail-e2e";
const SENDER: &str = "sender@remote.test";

/// Stops the private plane when the test ends, passing or failing.
struct PrivatePlane;

impl Drop for PrivatePlane {
    fn drop(&mut self) {
        let _ = cluster::cluster_script("down").output();
    }
}

fn cluster_script(command: &str) {
    run(&mut cluster::cluster_script(command)).unwrap_or_else(|e| panic!("{e}"));
}

fn kubectl() -> Command {
    let mut cmd = cluster().kubectl();
    cmd.args(["-n", NS]);
    cmd
}

fn get_json(resource: &str, name: &str) -> Value {
    let out = run(kubectl().args(["get", resource, name, "-o", "json"]))
        .unwrap_or_else(|e| panic!("{resource}/{name}: {e}"));
    serde_json::from_str(&out).expect("JSON")
}

/// Wait until Mailbox `name` reports `Provisioned` with `status` and one of `reasons`; returns
/// the condition's message.
fn wait_provisioned(name: &str, status: &str, reasons: &[&str]) -> String {
    wait_for(
        &format!("Mailbox/{name} Provisioned={status} {reasons:?}"),
        WAIT,
        || {
            let (s, reason, message) = condition(&get_json("mailbox", name), "Provisioned")?;
            (s == status && reasons.contains(&reason.as_str())).then_some(message)
        },
    )
}

/// Owner uid, gid and permission bits of a path.
fn owner(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Every file and directory of a Maildir (the mailbox itself, tmp/ new/ cur/ and each message)
/// with its owner and mode.
fn maildir_entries(maildir: &Path) -> Vec<(String, (u32, u32, u32))> {
    let mut out = vec![(".".to_owned(), owner(maildir))];
    for sub in ["tmp", "new", "cur"] {
        let dir = maildir.join(sub);
        out.push((sub.to_owned(), owner(&dir)));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("read Maildir")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let name = format!("{sub}/{}", f.file_name().unwrap().to_string_lossy());
            out.push((name, owner(&f)));
        }
    }
    out
}

/// Wait until `mailbox` holds a copy of `sent` (after the delivery headers, as the format stores
/// it) and check the headers the delivery prepended. Returns the stored copy.
fn wait_stored(
    mail: &ClusterMail,
    mailbox: &MailboxOnDisk,
    original: &str,
    sent: &[u8],
) -> Vec<u8> {
    let copy = wait_for_copy(
        &mailbox.address,
        mailbox.format,
        sent,
        WAIT,
        || mail.stored(mailbox),
        || format!("queue:\n{}", mail.postfix().queue()),
    );
    let d = mail::delivery(&copy);
    assert_eq!(d.return_path, format!("<{SENDER}>"));
    assert_eq!(d.x_original_to, original);
    assert_eq!(d.delivered_to, mailbox.address);
    assert!(
        d.received
            .as_deref()
            .is_some_and(|r| r.contains("by mx.virtmail.test (Postfix)")),
        "came through Postfix: {:?}",
        d.received
    );
    copy
}

/// Find `copy` (as stored) byte for byte (CRLF) in what Dovecot serves over IMAP. Dovecot adds
/// its own headers (X-UID, X-IMAPbase) to an mbox it has opened, so read every copy of an mbox
/// before the first IMAP session on it.
fn assert_imap(mail: &ClusterMail, mailbox: &MailboxOnDisk, copy: &[u8]) {
    mail.refresh_dovecot_users();
    let want = mail::crlf(copy);
    wait_for(
        &format!("IMAP to show the copy in {}", mailbox.address),
        Duration::from_secs(20),
        || {
            let f = mail.dovecot().fetch(&mailbox.address);
            f.messages.contains(&want).then_some(())
        },
    );
}

/// [`wait_stored`], then [`assert_imap`].
fn assert_delivered(
    mail: &ClusterMail,
    mailbox: &MailboxOnDisk,
    original: &str,
    sent: &[u8],
) -> Vec<u8> {
    let copy = wait_stored(mail, mailbox, original, sent);
    assert_imap(mail, mailbox, &copy);
    copy
}

fn send_accepted(mail: &ClusterMail, rcpt: &str, subject: &str, body: &str) -> Vec<u8> {
    let message = mail::message(SENDER, rcpt, subject, "", body.as_bytes());
    let sent = mail.send(SENDER, &[rcpt], &message);
    sent.assert_accepted();
    message
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
    if std::fs::symlink_metadata(path).expect("stat").is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// Progress on stderr (shown with `--nocapture`, and by the harness when the test fails).
fn step(started: std::time::Instant, what: &str) {
    eprintln!("[e2e_cluster {:>6.1?}] {what}", started.elapsed());
}

#[test]
fn kubectl_changes_reach_postfix_and_the_volume_and_an_apiserver_outage_keeps_mail_flowing() {
    let started = std::time::Instant::now();
    // Before the plane starts: every tools/cluster.sh of this process uses the private plane,
    // which gives the agent's ServiceAccount its own token.
    cluster::use_cluster_dir(&workspace_root().join("target/cluster-e2e"));
    cluster::use_cluster_identities(&format!("e2e-agent=system:serviceaccount:{NS}:mail-agent"));
    // A plane left by an interrupted run would still hold the namespace: start afresh.
    let _ = cluster::cluster_script("down").output();
    let _plane = PrivatePlane;
    step(started, "starting the private plane");
    let cluster = cluster();
    step(started, "plane up");
    run(cluster.kubectl().args(["create", "namespace", NS])).expect("create the namespace");

    // `kubectl apply -f examples/1-...` as the mail administrator; the operator publishes.
    run(kubectl()
        .arg("apply")
        .arg("-f")
        .arg(workspace_root().join("examples/1-virtual-for-all-mail")))
    .expect("kubectl apply -f examples/1-virtual-for-all-mail");
    let mut operator = operator::start(NS, "e2e");
    wait_for("the directory and the agent's RBAC", WAIT, || {
        run(kubectl().args([
            "get",
            "configmap/mail-directory",
            "serviceaccount/mail-agent",
        ]))
        .ok()
    });
    // The agent authenticates with the token of `mail-agent`, nothing else.
    let agent_kubeconfig = cluster.kubeconfig("e2e-agent");
    assert!(
        std::fs::read_to_string(agent_kubeconfig)
            .expect("agent kubeconfig")
            .contains(&format!("system:serviceaccount:{NS}:mail-agent")),
        "the agent's kubeconfig is its ServiceAccount's"
    );
    step(
        started,
        "directory published; starting agent, Dovecot, Postfix",
    );
    let mut mail = ClusterMail::start(cluster, NS, "mail", Options::new(agent_kubeconfig));

    step(started, "apply → deliver");
    // --- apply → mail through Postfix lands in the right mailbox with the right owner, and
    // reads back over IMAP.
    wait_provisioned("test1-virtual1", "True", &["Created", "Present"]);
    wait_provisioned("test2-virtual2", "True", &["Created", "Present"]);
    let test1 = mail.mailbox("test1@virtual1.test");
    let test2 = mail.mailbox("test2@virtual2.test");
    assert_eq!(
        (test1.format, test2.format),
        (MailboxFormat::Mbox, MailboxFormat::Maildir)
    );
    let to_mbox = send_accepted(
        &mail,
        "test1@virtual1.test",
        "to an mbox",
        "Hello mbox.\nFrom here on, a line starts with From.\n",
    );
    let to_maildir = send_accepted(
        &mail,
        "test2@virtual2.test",
        "to a Maildir",
        "Hello Maildir.\n",
    );
    // The postmaster alias the MailDomain implies.
    let to_postmaster = send_accepted(
        &mail,
        "postmaster@virtual1.test",
        "to the postmaster",
        "Hi postmaster.\n",
    );
    let unknown = mail.rcpt(SENDER, "nobody@virtual1.test");
    assert_eq!(unknown.code, 550, "unknown recipient: {unknown}");
    assert!(unknown.text.starts_with("5.1.1"), "{unknown}");

    let first = wait_stored(&mail, &test1, "test1@virtual1.test", &to_mbox);
    let second = wait_stored(&mail, &test1, "postmaster@virtual1.test", &to_postmaster);
    assert_eq!(mail.stored(&test1).len(), 2);
    assert_eq!(owner(&test1.path), (5001, 5001, 0o600), "the mbox");
    assert_imap(&mail, &test1, &first);
    assert_imap(&mail, &test1, &second);
    assert_delivered(&mail, &test2, "test2@virtual2.test", &to_maildir);
    let entries = maildir_entries(&test2.path);
    assert_eq!(
        entries.len(),
        5,
        "the Maildir, tmp/ new/ cur/, one message: {entries:?}"
    );
    for (name, (uid, gid, mode)) in &entries {
        let want = if name.contains('/') { 0o600 } else { 0o700 };
        assert_eq!((*uid, *gid, *mode), (5002, 5002, want), "{name}");
    }

    step(started, "delete mailbox");
    // --- kubectl delete mailbox → the next mail is rejected at RCPT, the data is kept.
    let mbox_before = std::fs::read(&test1.path).expect("the mbox");
    run(kubectl().args(["delete", "mailbox", "test1-virtual1"])).expect("delete the Mailbox");
    let rejected = wait_for("RCPT to the deleted mailbox to be rejected", WAIT, || {
        let reply = mail.rcpt(SENDER, "test1@virtual1.test");
        (reply.code != 250).then_some(reply)
    });
    assert_eq!(rejected.code, 550, "{rejected}");
    assert!(rejected.text.starts_with("5.1.1"), "{rejected}");
    assert_eq!(
        std::fs::read(&test1.path).expect("the mbox is kept"),
        mbox_before
    );
    assert_eq!(owner(&test1.path), (5001, 5001, 0o600));

    step(started, "uid change");
    // --- a Mailbox's uid changes → deliveries defer (owner mismatch) until the volume is fixed,
    // and the status says why.
    merge_patch(
        kubectl(),
        "mailbox",
        "test2-virtual2",
        r#"{"spec":{"uid":5003}}"#,
    )
    .expect("patch the uid");
    let why = wait_provisioned("test2-virtual2", "False", &["OwnerMismatch"]);
    assert!(why.contains("5002") && why.contains("5003"), "{why}");
    let before = mail.stored(&test2).len();
    let deferred_before = mail
        .postfix()
        .log_status("test2@virtual2.test", "deferred")
        .len();
    let after_uid_change = send_accepted(
        &mail,
        "test2@virtual2.test",
        "after the uid change",
        "Held until the volume is fixed.\n",
    );
    let deferred = wait_for("Postfix to defer the delivery", WAIT, || {
        let lines = mail.postfix().log_status("test2@virtual2.test", "deferred");
        (lines.len() > deferred_before).then(|| lines[deferred_before].clone())
    });
    // The new uid cannot even enter the old owner's 0700 Maildir, so the reply says "Permission
    // denied" (virtual(8) says the same); an owner check that gets that far says "not owned by
    // recipient". The agent's log names both uids either way.
    assert!(
        deferred.contains("451 4.2.0")
            && (deferred.contains("Permission denied")
                || deferred.contains("not owned by recipient")),
        "{deferred}"
    );
    let log = mail.agent_log();
    assert!(
        log.contains("UID/GID=5003/5002") || log.contains("owned by uid 5002, not 5003"),
        "{log}"
    );
    assert!(
        !mail.postfix().queue_is_empty(),
        "the message waits in Postfix's queue"
    );
    assert_eq!(
        mail.stored(&test2).len(),
        before,
        "nothing delivered meanwhile"
    );
    assert_eq!(owner(&test2.path).0, 5002, "existing mail is never chowned");
    // The administrator fixes the volume (and Dovecot's index of that user).
    chown_tree(&test2.path, 5003, 5002);
    chown_tree(&mail.dovecot_home("test2@virtual2.test"), 5003, 5002);
    wait_provisioned("test2-virtual2", "True", &["Present"]);
    let test2 = mail.mailbox("test2@virtual2.test");
    assert_eq!((test2.uid, test2.gid), (5003, 5002));
    // Postfix's next retry (backoff 1–2 s in the test-local settings) delivers it.
    assert_delivered(&mail, &test2, "test2@virtual2.test", &after_uid_change);
    assert!(
        !mail
            .postfix()
            .log_status("test2@virtual2.test", "sent")
            .is_empty(),
        "{}",
        mail.postfix().log()
    );
    for (name, (uid, gid, _)) in maildir_entries(&test2.path) {
        assert_eq!((uid, gid), (5003, 5002), "{name}");
    }

    step(started, "apiserver stopped");
    // --- the apiserver stops → mail is still delivered with the last directory.
    cluster_script("stop-apiserver");
    assert!(
        run(kubectl().args(["get", "mailboxes", "--request-timeout=3s"])).is_err(),
        "the apiserver is down"
    );
    let during_outage = send_accepted(
        &mail,
        "test2@virtual2.test",
        "during the outage",
        "The apiserver is down.\n",
    );
    let unknown = mail.rcpt(SENDER, "test1@virtual1.test");
    assert_eq!(unknown.code, 550, "still the last directory: {unknown}");
    let expected = mail::lf(&during_outage);
    wait_for("delivery while the apiserver is down", WAIT, || {
        mail.stored(&test2)
            .iter()
            .any(|m| mail::delivery(m).rest == expected)
            .then_some(())
    });
    assert!(mail.agent_running(), "the agent rides out the outage");

    step(started, "apiserver restarted");
    // --- the apiserver restarts → changes flow again.
    cluster_script("start-apiserver");
    // An operator that could not renew its lease for a whole lease duration stops (as
    // controller-runtime's do) and the kubelet would restart it; stand in for the kubelet.
    operator::restart_if_lease_lost(&mut operator, NS, "e2e");
    run_with_stdin(
        kubectl().args(["apply", "-f", "-"]),
        &mailbox(
            "late-virtual2",
            "address: late@virtual2.test, format: Maildir, path: late/, uid: 5004, gid: 5004",
        ),
    )
    .expect("apply a new Mailbox after the restart");
    let accepted = wait_for("RCPT to the new mailbox to be accepted", WAIT, || {
        let reply = mail.rcpt(SENDER, "late@virtual2.test");
        (reply.code == 250).then_some(reply)
    });
    assert!(accepted.text.contains("2.1.5"), "{accepted}");
    wait_provisioned("late-virtual2", "True", &["Created", "Present"]);
    let late = mail.mailbox("late@virtual2.test");
    let to_late = send_accepted(
        &mail,
        "late@virtual2.test",
        "after the restart",
        "Welcome.\n",
    );
    assert_delivered(&mail, &late, "late@virtual2.test", &to_late);
    for (name, (uid, gid, _)) in maildir_entries(&late.path) {
        assert_eq!((uid, gid), (5004, 5004), "{name}");
    }
    // The outage mail also reads back over IMAP, and nothing is left in Postfix's queue.
    assert_delivered(&mail, &test2, "test2@virtual2.test", &during_outage);
    wait_for("an empty Postfix queue", WAIT, || {
        mail.postfix().queue_is_empty().then_some(())
    });
    step(started, "done");
    drop(mail);
    drop(operator);
}
