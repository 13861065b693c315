//! Agent memory benchmark (not a test): the resident memory of `virtmail-agent serve`
//! holding a directory of N mailboxes, as it runs in a pod without API access (mounted-files
//! mode, the directory written exactly as the operator encodes it and swapped in as the kubelet
//! does). Baseline in the same run: the same agent with an empty directory. The agent provisions
//! every mailbox on the way (as it does in a pod), so the first peak includes one provisioning
//! round. Then 20 back-to-back edits, each adding one mailbox: the time from the swap to the
//! first `OK` the agent's socketmap gives for it (what Postfix's RCPT waits for), and the peak
//! RSS through them (the high-water mark is reset after the first load, so this peak is the
//! edits' own). `--poll-ms` sets the agent's `--directory-poll-interval` (default 1000, the
//! agent's default).
//!
//! ```text
//! cargo run --release -p virtmail-tests --bin agent-rss -- [N ...]     (default: 10000 100000)
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use virtmail_crds::{Directory, encoding};
use virtmail_tests::postfix::free_port;
use virtmail_tests::process::{Process, http_get, machine_line, release_binary, wait_for};
use virtmail_tests::socketmap::query_once;

/// Write the encoded directory as the kubelet projects a ConfigMap volume: a payload directory
/// `..<payload>` (head keys at the top, each shard's keys under its name) that a fresh `..data`
/// symlink is renamed over; the previous payload is removed. Returns the version, the shard
/// count and the moment of the swap (the rename), after the payload is written.
fn write_volume(
    dir: &std::path::Path,
    directory: &Directory,
    payload: usize,
) -> (String, usize, Instant) {
    let encoded = encoding::encode(directory);
    let data = dir.join(format!("..payload{payload}"));
    std::fs::create_dir_all(&data).expect("payload");
    for (key, value) in &encoded.head {
        std::fs::write(data.join(key), value).expect("head file");
    }
    for shard in &encoded.shards {
        let sub = data.join(&shard.name);
        std::fs::create_dir_all(&sub).expect("shard dir");
        for (key, value) in shard.data.iter() {
            std::fs::write(sub.join(key), value).expect("shard file");
        }
    }
    let link = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..payload{payload}"), &link).expect("symlink");
    let swapped = Instant::now();
    std::fs::rename(&link, dir.join("..data")).expect("swap ..data");
    if let Some(previous) = payload.checked_sub(1) {
        let _ = std::fs::remove_dir_all(dir.join(format!("..payload{previous}")));
    }
    (encoded.version, encoded.shards.len(), swapped)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Edits after the first load.
const EDITS: usize = 20;

struct Row {
    mailboxes: usize,
    shards: usize,
    loaded: Duration,
    provisioned: Duration,
    rss_mib: f64,
    peak_mib: f64,
    /// Swap → socketmap OK for the added mailbox, per edit.
    edits: Vec<Duration>,
    edits_peak_mib: f64,
}

fn measure(agent_binary: &std::path::Path, mailboxes: usize, poll_ms: u64) -> Row {
    let work = tempfile::tempdir().expect("tempdir");
    let mut directory = Directory::synthetic(mailboxes);
    let volume = work.path().join("directory");
    let (version, shards, _) = write_volume(&volume, &directory, 0);
    let base = work.path().join("vhosts");
    std::fs::create_dir(&base).expect("base");
    let map = work.path().join("socketmap.sock");
    let port = free_port();
    let mut command = Command::new(agent_binary);
    command
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "warn")
        .arg("serve")
        .arg("--directory-dir")
        .arg(work.path().join("directory"))
        .args(["--server", "mail", "--http", &format!("127.0.0.1:{port}")])
        .arg("--mailbox-base")
        .arg(&base)
        .arg("--lmtp")
        .arg(format!("unix:{}", work.path().join("lmtp.sock").display()))
        .arg("--socketmap")
        .arg(format!("unix:{}", map.display()))
        .arg("--directory-poll-interval")
        .arg(format!("{poll_ms}ms"));
    let started = Instant::now();
    let mut agent = Process::start("agent", command);
    wait_for("the directory loaded", Duration::from_secs(300), || {
        // /readyz says only ready or not; the loaded version is on /metrics.
        http_get(port, "/metrics").filter(|(_, body)| body.contains(&version))
    });
    let loaded = started.elapsed();
    // One provisioning round: every Maildir's cur/ (or mbox file) exists. The agent goes part
    // by part (shard slots, in no address order), so every mailbox is looked at; the first
    // missing one ends a look.
    wait_for("provisioning", Duration::from_secs(1800), || {
        (0..mailboxes)
            .all(|i| {
                let path = base.join(format!("domain{}.test/user{i}", i % 100));
                path.join("cur").exists() || path.is_file()
            })
            .then_some(())
    });
    let provisioned = started.elapsed();
    if mailboxes > 0 {
        let reply = query_once(&map, "mailbox user0@domain0.test").unwrap_or_default();
        assert!(reply.starts_with("OK "), "lookup: {reply}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = agent.pid();
    let (rss_mib, peak_mib) = (
        status_kib(pid, "VmRSS:") as f64 / 1024.0,
        status_kib(pid, "VmHWM:") as f64 / 1024.0,
    );
    // The peak through the edits is their own: reset the high-water mark the first load set
    // (`5` to clear_refs resets VmHWM to the current RSS).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    // Back to back: each edit as soon as the previous one is served.
    let template = directory.mailboxes.values().next().cloned();
    let mut edits = Vec::new();
    for edit in 1..=EDITS {
        let Some(mut entry) = template.clone() else {
            break;
        };
        let address = format!("added{edit}@domain0.test");
        entry.path = format!("domain0.test/added{edit}/");
        entry.object = format!("added{edit}");
        directory.mailboxes.insert(address.clone(), entry);
        let (_, _, swapped) = write_volume(&volume, &directory, edit);
        wait_for("the added mailbox served", Duration::from_secs(60), || {
            query_once(&map, &format!("mailbox {address}")).filter(|reply| reply.starts_with("OK "))
        });
        edits.push(swapped.elapsed());
    }
    let row = Row {
        mailboxes,
        shards,
        loaded,
        provisioned,
        rss_mib,
        peak_mib,
        edits,
        edits_peak_mib: status_kib(pid, "VmHWM:") as f64 / 1024.0,
    };
    agent.stop(Duration::from_secs(10));
    row
}

fn main() {
    let mut poll_ms = 1000;
    let mut sizes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--poll-ms" {
            let value = args
                .next()
                .expect("--poll-ms needs a number of milliseconds");
            poll_ms = value
                .parse()
                .expect("--poll-ms needs a number of milliseconds");
        } else {
            sizes.push(arg.parse::<usize>().expect("N must be a number"));
        }
    }
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000];
    }
    println!("machine: {}", machine_line());
    let agent = release_binary("virtmail-agent");
    eprintln!("baseline: empty directory");
    let baseline = measure(&agent, 0, poll_ms);
    println!(
        "| mailboxes | shards | ready after (s) | provisioned after (s) | RSS now (MiB) | peak RSS (MiB) | peak ÷ empty-directory peak | edit → socketmap OK, median of {EDITS} (s) | p99 (s) | peak RSS through the edits (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let print = |r: &Row| {
        let mut edits: Vec<f64> = r.edits.iter().map(Duration::as_secs_f64).collect();
        edits.sort_by(f64::total_cmp);
        let at = |p: f64| {
            edits
                .get(((p * edits.len() as f64).ceil() as usize).saturating_sub(1))
                .map_or("-".to_string(), |v| format!("{v:.3}"))
        };
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} | {} | {} | {:.1} |",
            r.mailboxes,
            r.shards,
            r.loaded.as_secs_f64(),
            r.provisioned.as_secs_f64(),
            r.rss_mib,
            r.peak_mib,
            r.peak_mib / baseline.peak_mib,
            at(0.5),
            at(0.99),
            r.edits_peak_mib,
        )
    };
    print(&baseline);
    for n in sizes {
        eprintln!("{n} mailboxes …");
        print(&measure(&agent, n, poll_ms));
    }
    println!(
        "command: cargo run --release -p virtmail-tests --bin agent-rss -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
}
