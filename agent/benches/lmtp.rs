//! LMTP and socketmap load generator (a benchmark, not a test).
//!
//! ```text
//! cargo bench -p virtmail-agent --bench lmtp -- lmtp [--messages N] [--size S] [--connections C]
//!     [--mailboxes U] [--target unix:PATH|HOST:PORT] [--domain D]
//! cargo bench -p virtmail-agent --bench lmtp -- socketmap [--mailboxes U] [--queries N]
//!     [--connections C]
//! ```
//! Without `--target` it starts its own `virtmail-agent serve` on unix sockets in a temporary
//! directory, with U Maildir mailboxes owned by uid/gid 5000 (run as root). With `--target` it
//! drives any LMTP server (e.g. Dovecot) with recipients `u<i>@<domain>`.
//! Each connection sends MAIL, RCPT and DATA in one write, then the body; latency is measured
//! from that write to the post-dot reply.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use virtmail_tests::fixtures::{mail_domain, mailbox, stream};
use virtmail_tests::lmtp::Lmtp;
use virtmail_tests::process::machine_line;
use virtmail_tests::serve::serve_command;
use virtmail_tests::socketmap::Socketmap;

/// The command line (`cargo bench` adds `--bench`).
#[derive(Debug, Parser)]
struct Args {
    /// `lmtp` (deliveries) or `socketmap` (lookups).
    #[arg(value_enum, default_value_t = Mode::Lmtp)]
    mode: Mode,
    /// Messages to deliver (lmtp; default 2000).
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Message size in bytes (lmtp).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Mailboxes (default 100 for lmtp, 100000 for socketmap).
    #[arg(long)]
    mailboxes: Option<usize>,
    /// An LMTP server to drive instead of a fresh agent: `unix:PATH` or `HOST:PORT`.
    #[arg(long)]
    target: Option<String>,
    /// The recipients' domain (lmtp).
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// Lookups to make (socketmap).
    #[arg(long, default_value_t = 200_000)]
    queries: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Lmtp,
    Socketmap,
}

struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
    lmtp: PathBuf,
    map: PathBuf,
    base: PathBuf,
    ready_after: Duration,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn resources(mailboxes: usize) -> String {
    let domain = mail_domain("bench", "bench.test", "u0@bench.test", 5000, "");
    let mailboxes =
        (0..mailboxes).map(|i| mailbox(&format!("u{i}"), &format!("address: u{i}@bench.test")));
    stream(std::iter::once(domain).chain(mailboxes))
}

fn start_agent(mailboxes: usize) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let res = dir.path().join("resources");
    let base = dir.path().join("mail");
    std::fs::create_dir_all(&res).unwrap();
    // Deliveries run as uid 5000: the base must be searchable and the domain directory writable
    // and sticky, as the agent requires of a shared directory on a mailbox path.
    std::fs::create_dir_all(base.join("bench.test")).unwrap();
    for (path, mode) in [
        (dir.path(), 0o755),
        (&base, 0o755),
        (&base.join("bench.test"), 0o1777),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::write(res.join("bench.yaml"), resources(mailboxes)).unwrap();
    let (lmtp, map, http) = (
        dir.path().join("lmtp.sock"),
        dir.path().join("map.sock"),
        dir.path().join("http.sock"),
    );
    let started = Instant::now();
    let child = serve_command(
        Path::new(env!("CARGO_BIN_EXE_virtmail-agent")),
        &res,
        &base,
        &lmtp,
        &map,
        &format!("unix:{}", http.display()),
    )
    .args(["--max-connections", "1000"])
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .spawn()
    .expect("start virtmail-agent");
    while UnixStream::connect(&http).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Agent {
        child,
        _dir: dir,
        lmtp,
        map,
        base,
        ready_after: started.elapsed(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn body(size: usize) -> Vec<u8> {
    let mut b = b"From: bench@remote.test\r\nSubject: bench\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b.truncate(size.saturating_sub(2).max(b.len().min(size)));
    if !b.ends_with(b"\r\n") {
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b".\r\n");
    b
}

fn lmtp(args: &Args) {
    let (messages, size, conns) = (args.messages, args.size, args.connections);
    let mailboxes = args.mailboxes.unwrap_or(100);
    let domain = args.domain.clone();
    let agent = match &args.target {
        Some(_) => None,
        None => Some(start_agent(mailboxes)),
    };
    let target = args
        .target
        .clone()
        .unwrap_or_else(|| format!("unix:{}", agent.as_ref().unwrap().lmtp.display()));
    let data = body(size);
    let started = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (target, data, domain) = (target.clone(), data.clone(), domain.clone());
            std::thread::spawn(move || {
                let mut lmtp = Lmtp::connect_to(&target);
                let mut lat = Vec::new();
                let mut classes = [0usize; 6];
                // Send SIZE only where announced (Dovecot refuses it otherwise).
                let size_param = if lmtp.hello().contains("SIZE") {
                    format!(" SIZE={size}")
                } else {
                    String::new()
                };
                let mut i = c;
                while i < messages {
                    let rcpt = format!("u{}@{domain}", i % mailboxes);
                    let t = Instant::now();
                    let head = format!(
                        "MAIL FROM:<bench@remote.test>{size_param}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n"
                    );
                    lmtp.send(head.as_bytes());
                    let mail = lmtp.reply();
                    let rcpt_reply = lmtp.reply();
                    let go = lmtp.reply();
                    if !go.starts_with("354") {
                        panic!("no 354: {mail} {rcpt_reply} {go}");
                    }
                    lmtp.send(&data);
                    let done = lmtp.reply();
                    assert!(!done.is_empty(), "connection closed");
                    lat.push(t.elapsed());
                    let class = usize::from(done.as_bytes()[0] - b'0');
                    classes[class.min(5)] += 1;
                    i += conns;
                }
                lmtp.send(b"QUIT\r\n");
                (lat, classes)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut classes = [0usize; 6];
    for t in threads {
        let (l, c) = t.join().unwrap();
        lat.extend(l);
        for (a, b) in classes.iter_mut().zip(c) {
            *a += b;
        }
    }
    let elapsed = started.elapsed();
    lat.sort();
    println!("machine: {}", machine_line());
    println!(
        "lmtp target={} messages={messages} size={size} connections={conns} mailboxes={mailboxes}",
        if agent.is_some() {
            "virtmail-agent"
        } else {
            target.as_str()
        }
    );
    println!(
        "result: {:.0} deliveries/s in {:.2}s; 2xx={} 4xx={} 5xx={}; latency ms p50={:.2} p90={:.2} p99={:.2}",
        messages as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        classes[2],
        classes[4],
        classes[5],
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99)
    );
    if let Some(agent) = &agent {
        let files = count_files(&agent.base);
        println!("files in the mailbox base after the run: {files}");
    }
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => pending.push(e.path()),
                    Ok(_) => n += 1,
                    Err(_) => {}
                }
            }
        }
    }
    n
}

fn socketmap(args: &Args) {
    let mailboxes = args.mailboxes.unwrap_or(100_000);
    let (queries, conns) = (args.queries, args.connections);
    let agent = start_agent(mailboxes);
    let started = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let path = agent.map.clone();
            std::thread::spawn(move || {
                let mut map = Socketmap::connect(&path);
                let mut lat = Vec::with_capacity(queries / conns + 1);
                let mut found = 0;
                let mut i = c;
                while i < queries {
                    // Every fourth key is unknown; the rest carry an extension and mixed case.
                    let key = if i % 4 == 3 {
                        format!("mailbox nobody{i}@bench.test")
                    } else {
                        format!("mailbox U{}+ext@Bench.TEST", (i * 7919) % mailboxes)
                    };
                    let t = Instant::now();
                    let reply = map.query(&key);
                    lat.push(t.elapsed());
                    if reply.starts_with("OK ") {
                        found += 1;
                    }
                    i += conns;
                }
                (lat, found)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut found = 0;
    for t in threads {
        let (l, f) = t.join().unwrap();
        lat.extend(l);
        found += f;
    }
    let elapsed = started.elapsed();
    lat.sort();
    println!("machine: {}", machine_line());
    println!(
        "socketmap mailboxes={mailboxes} queries={queries} connections={conns}; agent ready after {:.2}s (compile + load)",
        agent.ready_after.as_secs_f64()
    );
    println!(
        "result: {:.0} lookups/s in {:.2}s; found={found}; latency ms p50={:.3} p90={:.3} p99={:.3}",
        queries as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99)
    );
}

fn main() {
    let args = Args::parse();
    match args.mode {
        Mode::Lmtp => lmtp(&args),
        Mode::Socketmap => socketmap(&args),
    }
}
