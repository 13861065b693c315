//! End-to-end delivery benchmark (not a test): Postfix → virtmail-agent (LMTP), Postfix →
//! virtual(8), Postfix → Dovecot LMTP, in one run on one machine, all durable as each delivers;
//! and with `--targets pod`, the same into a MailServer's pod on the node (the chart's operator,
//! SMTP to the Service's ClusterIP, counted on the pod's volume).
//!
//! Each round and target starts fresh: a private Postfix from `virtmail-operator postfix-profile`
//! (+ the harness's test-local settings), M mailboxes (even: Maildir, odd: mbox) owned by uid/gid
//! 5000, then N messages of S bytes, one recipient each, spread over the mailboxes, sent over C
//! concurrent SMTP sessions. The clock runs from the first connect until all N messages are
//! counted on disk (Maildir files, mbox From_ lines). Rounds interleave the targets; the median is
//! reported.
//!
//! ```sh
//! cargo run --release -p virtmail-tests --bin e2e-bench -- --messages 2000 --sessions 10 --rounds 3
//! ```
//! Needs root, Postfix, Dovecot (imapd + lmtpd); `pod` needs the node (`tools/cluster.sh up
//! --node`, started if needed) and the images (`tools/images.sh build`, run first).
//!
//! ```sh
//! cargo run --release -p virtmail-tests --bin e2e-bench -- --targets agent,pod --messages 1000 --rounds 3
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;

use virtmail_tests::dovecot::{self, Dovecot};
use virtmail_tests::fixtures;
use virtmail_tests::mail::Smtp;
use virtmail_tests::postfix::{self, Config, Postfix, free_port};
use virtmail_tests::process::{Process, machine_line, release_binary, wait_for};
use virtmail_tests::serve::serve_command;

/// The command line.
#[derive(Debug, Clone, Parser)]
struct Options {
    /// Messages per round and target.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Concurrent SMTP sessions.
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Mailboxes the messages are spread over.
    #[arg(long, default_value_t = 100)]
    mailboxes: usize,
    /// Rounds per target.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Comma-separated targets.
    #[arg(long, value_delimiter = ',', default_value = "agent,virtual,dovecot")]
    targets: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let o = Options::parse();
    let agent = release_binary("virtmail-agent");
    let mut results: Vec<(String, bool, Vec<f64>)> = Vec::new();
    for drain in [false, true] {
        for t in &o.targets {
            // The pod's queue is not held from outside: end to end only.
            if !(drain && t == "pod") {
                results.push((t.clone(), drain, vec![]));
            }
        }
    }
    for round in 1..=o.rounds {
        for (target, drain, rates) in &mut results {
            let (elapsed, rate) = run(target, &o, &agent, *drain);
            eprintln!(
                "round {round} {target} {}: {} messages in {:.2} s = {rate:.0}/s",
                if *drain { "queue drain" } else { "end to end" },
                o.messages,
                elapsed.as_secs_f64()
            );
            rates.push(rate);
        }
    }
    println!("machine: {}", machine());
    println!(
        "command: cargo run --release -p virtmail-tests --bin e2e-bench -- --targets {} --messages {} --sessions {} --size {} --mailboxes {} --rounds {}",
        o.targets.join(","),
        o.messages,
        o.sessions,
        o.size,
        o.mailboxes,
        o.rounds
    );
    println!(
        "| path | measured | messages/s (median of {}) | rounds |",
        o.rounds
    );
    println!("|---|---|---|---|");
    for (target, drain, rates) in &results {
        let mut sorted = rates.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = sorted[sorted.len() / 2];
        let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        let what = if *drain {
            "queue drain (delivery only)"
        } else {
            "SMTP in → on disk"
        };
        println!(
            "| {} | {what} | {median:.0} | {} |",
            label(target),
            all.join(" / ")
        );
    }
}

fn label(target: &str) -> &'static str {
    match target {
        "agent" => "Postfix → virtmail-agent (LMTP)",
        "virtual" => "Postfix → virtual(8)",
        "dovecot" => "Postfix → Dovecot LMTP",
        "pod" => "Service → pod (Postfix → virtmail-agent, on the node)",
        _ => "?",
    }
}

fn machine() -> String {
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T", "/tmp"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{} fs(/tmp)={fs}", machine_line())
}

fn mailbox(i: usize) -> (String, bool) {
    (format!("u{i}@bench.test"), i.is_multiple_of(2))
}

/// One round of one target: (elapsed, messages/s).
/// `drain`: queue every message first with the target's transport deferred, then release the
/// queue and time only the deliveries (Postfix's SMTP intake excluded).
fn run(target: &str, o: &Options, agent_bin: &Path, drain: bool) -> (Duration, f64) {
    if target == "pod" {
        let (ns, base, address) = pod_server(o);
        let elapsed = send_and_count(o, &address, 25, &base);
        drop(ns);
        return (elapsed, o.messages as f64 / elapsed.as_secs_f64());
    }
    let dir = tempfile::Builder::new()
        .prefix("virtmail-e2e-bench-")
        .tempdir()
        .expect("tempdir");
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = root.join("mail");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let port = free_port();
    let mut _agent = None;
    let mut _dovecot = None;
    let mut config: Config;
    let vmailbox: String = (0..o.mailboxes)
        .map(|i| {
            let (a, maildir) = mailbox(i);
            format!("{a} u{i}{}\n", if maildir { "/" } else { "" })
        })
        .collect();
    match target {
        "agent" => {
            std::fs::create_dir(root.join("resources")).unwrap();
            std::fs::create_dir(root.join("sock")).unwrap();
            std::fs::set_permissions(root.join("sock"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            std::fs::write(root.join("resources/all.yaml"), resources(o)).unwrap();
            let lmtp = root.join("sock/lmtp.sock");
            let map = root.join("sock/map.sock");
            let command = serve_command(
                agent_bin,
                &root.join("resources"),
                &base,
                &lmtp,
                &map,
                &format!("127.0.0.1:{}", free_port()),
            );
            let agent = Process::start("virtmail-agent", command);
            wait_for("agent sockets", Duration::from_secs(30), || {
                (std::os::unix::net::UnixStream::connect(&lmtp).is_ok()
                    && std::os::unix::net::UnixStream::connect(&map).is_ok())
                .then_some(())
            });
            _agent = Some(agent);
            config = postfix::profile(&lmtp, &map, 51_200_000, "+");
            postfix::test_local(&mut config, &root.join("postfix"), port);
        }
        "virtual" | "dovecot" => {
            config = postfix::profile(
                Path::new("/nonexistent/lmtp.sock"),
                Path::new("/nonexistent/map.sock"),
                51_200_000,
                "+",
            );
            postfix::test_local(&mut config, &root.join("postfix"), port);
            let etc = root.join("postfix/etc");
            config
                .set("virtual_mailbox_domains", "bench.test")
                .set(
                    "virtual_mailbox_maps",
                    format!("texthash:{}", etc.join("vmailbox").display()),
                )
                .set("virtual_alias_maps", "");
            config.files = vec![("vmailbox".into(), vmailbox)];
            if target == "virtual" {
                config
                    .set("virtual_transport", "virtual")
                    .set("virtual_mailbox_base", base.display().to_string())
                    .set("virtual_minimum_uid", "100")
                    .set("virtual_uid_maps", "static:5000")
                    .set("virtual_gid_maps", "static:5000");
            } else {
                let users: Vec<dovecot::User> = (0..o.mailboxes)
                    .map(|i| {
                        let (name, maildir) = mailbox(i);
                        dovecot::User {
                            name,
                            uid: 5000,
                            gid: 5000,
                            format: if maildir {
                                dovecot::Format::Maildir
                            } else {
                                dovecot::Format::Mbox
                            },
                            path: base.join(format!("u{i}")),
                        }
                    })
                    .collect();
                let d = Dovecot::start(&root.join("dovecot"), &users, true);
                config.set(
                    "virtual_transport",
                    format!("lmtp:unix:{}", d.lmtp_socket().unwrap().display()),
                );
                _dovecot = Some(d);
            }
        }
        other => panic!("unknown target {other} (agent, virtual, dovecot)"),
    }
    if drain {
        // Every message goes on hold at cleanup; nothing is delivered until released.
        let hold = root.join("postfix/etc/hold");
        config.set("header_checks", format!("regexp:{}", hold.display()));
        config
            .files
            .push(("hold".into(), "/^Subject: bench / HOLD\n".into()));
    }
    let postfix = Postfix::start(&root.join("postfix"), port, config);
    if !drain {
        let elapsed = send_and_count(o, "127.0.0.1", port, &base);
        drop(postfix);
        return (elapsed, o.messages as f64 / elapsed.as_secs_f64());
    }
    send(o, "127.0.0.1", port);
    wait_for("every message queued", Duration::from_secs(600), || {
        postfix
            .queue()
            .contains(&format!(" in {} Request", o.messages))
            .then_some(())
    });
    assert_eq!(
        count_on_disk(&base, o.mailboxes),
        0,
        "held mail was delivered"
    );
    // Release the hold queue into the deferred queue, then flush: qmgr takes it all at once.
    let start = Instant::now();
    let ok = Command::new("/usr/sbin/postsuper")
        .arg("-c")
        .arg(postfix.config_dir())
        .args(["-H", "ALL"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "postsuper -H ALL");
    postfix.flush();
    wait_on_disk(o, &base, start, target)
}

/// Sends every message (timed from the first connect) and waits until all are on disk.
fn send_and_count(o: &Options, host: &str, port: u16, base: &Path) -> Duration {
    let start = Instant::now();
    send(o, host, port);
    wait_on_disk(o, base, start, host).0
}

fn wait_on_disk(o: &Options, base: &Path, start: Instant, what: &str) -> (Duration, f64) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let count = count_on_disk(base, o.mailboxes);
        if count >= o.messages {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {count} of {} on disk after 900 s",
            o.messages,
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed();
    (elapsed, o.messages as f64 / elapsed.as_secs_f64())
}

/// N messages of about S bytes over C concurrent SMTP sessions to `host:port`.
fn send(o: &Options, host: &str, port: u16) {
    let mut body = String::new();
    let mut n = 0;
    while body.len() < o.size.saturating_sub(250) {
        body.push_str(&format!(
            "line {n:06} of the benchmark message, padded to about 64 b\n"
        ));
        n += 1;
    }
    let per_session = o.messages.div_ceil(o.sessions);
    std::thread::scope(|s| {
        for session in 0..o.sessions {
            let body = &body;
            s.spawn(move || {
                let mut smtp = Smtp::connect_to(host, port);
                for k in 0..per_session {
                    let index = session * per_session + k;
                    if index >= o.messages {
                        break;
                    }
                    let (rcpt, _) = mailbox(index % o.mailboxes);
                    let msg = format!(
                        "From: <bench@remote.test>\nTo: <{rcpt}>\nSubject: bench {index}\nMessage-ID: <{index}@bench.test>\n\n{body}"
                    );
                    assert_eq!(smtp.mail("bench@remote.test", "").code, 250);
                    let r = smtp.rcpt(&rcpt);
                    assert_eq!(r.code, 250, "{rcpt}: {r}");
                    let r = smtp.data(msg.as_bytes());
                    assert_eq!(r.code, 250, "{r}");
                }
                smtp.quit();
            });
        }
    });
}

/// The bench's resources (one domain, uid/gid 5000, M mailboxes) as YAML.
fn resources(o: &Options) -> String {
    let head = [
        fixtures::mail_server("mail", ""),
        fixtures::mail_domain("bench", "bench.test", "u0@bench.test", 5000, ""),
    ];
    let mailboxes = (0..o.mailboxes).map(|i| {
        let (address, maildir) = mailbox(i);
        let (format, slash) = if maildir {
            ("Maildir", "/")
        } else {
            ("Mbox", "")
        };
        fixtures::mailbox(
            &format!("u{i}"),
            &format!("address: {address}, format: {format}, path: u{i}{slash}"),
        )
    });
    fixtures::stream(head.into_iter().chain(mailboxes))
}

/// A fresh namespace with the bench's MailServer, its pod Ready and every Mailbox provisioned:
/// (namespace, the pod's volume on the host, the Service's ClusterIP).
fn pod_server(o: &Options) -> (virtmail_tests::cluster::TestNamespace, PathBuf, String) {
    use virtmail_tests::cluster::run;
    use virtmail_tests::node;
    static OPERATOR: std::sync::Once = std::sync::Once::new();
    let cluster = node::cluster();
    OPERATOR.call_once(|| {
        let root = virtmail_tests::workspace_root();
        let _ = run(cluster.helm().args([
            "uninstall",
            "virtmail-bench",
            "-n",
            "virtmail-bench",
            "--ignore-not-found",
            "--wait",
        ]));
        run(cluster
            .helm()
            .arg("install")
            .arg("virtmail-bench")
            .arg(root.join("charts/virtmail"))
            .args([
                "-n",
                "virtmail-bench",
                "--create-namespace",
                "--set",
                "crds.install=false",
                "--wait",
                "--timeout",
                "300s",
            ]))
        .unwrap_or_else(|e| panic!("helm install: {e}"));
    });
    let ns = cluster.namespace("e2e-bench");
    ns.apply(&resources(o))
        .unwrap_or_else(|e| panic!("apply: {e}"));
    node::wait_for(
        &ns,
        "pod/mail-0",
        "condition=Ready",
        Duration::from_secs(300),
    );
    run(ns.kubectl().args([
        "wait",
        "--for=condition=Provisioned",
        "mailbox",
        "--all",
        "--timeout=300s",
    ]))
    .unwrap_or_else(|e| panic!("mailboxes not provisioned: {e}"));
    let pvc = ns.get_json("pvc", "mailboxes-mail-0");
    let pv = pvc["spec"]["volumeName"]
        .as_str()
        .expect("bound")
        .to_owned();
    let pv: serde_json::Value = serde_json::from_str(
        &run(cluster.kubectl().args(["get", "pv", &pv, "-o", "json"])).unwrap(),
    )
    .unwrap();
    let base = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    let address = node::cluster_ip(&ns, "mail");
    (ns, base, address)
}

fn count_on_disk(base: &Path, mailboxes: usize) -> usize {
    (0..mailboxes)
        .map(|i| {
            let path = base.join(format!("u{i}"));
            let (_, maildir) = mailbox(i);
            if maildir {
                ["new", "cur"]
                    .iter()
                    .map(|sub| {
                        std::fs::read_dir(path.join(sub)).map_or(0, |d| {
                            d.flatten()
                                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                                .count()
                        })
                    })
                    .sum::<usize>()
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                usize::from(bytes.starts_with(b"From "))
                    + bytes.windows(7).filter(|w| w == b"\n\nFrom ").count()
            }
        })
        .sum()
}
