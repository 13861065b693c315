//! Crash safety under load (not a test; the CI-sized version is `tests/tests/reliability_crash.rs`):
//! a private Postfix, the agent and Dovecot on loopback, N uniquely identified messages of mixed
//! sizes over C SMTP sessions to a mixed Maildir/mbox set, `kill -9` of the agent K times at
//! random moments (restarted each time), then a tally of what landed against what Postfix
//! accepted. Exits 1 unless every accepted message is in exactly one mailbox (duplicates only
//! where RFC 2033 makes them unavoidable), with no partial mbox entry, no stray tmp file and no
//! leftover lock.
//!
//! ```sh
//! cargo run --release -p virtmail-tests --bin crash-test -- --messages 10000 --kills 10 --seed 1
//! ```
//! Needs root, Postfix, Dovecot (imapd).

use std::time::Duration;

use virtmail_tests::reliability::{CrashOptions, crash_run};

fn parse() -> CrashOptions {
    let mut o = CrashOptions {
        messages: 10_000,
        kills: 10,
        seed: 1,
        sessions: 6,
        mailboxes: 40,
        locks: "fcntl, dotlock".into(),
        drain_timeout: Duration::from_secs(1800),
        progress: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let n = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{}: a number, not {value:?}", args[i]))
        };
        match args[i].as_str() {
            "--messages" => o.messages = n() as usize,
            "--kills" => o.kills = n() as usize,
            "--seed" => o.seed = n(),
            "--sessions" => o.sessions = n() as usize,
            "--mailboxes" => o.mailboxes = n() as usize,
            "--locks" => o.locks = value.clone(),
            other => panic!(
                "unknown argument {other}; use --messages N --kills K --seed S --sessions C --mailboxes M --locks 'fcntl, dotlock'"
            ),
        }
        i += 2;
    }
    o
}

fn main() {
    let o = parse();
    eprintln!(
        "crash test: {} messages, {} kills, seed {}, {} SMTP sessions, {} mailboxes (even Maildir, odd mbox), mbox locks [{}]",
        o.messages, o.kills, o.seed, o.sessions, o.mailboxes, o.locks
    );
    let (tally, stack) = crash_run(&o);
    println!(
        "command: cargo run --release -p virtmail-tests --bin crash-test -- --messages {} --kills {} --seed {} --sessions {} --mailboxes {} --locks '{}'",
        o.messages, o.kills, o.seed, o.sessions, o.mailboxes, o.locks
    );
    println!("{tally}");
    if !tally.clean() {
        eprintln!("FAILED: see above; agent log:\n{}", stack.agent_log());
        drop(stack);
        std::process::exit(1);
    }
    println!("PASS");
}
