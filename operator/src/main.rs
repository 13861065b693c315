//! `virtmail-operator`: reconciles MailServer, MailDomain, Mailbox and MailAlias resources.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use virtmail_operator::build::BuildConfig;
use virtmail_operator::lease::{self, LeaseConfig};
use virtmail_operator::metrics::Metrics;
use virtmail_operator::profile::{self, ProfileInput};
use virtmail_operator::watches::{self, RunOptions};

/// jemalloc instead of glibc's malloc: the operator replaces 100,000 cached Mailboxes one by one
/// and re-encodes directories of many MiB, and glibc kept the freed memory in its arenas. The
/// measurements behind the choice are in docs/PERFORMANCE.md; the options (one arena, freed pages
/// returned after a second) are compiled in from `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "virtmail-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the four CustomResourceDefinitions as YAML (or write one file each into --out).
    Crds {
        /// Write `mailservers.yaml`, `maildomains.yaml`, `mailboxes.yaml`, `mailaliases.yaml` here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write Helm chart templates (guarded by `crds.install`, kept on uninstall).
        #[arg(long)]
        helm: bool,
    },
    /// Print the Postfix profile (main.cf parameters, then master.cf `postconf -F` settings) that
    /// wires Postfix to an agent's sockets.
    PostfixProfile {
        /// The agent's LMTP socket path.
        #[arg(long, default_value = virtmail_crds::contract::LMTP_SOCKET)]
        lmtp_socket: String,
        /// The agent's socketmap socket path.
        #[arg(long, default_value = virtmail_crds::contract::SOCKETMAP_SOCKET)]
        socketmap_socket: String,
        /// MailServer `mailboxSizeLimit`.
        #[arg(long, default_value_t = 51_200_000)]
        mailbox_size_limit: u64,
        /// MailServer `recipientDelimiter`.
        #[arg(long, default_value = "+")]
        recipient_delimiter: String,
        /// MailServer `outbound.relayHost` (absent: no outbound mail).
        #[arg(long)]
        relay_host: Option<String>,
        /// Print only main.cf or only master.cf.
        #[arg(long, value_parser = ["main", "master"])]
        only: Option<String>,
    },
    /// Print the operator's RBAC (ClusterRole, ClusterRoleBinding, and a Role and RoleBinding for
    /// its leader-election Lease) for a service account.
    Rbac {
        /// Name of the roles and bindings.
        #[arg(long, default_value = "virtmail-operator")]
        name: String,
        /// Namespace of the operator's service account and Lease.
        #[arg(long, default_value = "virtmail-system")]
        namespace: String,
        /// The operator's service account.
        #[arg(long, default_value = "virtmail-operator")]
        service_account: String,
        /// Instead, write the rule lists for the Helm chart into this directory.
        #[arg(long)]
        helm_files: Option<PathBuf>,
    },
    /// Run the controller (kubeconfig from the environment, or the in-cluster config).
    Run {
        /// Watch only this namespace (default: every namespace).
        #[arg(long, env = "VIRTMAIL_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, default_value = "0.0.0.0:8080")]
        http: String,
        /// Namespace of the leader-election Lease (default: the pod's namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "virtmail-system")]
        lease_namespace: String,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "virtmail-operator")]
        lease_name: String,
        /// This replica's identity (default: the pod name or host name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Seconds a lease lasts without renewal.
        #[arg(long, default_value_t = 15)]
        lease_seconds: u64,
        /// Default agent image of the StatefulSets.
        #[arg(long, env = "VIRTMAIL_AGENT_IMAGE")]
        agent_image: Option<String>,
        /// Default Postfix image of the StatefulSets.
        #[arg(long, env = "VIRTMAIL_POSTFIX_IMAGE")]
        postfix_image: Option<String>,
        /// Average bytes per second of directory ConfigMaps written, over all servers, with
        /// bursts of 30 seconds' worth; 0 means unpaced. etcd keeps every revision until the
        /// apiserver compacts (every 5 minutes by default): at 1 MiB/s that history stays far
        /// below etcd's default 2 GiB quota even while 100,000 mailboxes are being created.
        #[arg(long, env = "VIRTMAIL_DIRECTORY_WRITE_RATE", default_value_t = 1024 * 1024)]
        directory_write_rate: u64,
        /// `text` or `json` logs.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Write a command's output to stdout. A reader that went away (`virtmail-operator crds | head`)
/// ends the command quietly and successfully, as for any Unix filter, instead of an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { out, helm } => {
            let crds = virtmail_crds::crds();
            let render = |crd| {
                if helm {
                    virtmail_crds::crd_helm_template(crd)
                } else {
                    virtmail_crds::crd_yaml(crd)
                }
            };
            match out {
                Some(dir) => {
                    for (crd, file) in crds.iter().zip(virtmail_crds::CRD_FILES) {
                        let path = dir.join(file);
                        std::fs::write(&path, render(crd))?;
                        eprintln!("wrote {}", path.display());
                    }
                }
                None => {
                    let text: String = crds.iter().map(render).collect();
                    print_out(&text)?;
                }
            }
            Ok(())
        }
        Command::PostfixProfile {
            lmtp_socket,
            socketmap_socket,
            mailbox_size_limit,
            recipient_delimiter,
            relay_host,
            only,
        } => {
            let profile = profile::profile(&ProfileInput {
                lmtp_socket,
                socketmap_socket,
                mailbox_size_limit,
                recipient_delimiter,
                extra: Default::default(),
                tls_dir: None,
                proxy_protocol_port: None,
                relay_host,
            });
            match only.as_deref() {
                Some("main") => print_out(&profile.main_cf()),
                Some(_) => print_out(&profile.master_cf()),
                None => print_out(&format!("{}{}", profile.main_cf(), profile.master_cf())),
            }
        }
        Command::Rbac {
            name,
            namespace,
            service_account,
            helm_files,
        } => {
            match helm_files {
                Some(dir) => {
                    for (file, text) in virtmail_operator::rbac::helm_files() {
                        std::fs::write(dir.join(file), text)?;
                        eprintln!("wrote {}", dir.join(file).display());
                    }
                }
                None => print_out(&virtmail_operator::rbac::yaml(
                    &name,
                    &namespace,
                    &service_account,
                ))?,
            }
            Ok(())
        }
        Command::Run {
            namespace,
            http,
            lease_namespace,
            lease_name,
            identity,
            lease_seconds,
            agent_image,
            postfix_image,
            directory_write_rate,
            log_format,
        } => {
            init_logs(&log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let client = kube::Client::try_default().await?;
                let metrics = Arc::new(Metrics::default());
                let listener = tokio::net::TcpListener::bind(&http).await?;
                tokio::spawn(virtmail_operator::http::serve(listener, metrics.clone()));
                // A standby is a healthy replica, so readiness does not wait for the Lease (a
                // rolling update's new pod could never become ready while the old one holds
                // it); leadership is the `virtmail_operator_leader` gauge.
                metrics.set_ready(true);
                // Pod names are unique; outside a pod the host name alone is not (two replicas
                // on one machine), so the pid is added.
                let identity = identity.unwrap_or_else(|| {
                    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "virtmail-operator".into());
                    format!("{host}-{}", std::process::id())
                });
                let lease = LeaseConfig {
                    namespace: lease_namespace,
                    name: lease_name,
                    identity: identity.clone(),
                    duration: Duration::from_secs(lease_seconds.max(3)),
                };
                tokio::select! {
                    acquired = lease::acquire(&client, &lease) => acquired?,
                    _ = shutdown_signal() => return Ok(()),
                }
                metrics.set_leader(true);
                let defaults = BuildConfig::default();
                let options = RunOptions {
                    namespace,
                    config: BuildConfig {
                        agent_image: agent_image.unwrap_or(defaults.agent_image),
                        postfix_image: postfix_image.unwrap_or(defaults.postfix_image),
                    },
                    instance: identity,
                    directory_write_rate,
                };
                let lost = lease::keep(client.clone(), lease.clone());
                tokio::select! {
                    _ = watches::run(client.clone(), options, metrics.clone(), shutdown_signal()) => {
                        metrics.set_leader(false);
                        if let Err(e) = lease::release(&client, &lease).await {
                            tracing::warn!(error = %e, "lease release; a standby takes over when it expires");
                        }
                        tracing::info!("stopped");
                        Ok(())
                    }
                    _ = lost => {
                        metrics.set_leader(false);
                        anyhow::bail!("lost the leader lease; exiting so a restart rejoins the election")
                    }
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    /// The options from `.cargo/config.toml` reached the allocator this binary links (without them
    /// the peak RSS at 100,000 Mailboxes was 267 MiB instead of 211 MiB).
    #[test]
    fn allocator_runs_with_the_workspace_options() {
        use tikv_jemalloc_ctl::opt;
        assert_eq!(opt::narenas::read().expect("opt.narenas"), 1);
        assert!(opt::background_thread::read().expect("opt.background_thread"));
    }
}
