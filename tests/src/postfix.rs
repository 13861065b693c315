//! A private Postfix instance for a test: its own config, queue and data directories under a test
//! directory, smtpd on a free 127.0.0.1 port, logging to a file (no syslog), DNS off. Started with
//! `postfix -c DIR start`, stopped with `postfix -c DIR stop` on drop (also when the test panics,
//! then its log is printed).
//!
//! The settings that wire Postfix to the agent come from `virtmail-operator postfix-profile` (one
//! source of truth, docs/ARCHITECTURE.md); [`test_local`] adds only what a private instance on a test machine
//! needs.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{binary, wait_for_greeting};

/// Postfix's control program.
pub const POSTFIX: &str = "/usr/sbin/postfix";

/// Panic with the install command unless Postfix is installed.
pub fn require_postfix() {
    for tool in [POSTFIX, "/usr/sbin/postconf", "/usr/sbin/postqueue"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} not found: apt-get install postfix (scripts/install-deps.sh installs it)"
        );
    }
    assert!(
        Path::new("/etc/postfix/master.cf").exists(),
        "/etc/postfix/master.cf not found: apt-get install postfix"
    );
}

/// A free TCP port on 127.0.0.1 that no other caller in this process has been given.
///
/// The kernel's `bind(0)` only avoids ports bound *now*, so tests running in parallel could be
/// handed the same released port. Two Postfix instances on one port do not fail: Postfix sets
/// SO_REUSEPORT on its listeners, and the kernel then spreads connections over both, so a test
/// would talk to another test's Postfix. Hence the record of every port handed out.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// How many sockets listen on 127.0.0.1:`port` (from /proc/net/tcp).
fn listeners_on(port: u16) -> usize {
    const TCP_LISTEN: &str = "0A";
    let local = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&TCP_LISTEN)
        })
        .count()
}

/// What an instance is configured with.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// main.cf parameters, later entries replacing earlier ones of the same name.
    pub main: Vec<(String, String)>,
    /// master.cf field settings (`postconf -F` arguments: `service/type/field = value`).
    pub master_fields: Vec<String>,
    /// Whole master.cf entries (`postconf -M` arguments: `service/type = entry`).
    pub master_entries: Vec<String>,
    /// Files to write into the config directory (name, content), e.g. texthash tables.
    pub files: Vec<(String, String)>,
}

impl Config {
    /// Set (or replace) a main.cf parameter.
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        match self.main.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value,
            None => self.main.push((name.to_string(), value)),
        }
        self
    }

    /// Value of a main.cf parameter, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.main
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The virtmail profile for the agent's sockets, from `virtmail-operator postfix-profile`.
pub fn profile(
    lmtp_socket: &Path,
    socketmap_socket: &Path,
    mailbox_size_limit: u64,
    recipient_delimiter: &str,
) -> Config {
    profile_with_relay(
        lmtp_socket,
        socketmap_socket,
        mailbox_size_limit,
        recipient_delimiter,
        None,
    )
}

/// [`profile`] for a MailServer with `outbound.relayHost` (`None`: without outbound).
pub fn profile_with_relay(
    lmtp_socket: &Path,
    socketmap_socket: &Path,
    mailbox_size_limit: u64,
    recipient_delimiter: &str,
    relay_host: Option<&str>,
) -> Config {
    let mut command = Command::new(binary("virtmail-operator"));
    if let Some(relay_host) = relay_host {
        command
            .arg("postfix-profile")
            .arg("--relay-host")
            .arg(relay_host);
    } else {
        command.arg("postfix-profile");
    }
    command
        .arg("--lmtp-socket")
        .arg(lmtp_socket)
        .arg("--socketmap-socket")
        .arg(socketmap_socket)
        .arg("--mailbox-size-limit")
        .arg(mailbox_size_limit.to_string())
        .arg("--recipient-delimiter")
        .arg(recipient_delimiter);
    let profile = crate::cluster::run(&mut command).unwrap_or_else(|e| panic!("{e}"));
    parse_profile(&profile)
}

/// Parse the profile text: `name = value` lines, then (after the `postconf -F` comment)
/// `service/type/field = value` lines.
pub fn parse_profile(text: &str) -> Config {
    let mut config = Config::default();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("profile line without '=': {line:?}"));
        let name = name.trim();
        if name.contains('/') {
            config.master_fields.push(line.to_string());
        } else {
            config.set(name, value.trim());
        }
    }
    config
}

/// Settings of a private instance under `dir` with smtpd on `port`, added on top of the profile:
/// private directories, loopback only, log file, host names, fast retries for tests.
pub fn test_local(config: &mut Config, dir: &Path, port: u16) {
    let d = |p: &str| dir.join(p).display().to_string();
    for (name, value) in [
        ("config_directory", d("etc")),
        ("queue_directory", d("queue")),
        ("data_directory", d("data")),
        ("maillog_file", d("postfix.log")),
        ("maillog_file_prefixes", dir.display().to_string()),
        ("mail_owner", "postfix".into()),
        ("setgid_group", "postdrop".into()),
        ("inet_interfaces", "127.0.0.1".into()),
        ("inet_protocols", "ipv4".into()),
        ("myhostname", "mx.virtmail.test".into()),
        ("mydomain", "virtmail.test".into()),
        ("myorigin", "virtmail.test".into()),
        ("mynetworks", "127.0.0.0/8".into()),
        ("alias_maps", String::new()),
        ("alias_database", String::new()),
        ("smtpd_banner", "$myhostname ESMTP".into()),
        // Deferred mail is retried within seconds, not minutes.
        ("queue_run_delay", "1s".into()),
        ("minimal_backoff_time", "1s".into()),
        ("maximal_backoff_time", "2s".into()),
        ("delay_warning_time", "0".into()),
        // Bounces to remote senders go to default_transport (error) and are dropped quickly.
        ("bounce_queue_lifetime", "0".into()),
    ] {
        config.set(name, value);
    }
    config
        .master_fields
        .push(format!("smtp/inet/service = 127.0.0.1:{port}"));
}

/// A running private Postfix.
#[derive(Debug)]
pub struct Postfix {
    dir: PathBuf,
    port: u16,
    config: Config,
    running: bool,
}

impl Postfix {
    /// Write the configuration under `dir` (created, must be empty or absent) and start Postfix,
    /// waiting until smtpd answers on `port`. `config` must already contain [`test_local`].
    pub fn start(dir: &Path, port: u16, config: Config) -> Postfix {
        require_postfix();
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir_all(dir.join(sub)).expect("postfix directories");
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = dir.join("data");
        nix::unistd::chown(&data, Some(postfix_uid()), None).expect("chown data_directory");
        let etc = dir.join("etc");
        std::fs::copy("/etc/postfix/master.cf", etc.join("master.cf")).expect("copy master.cf");
        let mut main = String::from("# test instance: virtmail profile + test-local settings\n");
        for (name, value) in &config.main {
            main.push_str(&format!("{name} = {value}\n"));
        }
        std::fs::write(etc.join("main.cf"), main).expect("write main.cf");
        for (name, content) in &config.files {
            std::fs::write(etc.join(name), content).expect("write config file");
        }
        if !config.master_fields.is_empty() {
            postconf(&etc, "-F", &config.master_fields);
        }
        if !config.master_entries.is_empty() {
            postconf(&etc, "-M", &config.master_entries);
        }
        let mut postfix = Postfix {
            dir: dir.to_path_buf(),
            port,
            config,
            running: true,
        };
        // The master daemon keeps its inherited stdout/stderr: give it a file, never a pipe.
        let (status, output) = crate::dovecot::run_daemon_start(
            Command::new(POSTFIX).arg("-c").arg(&etc).arg("start"),
            &dir.join("start.out"),
        );
        if !status.success() {
            postfix.running = false;
            panic!(
                "postfix -c {} start failed ({status}): {output}\nlog:\n{}\nrun `script -qc 'postfix -c {} start'` to see errors Postfix prints only to a terminal",
                etc.display(),
                postfix.log(),
                etc.display()
            );
        }
        wait_for_greeting(
            "Postfix smtpd greeting",
            port,
            "220",
            Duration::from_secs(20),
        );
        // SO_REUSEPORT lets a second listener (another Postfix) share the port silently.
        let listeners = listeners_on(port);
        assert_eq!(
            listeners, 1,
            "127.0.0.1:{port} has {listeners} listening sockets: another process shares this Postfix's port (Postfix sets SO_REUSEPORT), so mail could reach the wrong instance"
        );
        postfix
    }

    /// The smtpd port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The config directory (`postfix -c`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postfix.log")).unwrap_or_default()
    }

    /// `postqueue -c DIR -f`: attempt delivery of all queued mail now.
    pub fn flush(&self) {
        let status = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-f")
            .status()
            .expect("run postqueue -f");
        assert!(status.success(), "postqueue -f failed");
    }

    /// The queue listing (`postqueue -p`).
    pub fn queue(&self) -> String {
        let out = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-p")
            .output()
            .expect("run postqueue -p");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether no message is queued.
    pub fn queue_is_empty(&self) -> bool {
        self.queue().contains("Mail queue is empty")
    }

    /// Log lines with `status=<status>` for `to=<recipient>`.
    pub fn log_status(&self, recipient: &str, status: &str) -> Vec<String> {
        let to = format!("to=<{recipient}>");
        let st = format!("status={status}");
        self.log()
            .lines()
            .filter(|l| l.contains(&to) && l.contains(&st))
            .map(str::to_string)
            .collect()
    }

    /// Stop it (`postfix -c DIR stop`); idempotent.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.config_dir())
            .arg("stop")
            .output();
        // The master exits after its children; wait for its pid file lock to go away.
        let pid_file = self.dir.join("queue/pid/master.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("==== Postfix log ({}):\n{}", self.dir.display(), self.log());
        }
    }
}

/// Run `postconf -c ETC FLAG args...`.
fn postconf(etc: &Path, flag: &str, args: &[String]) {
    let out = Command::new("/usr/sbin/postconf")
        .arg("-c")
        .arg(etc)
        .arg(flag)
        .args(args)
        .output()
        .expect("run postconf");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "postconf {flag} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// uid of the `postfix` user.
pub fn postfix_uid() -> nix::unistd::Uid {
    nix::unistd::User::from_name("postfix")
        .ok()
        .flatten()
        .expect("user postfix missing: apt-get install postfix")
        .uid
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
        sockopt,
    };

    #[test]
    fn free_port_never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    /// Two listeners with SO_REUSEPORT, as two Postfix instances on one port would be.
    #[test]
    fn listeners_on_counts_every_socket_sharing_a_port() {
        let port = free_port();
        assert_eq!(listeners_on(port), 0);
        let reuseport_listener = || {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            setsockopt(&fd, sockopt::ReusePort, &true).expect("SO_REUSEPORT");
            bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::new(127, 0, 0, 1, port),
            )
            .expect("bind");
            listen(&fd, Backlog::new(1).expect("backlog")).expect("listen");
            fd
        };
        let first = reuseport_listener();
        assert_eq!(listeners_on(port), 1);
        let second = reuseport_listener();
        assert_eq!(listeners_on(port), 2);
        drop((first, second));
        assert_eq!(listeners_on(port), 0);
    }
}
