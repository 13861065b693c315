//! Attacks on `virtmail-agent serve` as a whole process: a mailbox user whose Maildir makes
//! every quota check expensive must not stall the runtime that socketmap, LMTP and `/healthz`
//! share. Real binary, real uids, real files.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use virtmail_tests::fixtures::{agent_directory, mailbox, stream};
use virtmail_tests::lmtp::Lmtp;
use virtmail_tests::serve::{Agent, eventually};

/// `full@example.test`: a Maildir with a quota (uid 5000 from the domain defaults).
fn quota_mailbox() -> String {
    mailbox("full", "address: full@example.test, quota: 1Gi")
}

/// Files the owner puts in `cur/` (no `,S=` in their names, so a scan must stat each).
const FILES: usize = 150_000;

#[test]
fn quota_scans_of_a_hostile_maildir_do_not_stall_healthz_or_lmtp() {
    let agent = Agent::start_with(Some(&stream([agent_directory(), quota_mailbox()])), &[]);
    assert!(
        eventually(Duration::from_secs(10), || agent.get("/readyz").0 == 200),
        "agent not ready:\n{}",
        agent.log_text()
    );
    // The owner's doing: maildirsize is a directory (it can never be rewritten, so every check
    // recalculates), and the Maildir holds many files.
    let maildir = agent.base().join("example.test/full");
    for sub in ["", "tmp", "new", "cur", "maildirsize"] {
        let path = maildir.join(sub);
        std::fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(5000), Some(5000)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let cur = maildir.join("cur");
    for i in 0..FILES {
        std::fs::File::create(cur.join(format!("{i}.M1P1.host:2,S"))).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (stop, answered, path) = (stop.clone(), answered.clone(), agent.lmtp_path());
            std::thread::spawn(move || {
                let mut lmtp = Lmtp::connect(&path);
                lmtp.hello();
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    if sent % 50 == 0 {
                        lmtp.command("RSET");
                        lmtp.command("MAIL FROM:<s@origin.test>");
                    }
                    let reply = lmtp.command("RCPT TO:<full@example.test>");
                    assert!(reply.starts_with("250"), "RCPT: {reply}");
                    answered.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(agent.get("/healthz").0, 200);
        latencies.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "healthz under attack: median {median:?}, max {:?}; {} RCPTs answered",
        latencies[latencies.len() - 1],
        answered.load(Ordering::Relaxed)
    );
    assert!(
        median < Duration::from_millis(100),
        "/healthz took {median:?} (median) while RCPTs to a hostile Maildir were checked: \
         the quota scans run on the runtime's workers"
    );
}

/// Anyone who can reach the HTTP port opens connections and sends nothing. Each used to cost
/// the agent a task and a descriptor for the whole head timeout, without limit, until accept
/// failed with EMFILE for LMTP too. Now HTTP connections beyond a small cap are closed at once,
/// and LMTP keeps greeting.
#[test]
fn idle_http_connections_cannot_exhaust_the_agents_descriptors() {
    let agent = Agent::with_flags(&[]);
    let pid = rustix::process::Pid::from_raw(agent.child.as_ref().unwrap().id() as i32).unwrap();
    // A small descriptor limit makes exhaustion quick to reach (production limits are larger,
    // connections cheaper still).
    rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(64),
            maximum: Some(64),
        },
    )
    .expect("prlimit");
    let idle: Vec<_> = (0..200)
        .map(|_| std::os::unix::net::UnixStream::connect(agent.http_path()).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut lmtp = agent.lmtp();
    let greeting = lmtp.reply();
    let waited = started.elapsed();
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(
        waited < Duration::from_secs(1),
        "LMTP greeted after {waited:?} while {} idle HTTP connections were open",
        idle.len()
    );
    drop(idle);
    // Once the idle clients are gone, HTTP answers again (the closed ones free their permits).
    let mut metrics = String::new();
    let answered = eventually(Duration::from_secs(10), || {
        metrics = std::panic::catch_unwind(|| agent.get("/metrics").1).unwrap_or_default();
        !metrics.is_empty()
    });
    assert!(
        answered,
        "/metrics does not answer after the idle clients left"
    );
    assert!(
        !metrics.contains("virtmail_http_connections_refused_total 0\n"),
        "connections over the cap are counted:\n{metrics}"
    );
}
