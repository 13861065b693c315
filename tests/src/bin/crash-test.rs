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

use clap::Parser;

use virtmail_tests::reliability::{CrashOptions, crash_run};

/// The command line; every option has the default of a full run.
#[derive(Debug, Parser)]
struct Args {
    /// Messages sent through Postfix.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// SIGKILLs of the agent during the run.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Seed of the messages, recipients and kill times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent SMTP sessions.
    #[arg(long, default_value_t = 6)]
    sessions: usize,
    /// Mailboxes (even ones Maildir, odd ones mbox).
    #[arg(long, default_value_t = 40)]
    mailboxes: usize,
    /// The MailServer's mbox lock methods.
    #[arg(long, default_value = "fcntl, dotlock")]
    locks: String,
}

fn parse() -> CrashOptions {
    let args = Args::parse();
    CrashOptions {
        messages: args.messages,
        kills: args.kills,
        seed: args.seed,
        sessions: args.sessions,
        mailboxes: args.mailboxes,
        locks: args.locks,
        drain_timeout: Duration::from_secs(1800),
        progress: true,
    }
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
