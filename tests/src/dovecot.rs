//! A private Dovecot for a test: `dovecot -c FILE` with its own base/state directories and log,
//! IMAP (and optionally LMTP on a unix socket) on loopback, every user from a passwd-file with
//! its own uid/gid and mail location (Maildir or mbox with `INBOX=`), any password accepted.
//! Stopped with `doveadm -c FILE stop` on drop (then the master pid, if it is still there).

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::mail::{Fetched, imap_fetch};
use crate::postfix::free_port;
use crate::process::{wait_for, wait_for_greeting};

/// Dovecot's master binary.
pub const DOVECOT: &str = "/usr/sbin/dovecot";

/// Panic with the install command unless Dovecot's IMAP server is installed.
pub fn require_dovecot(lmtp: bool) {
    assert!(
        Path::new(DOVECOT).exists() && Path::new("/usr/bin/doveadm").exists(),
        "{DOVECOT} not found: apt-get install dovecot-imapd (scripts/install-deps.sh installs it)"
    );
    assert!(
        Path::new("/usr/lib/dovecot/imap").exists(),
        "/usr/lib/dovecot/imap not found: apt-get install dovecot-imapd"
    );
    if lmtp {
        assert!(
            Path::new("/usr/lib/dovecot/lmtp").exists(),
            "/usr/lib/dovecot/lmtp not found: apt-get install dovecot-lmtpd"
        );
    }
}

/// Mailbox format of a Dovecot user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A Maildir at the path.
    Maildir,
    /// An mbox file at the path (Dovecot's `INBOX=`).
    Mbox,
}

/// One user: login name, owner, INBOX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name (the mail address).
    pub name: String,
    /// uid the mail is owned by.
    pub uid: u32,
    /// gid the mail is owned by.
    pub gid: u32,
    /// Format of the INBOX.
    pub format: Format,
    /// Absolute path of the Maildir or mbox file.
    pub path: PathBuf,
}

/// A running private Dovecot.
#[derive(Debug)]
pub struct Dovecot {
    dir: PathBuf,
    port: u16,
    lmtp: Option<PathBuf>,
    running: bool,
}

impl Dovecot {
    /// Start Dovecot with its files under `dir` (created), IMAP on a free port, and LMTP on
    /// `dir/lmtp.sock` if `lmtp`. Indexes and control files live under `dir/home/<user>`, never in
    /// the mailboxes (Maildir files and mbox content are what the tests compare).
    pub fn start(dir: &Path, users: &[User], lmtp: bool) -> Dovecot {
        require_dovecot(lmtp);
        let port = free_port();
        for sub in ["run", "state", "home"] {
            std::fs::create_dir_all(dir.join(sub)).expect("dovecot directories");
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Homes are created by Dovecot as each user: sticky and world-writable, like /tmp.
        std::fs::set_permissions(dir.join("home"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod home");
        let dovecot = Dovecot {
            dir: dir.to_path_buf(),
            port,
            lmtp: lmtp.then(|| dir.join("lmtp.sock")),
            running: false,
        };
        dovecot.set_users(users);
        std::fs::write(dovecot.conf(), dovecot.config_text()).expect("write dovecot.conf");
        // The daemon keeps its inherited stdout/stderr: give it a file, never a pipe.
        let (status, output) = run_daemon_start(
            Command::new(DOVECOT).arg("-c").arg(dovecot.conf()),
            &dir.join("start.out"),
        );
        assert!(
            status.success(),
            "dovecot -c {} failed ({status}): {output}\n{}",
            dovecot.conf().display(),
            dovecot.log()
        );
        let mut dovecot = dovecot;
        dovecot.running = true;
        wait_for_greeting(
            "Dovecot IMAP greeting",
            port,
            "* OK",
            Duration::from_secs(20),
        );
        if let Some(sock) = &dovecot.lmtp {
            wait_for("Dovecot LMTP socket", Duration::from_secs(10), || {
                sock.exists().then_some(())
            });
        }
        dovecot
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("dovecot.conf")
    }

    fn config_text(&self) -> String {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let mut c = String::new();
        let protocols = if self.lmtp.is_some() {
            "imap lmtp"
        } else {
            "imap"
        };
        let _ = write!(
            c,
            "base_dir = {run}
state_dir = {state}
log_path = {log}
instance_name = virtmail-test-{port}
hostname = imap.virtmail.test
ssl = no
listen = 127.0.0.1
protocols = {protocols}
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 100
last_valid_uid = 0
mail_location = maildir:~/Maildir
# Our mboxes live in a shared base where users cannot create dotlocks; fcntl is what the agent
# and virtual(8) take first.
mbox_read_locks = fcntl
mbox_write_locks = fcntl
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = passwd-file
  args = {users}
}}
",
            run = d("run"),
            state = d("state"),
            log = d("dovecot.log"),
            port = self.port,
            users = d("users"),
        );
        if let Some(sock) = &self.lmtp {
            let _ = write!(
                c,
                "service lmtp {{
  unix_listener {sock} {{
    mode = 0666
  }}
}}
protocol lmtp {{
  mail_fsync = always
}}
lmtp_save_to_detail_mailbox = no
recipient_delimiter = +
",
                sock = sock.display()
            );
        }
        c
    }

    /// Replace the user table (Dovecot re-reads the passwd-file when it changes).
    pub fn set_users(&self, users: &[User]) {
        let mut table = String::new();
        for user in users {
            let home = self.dir.join("home").join(&user.name);
            let mail = match user.format {
                Format::Maildir => format!(
                    "maildir:{}:INDEX=~/index:CONTROL=~/control",
                    user.path.display()
                ),
                Format::Mbox => format!("mbox:~/mail:INBOX={}:INDEX=~/index", user.path.display()),
            };
            let _ = writeln!(
                table,
                "{}::{}:{}::{}::userdb_mail={mail}",
                user.name,
                user.uid,
                user.gid,
                home.display()
            );
        }
        let path = self.dir.join("users");
        let tmp = self.dir.join("users.tmp");
        std::fs::write(&tmp, table).expect("write users");
        std::fs::rename(tmp, path).expect("rename users");
    }

    /// The IMAP port on 127.0.0.1.
    pub fn imap_port(&self) -> u16 {
        self.port
    }

    /// The LMTP socket, if started with LMTP.
    pub fn lmtp_socket(&self) -> Option<&Path> {
        self.lmtp.as_deref()
    }

    /// Every message of `user`'s INBOX through IMAP (`BODY.PEEK[]`, read-only).
    pub fn fetch(&self, user: &str) -> Fetched {
        imap_fetch(self.port, user)
    }

    /// Dovecot's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Stop it; idempotent.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid = std::fs::read_to_string(self.dir.join("run/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        let _ = Command::new("/usr/bin/doveadm")
            .arg("-c")
            .arg(self.conf())
            .arg("stop")
            .output();
        if let Some(pid) = pid {
            let pid = nix::unistd::Pid::from_raw(pid);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && nix::sys::signal::kill(pid, None).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Still there after 10 s: it is our own instance's master, end it.
            if nix::sys::signal::kill(pid, None).is_ok() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("==== Dovecot log ({}):\n{}", self.dir.display(), self.log());
        }
    }
}

/// Run a command that daemonizes (its children inherit stdout/stderr): output goes to `out`, so
/// waiting for it cannot hang on a pipe the daemon keeps open. Returns the status and the output.
pub fn run_daemon_start(command: &mut Command, out: &Path) -> (std::process::ExitStatus, String) {
    let file = std::fs::File::create(out).expect("start output file");
    let status = command
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    (status, std::fs::read_to_string(out).unwrap_or_default())
}
