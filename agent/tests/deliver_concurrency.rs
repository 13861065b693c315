//! Several processes appending to one mbox never interleave, with fcntl locks and with
//! dotlocks (virtual(8) V19), using the real CLI binary.

use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};

use virtmail_tests::delivery::*;
use virtmail_tests::fixtures::mailbox;

const PROCESSES: usize = 6;
const MESSAGES: usize = 4;
const LINES: usize = 400;

fn message(process: usize, number: usize) -> Vec<u8> {
    let mut m = format!("Subject: p{process} m{number}\n\n").into_bytes();
    for line in 0..LINES {
        m.extend_from_slice(
            format!("P{process}M{number} line {line} {}\n", "x".repeat(60)).as_bytes(),
        );
    }
    m
}

fn run(locks: &str) {
    let w = World::create();
    w.domain_dir();
    let res = w.resources_with(
        &format!("mailboxBase: /x, mailboxLock: [{locks}]"),
        &[mailbox("bob", "address: bob@example.test, format: Mbox")],
    );
    let mut children = Vec::new();
    for p in 0..PROCESSES {
        let base = w.base.clone();
        let res = res.clone();
        children.push(std::thread::spawn(move || {
            for m in 0..MESSAGES {
                let mut child = Command::new(env!("CARGO_BIN_EXE_virtmail-agent"))
                    .args(["deliver", "--resources"])
                    .arg(&res)
                    .arg("--mailbox-base")
                    .arg(&base)
                    .args([
                        "--lock-timeout",
                        "60s",
                        "-f",
                        "s@origin.test",
                        "bob@example.test",
                    ])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(&message(p, m))
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }));
    }
    for child in children {
        child.join().unwrap();
    }
    let text = fs::read_to_string(w.base.join("example.test/bob")).unwrap();
    assert!(text.starts_with("From "));
    let messages: Vec<&str> = text[5..].split("\n\nFrom ").collect();
    assert_eq!(messages.len(), PROCESSES * MESSAGES);
    let mut seen = std::collections::BTreeSet::new();
    for message in messages {
        let body: Vec<&str> = message.lines().filter(|l| l.starts_with('P')).collect();
        assert_eq!(body.len(), LINES, "a message was split or merged");
        let tag = body[0].split(' ').next().unwrap();
        assert!(
            body.iter().all(|l| l.starts_with(&format!("{tag} "))),
            "interleaved: {tag}"
        );
        for (i, line) in body.iter().enumerate() {
            assert!(line.starts_with(&format!("{tag} line {i} ")));
        }
        assert!(seen.insert(tag.to_string()), "duplicate {tag}");
    }
    assert_eq!(
        names(&w.base.join("example.test")),
        vec![".bob.virtmail-append", "bob"],
        "dotlock left behind (the empty append journal stays)"
    );
}

#[test]
fn v19_processes_appending_with_fcntl_never_interleave() {
    run("fcntl");
}

#[test]
fn v19_processes_appending_with_dotlock_never_interleave() {
    run("dotlock");
}

#[test]
fn v19_processes_appending_with_flock_never_interleave() {
    run("flock");
}
