//! `virtmail-agent`: the delivery agent beside Postfix.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use anyhow::Context as _;
use virtmail_agent::check::{CheckStatus, check};
use virtmail_agent::serve::{self, provisioning::StatusReport};
use virtmail_agent::server::{self, listen, listen::Addr, logging, logging::LogFormat};
use virtmail_agent::source::api::ApiSource;
use virtmail_agent::source::files::FileSource;
use virtmail_agent::source::mounted::MountedSource;

/// jemalloc instead of glibc's malloc, as in the operator: a directory version swap frees one
/// shard's part and a provisioning round its reports, and glibc kept such memory in the arena of
/// whichever thread freed it. The options (one arena, freed pages returned after a second) are
/// compiled in from `.cargo/config.toml`; docs/PERFORMANCE.md has the measurements.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "virtmail-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate resource manifests: print a summary and every diagnostic. Exit 0 when all objects
    /// are valid, 1 when any is invalid, 2 when the manifests cannot be read.
    Check {
        /// Directory (or file) of YAML manifests; `*.yaml` and `*.yml`, several documents each.
        #[arg(long)]
        resources: PathBuf,
        /// MailServer to compile for (default: the only one, or an empty default server).
        #[arg(long)]
        server: Option<String>,
    },
    /// Serve LMTP, socketmap and HTTP over the directory compiled from `--resources`, reloading
    /// it when the files change. Stops gracefully on SIGTERM/SIGINT.
    Serve(Box<ServeArgs>),
    /// Deliver one message from stdin (LF or CRLF line ends) to each RECIPIENT, like
    /// dovecot-lda. Prints `<recipient> <enhanced-status> <text>` per recipient; exits 0 when all
    /// were delivered, 75 when any was deferred, 67 when every failure is an unknown user, 69
    /// for other permanent failures.
    Deliver(Box<DeliverArgs>),
}

/// `deliver` arguments.
#[derive(Debug, clap::Args)]
struct DeliverArgs {
    /// Directory (or file) of YAML manifests.
    #[arg(long)]
    resources: PathBuf,
    /// MailServer to deliver for (default: the only one, or an empty default server).
    #[arg(long)]
    server: Option<String>,
    /// Override the MailServer's mailboxBase (running outside a pod).
    #[arg(long)]
    mailbox_base: Option<PathBuf>,
    /// Envelope sender; empty or `<>` for the null sender.
    #[arg(short = 'f', long = "from", default_value = "")]
    sender: String,
    /// Recipient before alias rewriting, for X-Original-To (default: each recipient).
    #[arg(long)]
    original_recipient: Option<String>,
    /// How long to wait for a busy mbox lock (deferred 4.2.0 after that).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    lock_timeout: Duration,
    /// The smallest uid delivered to, whatever the resources say (they cannot lower it).
    #[arg(long, default_value_t = virtmail_agent::fs::identity::DEFAULT_UID_FLOOR)]
    minimum_uid: u32,
    /// Recipients.
    #[arg(required = true)]
    recipients: Vec<String>,
}

/// Sysexits EX_TEMPFAIL: used when nothing could be attempted.
const EX_TEMPFAIL: u8 = 75;
/// Sysexits EX_USAGE: an argument that can never be delivered (an address with CR, LF or NUL).
const EX_USAGE: u8 = 64;

fn deliver(args: DeliverArgs) -> ExitCode {
    use std::io::Read as _;
    use virtmail_agent::deliver;

    let unbracket = |a: &str| {
        a.trim()
            .strip_prefix('<')
            .and_then(|a| a.strip_suffix('>'))
            .unwrap_or(a.trim())
            .to_string()
    };
    // Addresses go into headers and the From_ line: CR, LF or NUL are refused before anything
    // else (the same check LMTP makes).
    let named = std::iter::once(("sender", args.sender.as_str()))
        .chain(
            args.original_recipient
                .iter()
                .map(|r| ("original recipient", r.as_str())),
        )
        .chain(args.recipients.iter().map(|r| ("recipient", r.as_str())));
    for (role, address) in named {
        if let Some(problem) = deliver::address_problem(address) {
            eprintln!("error: the {role} {address:?} {problem}");
            return ExitCode::from(EX_USAGE);
        }
    }
    virtmail_agent::fs::identity::set_uid_floor(args.minimum_uid);
    let mut message = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut message) {
        eprintln!("error: cannot read the message: {error}");
        return ExitCode::from(EX_TEMPFAIL);
    }
    let message = deliver::crlf_to_lf(&message);
    let (_, mut compiled) =
        match virtmail_agent::check::load_and_compile(&args.resources, args.server.as_deref()) {
            Ok(loaded) => loaded,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(EX_TEMPFAIL);
            }
        };
    for diagnostic in &compiled.diagnostics {
        eprintln!(
            "warning: {} {}: {}",
            diagnostic.object, diagnostic.reason, diagnostic.message
        );
    }
    if let Some(base) = &args.mailbox_base {
        compiled.directory.settings.mailbox_base = base.display().to_string();
    }
    if let Err(error) = virtmail_agent::fs::identity::drop_supplementary_groups() {
        eprintln!("warning: cannot drop supplementary groups: {error}");
    }
    let options = deliver::Options {
        lock_timeout: args.lock_timeout,
        ..Default::default()
    };
    let sender = unbracket(&args.sender);
    let envelope = deliver::Envelope {
        sender,
        recipients: args
            .recipients
            .iter()
            .map(|r| deliver::Recipient {
                address: unbracket(r),
                original_recipient: args
                    .original_recipient
                    .as_deref()
                    .map(unbracket)
                    .unwrap_or_else(|| unbracket(r)),
            })
            .collect(),
    };
    let outcomes = deliver::deliver(&compiled.directory, &envelope, &message, &options);
    for outcome in &outcomes {
        if let Some(warning) = &outcome.status.warning {
            eprintln!("warning: {warning}");
        }
        println!("{} {}", outcome.recipient, outcome.status);
    }
    ExitCode::from(deliver::exit_code(outcomes.iter().map(|o| &o.status)))
}

/// `serve` arguments. ADDR is `unix:PATH` or `HOST:PORT`.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Standalone mode: directory (or file) of YAML manifests, watched for changes.
    #[arg(
        long,
        conflicts_with_all = ["namespace", "directory_dir"],
        required_unless_present_any = ["namespace", "directory_dir"]
    )]
    resources: Option<PathBuf>,
    /// Mounted-files mode: a projected volume of the directory ConfigMaps (head keys at the top,
    /// each shard's keys under `<shard name>/`), for pods without API access. The kubelet's
    /// `..data` swaps are followed; no Mailbox status is written.
    #[arg(long, conflicts_with = "namespace")]
    directory_dir: Option<PathBuf>,
    /// Mounted-files mode: how often the volume is examined for a new payload.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    directory_poll_interval: Duration,
    /// Cluster mode: namespace of the MailServer whose directory ConfigMaps are watched
    /// (kubeconfig from the environment, or the pod's service account). Needs --server.
    #[arg(long, requires = "server")]
    namespace: Option<String>,
    /// Re-examine the mailbox volume this often even without a new directory version.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    reprovision_interval: Duration,
    /// MailServer to serve (standalone default: the only one, or an empty default server).
    #[arg(long)]
    server: Option<String>,
    /// Override the MailServer's mailboxBase (running outside a pod).
    #[arg(long)]
    mailbox_base: Option<PathBuf>,
    /// LMTP listen address.
    #[arg(long)]
    lmtp: Addr,
    /// socketmap listen address.
    #[arg(long)]
    socketmap: Addr,
    /// HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long)]
    http: Addr,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Mode of created unix sockets (octal); Postfix's user must be able to connect.
    #[arg(long, default_value = "0666", value_parser = listen::parse_mode)]
    socket_mode: u32,
    /// Name in the LMTP greeting (default: the kernel host name).
    #[arg(long)]
    hostname: Option<String>,
    /// Concurrent LMTP sessions; more are refused with 421 4.3.2.
    #[arg(long, default_value_t = 100)]
    max_connections: usize,
    /// Recipients per transaction; more get 452 4.5.3.
    #[arg(long, default_value_t = 100)]
    max_recipients: usize,
    /// Message size limit in bytes (0: the MailServer's mailboxSizeLimit, else 50 MiB).
    #[arg(long, default_value_t = 0)]
    max_message_size: u64,
    /// LMTP command timeout.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    command_timeout: Duration,
    /// LMTP timeout for each chunk of message data.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    data_timeout: Duration,
    /// socketmap idle timeout (Postfix closes its idle connections after 10 s).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    socketmap_idle_timeout: Duration,
    /// How often `--resources` is examined for changes.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    reload_interval: Duration,
    /// How long shutdown waits for open LMTP sessions.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// The smallest uid delivered to or provisioned for. The operator sets it from the
    /// MailServer's minimumUid; the directory (a ConfigMap) cannot lower it.
    #[arg(long, default_value_t = virtmail_agent::fs::identity::DEFAULT_UID_FLOOR)]
    minimum_uid: u32,
    /// File where the Postfix container writes its queue's size (`<queue> <messages>` lines),
    /// exported as `virtmail_postfix_queue_messages`.
    #[arg(long)]
    postfix_queue_stats: Option<PathBuf>,
    /// Where automatic replies are handed to Postfix (`host:port` of its smtpd; in the pod, the
    /// Postfix container on loopback). Replies are sent only for Mailboxes whose autoreply the
    /// directory carries, i.e. when the MailServer declares `outbound`.
    #[arg(long, default_value = "127.0.0.1:25")]
    submit_to: String,
}

fn serve(args: ServeArgs) -> ExitCode {
    logging::init(args.log_format);
    virtmail_agent::fs::identity::set_uid_floor(args.minimum_uid);
    let hostname = args.hostname.unwrap_or_else(server::default_hostname);
    let config = serve::Config {
        lmtp: args.lmtp,
        socketmap: args.socketmap,
        http: args.http,
        socket_mode: args.socket_mode,
        hostname: hostname.clone(),
        postfix_queue_stats: args.postfix_queue_stats,
        mailbox_base: args.mailbox_base,
        reprovision_interval: args.reprovision_interval,
        status_report: None,
        limits: server::Limits {
            max_connections: args.max_connections,
            max_recipients: args.max_recipients,
            max_message_size: args.max_message_size,
            command_timeout: args.command_timeout,
            data_timeout: args.data_timeout,
            socketmap_idle: args.socketmap_idle_timeout,
            shutdown_grace: args.shutdown_grace,
            ..Default::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    // Deliveries switch only the file system identity, per thread; no inherited group may
    // leak into them.
    if let Err(error) = virtmail_agent::fs::identity::drop_supplementary_groups() {
        tracing::warn!("cannot drop supplementary groups: {error}");
    }
    let engine = Arc::new(virtmail_agent::deliver::Engine::new(
        virtmail_agent::deliver::Options {
            submission: Some(virtmail_agent::autoreply::Submission {
                address: args.submit_to,
                hostname,
                timeout: Duration::from_secs(60),
            }),
            ..Default::default()
        },
    ));
    let served = runtime.block_on(async {
        match (args.resources, args.directory_dir, args.namespace) {
            (Some(dir), _, _) => {
                let source = FileSource::new(dir, args.server, args.reload_interval);
                serve::run(source, config, engine).await
            }
            (None, Some(dir), _) => {
                let source = MountedSource {
                    dir,
                    server: args.server,
                    interval: args.directory_poll_interval,
                };
                serve::run(source, config, engine).await
            }
            (None, None, Some(namespace)) => {
                // kubeconfig from the environment, or the pod's service account.
                let client = kube::Client::try_default()
                    .await
                    .context("cannot reach the Kubernetes API (cluster mode)")?;
                let config = serve::Config {
                    status_report: Some(StatusReport {
                        client: client.clone(),
                        namespace: namespace.clone(),
                    }),
                    ..config
                };
                let source = ApiSource {
                    client,
                    namespace,
                    server: args.server.unwrap_or_default(),
                };
                serve::run(source, config, engine).await
            }
            (None, None, None) => {
                unreachable!("clap requires --resources, --directory-dir or --namespace")
            }
        }
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::from(1)
        }
    }
}

/// Parse durations like `300s`, `2m`, `500ms` or bare seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 30s, 500ms, 5m)");
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { resources, server } => {
            let report = check(&resources, server.as_deref());
            if report.status == CheckStatus::Unusable {
                eprint!("{}", report.text);
            } else {
                // A reader that went away (`check | head`) is not an error: the exit status
                // still says whether the objects are valid.
                let mut stdout = std::io::stdout().lock();
                let _ = stdout
                    .write_all(report.text.as_bytes())
                    .and_then(|()| stdout.flush());
            }
            ExitCode::from(report.status as u8)
        }
        Command::Serve(args) => serve(*args),
        Command::Deliver(args) => deliver(*args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtmail_crds::contract::{self, AgentArgs, AgentDirectory};

    /// The options from `.cargo/config.toml` reached the allocator this binary links.
    #[test]
    fn allocator_runs_with_the_workspace_options() {
        use tikv_jemalloc_ctl::opt;
        assert_eq!(opt::narenas::read().expect("opt.narenas"), 1);
        assert!(opt::background_thread::read().expect("opt.background_thread"));
    }

    /// The operator writes `AgentArgs` into the pod; this parser must take them as meant.
    #[test]
    fn the_pod_arguments_parse_as_the_contract_means_them() {
        for directory in [
            AgentDirectory::Api {
                namespace: "mail".into(),
            },
            AgentDirectory::Mounted {
                dir: contract::DIRECTORY_DIR.into(),
            },
        ] {
            let args = AgentArgs {
                server: "mx".into(),
                directory: directory.clone(),
                mailbox_base: "/var/mail/vhosts".into(),
                minimum_uid: 1234,
                log_format: Some("json".into()),
            };
            let argv = std::iter::once("virtmail-agent".to_string()).chain(args.to_args());
            let Command::Serve(serve) = Cli::try_parse_from(argv).expect("parses").command else {
                panic!("not serve");
            };
            assert_eq!(serve.server.as_deref(), Some("mx"));
            match directory {
                AgentDirectory::Api { namespace } => {
                    assert_eq!(serve.namespace, Some(namespace));
                    assert_eq!(serve.directory_dir, None);
                }
                AgentDirectory::Mounted { dir } => {
                    assert_eq!(serve.directory_dir, Some(PathBuf::from(dir)));
                    assert_eq!(serve.namespace, None);
                }
            }
            assert_eq!(serve.mailbox_base, Some(PathBuf::from("/var/mail/vhosts")));
            assert_eq!(
                serve.lmtp,
                Addr::Unix(contract::LMTP_SOCKET.into()),
                "Postfix's virtual_transport"
            );
            assert_eq!(
                serve.socketmap,
                Addr::Unix(contract::SOCKETMAP_SOCKET.into())
            );
            assert_eq!(
                serve.http.to_string(),
                format!("0.0.0.0:{}", contract::AGENT_HTTP_PORT)
            );
            assert_eq!(serve.minimum_uid, 1234);
            assert_eq!(
                serve.postfix_queue_stats,
                Some(PathBuf::from(contract::POSTFIX_QUEUE_STATS))
            );
            assert!(matches!(serve.log_format, LogFormat::Json));
        }
    }
}
