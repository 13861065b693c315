//! Shared helpers for the `serve` integration tests: start the real binary on unix sockets in a
//! temporary directory, talk raw LMTP / socketmap / HTTP to it, stop it with SIGTERM.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A domain with a catch-all, a plain mailbox, a suspended one, an alias, and a deferring mailbox
/// (invalid owner: uid below minimumUid).
pub const RESOURCES: &str = r#"
apiVersion: virtmail.io/v1alpha1
kind: MailServer
metadata: {name: mail}
spec: {}
---
apiVersion: virtmail.io/v1alpha1
kind: MailDomain
metadata: {name: example}
spec: {domain: Example.TEST, postmaster: alice@example.test, defaults: {uid: 5000, gid: 5000}}
---
apiVersion: virtmail.io/v1alpha1
kind: MailDomain
metadata: {name: catchall}
spec: {domain: catchall.test, postmaster: info@catchall.test, catchAll: info, defaults: {uid: 5000, gid: 5000}}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: info}
spec: {address: info@catchall.test}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: alice}
spec: {address: Alice@Example.Test}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: bob}
spec: {address: bob@example.test, format: Mbox, uid: 5001}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: frozen}
spec: {address: frozen@example.test, suspended: true}
---
apiVersion: virtmail.io/v1alpha1
kind: Mailbox
metadata: {name: broken}
spec: {address: broken@example.test, uid: 0}
---
apiVersion: virtmail.io/v1alpha1
kind: MailAlias
metadata: {name: team}
spec: {address: team@example.test, to: [alice@example.test, bob@example.test]}
"#;

/// A running `virtmail-agent serve`.
#[derive(Debug)]
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    pub fn resources(&self) -> PathBuf {
        self.dir.path().join("resources")
    }
    pub fn base(&self) -> PathBuf {
        self.dir.path().join("mail")
    }
    pub fn lmtp_path(&self) -> PathBuf {
        self.dir.path().join("run/lmtp.sock")
    }
    pub fn map_path(&self) -> PathBuf {
        self.dir.path().join("run/map.sock")
    }
    pub fn http_path(&self) -> PathBuf {
        self.dir.path().join("run/http.sock")
    }

    /// Start with `RESOURCES` (or `yaml`; `None` = no resources file at all) and extra flags.
    pub fn start_with(yaml: Option<&str>, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("resources")).unwrap();
        // Deliveries run as uid 5000/5001: the path to the base must be searchable, and the
        // domain directories (provisioned by an operator in production) writable by both and
        // sticky, as the agent requires of a shared directory on a mailbox path.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for domain in ["example.test", "catchall.test"] {
            let path = dir.path().join("mail").join(domain);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("mail"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        if let Some(yaml) = yaml {
            std::fs::write(dir.path().join("resources/all.yaml"), yaml).unwrap();
        }
        let log = dir.path().join("agent.log");
        let mut agent = Agent {
            dir,
            child: None,
            log,
        };
        agent.spawn(extra);
        agent
    }

    pub fn start() -> Agent {
        Agent::start_with(Some(RESOURCES), &[])
    }

    pub fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_virtmail-agent"))
            .arg("serve")
            .arg("--resources")
            .arg(self.resources())
            .arg("--mailbox-base")
            .arg(self.base())
            .arg("--lmtp")
            .arg(format!("unix:{}", self.lmtp_path().display()))
            .arg("--socketmap")
            .arg(format!("unix:{}", self.map_path().display()))
            .arg("--http")
            .arg(format!("unix:{}", self.http_path().display()))
            .args(["--hostname", "mx.test", "--reload-interval", "200ms"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("virtmail-agent binary runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Connectable, not merely present: a killed predecessor leaves stale socket files. The
        // HTTP socket is bound last, so once it answers the other two are bound as well.
        while UnixStream::connect(self.http_path()).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited early ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop after SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn lmtp(&self) -> Lmtp {
        Lmtp::connect(&self.lmtp_path())
    }

    pub fn map(&self) -> Map {
        Map::connect(&self.map_path())
    }

    /// GET `path` over the HTTP unix socket: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http_path(), path)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn http_get(socket: &Path, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A raw LMTP client.
#[derive(Debug)]
pub struct Lmtp {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Lmtp {
    pub fn connect(path: &Path) -> Lmtp {
        let s = UnixStream::connect(path).expect("connect lmtp");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Lmtp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.writer.write_all(data).unwrap();
    }

    /// One reply (all its lines), joined with `\n`; empty string at EOF.
    pub fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return lines.join("\n"),
                Ok(_) => {}
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Send a command line and read its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Read the greeting and say LHLO.
    pub fn hello(&mut self) -> String {
        let greeting = self.reply();
        assert!(greeting.starts_with("220 "), "{greeting}");
        self.cmd("LHLO client.test")
    }

    /// Whether the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// A socketmap client.
#[derive(Debug)]
pub struct Map {
    pub stream: UnixStream,
}

impl Map {
    pub fn connect(path: &Path) -> Map {
        let stream = UnixStream::connect(path).expect("connect socketmap");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Map { stream }
    }

    pub fn send_raw(&mut self, data: &[u8]) {
        self.stream.write_all(data).unwrap();
    }

    /// Read one netstring reply; `None` at EOF.
    pub fn read_reply(&mut self) -> Option<String> {
        let mut len = 0usize;
        loop {
            let mut b = [0u8; 1];
            if self.stream.read(&mut b).ok()? == 0 {
                return None;
            }
            match b[0] {
                b':' => break,
                d => len = len * 10 + usize::from(d - b'0'),
            }
        }
        let mut data = vec![0u8; len + 1];
        self.stream.read_exact(&mut data).ok()?;
        assert_eq!(data.pop(), Some(b','));
        Some(String::from_utf8(data).unwrap())
    }

    pub fn query(&mut self, request: &str) -> String {
        self.send_raw(format!("{}:{},", request.len(), request).as_bytes());
        self.read_reply().expect("socketmap reply")
    }
}

/// Run a python script from `tests/support/` with arguments; returns stdout, panics on failure.
pub fn python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("python3 is installed");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
