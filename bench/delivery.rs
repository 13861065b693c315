//! Delivery engine benchmark (not a test): deliveries per second of 4 KiB messages to Maildir
//! and to mbox with 1 and 8 threads, beside a plain write+fsync+rename+fsync-dir baseline
//! measured in the same run on the same file system.
//!
//! Run as root (deliveries switch to uid/gid 5001):
//!
//! ```text
//! cargo run --release -p virtmail-agent --example delivery-bench -- [--dir DIR] [--messages N] [--rounds R]
//! ```
//!
//! Each scenario runs R rounds (default 5) of N deliveries (default 400) split over the
//! threads; every thread delivers to its own mailbox (different recipients, as LMTP does).
//! The median, min and max of the rounds are printed.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use virtmail_agent::deliver::{self, Options, Target};
use virtmail_crds::directory::Directory;
use virtmail_crds::resources::MailboxFormat;
use virtmail_tests::{delivery, process};

const UID: u32 = 5001;
const MESSAGE_SIZE: usize = 4096;

/// The command line.
#[derive(Debug, Parser)]
struct Args {
    /// Where the mailbox base goes (its file system is what is measured).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Deliveries per round.
    #[arg(long, default_value_t = 400)]
    messages: usize,
    /// Rounds per scenario.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn message() -> Vec<u8> {
    let mut m = b"From: bench@origin.test\nTo: user@example.test\nSubject: benchmark\n\n".to_vec();
    let mut i = 0;
    while m.len() < MESSAGE_SIZE {
        m.extend_from_slice(
            format!("line {i:06} of the benchmark message body ........\n").as_bytes(),
        );
        i += 1;
    }
    m.truncate(MESSAGE_SIZE - 1);
    m.push(b'\n');
    m
}

/// The machine line of every benchmark, with the file system type of `dir`.
fn machine_line(dir: &Path) -> String {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    // Longest mount point that contains `dir` (mountinfo: field 5 = mount point, after " - "
    // the file system type).
    let fs_type = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .filter_map(|line| {
                    let mount = line.split(' ').nth(4)?;
                    let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
                    dir.starts_with(mount)
                        .then(|| (mount.len(), fstype.to_string()))
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, t)| t)
        })
        .unwrap_or_else(|| "unknown".into());
    format!(
        "machine: {} fs={fs_type} dir={}",
        process::machine_line(),
        dir.display()
    )
}

/// The benchmark's directory: one mailbox per thread, `user<t>@example.test`, in `format`.
fn directory(base: &Path, threads: usize, format: MailboxFormat) -> Directory {
    let mut directory = delivery::directory("bench", base, 0);
    for t in 0..threads {
        let path = match format {
            MailboxFormat::Maildir => format!("example.test/user{t}/"),
            MailboxFormat::Mbox => format!("example.test/user{t}"),
        };
        let address = format!("user{t}@example.test");
        let entry = delivery::mailbox_entry(&address, &path, UID);
        directory.mailboxes.insert(address, entry);
    }
    directory
}

/// One round: `messages` deliveries over `threads` threads; returns deliveries per second.
fn engine_round(root: &Path, threads: usize, messages: usize, format: MailboxFormat) -> f64 {
    let base = root.join("base");
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(base.join("example.test")).unwrap();
    fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(base.join("example.test"), Some(UID), Some(UID)).unwrap();
    let directory = directory(&base, threads, format);
    let targets: Vec<Target> = (0..threads)
        .map(|t| deliver::precheck(&directory, &format!("user{t}@example.test")).unwrap())
        .collect();
    let message = Arc::new(message());
    let options = Arc::new(Options::default());
    let per_thread = messages / threads;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for target in &targets {
            let message = message.clone();
            let options = options.clone();
            scope.spawn(move || {
                for _ in 0..per_thread {
                    let outcome =
                        deliver::deliver_one(target, "bench@origin.test", "", &message, &options);
                    assert!(outcome.status.is_success(), "{}", outcome.status);
                }
            });
        }
    });
    (per_thread * threads) as f64 / started.elapsed().as_secs_f64()
}

/// The baseline: what any durable Maildir writer must do at least, with std::fs as root.
fn baseline_round(root: &Path, threads: usize, messages: usize) -> f64 {
    let base = root.join("baseline");
    let _ = fs::remove_dir_all(&base);
    let message = message();
    let per_thread = messages / threads;
    for t in 0..threads {
        fs::create_dir_all(base.join(format!("{t}/tmp"))).unwrap();
        fs::create_dir_all(base.join(format!("{t}/new"))).unwrap();
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let dir = base.join(t.to_string());
            let message = &message;
            scope.spawn(move || {
                let new_dir = fs::File::open(dir.join("new")).unwrap();
                for i in 0..per_thread {
                    let tmp = dir.join(format!("tmp/{i}"));
                    let mut file = fs::File::create_new(&tmp).unwrap();
                    file.write_all(message).unwrap();
                    file.sync_all().unwrap();
                    drop(file);
                    fs::rename(&tmp, dir.join(format!("new/{i}"))).unwrap();
                    new_dir.sync_all().unwrap();
                }
            });
        }
    });
    (per_thread * threads) as f64 / started.elapsed().as_secs_f64()
}

/// One round of a scenario for a number of threads; returns deliveries per second.
type Round<'a> = Box<dyn Fn(usize) -> f64 + 'a>;

fn stats(mut rates: Vec<f64>) -> (f64, f64, f64) {
    rates.sort_by(|a, b| a.total_cmp(b));
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

fn main() {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        eprintln!("delivery-bench must run as root: deliveries switch to uid/gid {UID}");
        std::process::exit(1);
    }
    virtmail_agent::fs::identity::drop_supplementary_groups().expect("setgroups([])");
    let work = tempfile::Builder::new()
        .prefix("virtmail-bench-")
        .tempdir_in(&args.dir)
        .expect("temporary directory in --dir");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    println!("{}", machine_line(work.path()));
    println!(
        "{} rounds of {} deliveries of {} B; median (min–max) deliveries/s",
        args.rounds, args.messages, MESSAGE_SIZE
    );
    println!(
        "{:<38} {:>7} {:>10} {:>20}",
        "scenario", "threads", "median", "min–max"
    );
    // Rounds are interleaved across scenarios so that noise (other load on the machine)
    // affects every scenario alike.
    let scenarios: Vec<(&str, usize, Round<'_>)> = [1, 8]
        .into_iter()
        .flat_map(|threads| {
            let dir = work.path();
            let messages = args.messages;
            let runs: [(&str, Round<'_>); 3] = [
                (
                    "baseline write+fsync+rename+fsync-dir",
                    Box::new(move |t| baseline_round(dir, t, messages)),
                ),
                (
                    "maildir (engine)",
                    Box::new(move |t| engine_round(dir, t, messages, MailboxFormat::Maildir)),
                ),
                (
                    "mbox fcntl+dotlock (engine)",
                    Box::new(move |t| engine_round(dir, t, messages, MailboxFormat::Mbox)),
                ),
            ];
            runs.into_iter()
                .map(move |(name, run)| (name, threads, run))
        })
        .collect();
    let mut rates = vec![Vec::new(); scenarios.len()];
    for _ in 0..args.rounds {
        for (i, (_, threads, run)) in scenarios.iter().enumerate() {
            rates[i].push(run(*threads));
        }
    }
    for ((name, threads, _), rates) in scenarios.iter().zip(rates) {
        let (median, min, max) = stats(rates);
        println!(
            "{name:<38} {threads:>7} {median:>10.0} {:>20}",
            format!("{min:.0}–{max:.0}")
        );
    }
}
