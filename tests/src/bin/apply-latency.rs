//! Latency from `kubectl apply` of a new Mailbox to the first accepted RCPT for it (a
//! benchmark; not a test). Every component is real and out of cluster: a private control plane
//! (`target/cluster-apply-latency`, started afresh and stopped at the end), the operator and the
//! agent in cluster mode (release builds, each with its own token), and a private Postfix
//! configured by the operator's profile.
//!
//! Each sample creates Mailbox `lat-<n>` (`lat-<n>@bench.test`) with `kubectl apply -f -` as the
//! administrator and, from the moment kubectl is started, polls every `--poll-ms` both Postfix's
//! smtpd (`RCPT TO` in one SMTP session, until 250) and the agent's socketmap (`mailbox`, until
//! `OK`). Baselines measured in the same run, once per sample: the `kubectl apply` call itself,
//! one RCPT for an existing mailbox through Postfix, one socketmap lookup for it.
//!
//! With `--edit`, each sample is instead the edit users make most, applied in place by the
//! operator: Mailbox `s-<n>` (created suspended with the others) is resumed with
//! `kubectl patch`, and the probe asks the agent itself over LMTP (`MAIL`, `RCPT TO`, in a new
//! session each time) until its RCPT answer turns from 450 4.2.1 into 250.
//!
//! ```sh
//! cargo run --release -p virtmail-tests --bin apply-latency -- --samples 50 [--existing 1000] [--edit]
//! ```
//! `--operator BIN --agent BIN` use prebuilt binaries instead of building the release ones;
//! `--keep-plane` leaves the plane running for a look afterwards (`VIRTMAIL_CLUSTER_DIR=
//! target/cluster-apply-latency tools/cluster.sh down` stops it).
//! Needs root, Postfix, Go/etcd for the plane (as `tools/cluster.sh`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;

use virtmail_tests::cluster::{self, cluster, run, run_with_stdin};
use virtmail_tests::e2e::{ClusterMail, Options};
use virtmail_tests::fixtures::{mail_server, mailbox, resource, stream};
use virtmail_tests::lmtp::Lmtp;
use virtmail_tests::mail::Smtp;
use virtmail_tests::process::{Process, machine_line, release_binary, wait_for};
use virtmail_tests::socketmap::query_once;
use virtmail_tests::workspace_root;

const NS: &str = "virtmail-latency";
const SENDER: &str = "probe@remote.test";
/// A sample that takes longer aborts the run (something is broken).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The command line.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// Latency samples to take.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Mailboxes that exist before the first sample.
    #[arg(long, default_value_t = 0)]
    existing: usize,
    /// How often the probe looks, in milliseconds.
    #[arg(long = "poll-ms", default_value = "5", value_parser = millis)]
    poll: Duration,
    /// Pause between samples, in milliseconds.
    #[arg(long = "gap-ms", default_value = "500", value_parser = millis)]
    gap: Duration,
    /// Time an in-place edit (a suspended Mailbox resumed) to the agent's LMTP RCPT 250,
    /// instead of a new Mailbox to Postfix's RCPT 250.
    #[arg(long)]
    edit: bool,
    /// Leave the private plane running at the end.
    #[arg(long)]
    keep_plane: bool,
    /// The operator binary (default: the release build).
    #[arg(long)]
    operator: Option<PathBuf>,
    /// The agent binary (default: the release build).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn millis(value: &str) -> Result<Duration, std::num::ParseIntError> {
    value.parse().map(Duration::from_millis)
}

/// Stops the private plane at the end unless asked to keep it.
struct PrivatePlane(bool);

impl Drop for PrivatePlane {
    fn drop(&mut self) {
        if !self.0 {
            let _ = cluster::cluster_script("down").output();
        }
    }
}

fn kubectl() -> Command {
    let mut cmd = cluster().kubectl();
    cmd.args(["-n", NS]);
    cmd
}

fn mailbox_yaml(name: &str, address: &str) -> String {
    mailbox(name, &format!("address: {address}"))
}

/// Creates Mailboxes `e-0` … `e-<count - 1>` by 4 `kubectl create` processes in parallel: one
/// `kubectl apply` of 100,000 takes the better part of an hour here (it reads each object
/// before writing it), 4 creates in parallel 5–7 minutes.
fn create_existing(count: usize) {
    const PROCESSES: usize = 4;
    if count == 0 {
        return;
    }
    eprintln!("creating {count} existing Mailboxes ({PROCESSES} kubectl processes) ...");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for part in 0..PROCESSES {
            scope.spawn(move || {
                let mut yaml = String::new();
                for n in (part..count).step_by(PROCESSES) {
                    yaml.push_str("---\n");
                    yaml.push_str(&mailbox_yaml(
                        &format!("e-{n}"),
                        &format!("e-{n}@bench.test"),
                    ));
                }
                run_with_stdin(kubectl().args(["create", "-f", "-"]), &yaml)
                    .unwrap_or_else(|e| panic!("create existing Mailboxes (part {part}): {e}"));
            });
        }
    });
    eprintln!(
        "created {count} existing Mailboxes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// One sample: durations from the start of `kubectl apply` or `kubectl patch` (and from its
/// exit). With `--edit`, `to_rcpt` is the agent's LMTP RCPT 250 and `to_socketmap` a baseline:
/// one LMTP session to the (450) RCPT before the edit.
#[derive(Debug, Clone, Copy)]
struct Sample {
    apply_call: Duration,
    to_socketmap: Duration,
    to_rcpt: Duration,
    to_rcpt_after_apply: Duration,
    rcpt_existing: Duration,
    socketmap_existing: Duration,
}

fn main() {
    let args = Args::parse();
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "run as root: the agent delivers and provisions as each mailbox's uid"
    );
    // Prebuilt binaries (e.g. copies of a release build) or the workspace's release build.
    let operator_bin = args.operator.clone().unwrap_or_else(|| {
        eprintln!("building the operator (release) ...");
        release_binary("virtmail-operator")
    });
    let agent_bin = args.agent.clone().unwrap_or_else(|| {
        eprintln!("building the agent (release) ...");
        release_binary("virtmail-agent")
    });

    cluster::use_cluster_dir(&workspace_root().join("target/cluster-apply-latency"));
    cluster::use_cluster_identities(&format!(
        "latency-agent=system:serviceaccount:{NS}:mail-agent"
    ));
    let _ = cluster::cluster_script("down").output();
    let _plane = PrivatePlane(args.keep_plane);
    let cluster = cluster();
    run(cluster.kubectl().args(["create", "namespace", NS])).expect("namespace");
    let _ = run(cluster
        .kubectl()
        .args(["create", "namespace", "virtmail-system"]));
    let rbac = run(Command::new(&operator_bin).args([
        "rbac",
        "--namespace",
        "virtmail-system",
        "--service-account",
        "virtmail-operator",
    ]))
    .expect("virtmail-operator rbac");
    run_with_stdin(cluster.kubectl().args(["apply", "-f", "-"]), &rbac).expect("operator RBAC");

    // The server, one domain (Maildir for uid 5000 by default), an existing mailbox for the
    // baselines, and --existing more.
    let mut yaml = stream([
        mail_server("mail", ""),
        resource(
            "MailDomain",
            "bench",
            "{domain: bench.test, postmaster: postmaster@remote.test, \
             defaults: {uid: 5000, gid: 5000, format: Maildir}}",
        ),
    ]);
    yaml.push_str("---\n");
    yaml.push_str(&mailbox_yaml("known", "known@bench.test"));
    for n in (0..args.samples).filter(|_| args.edit) {
        yaml.push_str("---\n");
        yaml.push_str(&mailbox(
            &format!("s-{n}"),
            &format!("address: s-{n}@bench.test, suspended: true"),
        ));
    }
    run_with_stdin(kubectl().args(["apply", "-f", "-"]), &yaml).expect("apply the server");
    create_existing(args.existing);

    let mut operator_cmd = Command::new(&operator_bin);
    operator_cmd
        .env("KUBECONFIG", cluster.kubeconfig("operator"))
        .env("RUST_LOG", "info,kube=warn")
        .args(["run", "--http", "127.0.0.1:0", "--namespace", NS])
        .args(["--lease-namespace", "virtmail-system", "--lease-name", NS]);
    let mut operator = Process::start("operator", operator_cmd);
    wait_for(
        "the directory and the agent's RBAC",
        Duration::from_secs(300),
        || {
            assert!(operator.running(), "operator exited:\n{}", operator.log());
            run(kubectl().args([
                "get",
                "configmap/mail-directory",
                "serviceaccount/mail-agent",
            ]))
            .ok()
        },
    );
    let mut options = Options::new(cluster.kubeconfig("latency-agent"));
    options.agent_binary = Some(agent_bin);
    options.operator_binary = Some(operator_bin);
    options.dovecot = false;
    // The probe's rejected RCPTs are errors to smtpd: no error sleeps or disconnects for them.
    for (name, value) in [
        ("smtpd_error_sleep_time", "0"),
        ("smtpd_soft_error_limit", "1000000"),
        ("smtpd_hard_error_limit", "1000000"),
    ] {
        options.postfix_params.push((name.into(), value.into()));
    }
    let mail = ClusterMail::start(cluster, NS, "mail", options);
    let map = mail.socketmap_socket();
    wait_for(
        "the agent to serve known@bench.test",
        Duration::from_secs(300),
        || query_once(&map, "mailbox known@bench.test").filter(|r| r.starts_with("OK ")),
    );
    // Start measuring once the start-up work is over: every Mailbox provisioned and reported (the
    // operator's and the agent's status patches for --existing mailboxes would compete with the
    // first samples).
    wait_for(
        "every Mailbox to report Provisioned=True",
        // About 100 status patches a second on this machine, twice over (operator and agent).
        Duration::from_secs(600 + args.existing as u64 / 50),
        || {
            // Listing every Mailbox is itself heavy at this size: look about every 10 s.
            std::thread::sleep(Duration::from_secs(args.existing as u64 / 10_000));
            let out = run(kubectl().args([
                "get",
                "mailboxes",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Provisioned\")].status}",
            ]))
            .ok()?;
            let wanted = args.existing + if args.edit { args.samples } else { 0 };
            (out.split_whitespace().filter(|s| *s == "True").count() > wanted).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let port = mail.smtp_port();

    let mut samples = Vec::new();
    for n in 0..args.samples {
        // Baselines, with the directory settled.
        let mut smtp = Smtp::connect(port);
        assert_eq!(smtp.mail(SENDER, "").code, 250);
        let t = Instant::now();
        let known = smtp.rcpt("known@bench.test");
        let rcpt_existing = t.elapsed();
        assert_eq!(known.code, 250, "{known}");
        let t = Instant::now();
        let hit = query_once(&map, "mailbox known@bench.test");
        let socketmap_existing = t.elapsed();
        assert!(hit.is_some_and(|r| r.starts_with("OK ")));
        smtp.rset();
        if args.edit {
            smtp.quit();
            samples.push(edit_sample(
                &mail.lmtp_socket(),
                n,
                args.poll,
                rcpt_existing,
                socketmap_existing,
            ));
            std::thread::sleep(args.gap);
            continue;
        }

        let address = format!("lat-{n}@bench.test");
        assert_ne!(smtp.rcpt(&address).code, 250, "{address} exists already");
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let poll = args.poll;
        let map_probe = {
            let (map, address) = (map.clone(), address.clone());
            spawn_probe("socketmap", start, poll, tx.clone(), move || {
                query_once(&map, &format!("mailbox {address}"))
                    .is_some_and(|r| r.starts_with("OK "))
                    .then(|| start.elapsed())
            })
        };
        smtp.quit();
        // A new SMTP session per probe: one session that has seen the recipient rejected kept
        // rejecting it (no 250 within 60 s while the agent answered OK), new sessions do not.
        let rcpt_probe = {
            let address = address.clone();
            spawn_probe("rcpt", start, poll, tx, move || {
                let mut smtp = Smtp::connect(port);
                assert_eq!(smtp.mail(SENDER, "").code, 250);
                let accepted = smtp.rcpt(&address).code == 250;
                let elapsed = start.elapsed();
                smtp.quit();
                accepted.then_some(elapsed)
            })
        };
        let applied = run_with_stdin(
            kubectl().args(["apply", "-f", "-"]),
            &mailbox_yaml(&format!("lat-{n}"), &address),
        );
        let apply_call = start.elapsed();
        applied.expect("kubectl apply");
        let mut to_socketmap = None;
        let mut to_rcpt = None;
        for (what, elapsed) in rx.iter().take(2) {
            match what {
                "socketmap" => to_socketmap = Some(elapsed),
                _ => to_rcpt = Some(elapsed),
            }
        }
        let _ = map_probe.join();
        let _ = rcpt_probe.join();
        match (to_socketmap, to_rcpt) {
            (Some(to_socketmap), Some(to_rcpt)) => {
                let s = Sample {
                    apply_call,
                    to_socketmap,
                    to_rcpt,
                    to_rcpt_after_apply: to_rcpt.saturating_sub(apply_call),
                    rcpt_existing,
                    socketmap_existing,
                };
                eprintln!(
                    "sample {n:>3}: kubectl apply {:>6.1} ms, socketmap OK {:>7.1} ms, RCPT 250 {:>7.1} ms",
                    ms(s.apply_call),
                    ms(s.to_socketmap),
                    ms(s.to_rcpt)
                );
                samples.push(s);
            }
            _ => {
                // Not a latency: something is broken. Show why and stop (dropping everything).
                let tail = |log: String| {
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                };
                panic!(
                    "sample {n}: {address} not accepted within {SAMPLE_TIMEOUT:?} (socketmap {to_socketmap:?}, RCPT {to_rcpt:?})\n\
                     Mailbox:\n{}\nConfigMaps:\n{}\noperator log:\n{}\nagent log:\n{}",
                    run(kubectl().args(["get", "mailbox", &format!("lat-{n}"), "-o", "yaml"]))
                        .unwrap_or_else(|e| e.to_string()),
                    run(kubectl().args(["get", "configmaps"])).unwrap_or_else(|e| e.to_string()),
                    tail(operator.log()),
                    tail(mail.agent_log()),
                );
            }
        }
        std::thread::sleep(args.gap);
    }
    drop(mail);
    drop(operator);
    report(&args, &samples);
}

/// What a probe reports: which, and when (from the sample's start).
type Accepted = (&'static str, Duration);

/// Run `probe` on a thread of its own every `poll` until it reports the moment of acceptance,
/// which is sent with `label`, or the sample times out (nothing is sent).
fn spawn_probe(
    label: &'static str,
    start: Instant,
    poll: Duration,
    tx: mpsc::Sender<Accepted>,
    mut probe: impl FnMut() -> Option<Duration> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while start.elapsed() < SAMPLE_TIMEOUT {
            if let Some(elapsed) = probe() {
                let _ = tx.send((label, elapsed));
                return;
            }
            std::thread::sleep(poll);
        }
    })
}

/// The agent's RCPT reply code for `address` in a new LMTP session.
fn agent_rcpt(lmtp: &std::path::Path, address: &str) -> String {
    let mut session = Lmtp::session(lmtp);
    let mail = session.command(&format!("MAIL FROM:<{SENDER}>"));
    assert!(mail.starts_with("250"), "MAIL: {mail}");
    let reply = session.command(&format!("RCPT TO:<{address}>"));
    session.command("QUIT");
    reply
}

/// One `--edit` sample: resume `s-<n>` and poll the agent's RCPT until 250.
fn edit_sample(
    lmtp: &std::path::Path,
    n: usize,
    poll: Duration,
    rcpt_existing: Duration,
    socketmap_existing: Duration,
) -> Sample {
    let address = format!("s-{n}@bench.test");
    let t = Instant::now();
    let before = agent_rcpt(lmtp, &address);
    let lmtp_session = t.elapsed();
    assert!(
        before.starts_with("450 4.2.1"),
        "{address} is not suspended: {before}"
    );
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let probe = {
        let (lmtp, address) = (lmtp.to_path_buf(), address.clone());
        spawn_probe("agent rcpt", start, poll, tx, move || {
            agent_rcpt(&lmtp, &address)
                .starts_with("250")
                .then(|| start.elapsed())
        })
    };
    let patched = run(kubectl().args([
        "patch",
        "mailbox",
        &format!("s-{n}"),
        "--type=merge",
        "-p",
        r#"{"spec":{"suspended":false}}"#,
    ]));
    let apply_call = start.elapsed();
    patched.expect("kubectl patch");
    let (_, to_agent) = rx
        .recv()
        .unwrap_or_else(|_| panic!("sample {n}: {address} not accepted within {SAMPLE_TIMEOUT:?}"));
    let _ = probe.join();
    eprintln!(
        "sample {n:>3}: kubectl patch {:>6.1} ms, agent RCPT 250 {:>7.1} ms",
        ms(apply_call),
        ms(to_agent)
    );
    Sample {
        apply_call,
        to_socketmap: lmtp_session,
        to_rcpt: to_agent,
        to_rcpt_after_apply: to_agent.saturating_sub(apply_call),
        rcpt_existing,
        socketmap_existing,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One measured duration of a sample.
type Field = fn(&Sample) -> Duration;

fn report(args: &Args, samples: &[Sample]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "machine: {}", machine_line());
    let _ = writeln!(
        out,
        "command: cargo run --release -p virtmail-tests --bin apply-latency -- --samples {} --existing {} --poll-ms {} --gap-ms {}{}",
        args.samples,
        args.existing,
        args.poll.as_millis(),
        args.gap.as_millis(),
        if args.edit { " --edit" } else { "" }
    );
    let _ = writeln!(
        out,
        "samples: {} (each accepted; a sample over {SAMPLE_TIMEOUT:?} aborts the run); directory of {} mailboxes before the first sample",
        samples.len(),
        args.existing + 1 + if args.edit { args.samples } else { 0 }
    );
    let rows: [(&str, Field); 6] = if args.edit {
        [
            ("edit → agent's LMTP RCPT 250 (from kubectl start)", |s| {
                s.to_rcpt
            }),
            ("edit → agent's LMTP RCPT 250 (from kubectl exit)", |s| {
                s.to_rcpt_after_apply
            }),
            ("baseline: one LMTP session to RCPT at the agent", |s| {
                s.to_socketmap
            }),
            ("baseline: the `kubectl patch` call", |s| s.apply_call),
            ("baseline: RCPT for an existing mailbox (Postfix)", |s| {
                s.rcpt_existing
            }),
            ("baseline: socketmap lookup, existing", |s| {
                s.socketmap_existing
            }),
        ]
    } else {
        [
            (
                "apply → RCPT 250 through Postfix (from kubectl start)",
                |s| s.to_rcpt,
            ),
            (
                "apply → socketmap OK at the agent (from kubectl start)",
                |s| s.to_socketmap,
            ),
            ("apply → RCPT 250 (from kubectl exit)", |s| {
                s.to_rcpt_after_apply
            }),
            ("baseline: the `kubectl apply` call", |s| s.apply_call),
            ("baseline: RCPT for an existing mailbox", |s| {
                s.rcpt_existing
            }),
            ("baseline: socketmap lookup, existing", |s| {
                s.socketmap_existing
            }),
        ]
    };
    let _ = writeln!(out, "| measured | p50 ms | p90 ms | p99 ms | max ms |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    let mut p50 = Vec::new();
    for (label, get) in rows {
        let mut values: Vec<f64> = samples.iter().map(|s| ms(get(s))).collect();
        values.sort_by(|a, b| a.total_cmp(b));
        let (a, b, c, d) = (
            percentile(&values, 50.0),
            percentile(&values, 90.0),
            percentile(&values, 99.0),
            values.last().copied().unwrap_or(f64::NAN),
        );
        p50.push(a);
        let _ = writeln!(out, "| {label} | {a:.1} | {b:.1} | {c:.1} | {d:.1} |");
    }
    if args.edit {
        let _ = writeln!(
            out,
            "ratio of medians: edit→agent RCPT / kubectl patch call = {:.2}",
            p50[0] / p50[3]
        );
    } else {
        let _ = writeln!(
            out,
            "ratios of medians: apply→RCPT / kubectl apply call = {:.2}; apply→RCPT / apply→socketmap = {:.2}",
            p50[0] / p50[3],
            p50[0] / p50[1]
        );
    }
}
