//! The agent as a real process in cluster mode.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::cluster;
use crate::process::{Process, binary};

/// A kubeconfig that acts as `user` through the admin's impersonation right, so the agent runs
/// with exactly the permissions RBAC gives that service account.
pub fn impersonating_kubeconfig(dir: &Path, user: &str, namespace: &str) -> PathBuf {
    let admin = std::fs::read_to_string(&cluster().admin_kubeconfig).expect("admin kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig yaml");
    let users = config["users"].as_sequence_mut().expect("users");
    for entry in users {
        entry["user"]["as"] = user.into();
        entry["user"]["as-groups"] = serde_yaml::Value::Sequence(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}").into(),
            "system:authenticated".into(),
        ]);
    }
    let path = dir.join("agent.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).expect("yaml")).expect("write kubeconfig");
    path
}

/// Sockets and volume of one agent.
#[derive(Debug)]
pub struct Agent {
    /// The process.
    pub process: Process,
    /// Mailbox base (mode 1777 as for VIRTUAL_README's Example 1, unless started with another).
    pub base: PathBuf,
    /// LMTP socket.
    pub lmtp: PathBuf,
    /// socketmap socket.
    pub socketmap: PathBuf,
    /// Port of `/healthz`, `/readyz`, `/metrics` on 127.0.0.1.
    pub http_port: u16,
    _work: tempfile::TempDir,
}

/// Start `virtmail-agent serve` in cluster mode for MailServer `server` in `namespace`, as the
/// ServiceAccount `<server>-agent` the operator creates (through impersonation, so RBAC applies).
pub fn start(namespace: &str, server: &str) -> Agent {
    start_with_base_mode(namespace, server, 0o1777)
}

/// [`start`] on a base of mode `base_mode` (at 0755, the owner of an mbox directly in the base
/// cannot create its dotlock).
pub fn start_with_base_mode(namespace: &str, server: &str, base_mode: u32) -> Agent {
    launch(base_mode, |command, work| {
        let kubeconfig = impersonating_kubeconfig(
            work,
            &format!("system:serviceaccount:{namespace}:{server}-agent"),
            namespace,
        );
        command
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .args(["--namespace", namespace, "--server", server]);
    })
}

/// Start `virtmail-agent serve` in mounted-files mode on the volume `dir` for MailServer
/// `server`, with no API credentials at all (the mode is for pods without API access).
pub fn start_mounted(dir: &Path, server: &str) -> Agent {
    launch(0o1777, |command, work| {
        command
            .env_remove("KUBECONFIG")
            .env("HOME", work)
            .env("RUST_LOG", "info")
            .arg("--directory-dir")
            .arg(dir)
            .args(["--server", server, "--directory-poll-interval", "200ms"]);
    })
}

/// `serve` on a fresh base of mode `base_mode` and sockets in a scratch directory; `source` adds
/// the directory source's flags and environment.
fn launch(base_mode: u32, source: impl FnOnce(&mut Command, &Path)) -> Agent {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().expect("tempdir");
    let base = work.path().join("vhosts");
    std::fs::create_dir(&base).expect("base");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(base_mode)).expect("chmod");
    let lmtp = work.path().join("lmtp.sock");
    let socketmap = work.path().join("socketmap.sock");
    let http_port = crate::postfix::free_port();
    let mut command = Command::new(binary("virtmail-agent"));
    command.arg("serve");
    source(&mut command, work.path());
    command
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--reprovision-interval", "1s"])
        .arg("--mailbox-base")
        .arg(&base)
        .arg("--lmtp")
        .arg(format!("unix:{}", lmtp.display()))
        .arg("--socketmap")
        .arg(format!("unix:{}", socketmap.display()));
    let process = Process::start("agent", command);
    Agent {
        process,
        base,
        lmtp,
        socketmap,
        http_port,
        _work: work,
    }
}
