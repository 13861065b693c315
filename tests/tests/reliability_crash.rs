//! Crash safety, CI size: 400 messages of mixed sizes through Postfix to six
//! Maildirs and six mboxes while the agent is killed with SIGKILL three times at random moments
//! and restarted. Every message Postfix accepted must be in exactly one mailbox, byte for byte;
//! duplicates only where RFC 2033 makes them unavoidable; no partial mbox entry, no stray file in
//! `tmp/`, no leftover dotlock. The full run is `cargo run --release -p virtmail-tests --bin
//! crash-test -- --messages 10000 --kills 10`.

use std::time::Duration;

use virtmail_tests::reliability::{CrashOptions, crash_run};

#[test]
fn every_accepted_message_lands_exactly_once_across_agent_kills() {
    let options = CrashOptions {
        messages: 400,
        kills: 3,
        seed: 20261125,
        sessions: 4,
        mailboxes: 12,
        locks: "fcntl, dotlock".into(),
        drain_timeout: Duration::from_secs(120),
        progress: true,
    };
    let (tally, stack) = crash_run(&options);
    eprintln!("{tally}");
    assert_eq!(tally.kills, 3, "faults injected");
    assert_eq!(tally.accepted, options.messages, "Postfix accepted all");
    assert!(
        tally.lost.is_empty(),
        "messages lost: {:?}\n{tally}",
        tally.lost
    );
    assert!(
        tally.partial_mbox.is_empty(),
        "partial mbox entries:\n{tally}"
    );
    assert!(tally.corrupt.is_empty(), "corrupt entries:\n{tally}");
    assert!(tally.stray_tmp.is_empty(), "stray tmp files:\n{tally}");
    assert!(
        tally.leftover_locks.is_empty(),
        "leftover dotlocks:\n{tally}"
    );
    assert!(
        tally.duplicates.iter().all(|d| d.2),
        "avoidable duplicates:\n{tally}"
    );
    assert_eq!(tally.unique, tally.accepted, "{tally}");
    assert!(tally.clean(), "{tally}");
    drop(stack);
}
