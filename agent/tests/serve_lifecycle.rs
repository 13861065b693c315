//! `serve` as a process: HTTP endpoints, hot reload, sockets, logs and graceful shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use virtmail_tests::fixtures::{agent_directory, mailbox, stream};
use virtmail_tests::serve::{Agent, eventually};

fn with_newcomer() -> String {
    stream([
        agent_directory(),
        mailbox("newcomer", "address: newcomer@example.test"),
    ])
}

#[test]
fn serve_http_endpoints() {
    let agent = Agent::start();
    assert_eq!(agent.get("/healthz"), (200, "ok\n".to_string()));
    // Ready or not, nothing more: what is loaded is on /metrics.
    assert_eq!(agent.get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(agent.get("/nope").0, 404);
    let mut m = agent.map();
    m.query("mailbox alice@example.test");
    m.query("mailbox nobody@example.test");
    let (status, metrics) = agent.get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        "virtmail_lookups_total{map=\"mailbox\",result=\"ok\"} 1",
        "virtmail_lookups_total{map=\"mailbox\",result=\"notfound\"} 1",
        "virtmail_directory_loaded 1",
        "virtmail_directory_entries{kind=\"mailboxes\"} 5",
        "virtmail_reloads_total{result=\"success\"} 1",
        "virtmail_open_connections{protocol=\"socketmap\"} 1",
        "# TYPE virtmail_delivery_duration_seconds histogram",
        "virtmail_directory_info{server=\"mail\",version=\"",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
}

#[test]
fn serve_new_mailbox_answers_within_two_seconds() {
    let agent = Agent::start();
    let mut m = agent.map();
    assert_eq!(m.query("mailbox newcomer@example.test"), "NOTFOUND ");
    let version = |agent: &Agent| {
        let (_, metrics) = agent.get("/metrics");
        metrics
            .lines()
            .find(|l| l.starts_with("virtmail_directory_info{"))
            .unwrap_or_default()
            .to_string()
    };
    let before = version(&agent);
    std::fs::write(agent.resources().join("all.yaml"), with_newcomer()).unwrap();
    let written = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || m
            .query("mailbox newcomer@example.test")
            .starts_with("OK ")),
        "new mailbox not served within 2 s:\n{}",
        agent.log_text()
    );
    assert!(written.elapsed() < Duration::from_secs(2));
    let after = version(&agent);
    assert_ne!(before, after, "/metrics names the new version");
    // A new LMTP session sees it too.
    let mut c = agent.lmtp();
    c.hello();
    c.command("MAIL FROM:<>");
    assert_eq!(c.command("RCPT TO:<newcomer@example.test>"), "250 2.1.5 OK");
}

#[test]
fn serve_broken_reload_keeps_previous_directory() {
    let agent = Agent::start();
    let mut m = agent.map();
    std::fs::write(agent.resources().join("broken.yaml"), "kind: [unclosed").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        agent
            .get("/metrics")
            .1
            .contains("virtmail_reloads_total{result=\"failure\"} 1")
    }));
    assert_eq!(
        m.query("mailbox alice@example.test"),
        "OK example.test/alice/"
    );
    assert_eq!(agent.get("/readyz").0, 200);
    assert!(
        agent
            .get("/metrics")
            .1
            .contains("virtmail_directory_reload_failing 1")
    );
    assert!(agent.log_text().contains("keeping the previous directory"));
    // Fixing the files recovers.
    std::fs::remove_file(agent.resources().join("broken.yaml")).unwrap();
    std::fs::write(agent.resources().join("all.yaml"), with_newcomer()).unwrap();
    assert!(eventually(Duration::from_secs(5), || m
        .query("mailbox newcomer@example.test")
        .starts_with("OK ")));
    assert!(
        agent
            .get("/metrics")
            .1
            .contains("virtmail_directory_reload_failing 0")
    );
}

#[test]
fn serve_invalid_objects_are_logged_and_served_as_deferring() {
    let agent = Agent::start();
    // The directory has broken@example.test with uid 0: one diagnostic, logged on load.
    let log = agent.log_text();
    assert!(log.contains("InvalidOwner"), "{log}");
    assert!(
        agent
            .get("/metrics")
            .1
            .contains("virtmail_directory_diagnostics 1")
    );
}

#[test]
fn serve_sigterm_finishes_inflight_transaction_and_exits_zero() {
    let mut agent = Agent::start();
    let mut idle = agent.lmtp();
    idle.hello();
    let mut busy = agent.lmtp();
    busy.hello();
    busy.command("MAIL FROM:<s@remote.test>");
    busy.command("RCPT TO:<alice@example.test>");
    assert!(busy.command("DATA").starts_with("354"));
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    let pid = agent.child.as_ref().unwrap().id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // The idle session is told the service is going away.
    assert!(idle.reply().starts_with("421 4.3.2"));
    // New connections are no longer accepted (the socket file is gone).
    assert!(eventually(Duration::from_secs(5), || !agent
        .lmtp_path()
        .exists()));
    // The transaction in DATA still completes with a reply for its recipient.
    busy.send(b"second half\r\n.\r\n");
    let reply = busy.reply();
    assert!(reply.contains("<alice@example.test>"), "{reply}");
    assert!(busy.reply().starts_with("421 4.3.2"));
    drop(busy);
    assert_eq!(agent.stop(), Some(0), "{}", agent.log_text());
    assert!(!agent.map_path().exists());
}

#[test]
fn serve_socket_mode_and_stale_socket_replacement() {
    let mut agent = Agent::start();
    for path in [agent.lmtp_path(), agent.map_path(), agent.http_path()] {
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o666,
            "{}",
            path.display()
        );
    }
    // Kill hard: the socket files stay behind, stale.
    let mut child = agent.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(agent.lmtp_path().exists());
    agent.spawn(&["--socket-mode", "0660"]);
    let mode = std::fs::metadata(agent.lmtp_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let mut c = agent.lmtp();
    assert!(c.reply().starts_with("220 "));
    // A second agent on the same live sockets refuses to start instead of stealing them.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_virtmail-agent"))
        .arg("serve")
        .arg("--resources")
        .arg(agent.resources())
        .arg("--lmtp")
        .arg(format!("unix:{}", agent.lmtp_path().display()))
        .arg("--socketmap")
        .arg(format!(
            "unix:{}",
            agent.dir.path().join("other-map.sock").display()
        ))
        .arg("--http")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));
    // A regular file where the socket should go is never removed.
    let file = agent.dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let third = std::process::Command::new(env!("CARGO_BIN_EXE_virtmail-agent"))
        .arg("serve")
        .arg("--resources")
        .arg(agent.resources())
        .arg("--lmtp")
        .arg(format!("unix:{}", file.display()))
        .arg("--socketmap")
        .arg("127.0.0.1:0")
        .arg("--http")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(third.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn serve_json_logs_one_line_per_recipient() {
    let mut agent = Agent::with_flags(&["--log-format", "json"]);
    let mut c = agent.lmtp();
    c.hello();
    c.command("MAIL FROM:<s@remote.test>");
    c.command("RCPT TO:<alice+tag@example.test>");
    c.command("RCPT TO:<nobody@example.test>");
    c.command("DATA");
    c.send(b"x\r\n.\r\n");
    c.reply();
    c.command("QUIT");
    agent.stop();
    let log = agent.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let result = lines
        .iter()
        .find(|l| l["recipient"] == "alice+tag@example.test" && l.get("path").is_some())
        .unwrap_or_else(|| panic!("no per-recipient line:\n{log}"));
    assert_eq!(result["sender"], "s@remote.test");
    for field in ["status", "code", "size", "duration_ms", "path"] {
        assert!(result.get(field).is_some(), "{field} missing: {result}");
    }
    let refused = lines
        .iter()
        .find(|l| l["recipient"] == "nobody@example.test")
        .unwrap_or_else(|| panic!("no RCPT refusal line:\n{log}"));
    assert_eq!(refused["status"], "5.1.1");
}
