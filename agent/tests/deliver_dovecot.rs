//! What the engine writes is what Dovecot reads: its `imap` (run pre-authenticated as the
//! recipient, no daemon) sees our Maildir names with the right `,S=`/`,W=` sizes, our
//! `maildirsize` through its quota plugin, and our mbox messages.

mod deliver_support;

use std::fs;
use std::path::Path;

use deliver_support::*;

/// Run Dovecot's imap binary as the recipient with `mail_location`, feeding `commands`.
fn imap(w: &World, mail_location: &str, home: &Path, commands: &str) -> (String, String) {
    let quota = "mail_plugins = quota imap_quota\n\
                 plugin {\n  quota = maildir:User quota\n  quota_rule = *:storage=1M\n}\n";
    let (child, log) = spawn_imap(w, quota, mail_location, home, commands);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = fs::read_to_string(&log).unwrap() + &String::from_utf8_lossy(&output.stderr);
    (stdout, log)
}

#[test]
fn dovecot_reads_our_maildir_sizes_and_maildirsize_quota() {
    let mut w = World::create();
    w.domain_dir();
    w.mailbox("alice@example.test", "example.test/alice/").quota = Some(1 << 20);
    let mut sizes = Vec::new();
    for i in 0..3 {
        let message = format!("Subject: m{i}\nFrom: x@origin.test\n\nFrom the body\nline\n");
        let outcome = w.deliver("alice@example.test", message.as_bytes());
        assert_eq!(code(&outcome.status), "2.0.0");
        let name = outcome.path.unwrap();
        let w_size: u64 = name.rsplit(",W=").next().unwrap().parse().unwrap();
        sizes.push(w_size);
    }
    let root = w.base.join("example.test/alice");
    let (out, log) = imap(
        &w,
        &format!("maildir:{}", root.display()),
        &root,
        "a select INBOX\r\nb fetch 1:* (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n\
         c getquotaroot INBOX\r\nd logout\r\n",
    );
    assert!(out.contains("* 3 EXISTS"), "{out}\n{log}");
    for (i, size) in sizes.iter().enumerate() {
        assert!(
            out.contains(&format!("* {} FETCH (RFC822.SIZE {size} ", i + 1)),
            "RFC822.SIZE = our W: {out}"
        );
    }
    assert!(
        out.contains("* QUOTA \"User quota\" (STORAGE 1 1024)"),
        "{out}"
    );
    assert!(!log.contains("Error") && !log.contains("wrong S"), "{log}");
}

#[test]
fn dovecot_reads_our_mbox() {
    let mut w = World::create();
    w.domain_dir();
    w.mailbox("bob@example.test", "example.test/bob");
    for i in 0..3 {
        let message = format!("Subject: m{i}\n\nFrom the body\nline\n");
        assert_eq!(
            code(&w.deliver("bob@example.test", message.as_bytes()).status),
            "2.0.0"
        );
    }
    let home = w.base.join("example.test");
    let (out, log) = imap(
        &w,
        &format!(
            "mbox:{}:INBOX={}",
            home.join("mail").display(),
            home.join("bob").display()
        ),
        &home,
        "a select INBOX\r\nb fetch 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])\r\nd logout\r\n",
    );
    assert!(out.contains("* 3 EXISTS"), "{out}\n{log}");
    for i in 0..3 {
        assert!(out.contains(&format!("Subject: m{i}")), "{out}");
    }
    assert_eq!(
        out.matches(">From the body\r\nline\r\n").count(),
        3,
        "{out}"
    );
    assert!(!log.contains("Error"), "{log}");
}
