//! The mail side of a MailServer running out of cluster, every part real: `virtmail-agent serve`
//! in cluster mode (watching the directory the operator publishes, with the kubeconfig it is
//! given), a private Postfix configured by `virtmail-operator postfix-profile` and wired to the
//! agent's sockets, and (optionally) a private Dovecot serving the same mailbox base over IMAP
//! with one user per Mailbox read from the API. Everything it started is stopped on drop.
//!
//! The control plane and the operator are the caller's ([`crate::cluster`], [`crate::operator`]).
//!
//! ```no_run
//! use virtmail_tests::e2e::{ClusterMail, Options};
//! let cluster = virtmail_tests::cluster::cluster();
//! let mail = ClusterMail::start(cluster, "ns", "mail", Options::new(cluster.kubeconfig("agent")));
//! let sent = mail.send("s@remote.test", &["test2@virtual2.test"], b"Subject: x\n\nhi\n");
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use virtmail_crds::resources::MailboxFormat;

use crate::cluster::{Cluster, run};
use crate::dovecot::{self, Dovecot};
use crate::mail::{self, Sent};
use crate::mailstack::stored_messages;
use crate::postfix::{self, Postfix, free_port};
use crate::process::{Process, binary, wait_for};

/// How long to wait for the agent to come up, or mail to land.
pub const WAIT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kubeconfig the agent runs with (its own identity).
    pub agent_kubeconfig: PathBuf,
    /// The agent binary (default: the debug build).
    pub agent_binary: Option<PathBuf>,
    /// The operator binary that prints the Postfix profile (default: the debug build).
    pub operator_binary: Option<PathBuf>,
    /// Whether to start Dovecot (IMAP) too.
    pub dovecot: bool,
    /// main.cf settings on top of the profile and the test-local settings.
    pub postfix_params: Vec<(String, String)>,
}

impl Options {
    /// Debug agent with `agent_kubeconfig`, Dovecot on.
    pub fn new(agent_kubeconfig: &Path) -> Options {
        Options {
            agent_kubeconfig: agent_kubeconfig.to_path_buf(),
            agent_binary: None,
            operator_binary: None,
            dovecot: true,
            postfix_params: Vec::new(),
        }
    }
}

/// One Mailbox as the API shows it, with where it lies on this machine's volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxOnDisk {
    /// metadata.name
    pub name: String,
    /// spec.address
    pub address: String,
    /// spec.uid
    pub uid: u32,
    /// spec.gid (the uid when unset)
    pub gid: u32,
    /// Maildir or mbox (from the trailing slash of status.path).
    pub format: MailboxFormat,
    /// Absolute path below this machine's mailbox base.
    pub path: PathBuf,
}

/// The running mail side. Field order = drop order: Postfix first (stops handing mail to the
/// agent), then Dovecot, then the agent.
#[derive(Debug)]
pub struct ClusterMail {
    postfix: Postfix,
    dovecot: Option<Dovecot>,
    agent: Process,
    cluster: &'static Cluster,
    namespace: String,
    server: String,
    dir: tempfile::TempDir,
}

impl ClusterMail {
    /// Start the agent for MailServer `server` in `namespace` (it must be published: the agent's
    /// RBAC comes from the operator), wait until it answers on both sockets, then Dovecot and
    /// Postfix.
    pub fn start(
        cluster: &'static Cluster,
        namespace: &str,
        server: &str,
        options: Options,
    ) -> ClusterMail {
        postfix::require_postfix();
        if options.dovecot {
            dovecot::require_dovecot(false);
        }
        let dir = tempfile::Builder::new()
            .prefix("virtmail-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        // Postfix's user must reach the sockets, recipients the base.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (sub, mode) in [("sock", 0o755), ("vhosts", 0o1777)] {
            std::fs::create_dir(root.join(sub)).expect("mkdir");
            // The base as an administrator prepares it for VIRTUAL_README's Example 1 (mbox files and
            // their dotlocks directly in it): sticky and writable, like /var/mail.
            std::fs::set_permissions(root.join(sub), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        }
        let lmtp = root.join("sock/lmtp.sock");
        let socketmap = root.join("sock/socketmap.sock");
        let agent_binary = options
            .agent_binary
            .clone()
            .unwrap_or_else(|| binary("virtmail-agent"));
        let mut command = Command::new(agent_binary);
        command
            .env("KUBECONFIG", &options.agent_kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .args(["serve", "--namespace", namespace, "--server", server])
            .args(["--http", "127.0.0.1:0", "--reprovision-interval", "1s"])
            .args(["--hostname", "agent.virtmail.test"])
            .arg("--mailbox-base")
            .arg(root.join("vhosts"))
            .arg("--lmtp")
            .arg(format!("unix:{}", lmtp.display()))
            .arg("--socketmap")
            .arg(format!("unix:{}", socketmap.display()));
        let mut agent = Process::start("virtmail-agent", command);
        wait_for("the agent's sockets", WAIT, || {
            assert!(agent.running(), "the agent exited:\n{}", agent.log());
            (std::os::unix::net::UnixStream::connect(&lmtp).is_ok()
                && std::os::unix::net::UnixStream::connect(&socketmap).is_ok())
            .then_some(())
        });

        let spec = server_spec(cluster, namespace, server);
        let dovecot = options.dovecot.then(|| {
            let users = dovecot_users(&published_mailboxes(
                cluster,
                namespace,
                &spec,
                &root.join("vhosts"),
            ));
            Dovecot::start(&root.join("dovecot"), &users, false)
        });
        let port = free_port();
        let size_limit = spec["mailboxSizeLimit"].as_u64().unwrap_or(51_200_000);
        let delimiter = spec["recipientDelimiter"].as_str().unwrap_or("+");
        let mut config = match &options.operator_binary {
            None => postfix::profile(&lmtp, &socketmap, size_limit, delimiter),
            Some(operator) => {
                let text = run(Command::new(operator)
                    .arg("postfix-profile")
                    .arg("--lmtp-socket")
                    .arg(&lmtp)
                    .arg("--socketmap-socket")
                    .arg(&socketmap)
                    .arg("--mailbox-size-limit")
                    .arg(size_limit.to_string())
                    .arg("--recipient-delimiter")
                    .arg(delimiter))
                .unwrap_or_else(|e| panic!("postfix-profile: {e}"));
                postfix::parse_profile(&text)
            }
        };
        postfix::test_local(&mut config, &root.join("postfix"), port);
        for (name, value) in &options.postfix_params {
            config.set(name, value.clone());
        }
        let postfix = Postfix::start(&root.join("postfix"), port, config);
        ClusterMail {
            postfix,
            dovecot,
            agent,
            cluster,
            namespace: namespace.to_owned(),
            server: server.to_owned(),
            dir,
        }
    }

    /// The private directory (sockets, volume, Postfix, Dovecot).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The mailbox base on this machine (mode 1777).
    pub fn base(&self) -> PathBuf {
        self.root().join("vhosts")
    }

    /// The agent's LMTP socket.
    pub fn lmtp_socket(&self) -> PathBuf {
        self.root().join("sock/lmtp.sock")
    }

    /// The agent's socketmap socket.
    pub fn socketmap_socket(&self) -> PathBuf {
        self.root().join("sock/socketmap.sock")
    }

    /// Postfix.
    pub fn postfix(&self) -> &Postfix {
        &self.postfix
    }

    /// Dovecot; panics if started without it.
    pub fn dovecot(&self) -> &Dovecot {
        self.dovecot.as_ref().expect("started with Dovecot")
    }

    /// Dovecot's home of `user` (its indexes), which the user's uid owns.
    pub fn dovecot_home(&self, user: &str) -> PathBuf {
        self.root().join("dovecot/home").join(user)
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        self.agent.log()
    }

    /// Whether the agent still runs.
    pub fn agent_running(&mut self) -> bool {
        self.agent.running()
    }

    /// Postfix's smtpd port on 127.0.0.1.
    pub fn smtp_port(&self) -> u16 {
        self.postfix.port()
    }

    /// One SMTP transaction through Postfix's smtpd.
    pub fn send(&self, from: &str, rcpts: &[&str], message: &[u8]) -> Sent {
        mail::send(self.postfix.port(), from, "", rcpts, message)
    }

    /// The reply of Postfix's smtpd to `RCPT TO:<rcpt>` (after `MAIL FROM:<from>`), on a new
    /// session.
    pub fn rcpt(&self, from: &str, rcpt: &str) -> mail::Reply {
        let mut smtp = mail::Smtp::connect(self.postfix.port());
        let reply = smtp.mail(from, "");
        assert_eq!(reply.code, 250, "MAIL: {reply}");
        let reply = smtp.rcpt(rcpt);
        smtp.quit();
        reply
    }

    /// Every Mailbox of the namespace that the operator published (status.path set), with its
    /// place on this machine's volume. Mailboxes without an explicit uid are left out.
    pub fn mailboxes(&self) -> Vec<MailboxOnDisk> {
        let spec = server_spec(self.cluster, &self.namespace, &self.server);
        published_mailboxes(self.cluster, &self.namespace, &spec, &self.base())
    }

    /// The published Mailbox with `address`; panics if there is none.
    pub fn mailbox(&self, address: &str) -> MailboxOnDisk {
        self.mailboxes()
            .into_iter()
            .find(|m| m.address == address)
            .unwrap_or_else(|| panic!("no published Mailbox with address {address}"))
    }

    /// Tell Dovecot about the Mailboxes as the API shows them now.
    pub fn refresh_dovecot_users(&self) {
        self.dovecot().set_users(&dovecot_users(&self.mailboxes()));
    }

    /// Messages stored in the mailbox at `mailbox` (see [`stored_messages`]).
    pub fn stored(&self, mailbox: &MailboxOnDisk) -> Vec<Vec<u8>> {
        stored_messages(&mailbox.path, mailbox.format)
    }
}

impl Drop for ClusterMail {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== Mailboxes of {}:\n{}",
                self.namespace,
                run(self.cluster.kubectl().args([
                    "-n",
                    &self.namespace,
                    "get",
                    "virtmail,configmaps,events",
                    "-o",
                    "wide",
                    "--request-timeout=5s",
                ]))
                .unwrap_or_else(|e| e.to_string())
            );
        }
    }
}

/// The MailServer's spec.
fn server_spec(cluster: &Cluster, namespace: &str, server: &str) -> Value {
    match run(cluster
        .kubectl()
        .args(["-n", namespace, "get", "mailserver", server, "-o", "json"]))
    {
        Ok(out) => serde_json::from_str::<Value>(&out).expect("JSON")["spec"].clone(),
        Err(e) => panic!("MailServer {namespace}/{server}: {e}"),
    }
}

/// The published Mailboxes (status.path set, explicit uid) of `namespace`, placed below `base`.
fn published_mailboxes(
    cluster: &Cluster,
    namespace: &str,
    server_spec: &Value,
    base: &Path,
) -> Vec<MailboxOnDisk> {
    let server_base = server_spec["mailboxBase"]
        .as_str()
        .unwrap_or("/var/mail/vhosts")
        .trim_end_matches('/')
        .to_owned();
    let out = run(cluster
        .kubectl()
        .args(["-n", namespace, "get", "mailboxes", "-o", "json"]))
    .unwrap_or_else(|e| panic!("list Mailboxes: {e}"));
    let list: Value = serde_json::from_str(&out).expect("JSON");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let uid = m["spec"]["uid"].as_u64()? as u32;
            let gid = m["spec"]["gid"].as_u64().map_or(uid, |g| g as u32);
            let path = m["status"]["path"].as_str()?;
            let relative = path.strip_prefix(&server_base)?.trim_start_matches('/');
            let format = if relative.ends_with('/') {
                MailboxFormat::Maildir
            } else {
                MailboxFormat::Mbox
            };
            Some(MailboxOnDisk {
                name: m["metadata"]["name"].as_str()?.to_owned(),
                address: m["spec"]["address"].as_str()?.to_owned(),
                uid,
                gid,
                format,
                path: base.join(relative.trim_end_matches('/')),
            })
        })
        .collect()
}

fn dovecot_users(mailboxes: &[MailboxOnDisk]) -> Vec<dovecot::User> {
    mailboxes
        .iter()
        .map(|m| dovecot::User {
            name: m.address.clone(),
            uid: m.uid,
            gid: m.gid,
            format: match m.format {
                MailboxFormat::Maildir => dovecot::Format::Maildir,
                MailboxFormat::Mbox => dovecot::Format::Mbox,
            },
            path: m.path.clone(),
        })
        .collect()
}
