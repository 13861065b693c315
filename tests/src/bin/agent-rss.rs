//! Agent memory benchmark (not a test): the resident memory of `virtmail-agent serve`
//! holding a directory of N mailboxes, as it runs in a pod without API access (mounted-files
//! mode, the directory written exactly as the operator encodes it). Baseline in the same run: the
//! same agent with an empty directory. The agent provisions every mailbox on the way (as it does
//! in a pod), so the peak includes one provisioning round.
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

/// Write the encoded directory in the mounted-files layout (head keys at the top, each shard's
/// keys under its name).
fn write_volume(dir: &std::path::Path, directory: &Directory) -> (String, usize) {
    let encoded = encoding::encode(directory);
    std::fs::create_dir_all(dir).expect("volume");
    for (key, value) in &encoded.head {
        std::fs::write(dir.join(key), value).expect("head file");
    }
    for shard in &encoded.shards {
        let sub = dir.join(&shard.name);
        std::fs::create_dir_all(&sub).expect("shard dir");
        for (key, value) in shard.data.iter() {
            std::fs::write(sub.join(key), value).expect("shard file");
        }
    }
    (encoded.version, encoded.shards.len())
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Row {
    mailboxes: usize,
    shards: usize,
    loaded: Duration,
    provisioned: Duration,
    rss_mib: f64,
    peak_mib: f64,
}

fn measure(agent_binary: &std::path::Path, mailboxes: usize) -> Row {
    let work = tempfile::tempdir().expect("tempdir");
    let directory = Directory::synthetic(mailboxes);
    let (version, shards) = write_volume(&work.path().join("directory"), &directory);
    drop(directory);
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
        .arg(format!("unix:{}", map.display()));
    let started = Instant::now();
    let mut agent = Process::start("agent", command);
    wait_for("the directory loaded", Duration::from_secs(300), || {
        // /readyz says only ready or not; the loaded version is on /metrics.
        http_get(port, "/metrics").filter(|(_, body)| body.contains(&version))
    });
    let loaded = started.elapsed();
    // One provisioning round: every Maildir's cur/ (or mbox file) exists.
    let last = mailboxes.checked_sub(1);
    wait_for("provisioning", Duration::from_secs(1800), || match last {
        None => Some(()),
        Some(i) => {
            let maildir = base.join(format!("domain{}.test/user{i}/cur", i % 100));
            let mbox = base.join(format!("domain{}.test/user{i}", i % 100));
            (maildir.exists() || mbox.is_file()).then_some(())
        }
    });
    let provisioned = started.elapsed();
    if mailboxes > 0 {
        let reply = query_once(&map, "mailbox user0@domain0.test").unwrap_or_default();
        assert!(reply.starts_with("OK "), "lookup: {reply}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = agent.pid();
    let row = Row {
        mailboxes,
        shards,
        loaded,
        provisioned,
        rss_mib: status_kib(pid, "VmRSS:") as f64 / 1024.0,
        peak_mib: status_kib(pid, "VmHWM:") as f64 / 1024.0,
    };
    agent.stop(Duration::from_secs(10));
    row
}

fn main() {
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse().expect("N must be a number"))
            .collect();
        if args.is_empty() {
            vec![10_000, 100_000]
        } else {
            args
        }
    };
    println!("machine: {}", machine_line());
    let agent = release_binary("virtmail-agent");
    eprintln!("baseline: empty directory");
    let baseline = measure(&agent, 0);
    println!(
        "| mailboxes | shards | ready after (s) | provisioned after (s) | RSS now (MiB) | peak RSS (MiB) | peak ÷ empty-directory peak |"
    );
    println!("|---|---|---|---|---|---|---|");
    let print = |r: &Row| {
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} |",
            r.mailboxes,
            r.shards,
            r.loaded.as_secs_f64(),
            r.provisioned.as_secs_f64(),
            r.rss_mib,
            r.peak_mib,
            r.peak_mib / baseline.peak_mib
        )
    };
    print(&baseline);
    for n in sizes {
        eprintln!("{n} mailboxes …");
        print(&measure(&agent, n));
    }
    println!(
        "command: cargo run --release -p virtmail-tests --bin agent-rss -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
}
