//! A Maildir delivery still writing its `tmp/` file must never have that file removed as the
//! debris of a dead delivery by another delivery of the same process that finishes meanwhile
//! (the crash-recovery cleanup runs at the end of every Maildir delivery).
//!
//! Only the first Maildir file a process names can be affected, so the scenario runs in a fresh
//! child process each time (this test binary re-executed), `VIRTMAIL_RACES_ITERATIONS` times
//! (default 40).

mod deliver_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deliver_support::*;

const CHILD: &str = "VIRTMAIL_RACES_MAILDIR_CHILD";

#[test]
fn first_maildir_delivery_of_a_process_keeps_its_tmp_file_while_another_delivery_finishes() {
    if std::env::var_os(CHILD).is_some() {
        return scenario();
    }
    let runs: usize = std::env::var("VIRTMAIL_RACES_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut failures = Vec::new();
    let mut overlapped = 0;
    for _ in 0..runs {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "first_maildir_delivery_of_a_process_keeps_its_tmp_file_while_another_delivery_finishes",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("re-run this test binary");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        if text.contains("overlapped: yes") {
            overlapped += 1;
        }
        if !out.status.success() {
            failures.push(text);
        }
    }
    eprintln!(
        "first Maildir delivery of a process vs a concurrent cleanup: {runs} processes, {overlapped} overlapped, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} processes failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
    assert!(
        overlapped * 2 >= runs,
        "only {overlapped} of {runs} runs overlapped the two deliveries"
    );
}

/// One process: a slow first delivery, a quick second one to the same maildir meanwhile.
fn scenario() {
    let mut w = World::create();
    w.domain_dir();
    w.mailbox("box@example.test", "example.test/box/");
    // The maildir exists before the deliveries, so that the slow one names its file at once.
    let w = Arc::new(w);
    for dir in ["box"] {
        for sub in ["", "/tmp", "/new", "/cur"] {
            let path = w.base.join(format!("example.test/{dir}{sub}"));
            std::fs::create_dir_all(&path).unwrap();
            chown(&path, UID, GID);
        }
    }

    // 8 MB: written and fsynced for long enough that the quick delivery finishes meanwhile.
    let mut big = b"From: a@origin.test\nSubject: big\n\n".to_vec();
    while big.len() < 8_000_000 {
        big.extend_from_slice(&[b'x'; 999]);
        big.push(b'\n');
    }
    let slow = {
        let (w, big) = (w.clone(), big.clone());
        std::thread::spawn(move || w.deliver("box@example.test", &big))
    };
    // Wait until the slow delivery's file is in tmp/, then deliver the quick one.
    let tmp = w.base.join("example.test/box/tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    // (If it is already done, the run does not overlap and is reported as such.)
    while names(&tmp).is_empty() && !slow.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the slow delivery never created its tmp file"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let quick = w.deliver("box@example.test", MESSAGE);
    assert_eq!(code(&quick.status), "2.0.0", "{}", quick.status);
    // The test only means something if the quick one finished (and cleaned up) first.
    let overlapped = !slow.is_finished();
    eprintln!("overlapped: {}", if overlapped { "yes" } else { "no" });
    let slow = slow.join().unwrap();
    assert_eq!(
        code(&slow.status),
        "2.0.0",
        "the first delivery of the process lost its tmp file to a concurrent cleanup: {}",
        slow.status
    );
    assert_eq!(names(&w.base.join("example.test/box/new")).len(), 2);
    assert!(names(&tmp).is_empty());
    w.assert_outside_untouched();
}
