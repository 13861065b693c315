//! A delivery world for the agent's engine and CLI tests (run as root, real uids/gids, real
//! files): a mailbox base, a sentinel directory outside it, the directory the engine reads, and
//! the `virtmail-agent deliver` command on it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use virtmail_crds::directory::{Deferral, Directory, Domain, MailboxEntry, Settings, Table};
use virtmail_crds::resources::{LockMethod, MailboxFormat};

use crate::fixtures::{mail_domain, mail_server, mailbox, stream};
use crate::process::output_with_input;
use crate::serve::agent_binary;

/// The test recipient's uid.
pub const UID: u32 = 5001;
/// The test recipient's gid.
pub const GID: u32 = 5001;
/// Another user's uid.
pub const OTHER_UID: u32 = 5002;
/// Another user's gid.
pub const OTHER_GID: u32 = 5002;
/// The world's one domain.
pub const DOMAIN: &str = "example.test";

/// `binary deliver` reading manifests from `resources` and delivering below `base`; callers
/// add the sender and recipients.
pub fn deliver_command(binary: &Path, resources: &Path, base: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("deliver")
        .arg("--resources")
        .arg(resources)
        .arg("--mailbox-base")
        .arg(base);
    command
}

/// A directory for server `server` on the mailbox base `base` with the domain [`DOMAIN`] and no
/// mailboxes yet; mbox locks fcntl and dotlock.
pub fn directory(server: &str, base: &Path, mailbox_size_limit: u64) -> Directory {
    let domain = Domain {
        postmaster: format!("postmaster@{DOMAIN}"),
        catch_all: None,
        object: "example".into(),
    };
    Directory {
        settings: Settings {
            server: server.into(),
            mailbox_base: base.display().to_string(),
            minimum_uid: 100,
            mailbox_lock: vec![LockMethod::Fcntl, LockMethod::Dotlock],
            mailbox_size_limit,
            recipient_delimiter: "+".into(),
        },
        domains: [(DOMAIN.to_string(), domain)].into_iter().collect(),
        mailboxes: Table::new(),
        aliases: Table::new(),
    }
}

/// The entry of mailbox `address` at `path` (Maildir where it ends in `/`, else mbox), owned by
/// uid = gid = `owner`.
pub fn mailbox_entry(address: &str, path: &str, owner: u32) -> MailboxEntry {
    let format = if path.ends_with('/') {
        MailboxFormat::Maildir
    } else {
        MailboxFormat::Mbox
    };
    MailboxEntry {
        path: path.to_string(),
        format,
        uid: owner,
        gid: owner,
        quota: None,
        suspended: false,
        defer: None,
        object: address.split('@').next().unwrap().to_string(),
        autoreply: None,
    }
}

/// These tests need root (setfsuid, chown, mount). Not root is a failure, not a skip.
pub fn require_root() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "the delivery tests must run as root: they switch to real uids/gids ({UID}, {OTHER_UID}), \
         chown files and mount tmpfs"
    );
}

/// A temporary world with a mailbox base inside (`<tmp>/base`, 0755 root) and a sentinel
/// directory outside it (`<tmp>/outside`) that no delivery may touch.
#[derive(Debug)]
pub struct World {
    /// The temporary directory holding it all.
    pub dir: tempfile::TempDir,
    /// The mailbox base.
    pub base: PathBuf,
    /// The sentinel directory outside the base.
    pub outside: PathBuf,
    /// The directory deliveries look recipients up in (one domain, mailboxes added by tests).
    pub directory: Directory,
}

impl World {
    /// Create the world on disk (as root).
    pub fn create() -> World {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("virtmail-deliver-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let base = dir.path().join("base");
        let outside = dir.path().join("outside");
        fs::create_dir(&base).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        // World-writable so that a recipient *could* write there if containment failed.
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(outside.join("victim"), b"original\n").unwrap();
        fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o666)).unwrap();
        let directory = directory("mail", &base, 51_200_000);
        World {
            dir,
            base,
            outside,
            directory,
        }
    }

    /// Create `<base>/<rel>` owned by `uid:gid`, mode 0700 (a provisioned domain directory).
    pub fn mkdir(&self, rel: &str, uid: u32, gid: u32) -> PathBuf {
        let path = self.base.join(rel);
        fs::create_dir_all(&path).unwrap();
        chown(&path, uid, gid);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        path
    }

    /// The usual domain directory, owned by the test recipient.
    pub fn domain_dir(&self) -> PathBuf {
        self.mkdir(DOMAIN, UID, GID)
    }

    /// Add a mailbox entry owned by the test recipient.
    pub fn mailbox(&mut self, address: &str, path: &str) -> &mut MailboxEntry {
        self.directory
            .mailboxes
            .insert(address.to_string(), mailbox_entry(address, path, UID));
        self.directory.mailboxes.get_mut(address).unwrap()
    }

    /// Add a mailbox entry that defers every delivery (an invalid owner).
    pub fn deferring(&mut self, address: &str, path: &str) {
        self.mailbox(address, path).defer = Some(Box::new(Deferral {
            reason: virtmail_crds::Reason::InvalidOwner,
            message: "uid 0 is not allowed".into(),
        }));
    }

    /// Everything below `outside` is as created: the victim file unchanged, nothing added.
    pub fn assert_outside_untouched(&self) {
        assert_eq!(
            fs::read(self.outside.join("victim")).unwrap(),
            b"original\n"
        );
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec!["victim"],
            "something was created outside the base"
        );
    }

    /// Write manifests for the CLI: a MailServer, the domain with its postmaster, `mailboxes`.
    pub fn resources(&self, mailboxes: &[String]) -> PathBuf {
        self.resources_with("mailboxBase: /nonexistent/base", mailboxes)
    }

    /// Like [`World::resources`] with the MailServer's `spec` as given (a flow mapping's body).
    pub fn resources_with(&self, server_spec: &str, mailboxes: &[String]) -> PathBuf {
        let dir = self.dir.path().join("resources");
        fs::create_dir_all(&dir).unwrap();
        let postmaster = format!("postmaster@{DOMAIN}");
        let head = [
            mail_server("mail", server_spec),
            mail_domain("example", DOMAIN, &postmaster, UID, ""),
            mailbox("postmaster", &format!("address: {postmaster}")),
        ];
        let yaml = stream(head.iter().chain(mailboxes));
        fs::write(dir.join("resources.yaml"), yaml).unwrap();
        dir
    }

    /// Run `virtmail-agent deliver` with `--mailbox-base` pointing at this world's base.
    pub fn cli(&self, resources: &Path, args: &[&str], stdin: &[u8]) -> (String, String, i32) {
        self.cli_env(resources, args, stdin, &[])
    }

    /// [`World::cli`] with extra environment variables.
    pub fn cli_env(
        &self,
        resources: &Path,
        args: &[&str],
        stdin: &[u8],
        env: &[(&str, &str)],
    ) -> (String, String, i32) {
        let mut command = deliver_command(&agent_binary(), resources, &self.base);
        command.envs(env.iter().copied()).args(args);
        let output = output_with_input(&mut command, stdin);
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            output.status.code().unwrap_or(-1),
        )
    }
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// The files in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub const MESSAGE: &[u8] = b"From: a@origin.test\nSubject: test\n\nhello\n";

/// Dovecot's `imap` binary (Debian's dovecot-imapd).
pub const IMAP: &str = "/usr/lib/dovecot/imap";

/// Start Dovecot's `imap` pre-authenticated as the recipient (no daemon), with a private
/// configuration (`extra_config` appended) and `mail_location`, reading `commands` (then end of
/// input); stdout and stderr are piped. Returns the process and the path of its log.
pub fn spawn_imap(
    w: &World,
    extra_config: &str,
    mail_location: &str,
    home: &Path,
    commands: &str,
) -> (std::process::Child, PathBuf) {
    use std::os::unix::process::CommandExt as _;
    assert!(
        Path::new(IMAP).exists(),
        "{IMAP} is missing: install Debian's dovecot-imapd (scripts/install-deps.sh does)"
    );
    let dir = w.dir.path().join("dovecot");
    fs::create_dir_all(dir.join("run")).unwrap();
    let log = dir.join("dovecot.log");
    fs::write(&log, b"").unwrap();
    for path in [dir.join("run"), log.clone()] {
        chown(&path, UID, GID);
    }
    let config = dir.join("dovecot.conf");
    fs::write(
        &config,
        format!(
            "base_dir = {run}\nstate_dir = {run}\nlog_path = {log}\nssl = no\nprotocols =\n\
             mail_uid = {UID}\nmail_gid = {GID}\nfirst_valid_uid = 100\n{extra_config}",
            run = dir.join("run").display(),
            log = log.display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(IMAP)
        .arg("-c")
        .arg(&config)
        .arg("-o")
        .arg(format!("mail_location={mail_location}"))
        .env_clear()
        .env("USER", "recipient")
        .env("HOME", home)
        .uid(UID)
        .gid(GID)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dovecot imap");
    let mut stdin = child.stdin.take().expect("imap stdin");
    stdin.write_all(commands.as_bytes()).expect("imap commands");
    (child, log)
}
