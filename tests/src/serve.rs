//! `virtmail-agent serve` on a directory of manifests (no API server), on unix sockets in a
//! temporary directory, for the agent's own integration tests and benchmarks.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lmtp::Lmtp;
use crate::socketmap::Socketmap;

/// The `virtmail-agent` binary cargo built for the running test or benchmark: those run from
/// `target/<profile>/deps/`, and their package's binaries sit one level up.
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lies in target/<profile>/deps")
        .join("virtmail-agent");
    assert!(
        path.is_file(),
        "{} is missing: run this from the agent's tests or benches",
        path.display()
    );
    path
}

/// `binary serve` reading manifests from `resources`, delivering below `base`, with LMTP and
/// socketmap on the unix sockets `lmtp` and `socketmap` and HTTP on `http` (`unix:PATH` or
/// `HOST:PORT`); callers add their own flags.
pub fn serve_command(
    binary: &Path,
    resources: &Path,
    base: &Path,
    lmtp: &Path,
    socketmap: &Path,
    http: &str,
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg("--resources")
        .arg(resources)
        .arg("--mailbox-base")
        .arg(base)
        .arg("--lmtp")
        .arg(format!("unix:{}", lmtp.display()))
        .arg("--socketmap")
        .arg(format!("unix:{}", socketmap.display()))
        .args(["--http", http]);
    command
}

/// A running `virtmail-agent serve`.
#[derive(Debug)]
pub struct Agent {
    /// The scratch directory: `resources/`, `mail/` (the base), `run/` (sockets), the log.
    pub dir: tempfile::TempDir,
    /// The process, until `stop` or a test takes it.
    pub child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    /// The directory of manifests the agent reads.
    pub fn resources(&self) -> PathBuf {
        self.dir.path().join("resources")
    }
    /// The mailbox base.
    pub fn base(&self) -> PathBuf {
        self.dir.path().join("mail")
    }
    /// The LMTP socket.
    pub fn lmtp_path(&self) -> PathBuf {
        self.dir.path().join("run/lmtp.sock")
    }
    /// Python's smtplib.LMTP (a real, independent client) sends one message from `sender` to
    /// `rcpts` over the LMTP socket; its transcript, one line per step
    /// (`tests/support/lmtp_dialogue.py`).
    pub fn smtplib_dialogue(&self, sender: &str, rcpts: &[&str]) -> String {
        let socket = self.lmtp_path();
        let mut args = vec![socket.to_str().expect("UTF-8 socket path"), sender];
        args.extend_from_slice(rcpts);
        python("lmtp_dialogue.py", &args)
    }
    /// The socketmap socket.
    pub fn map_path(&self) -> PathBuf {
        self.dir.path().join("run/map.sock")
    }
    /// The HTTP socket (`/healthz`, `/readyz`, `/metrics`).
    pub fn http_path(&self) -> PathBuf {
        self.dir.path().join("run/http.sock")
    }

    /// Start with `yaml` as `resources/all.yaml` (`None`: no resources file at all) and extra
    /// flags.
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

    /// Start with [`crate::fixtures::agent_directory`].
    pub fn start() -> Agent {
        Agent::with_flags(&[])
    }

    /// Start with [`crate::fixtures::agent_directory`] and extra flags.
    pub fn with_flags(extra: &[&str]) -> Agent {
        Agent::start_with(Some(&crate::fixtures::agent_directory()), extra)
    }

    /// Start the process (again) on this directory with extra flags; returns once it answers.
    pub fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = serve_command(
            &agent_binary(),
            &self.resources(),
            &self.base(),
            &self.lmtp_path(),
            &self.map_path(),
            &format!("unix:{}", self.http_path().display()),
        )
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

    /// The agent's log so far.
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

    /// A new LMTP connection (greeting not read yet).
    pub fn lmtp(&self) -> Lmtp {
        Lmtp::connect(&self.lmtp_path())
    }

    /// A new socketmap connection.
    pub fn map(&self) -> Socketmap {
        Socketmap::connect(&self.map_path())
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

/// GET `path` over the HTTP unix socket `socket`: (status, body).
pub fn http_get(socket: &Path, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
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

/// Run a python script from `tests/support/` with arguments; returns stdout, panics on failure.
pub fn python(script: &str, args: &[&str]) -> String {
    let path = crate::workspace_root().join("tests/support").join(script);
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
