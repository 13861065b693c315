//! The whole mail path of a pod, on loopback, in a private temporary directory per test:
//! `virtmail-agent serve --resources <copy of the resources>` + a private Postfix configured by
//! `virtmail-operator postfix-profile` (plus test-local settings) + a private Dovecot serving the
//! same mailbox base over IMAP. Everything it started is stopped on drop, also when the test
//! fails (then every log is printed). A missing component fails the test with the command that
//! installs it; nothing is skipped.
//!
//! ```no_run
//! use virtmail_tests::mailstack::MailStack;
//! let stack = MailStack::example("1-virtual-for-all-mail").start();
//! let sent = stack.send("s@remote.test", &["test1@virtual1.test"], b"Subject: x\n\nhi\n");
//! sent.assert_accepted();
//! let stored = stack.wait_for_messages("test1@virtual1.test", 1);
//! let fetched = stack.imap("test1@virtual1.test");
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use virtmail_crds::resources::MailboxFormat;
use virtmail_crds::{Directory, compile, manifests};

use crate::dovecot::{self, Dovecot};
use crate::mail::{self, Fetched, Sent};
use crate::postfix::{self, Postfix, free_port};
use crate::process::{Process, binary, http_get, wait_for};
use crate::serve::serve_command;
use crate::tmpfs::Tmpfs;
use crate::workspace_root;

/// How long a test waits for mail to land.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct Builder {
    resources: Vec<(String, String)>,
    postfix_main: Vec<(String, String)>,
    postfix_entries: Vec<String>,
    postfix_files: Vec<(String, String)>,
    admin_layout: bool,
    base_tmpfs: Option<String>,
}

impl Builder {
    /// Whether the harness prepares the mailboxes' parent directories as an administrator would
    /// (default: yes). With `false` the base is an empty root-owned 0755 directory and only the
    /// agent's own provisioning can make mail deliverable.
    pub fn admin_layout(mut self, prepare: bool) -> Self {
        self.admin_layout = prepare;
        self
    }

    /// Put the mailbox base on a tmpfs of `size` (`mount -t tmpfs -o size=<size>`, e.g. `"4m"`),
    /// mounted before anything starts and unmounted after everything stopped (needs root).
    pub fn base_tmpfs(mut self, size: &str) -> Self {
        self.base_tmpfs = Some(size.into());
        self
    }

    /// Add a resources file (name, YAML).
    pub fn resource(mut self, name: &str, yaml: &str) -> Self {
        self.resources.push((name.into(), yaml.into()));
        self
    }

    /// Set a test-local main.cf parameter on top of the profile.
    pub fn postfix_param(mut self, name: &str, value: &str) -> Self {
        self.postfix_main.push((name.into(), value.into()));
        self
    }

    /// Add a master.cf entry (`postconf -M` argument `service/type = entry`).
    pub fn postfix_service(mut self, entry: &str) -> Self {
        self.postfix_entries.push(entry.into());
        self
    }

    /// Write a file into Postfix's config directory (e.g. a texthash table). `@ETC@` in the
    /// content and in [`Builder::postfix_param`] values is replaced by that directory, `@ROOT@` by
    /// the stack's directory.
    pub fn postfix_file(mut self, name: &str, content: &str) -> Self {
        self.postfix_files.push((name.into(), content.into()));
        self
    }

    /// Start the agent, Postfix and Dovecot.
    pub fn start(self) -> MailStack {
        MailStack::start(self)
    }
}

/// The running stack.
#[derive(Debug)]
pub struct MailStack {
    // Field order = drop order: Postfix first (stops handing mail to the agent), then Dovecot,
    // then the agent, then the directory.
    postfix: Postfix,
    dovecot: Dovecot,
    agent: Process,
    /// Agents killed by [`MailStack::kill_agent`], kept for their logs.
    killed_agents: Vec<Process>,
    http_port: u16,
    admin_layout: bool,
    /// Unmounted after the agent and Dovecot stopped, before the directory is removed.
    _base_tmpfs: Option<Tmpfs>,
    dir: tempfile::TempDir,
}

impl MailStack {
    /// A stack over the files of `examples/<name>/`.
    pub fn example(name: &str) -> Builder {
        let dir = workspace_root().join("examples").join(name);
        let mut builder = MailStack::resources("");
        builder.resources.clear();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("read example");
            builder.resources.push((name, text));
        }
        builder
    }

    /// A stack over one resources file with `yaml`.
    pub fn resources(yaml: &str) -> Builder {
        Builder {
            resources: vec![("resources.yaml".into(), yaml.into())],
            postfix_main: Vec::new(),
            postfix_entries: Vec::new(),
            postfix_files: Vec::new(),
            admin_layout: true,
            base_tmpfs: None,
        }
    }

    fn start(builder: Builder) -> MailStack {
        postfix::require_postfix();
        dovecot::require_dovecot(false);
        let dir = tempfile::Builder::new()
            .prefix("virtmail-mailstack-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        // Postfix's user must reach the sockets, recipients the mailbox base: every directory on
        // the way is searchable.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for sub in ["resources", "sock", "mail"] {
            std::fs::create_dir(root.join(sub)).expect("mkdir");
            std::fs::set_permissions(root.join(sub), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let base_tmpfs = builder
            .base_tmpfs
            .as_deref()
            .map(|size| Tmpfs::mount(&root.join("mail"), size));
        for (name, text) in &builder.resources {
            std::fs::write(root.join("resources").join(name), text).expect("write resources");
        }
        let stack_paths = StackPaths {
            root: root.clone(),
            admin_layout: builder.admin_layout,
        };
        let directory = stack_paths.directory();
        stack_paths.prepare_layout(&directory);
        // Postfix's smtpd port, known before the agent starts: automatic replies go there.
        let port = free_port();

        // The agent.
        let http_port = free_port();
        let agent = stack_paths.start_agent(http_port, port);

        // Dovecot over the same base.
        let dovecot = Dovecot::start(
            &root.join("dovecot"),
            &stack_paths.dovecot_users(&directory),
            false,
        );

        // Postfix: the operator's profile, then test-local settings, then the test's own.
        let mut config = postfix::profile_with_relay(
            &stack_paths.lmtp(),
            &stack_paths.socketmap(),
            directory.settings.mailbox_size_limit,
            &directory.settings.recipient_delimiter,
            stack_paths.relay_host().as_deref(),
        );
        postfix::test_local(&mut config, &root.join("postfix"), port);
        let etc = root.join("postfix/etc").display().to_string();
        let subst = |s: &str| {
            s.replace("@ETC@", &etc)
                .replace("@ROOT@", &root.display().to_string())
        };
        for (name, value) in &builder.postfix_main {
            config.set(name, subst(value));
        }
        config.master_entries = builder.postfix_entries.iter().map(|e| subst(e)).collect();
        config.files = builder
            .postfix_files
            .iter()
            .map(|(n, c)| (n.clone(), subst(c)))
            .collect();
        let postfix = Postfix::start(&root.join("postfix"), port, config);
        MailStack {
            postfix,
            dovecot,
            agent,
            killed_agents: Vec::new(),
            http_port,
            admin_layout: builder.admin_layout,
            _base_tmpfs: base_tmpfs,
            dir,
        }
    }

    /// `kill -9` the agent (no shutdown, no cleanup, sockets left behind) and reap it. Its log
    /// stays part of [`MailStack::agent_log`].
    pub fn kill_agent(&mut self) {
        self.agent.kill();
    }

    /// Start the agent again on the same sockets and ports after [`MailStack::kill_agent`],
    /// waiting until it is ready.
    pub fn restart_agent(&mut self) {
        assert!(
            self.agent.pid() == 0,
            "restart_agent: the agent still runs (kill_agent first)"
        );
        let restarted = self
            .paths()
            .start_agent(self.http_port, self.postfix.port());
        self.killed_agents
            .push(std::mem::replace(&mut self.agent, restarted));
    }

    /// Whether the agent runs now.
    pub fn agent_running(&mut self) -> bool {
        self.agent.running()
    }

    /// The agent's pid (0 while killed).
    pub fn agent_pid(&self) -> u32 {
        self.agent.pid()
    }

    fn paths(&self) -> StackPaths {
        StackPaths {
            root: self.dir.path().to_path_buf(),
            admin_layout: self.admin_layout,
        }
    }

    /// The stack's private directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's `--resources` directory (edit it to change the directory live).
    pub fn resources_dir(&self) -> PathBuf {
        self.dir.path().join("resources")
    }

    /// The mailbox base.
    pub fn base(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// The directory compiled from the current resources (as the agent compiles it), with the
    /// mailbox base of this stack.
    pub fn directory(&self) -> Directory {
        self.paths().directory()
    }

    /// After editing the resources: prepare parents of new mailboxes and tell Dovecot about them.
    pub fn resources_changed(&self) {
        let paths = self.paths();
        let directory = paths.directory();
        paths.prepare_layout(&directory);
        self.dovecot.set_users(&paths.dovecot_users(&directory));
    }

    /// Postfix.
    pub fn postfix(&self) -> &Postfix {
        &self.postfix
    }

    /// Dovecot.
    pub fn dovecot(&self) -> &Dovecot {
        &self.dovecot
    }

    /// The agent's log so far (of every instance, oldest first, when it was restarted).
    pub fn agent_log(&self) -> String {
        let mut log = String::new();
        for killed in &self.killed_agents {
            log.push_str(&killed.log());
            log.push_str("==== killed with SIGKILL, restarted\n");
        }
        log.push_str(&self.agent.log());
        log
    }

    /// `GET path` on the agent's HTTP port: (status, body).
    pub fn agent_http(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }

    /// The smtpd port.
    pub fn smtp_port(&self) -> u16 {
        self.postfix.port()
    }

    /// A new SMTP session with Postfix.
    pub fn smtp(&self) -> mail::Smtp {
        mail::Smtp::connect(self.postfix.port())
    }

    /// One SMTP transaction to Postfix (MAIL without parameters).
    pub fn send(&self, from: &str, rcpts: &[&str], message: &[u8]) -> Sent {
        mail::send(self.postfix.port(), from, "", rcpts, message)
    }

    /// Absolute path and format of the mailbox that receives `address` (after extension
    /// stripping and catch-all, not alias expansion).
    pub fn mailbox(&self, address: &str) -> (PathBuf, MailboxFormat) {
        let directory = self.directory();
        let found = directory
            .find_mailbox(address)
            .unwrap_or_else(|| panic!("{address} has no mailbox in the directory"));
        (self.base().join(&found.entry.path), found.entry.format)
    }

    /// Messages stored in `address`'s mailbox, as on disk (mbox: split at From_ lines, the From_
    /// line and the trailing blank line removed; Maildir: new/ then cur/, sorted by name).
    pub fn stored(&self, address: &str) -> Vec<Vec<u8>> {
        let (path, format) = self.mailbox(address);
        stored_messages(&path, format)
    }

    /// Wait until `address`'s mailbox holds at least `n` messages and return them.
    pub fn wait_for_messages(&self, address: &str, n: usize) -> Vec<Vec<u8>> {
        let deadline = std::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let stored = self.stored(address);
            if stored.len() >= n {
                return stored;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{address}: {} message(s) on disk after {DELIVERY_TIMEOUT:?}, wanted {n}\nqueue:\n{}\nagent log:\n{}",
                    stored.len(),
                    self.postfix.queue(),
                    self.agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every message of `address`'s INBOX read back through Dovecot IMAP.
    pub fn imap(&self, address: &str) -> Fetched {
        self.dovecot.fetch(address)
    }

    /// Send `sent` from `sender` to the one recipient `rcpt`, require Postfix to accept it, and
    /// check the copy in `mailbox` with [`assert_delivered`](Self::assert_delivered).
    pub fn send_and_assert_delivered(
        &self,
        sender: &str,
        rcpt: &str,
        mailbox: &str,
        delivered_to: &str,
        sent: &[u8],
    ) -> Vec<u8> {
        self.send(sender, &[rcpt], sent).assert_accepted();
        self.assert_delivered(mailbox, sender, rcpt, delivered_to, sent)
    }

    /// Check one delivered copy end to end and return it as stored: wait until `mailbox` holds a
    /// copy of `sent` (the bytes the client sent, after the headers the delivery added; mbox
    /// copies with virtual(8)'s `>From ` quoting), check its Return-Path, X-Original-To and
    /// Delivered-To (in that order, first), then fetch the mailbox through Dovecot IMAP and find
    /// the same copy byte for byte (with CRLF line ends, as IMAP serves it).
    pub fn assert_delivered(
        &self,
        mailbox: &str,
        sender: &str,
        original: &str,
        delivered_to: &str,
        sent: &[u8],
    ) -> Vec<u8> {
        let (_, format) = self.mailbox(mailbox);
        let copy = wait_for_copy(
            mailbox,
            format,
            sent,
            DELIVERY_TIMEOUT,
            || self.stored(mailbox),
            || format!("queue:\n{}", self.postfix.queue()),
        );
        let d = mail::delivery(&copy);
        assert_eq!(
            d.return_path,
            format!("<{sender}>"),
            "Return-Path in {mailbox}"
        );
        assert_eq!(d.x_original_to, original, "X-Original-To in {mailbox}");
        assert_eq!(d.delivered_to, delivered_to, "Delivered-To in {mailbox}");
        let received = d.received.as_deref().unwrap_or("");
        assert!(
            received.contains("by mx.virtmail.test (Postfix)"),
            "Received by our Postfix right after the delivery headers: {received:?}"
        );
        let fetched = self.imap(mailbox);
        let want = mail::crlf(&copy);
        assert!(
            fetched.messages.contains(&want),
            "{mailbox}: IMAP BODY.PEEK[] differs from the stored copy\nstored (CRLF):\n{}\nfetched:\n{}",
            String::from_utf8_lossy(&want[..want.len().min(2000)]),
            fetched
                .messages
                .iter()
                .map(|m| String::from_utf8_lossy(&m[..m.len().min(2000)]).into_owned())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        copy
    }

    /// Wait until Postfix's queue is empty.
    pub fn wait_queue_empty(&self) {
        wait_for("an empty Postfix queue", DELIVERY_TIMEOUT, || {
            self.postfix.queue_is_empty().then_some(())
        });
    }
}

/// Paths inside a stack's directory.
#[derive(Debug)]
struct StackPaths {
    root: PathBuf,
    admin_layout: bool,
}

impl StackPaths {
    fn lmtp(&self) -> PathBuf {
        self.root.join("sock/lmtp.sock")
    }

    fn socketmap(&self) -> PathBuf {
        self.root.join("sock/socketmap.sock")
    }

    /// `virtmail-agent serve` for this stack, started and waited for (sockets, `/readyz`).
    fn start_agent(&self, http_port: u16, smtp_port: u16) -> Process {
        let mut command = serve_command(
            &binary("virtmail-agent"),
            &self.root.join("resources"),
            &self.root.join("mail"),
            &self.lmtp(),
            &self.socketmap(),
            &format!("127.0.0.1:{http_port}"),
        );
        command
            .arg("--hostname")
            .arg("agent.virtmail.test")
            .arg("--submit-to")
            .arg(format!("127.0.0.1:{smtp_port}"));
        let mut agent = Process::start("virtmail-agent", command);
        wait_for("the agent's sockets", Duration::from_secs(60), || {
            assert!(agent.running(), "the agent exited:\n{}", agent.log());
            (std::os::unix::net::UnixStream::connect(self.lmtp()).is_ok()
                && std::os::unix::net::UnixStream::connect(self.socketmap()).is_ok())
            .then_some(())
        });
        wait_for("agent /readyz", Duration::from_secs(10), || {
            http_get(http_port, "/readyz")
                .filter(|(code, _)| *code == 200)
                .map(|_| ())
        });
        agent
    }

    /// The MailServer's `outbound.relayHost`, if it declares one.
    fn relay_host(&self) -> Option<String> {
        let resources = manifests::load_dir(&self.root.join("resources"))
            .unwrap_or_else(|e| panic!("resources: {e}"));
        let server = resources.server(None).expect("a MailServer");
        server.spec.outbound.as_ref().map(|o| o.relay_host.clone())
    }

    fn directory(&self) -> Directory {
        let resources = manifests::load_dir(&self.root.join("resources"))
            .unwrap_or_else(|e| panic!("resources: {e}"));
        let server = resources.server(None).expect("a MailServer");
        let mut compiled = compile(resources.inputs(&server));
        compiled.directory.settings.mailbox_base = self.root.join("mail").display().to_string();
        compiled.directory
    }

    /// What an administrator prepares on the volume (VIRTUAL_README's `mkdir`/`chmod`): every parent
    /// directory of a mailbox, root-owned, mode 1777 (sticky, like /var/mail) so that the
    /// recipient can create its Maildir or mbox and the mbox's `.lock`. The mailboxes themselves
    /// are created by the agent, as the recipient.
    fn prepare_layout(&self, directory: &Directory) {
        if !self.admin_layout {
            return;
        }
        let base = self.root.join("mail");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        for entry in directory.mailboxes.values() {
            let path = base.join(entry.path.trim_end_matches('/'));
            let mut parent = path.parent();
            while let Some(p) = parent {
                if p == base || !p.starts_with(&base) {
                    break;
                }
                if !p.exists() {
                    std::fs::create_dir_all(p).expect("mkdir mailbox parent");
                }
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o1777));
                parent = p.parent();
            }
        }
    }

    fn dovecot_users(&self, directory: &Directory) -> Vec<dovecot::User> {
        let base = self.root.join("mail");
        directory
            .mailboxes
            .iter()
            .filter(|(_, e)| e.uid >= 100)
            .map(|(address, entry)| dovecot::User {
                name: address.clone(),
                uid: entry.uid,
                gid: entry.gid,
                format: match entry.format {
                    MailboxFormat::Maildir => dovecot::Format::Maildir,
                    MailboxFormat::Mbox => dovecot::Format::Mbox,
                },
                path: base.join(entry.path.trim_end_matches('/')),
            })
            .collect()
    }
}

/// Poll `stored` (what `mailbox` holds on disk) until one message, after the headers the
/// delivery prepended, is `sent` as `format` stores it (mbox: with virtual(8)'s `>From `
/// quoting; Maildir: LF line ends); that copy as stored. After `timeout`, panic naming
/// `mailbox`, showing what is stored and `context` (the queue).
pub fn wait_for_copy(
    mailbox: &str,
    format: MailboxFormat,
    sent: &[u8],
    timeout: Duration,
    stored: impl Fn() -> Vec<Vec<u8>>,
    context: impl Fn() -> String,
) -> Vec<u8> {
    let expected = match format {
        MailboxFormat::Mbox => mail::mboxo_quoted(sent),
        MailboxFormat::Maildir => mail::lf(sent),
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let stored = stored();
        if let Some(copy) = stored.iter().find(|m| mail::delivery(m).rest == expected) {
            return copy.clone();
        }
        if std::time::Instant::now() > deadline {
            let shown: Vec<String> = stored
                .iter()
                .map(|m| String::from_utf8_lossy(&m[..m.len().min(2000)]).into_owned())
                .collect();
            panic!(
                "{mailbox}: no stored copy equals what was sent after {timeout:?}\nexpected after the delivery headers:\n{}\nstored:\n{}\n{}",
                String::from_utf8_lossy(&expected[..expected.len().min(2000)]),
                shown.join("\n----\n"),
                context()
            );
        }
        // Each probe re-reads the whole mailbox (20 MB in one test): not too often.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Messages in a mailbox on disk. mbox: split at From_ lines (which follow a blank line), the
/// From_ line and the separating blank line removed. Maildir: files of new/ and cur/ sorted by
/// name (delivery time first).
pub fn stored_messages(path: &Path, format: MailboxFormat) -> Vec<Vec<u8>> {
    match format {
        MailboxFormat::Mbox => match std::fs::read(path) {
            Ok(bytes) => split_mbox(&bytes),
            Err(_) => Vec::new(),
        },
        MailboxFormat::Maildir => {
            let mut files: Vec<PathBuf> = ["new", "cur"]
                .iter()
                .flat_map(|sub| std::fs::read_dir(path.join(sub)).into_iter().flatten())
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            files.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
            files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
        }
    }
}

/// Split an mbox into messages (without From_ lines and the blank line after each message).
pub fn split_mbox(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    if bytes.starts_with(b"From ") {
        starts.push(0);
    }
    let mut i = 0;
    while let Some(pos) = mail::find(&bytes[i..], b"\n\nFrom ") {
        starts.push(i + pos + 2);
        i += pos + 2;
    }
    let mut out = Vec::new();
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(bytes.len());
        let chunk = &bytes[start..end];
        let body_start = chunk
            .iter()
            .position(|&b| b == b'\n')
            .map_or(chunk.len(), |p| p + 1);
        let mut message = chunk[body_start..].to_vec();
        // The blank line that ends every message.
        if message.ends_with(b"\n\n") {
            message.pop();
        }
        out.push(message);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_split_removes_from_lines_and_separators() {
        let mbox = b"From a@b  Wed Nov 25 10:00:00 2026\nX: 1\n\nbody\n>From x\n\nFrom c@d  Wed Nov 25 10:00:01 2026\nY: 2\n\ntwo\n\n";
        let messages = split_mbox(mbox);
        assert_eq!(
            messages,
            vec![
                b"X: 1\n\nbody\n>From x\n".to_vec(),
                b"Y: 2\n\ntwo\n".to_vec()
            ]
        );
    }
}
